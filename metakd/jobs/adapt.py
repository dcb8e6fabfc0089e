"""``metakd adapt``: read a domain's files, fit a :class:`~metakd.detector.FewShotDetector`,
write the detector and its report into the run folder.

The detector and its persistence live in :mod:`metakd.detector` and :mod:`metakd.persist`; every
domain of a folder (``--support-dir``) is :mod:`metakd.jobs.adapt_dir`.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metakd import configio
from metakd.checkpoint import atomic_write_text
from metakd.data.readers import read_task
from metakd.data.task import Task
from metakd.data.windows import WindowConfig, window_task
from metakd.detect import AdaptConfig, FewShotDetector, decision_scores
from metakd.errors import DataError
from metakd.persist import TeacherBundle, windowing
from metakd.rundir import staged_run_dir
from metakd.tracking import Run

__all__ = ["Domain", "adapt_domain", "read_domain", "run_adapt", "save_domain"]


def _metrics(scores: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC and AUPRC of ``scores``, and precision, recall and F1 of its flags at ``threshold``."""
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    predicted = (scores > threshold).astype(np.int64)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, predicted, average="binary", zero_division=0
    )
    return {
        "auroc": float(roc_auc_score(y, scores)),
        "auprc": float(average_precision_score(y, scores)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }


@dataclass
class Domain:
    """One new domain's files, read as ``metakd adapt`` reads them (windowed like the teacher's
    meta-train series when it was meta-trained on windows)."""

    support_path: Path
    unlabeled_path: Path | None
    eval_path: Path | None
    support: Task
    pool: Task | None
    evaluation: Task | None
    window: WindowConfig | None
    raw_columns: list[str] | None
    """The named columns of the raw files (before windowing), or ``None``."""

    def fit_args(self) -> tuple[Any, np.ndarray, np.ndarray | None]:
        """``(X, y, unlabeled)`` for :meth:`FewShotDetector.fit`. Named columns as a DataFrame:
        the detector keeps them (``feature_names_in_``) and saves them, so `metakd score`
        matches a file's columns by name."""
        rows: Any = self.support.X
        if self.support.named and self.window is None:
            rows = pd.DataFrame(
                self.support.X, columns=list(self.support.feature_names), copy=False
            )
        return rows, self.support.y, None if self.pool is None else self.pool.X


def read_domain(
    config: AdaptConfig,
    bundle: TeacherBundle,
    *,
    support_path: Path,
    unlabeled_path: Path | None,
    eval_path: Path | None,
) -> Domain:
    """Read and check a domain's support, unlabelled and eval files."""
    support = read_task(support_path, config.read)
    if (support.y == -1).any():
        first = int(np.flatnonzero(support.y == -1)[0])
        raise DataError(
            str(support_path),
            f"{int((support.y == -1).sum())} unlabelled rows (first: row {first}); every support "
            f"row needs a label (0 normal, 1 anomaly) in column '{config.read.label_column}'",
        )
    # The other files' named columns are matched to the support's by name (as `score` does).
    read = config.read
    if support.named and read.columns is None:
        read = dataclasses.replace(read, columns=list(support.feature_names))
    pool = None
    if unlabeled_path is not None:
        pool = read_task(
            unlabeled_path, dataclasses.replace(read, require_labels=False, ignore_labels=True)
        )
    evaluation = None
    if eval_path is not None:
        evaluation = read_task(eval_path, dataclasses.replace(read, require_labels=True))
        if (evaluation.y == -1).any() or len(np.unique(evaluation.y)) < 2:
            raise DataError(
                str(eval_path), "evaluation rows need both labels (0 and 1) and no unlabelled rows"
            )
    for task in (pool, evaluation):
        if task is not None and task.n_features != support.n_features:
            raise DataError(
                task.source,
                f"has {task.n_features} features but the support has {support.n_features}",
            )
    # A teacher meta-trained on windows of time series (a manifest's `window:`) sees the new
    # domain's raw rows through the same windows.
    window = windowing(bundle.window, support.n_features)
    raw_columns = list(support.feature_names) if support.named else None
    if window is not None:
        raw_rows = support.n_rows
        support = window_task(support, window)
        pool = None if pool is None else window_task(pool, window)
        evaluation = None if evaluation is None else window_task(evaluation, window)
        warnings.warn(
            f"{support_path}: the teacher was meta-trained on windows ({window.size} rows, "
            f"stride {window.stride}, {window.features} features): the {raw_rows} support rows "
            f"became {support.n_rows} windows, and the unlabelled and eval rows are windowed the "
            "same way",
            stacklevel=2,
        )
    return Domain(
        support_path, unlabeled_path, eval_path, support, pool, evaluation, window, raw_columns
    )


def save_domain(
    detector: FewShotDetector,
    domain: Domain,
    config: AdaptConfig,
    *,
    teacher_path: Path,
    out_dir: Path,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Write a fitted detector and its ``report.json`` into ``out_dir``; returns the report and
    the files written."""
    if domain.window is not None and domain.raw_columns is not None:
        detector.input_columns_ = domain.raw_columns  # score reads the raw series, then windows
    paths = detector.save(out_dir)
    report = dict(detector.report_)
    # Relative to the run folder, which is moved into place when the command finishes.
    report["files"] = {k: v.name for k, v in paths.items()}
    report["teacher_checkpoint"] = str(teacher_path)
    report["inputs"] = {
        "support": str(domain.support_path),
        "unlabeled": None if domain.unlabeled_path is None else str(domain.unlabeled_path),
        "eval": None if domain.eval_path is None else str(domain.eval_path),
        "columns": detector.input_columns_,
    }
    # The rule the threshold was calibrated by, with the settings it read.
    used = report["threshold_method"]
    report["threshold"] = {"method": used, "configured": config.threshold.method}
    if used == "contamination":
        report["threshold"]["contamination"] = config.threshold.contamination
    elif used == "normal_quantile":
        report["threshold"]["normal_quantile"] = config.threshold.normal_quantile
        report["threshold"]["cross_fitted"] = report["threshold_cross_fitted"]
        report["threshold"]["folds"] = config.threshold.folds
    if domain.window is not None:
        report["window"] = configio.to_dict(domain.window)
    evaluation = domain.evaluation
    if evaluation is not None:
        report["eval"] = {}
        for net, scorer in (
            ("teacher", detector.teacher_scorer_),
            ("student", detector.student_scorer_),
        ):
            if scorer is not None:
                report["eval"][net] = _metrics(
                    decision_scores(scorer, evaluation.X), evaluation.y, scorer.threshold
                )
        report["eval_rows"] = evaluation.n_rows
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return report, paths


def run_adapt(
    config: AdaptConfig,
    *,
    teacher_path: Path,
    support_path: Path,
    unlabeled_path: Path | None,
    eval_path: Path | None,
    out_dir: Path,
    progress: bool = False,
) -> dict[str, Any]:
    """``metakd adapt``: read the files, fit a :class:`FewShotDetector`, save it and its report.

    Returns the report written to ``out_dir/report.json``.
    """
    bundle = TeacherBundle.load(teacher_path)
    domain = read_domain(
        config,
        bundle,
        support_path=support_path,
        unlabeled_path=unlabeled_path,
        eval_path=eval_path,
    )
    with Run(
        out_dir, config=configio.to_dict(config), tracking=config.tracking, job_type="adapt"
    ) as run:
        detector = FewShotDetector(bundle, config=config, verbose=progress).fit(*domain.fit_args())
        report, paths = save_domain(
            detector, domain, config, teacher_path=teacher_path, out_dir=out_dir
        )
        for point in report.get("distill_history", []):
            run.log(
                {"distill/loss": point["loss"], "distill/fidelity": point["fidelity"]},
                step=int(point["step"]),
            )
        flat = {
            k: v
            for k, v in report.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        flat |= {f"timings/{k}": v for k, v in report["timings"].items()}
        for net, values in report.get("eval", {}).items():
            flat |= {f"eval/{net}/{k}": v for k, v in values.items()}
        run.summary(flat)
        if "student" in paths:
            run.log_artifact(
                paths["student"],
                name="student",
                type="model",
                aliases=["latest"],
                metadata={
                    "teacher_checkpoint": str(teacher_path),
                    "fidelity": report.get("fidelity_spearman"),
                },
                uses=[("teacher", teacher_path)],
            )
        run.log_artifact(
            paths["teacher"],
            name="adapted-teacher",
            type="model",
            aliases=["latest"],
            metadata={"teacher_checkpoint": str(teacher_path)},
        )
    return report


def adapt_domain(
    *,
    teacher_path: Path,
    support_path: Path,
    unlabeled_path: Path | None,
    eval_path: Path | None,
    out_dir: Path,
    config_path: str | None,
    overrides: list[str],
    overwrite: bool,
    progress: bool,
) -> tuple[AdaptConfig, dict[str, Any]]:
    """``metakd adapt --support``: load the config (``--config``, ``--set``), then
    :func:`run_adapt` in a staged run folder that becomes ``out_dir`` when it finished.
    ``out_dir`` may neither be nor hold one of the inputs (the teacher, the files, the config).

    Returns:
        The config and the report written to ``out_dir/report.json``.
    """
    config = configio.load(AdaptConfig, config_path, overrides)
    inputs = [
        ("--teacher", teacher_path),
        ("--support", support_path),
        ("--unlabeled", unlabeled_path),
        ("--eval", eval_path),
        ("--config", config_path),
    ]
    with staged_run_dir(out_dir, command="adapt", overwrite=overwrite, inputs=inputs) as stage:
        report = run_adapt(
            config,
            teacher_path=teacher_path,
            support_path=support_path,
            unlabeled_path=unlabeled_path,
            eval_path=eval_path,
            out_dir=stage,
            progress=progress,
        )
    return config, report
