"""Every method of ``metakd evaluate``, gathered from the modules that declare them.

Each module below declares its methods as a ``METHODS`` tuple beside the detectors they build
(:class:`~metakd.evaluate.methods.Method`); this module lists the modules, and is the only one
that imports them all. A new baseline is one module in :mod:`metakd.evaluate.baselines` and
one line here. Report order: by group, then the order listed here.
"""

from __future__ import annotations

from metakd.evaluate import ours
from metakd.evaluate.baselines import pyod, supervised, transfer
from metakd.evaluate.methods import MethodRegistry

#: The methods of ``metakd evaluate``.
REGISTRY = MethodRegistry(
    [
        *ours.METHODS,  # metakd-student, metakd-teacher, teacher-no-adapt
        *transfer.METHODS,  # scratch, pooled-finetune
        *pyod.METHODS,  # <kind>-support, <kind>-pool
        *supervised.METHODS,  # logreg-support, devnet
    ]
)
#: Register one more method in :data:`REGISTRY` from outside this package (e.g. a notebook);
#: see :meth:`~metakd.evaluate.methods.MethodRegistry.register`.
register_method = REGISTRY.register


__all__ = ["REGISTRY", "register_method"]
