"""Former home of the evaluation baselines, kept so that old import paths keep working.

The baselines now live in :mod:`metakd.evaluate.baselines` (one module per kind) and their
settings in :mod:`metakd.evaluate.settings`; import them from there.
"""

from __future__ import annotations

from metakd.evaluate.baselines.transfer import POOLED_CACHE

__all__ = ["POOLED_CACHE"]
