"""``metakd adapt``: read a domain's files, fit a :class:`~metakd.detector.FewShotDetector`,
write the detector and its report into the run folder.

The detector and its persistence live in :mod:`metakd.detector` and :mod:`metakd.persist`; their
public names are re-exported here, where earlier versions defined them.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from metakd import configio
from metakd.checkpoint import atomic_write_text
from metakd.data.readers import read_task
from metakd.data.windows import window_task
from metakd.detector import (
    MIN_NORMALS_WITHOUT_POOL,
    AdaptConfig,
    FewShotDetector,
    decision_scores,
    score_rows,
)
from metakd.errors import DataError
from metakd.persist import TeacherBundle, export_torchscript, load_scorer, windowing
from metakd.tracking import Run

__all__ = [
    "MIN_NORMALS_WITHOUT_POOL",
    "AdaptConfig",
    "FewShotDetector",
    "TeacherBundle",
    "export_torchscript",
    "load_scorer",
    "run_adapt",
    "score_rows",
]


def _metrics(scores: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
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


def run_adapt(
    config: AdaptConfig,
    *,
    teacher_path: Path,
    support_path: Path,
    unlabeled_path: Path | None,
    eval_path: Path | None,
    out_dir: Path,
) -> dict[str, Any]:
    """``metakd adapt``: read the files, fit a :class:`FewShotDetector`, save it and its report.

    Returns the report written to ``out_dir/report.json``.
    """
    bundle = TeacherBundle.load(teacher_path)
    support = read_task(support_path, config.read)
    if (support.y == -1).any():
        first = int(np.flatnonzero(support.y == -1)[0])
        raise DataError(
            str(support_path),
            f"{int((support.y == -1).sum())} unlabelled rows (first: row {first}); every support "
            f"row needs a label (0 normal, 1 anomaly) in column '{config.read.label_column}'",
        )
    pool = None
    if unlabeled_path is not None:
        pool = read_task(
            unlabeled_path,
            dataclasses.replace(config.read, require_labels=False, ignore_labels=True),
        )
    evaluation = None
    if eval_path is not None:
        evaluation = read_task(eval_path, dataclasses.replace(config.read, require_labels=True))
        if (evaluation.y == -1).any() or len(np.unique(evaluation.y)) < 2:
            raise DataError(
                str(eval_path), "evaluation rows need both labels (0 and 1) and no unlabelled rows"
            )
    for _name, task in (("unlabeled", pool), ("eval", evaluation)):
        if task is not None and task.n_features != support.n_features:
            raise DataError(
                task.source,
                f"has {task.n_features} features but the support has {support.n_features}",
            )
    # A teacher meta-trained on windows of time series (a manifest's `window:`) sees the new
    # domain's raw rows through the same windows.
    window = windowing(bundle.window, support.n_features)
    if window is not None:
        raw_rows = support.n_rows
        support = window_task(support, window)
        pool = None if pool is None else window_task(pool, window)
        evaluation = None if evaluation is None else window_task(evaluation, window)
        warnings.warn(
            f"the teacher was meta-trained on windows ({window.size} rows, stride "
            f"{window.stride}, {window.features} features): the {raw_rows} support rows became "
            f"{support.n_rows} windows, and the unlabelled and eval rows are windowed the same way",
            stacklevel=2,
        )

    with Run(
        out_dir, config=configio.to_dict(config), tracking=config.tracking, job_type="adapt"
    ) as run:
        detector = FewShotDetector(bundle, config=config).fit(
            support.X, support.y, unlabeled=None if pool is None else pool.X
        )
        paths = detector.save(out_dir)
        report = dict(detector.report_)
        # Relative to the run folder, which is moved into place when the command finishes.
        report["files"] = {k: v.name for k, v in paths.items()}
        report["teacher_checkpoint"] = str(teacher_path)
        if window is not None:
            report["window"] = configio.to_dict(window)
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
        atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
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
