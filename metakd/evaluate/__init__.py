"""The few-shot evaluation benchmark behind ``metakd evaluate``.

For every held-out task, shot setting (``K`` normal and ``A`` anomalous support rows) and seed,
a task's rows are split into a labelled support, an unlabelled pool and a labelled query, all
disjoint (:mod:`~metakd.evaluate.splits`). Every method sees only the support and the pool, and
fits any scaling on those; the query is scored once and only enters AUROC and AUPRC. metakd
adapts (and distils) exactly as ``metakd adapt`` does (:class:`~metakd.detector.FewShotDetector`);
the baselines of :mod:`metakd.evaluate.baselines` run on the very same splits.

Outputs in ``out_dir``: ``results.csv`` (one row per task × setting × seed × method),
``summary.md`` (means with 95 % t-intervals over task × seed runs, best per setting in bold),
``auroc_vs_shots.png``, ``config.yaml`` and ``metrics.jsonl`` (plus a W&B run when tracking is on).

One module per role, each importing only those listed before it (no cycles):

* :mod:`~metakd.evaluate.splits`: the disjoint splits;
* :mod:`~metakd.evaluate.settings`: the config sections methods read (``baselines:``,
  ``pretrain:``);
* :mod:`~metakd.evaluate.methods`: what a method is (:class:`Detector`, :class:`Method`, the
  contexts its factory gets) and :class:`MethodRegistry`;
* :mod:`~metakd.evaluate.tasks`: which tasks are evaluated (and the teacher's own);
* :mod:`~metakd.evaluate.baselines`: the baselines, one module per kind, each declaring its
  methods;
* :mod:`~metakd.evaluate.ours`: metakd's own methods;
* :mod:`~metakd.evaluate.registry`: :data:`REGISTRY`, every method by name in report order;
* :mod:`~metakd.evaluate.config`: :class:`EvaluateConfig` (checks ``methods:`` against it);
* :mod:`~metakd.evaluate.report`: statistics, ``summary.md`` and the plot;
* :mod:`~metakd.evaluate.run`: the run loop;
* :mod:`~metakd.evaluate.domains`: leave-domains-out (a teacher meta-trained per fold).
"""

from __future__ import annotations

from metakd.evaluate.config import EvaluateConfig, load_evaluate_config
from metakd.evaluate.methods import Detector, Method, MethodContext, MethodRegistry, Setup
from metakd.evaluate.registry import REGISTRY, register_method
from metakd.evaluate.report import (
    SUMMARY_COLUMNS,
    _metric_table,  # noqa: F401  (imported by the tests from here)
    headline_gaps,
    method_means,
    plot_auroc_vs_shots,
    summarise,
    summary_markdown,
)
from metakd.evaluate.run import RESULT_COLUMNS, EvaluationResult, run_evaluation
from metakd.evaluate.settings import BaselineConfig, PretrainConfig
from metakd.evaluate.splits import Split, SplitCounts, draw_split, split_counts, split_seed


def __getattr__(name: str) -> tuple[str, ...]:
    """The method-name tuples of the former module, now derived from :data:`REGISTRY`.

    Computed on access, not at import, so that they include methods registered later
    (:func:`register_method`).
    """
    if name == "METHODS":  # every method, in report order
        return REGISTRY.names()
    if name == "BASELINES":  # the methods without the meta-trained teacher
        return REGISTRY.baselines()
    if name == "OURS":
        return tuple(m.name for m in REGISTRY.methods() if m.group == "ours")
    if name == "NEEDS_ANOMALIES":
        return tuple(m.name for m in REGISTRY.methods() if m.needs_anomalies)
    if name == "NEEDS_POOL":
        return tuple(m.name for m in REGISTRY.methods() if m.needs_pool)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BASELINES",
    "METHODS",
    "REGISTRY",
    "RESULT_COLUMNS",
    "SUMMARY_COLUMNS",
    "BaselineConfig",
    "Detector",
    "EvaluateConfig",
    "EvaluationResult",
    "Method",
    "MethodContext",
    "MethodRegistry",
    "PretrainConfig",
    "Setup",
    "Split",
    "SplitCounts",
    "draw_split",
    "headline_gaps",
    "load_evaluate_config",
    "method_means",
    "plot_auroc_vs_shots",
    "register_method",
    "run_evaluation",
    "split_counts",
    "split_seed",
    "summarise",
    "summary_markdown",
]
