"""Meta-learners over a teacher, one class per algorithm behind one interface.

Every algorithm subclasses :class:`MetaLearner` and implements
:meth:`~MetaLearner.meta_gradients`; :mod:`metakd.train` calls only that. A new meta-learner is
one module here holding a subclass decorated ``@register("name")`` (this package imports every
module in it); ``meta.algorithm`` is checked against the registry, so nothing else changes.

- ``maml``, ``fomaml``: :mod:`.maml` (Finn et al. 2017)
- ``anil``: :mod:`.anil` (Raghu et al. 2020)
- ``metasgd``: :mod:`.metasgd` (Li et al. 2017)
- ``reptile``: :mod:`.reptile` (Nichol et al. 2018)
- ``imaml``: :mod:`.imaml` (Rajeswaran et al. 2019: implicit gradients, ``meta.imaml``)
- ``pooled``: :mod:`.pooled` (no inner loop while training: the transfer-learning ablation)
"""

import importlib
import pkgutil

from metakd.meta.learners.anil import ANIL
from metakd.meta.learners.base import (
    AdaptationPlan,
    Algorithm,
    IMAMLConfig,
    InnerConfig,
    MetaConfig,
    MetaLearner,
    MetaStats,
)
from metakd.meta.learners.imaml import IMAML
from metakd.meta.learners.maml import FOMAML, MAML
from metakd.meta.learners.metasgd import MetaSGD
from metakd.meta.learners.pooled import Pooled
from metakd.meta.learners.registry import (
    LEARNERS,
    build_learner,
    learner_class,
    register,
    resolve_inner,
)
from metakd.meta.learners.reptile import Reptile

# The modules here register their meta-learners when imported: importing them all fills LEARNERS,
# so a new meta-learner's module needs no line in this file.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "ANIL",
    "FOMAML",
    "IMAML",
    "IMAMLConfig",
    "LEARNERS",
    "MAML",
    "AdaptationPlan",
    "Algorithm",
    "InnerConfig",
    "MetaConfig",
    "MetaLearner",
    "MetaSGD",
    "Pooled",
    "MetaStats",
    "Reptile",
    "build_learner",
    "learner_class",
    "register",
    "resolve_inner",
]
