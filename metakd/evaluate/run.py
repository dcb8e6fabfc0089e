"""The evaluation run: plan the (task, K, A, seed) runs, fit every method on each split, write.

Every method sees only a split's support and pool, and fits any scaling on those; the query is
scored once and only enters AUROC and AUPRC. Methods are built through
:data:`~metakd.evaluate.registry.REGISTRY`, so this loop names none of them.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from metakd import configio
from metakd.checkpoint import atomic_write_text
from metakd.data.task import ANOMALY, Task
from metakd.errors import DataError
from metakd.evaluate.config import EvaluateConfig
from metakd.evaluate.methods import Method, MethodContext, OwnFitTime, Setup
from metakd.evaluate.registry import REGISTRY
from metakd.evaluate.report import method_means, plot_auroc_vs_shots, summarise, summary_markdown
from metakd.evaluate.splits import Split, draw_split, split_counts, split_seed
from metakd.evaluate.tasks import evaluation_tasks, load_tasks, teacher_collection_spec
from metakd.extras import require_installed
from metakd.persist import TeacherBundle
from metakd.threads import torch_threads
from metakd.tracking import Run, progress_bar

RESULT_COLUMNS: tuple[str, ...] = (
    "task",
    "shots",
    "anomaly_shots",
    "seed",
    "method",
    "auroc",
    "auprc",
    "fit_seconds",
    "n_support",
    "n_pool",
    "n_query",
    "n_query_anomalies",
)


@dataclass
class EvaluationResult:
    """What an evaluation produced.

    Attributes:
        out_dir: the output directory.
        results: one row per task × setting × seed × method (columns ``RESULT_COLUMNS``).
        summary: per method × setting: mean and 95 % half-width of AUROC and AUPRC, runs ``n``.
        splits: ``(task, shots, anomaly_shots, seed) -> Split`` actually used.
        skipped: one line per task × setting that could not be served, saying why.
        files: ``results``, ``summary``, ``plot``, ``config`` -> path.
        seconds: wall time.
    """

    out_dir: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    splits: dict[tuple[str, int, int, int], Split]
    skipped: list[str]
    files: dict[str, Path]
    seconds: float


def run_evaluation(
    config: EvaluateConfig, *, teacher_path: Path, out_dir: Path, progress: bool = True
) -> EvaluationResult:
    """Evaluate a meta-trained teacher and the baselines on held-out few-shot tasks.

    Args:
        config: what to evaluate and how.
        teacher_path: ``teacher.pt`` written by ``metakd meta-train``.
        out_dir: where results go (created); ``pooled_pretrain.pt`` here is reused when it
            matches.
        progress: show a progress bar.

    Returns:
        The results, also written to ``out_dir``.

    Raises:
        MetakdError: a bad teacher file, collection or setting (the message names it).
    """
    with torch_threads(config.threads):
        return _run_evaluation(
            config, teacher_path=teacher_path, out_dir=out_dir, progress=progress
        )


def check_extras(config: EvaluateConfig) -> None:
    """Raise :class:`~metakd.extras.MissingExtra` before any work when the evaluation needs an
    optional package that is not installed: matplotlib (``auroc_vs_shots.png``) and those of
    the selected methods (PyOD for its baselines); the message names the install command."""
    needs = [m for name in config.resolved_methods() for m in REGISTRY.get(name).needs]
    require_installed(["matplotlib", *needs], "metakd evaluate")


def _run_evaluation(
    config: EvaluateConfig, *, teacher_path: Path, out_dir: Path, progress: bool
) -> EvaluationResult:
    start = time.perf_counter()
    check_extras(config)
    bundle = TeacherBundle.load(teacher_path)
    methods = [REGISTRY.get(name) for name in config.resolved_methods()]
    collection = load_tasks(
        config.tasks or teacher_collection_spec(bundle), bundle, what="evaluation tasks"
    )
    tasks = evaluation_tasks(
        bundle, collection, split=config.split, teachers_own=config.tasks is None
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", configio.dump_yaml(config))

    plan, skipped = _plan(config, tasks)
    if not plan:
        raise DataError(
            collection.source, "no task can serve any shot setting:\n" + "\n".join(skipped)
        )
    rows: list[dict[str, Any]] = []
    splits: dict[tuple[str, int, int, int], Split] = {}
    resolved = {
        "evaluate": configio.to_dict(config),
        "teacher": str(teacher_path),
        "methods": [m.name for m in methods],
    }
    with Run(out_dir, config=resolved, tracking=config.tracking, job_type="evaluate") as run:
        bar = progress_bar(enabled=progress)
        with bar:
            prepared = {
                m.name: m.prepare(
                    Setup(
                        method=m.name,
                        pretrain=config.pretrain,
                        bundle=bundle,
                        teacher_path=teacher_path,
                        collection=collection,
                        out_dir=out_dir,
                        progress=bar,
                    )
                )
                for m in methods
                if m.prepare is not None
            }
            job = bar.add_task("evaluate", total=len(plan), info="")
            for step, (task, shots, anomaly_shots, repetition) in enumerate(plan, start=1):
                bar.update(job, info=f"{task.name} K={shots} A={anomaly_shots} seed {repetition}")
                split = draw_split(
                    task,
                    shots=shots,
                    anomaly_shots=anomaly_shots,
                    pool_size=config.pool_size,
                    query_max=config.query_max,
                    min_query_per_class=config.min_query_per_class,
                    seed=split_seed(task.name, base_seed=config.seed, repetition=repetition),
                )
                splits[(task.name, shots, anomaly_shots, repetition)] = split
                records = _evaluate_split(
                    config, bundle, methods, prepared, task, split, repetition=repetition
                )
                for record in records:
                    record.update(
                        task=task.name, shots=shots, anomaly_shots=anomaly_shots, seed=repetition
                    )
                rows.extend(records)
                run.log(
                    {f"auroc/{r['method']}": r["auroc"] for r in records}
                    | {"shots": shots, "anomaly_shots": anomaly_shots},
                    step=step,
                )
                bar.update(job, advance=1)

        results = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
        summary = summarise(results)
        files = {
            "results": out_dir / "results.csv",
            "summary": out_dir / "summary.md",
            "plot": out_dir / "auroc_vs_shots.png",
            "config": out_dir / "config.yaml",
        }
        atomic_write_text(files["results"], results.to_csv(index=False, float_format="%.6g"))
        atomic_write_text(
            files["summary"],
            summary_markdown(
                summary, config=config, teacher_path=teacher_path, tasks=tasks, skipped=skipped
            ),
        )
        plot_auroc_vs_shots(summary, files["plot"], results=results)
        run.summary(
            {
                f"auroc/{r.method}/K{r.shots}-A{r.anomaly_shots}": r.auroc
                for r in summary.itertuples()
            }
            # The per-run curves above are logged under auroc/<method>, so a run summary would
            # otherwise show the last run's value there: record the mean over all runs instead.
            | {f"auroc/{method}": mean for method, mean in method_means(results, "auroc").items()}
        )
        run.log_table("results_table", list(RESULT_COLUMNS), results.astype(object).values.tolist())
        run.log_table(
            "summary_table", list(summary.columns), summary.astype(object).values.tolist()
        )
        run.log_image("auroc_vs_shots", files["plot"])
    return EvaluationResult(
        out_dir=out_dir,
        results=results,
        summary=summary,
        splits=splits,
        skipped=skipped,
        files=files,
        seconds=time.perf_counter() - start,
    )


def _plan(
    config: EvaluateConfig, tasks: list[Task]
) -> tuple[list[tuple[Task, int, int, int]], list[str]]:
    """Runs (task, K, A, seed) that can be served, and a warning line per skipped setting."""
    plan: list[tuple[Task, int, int, int]] = []
    skipped: list[str] = []
    for task in tasks:
        for anomaly_shots in config.anomaly_shots:
            for shots in config.shots:
                counts = split_counts(
                    task,
                    shots=shots,
                    anomaly_shots=anomaly_shots,
                    pool_size=config.pool_size,
                    query_max=config.query_max,
                    min_query_per_class=config.min_query_per_class,
                )
                if isinstance(counts, str):
                    line = (
                        f"{task.name}: skipping shots={shots}, "
                        f"anomaly_shots={anomaly_shots}: {counts}"
                    )
                    warnings.warn(line, stacklevel=4)  # the caller of run_evaluation
                    skipped.append(line)
                    continue
                plan.extend((task, shots, anomaly_shots, s) for s in range(config.seeds))
    return plan, skipped


def _scores_metrics(scores: np.ndarray, y: np.ndarray, *, where: str) -> tuple[float, float]:
    if not np.isfinite(scores).all():
        # stacklevel 5: the caller of run_evaluation.
        warnings.warn(f"{where}: non-finite scores; AUROC/AUPRC recorded as NaN", stacklevel=5)
        return float("nan"), float("nan")
    return float(roc_auc_score(y, scores)), float(average_precision_score(y, scores))


def _evaluate_split(
    config: EvaluateConfig,
    bundle: TeacherBundle,
    methods: list[Method],
    prepared: dict[str, Any],
    task: Task,
    split: Split,
    *,
    repetition: int,
) -> list[dict[str, Any]]:
    """Fit every method on one split's support (+ pool) and score its query, in report order."""
    xs, ys = task.X[split.support], (task.y[split.support] == ANOMALY).astype(np.int64)
    xp = task.X[split.pool] if split.pool.size else None
    xq, yq = task.X[split.query], (task.y[split.query] == ANOMALY).astype(np.int64)
    anomaly_shots = int(ys.sum())
    sizes = {
        "n_support": len(split.support),
        "n_pool": len(split.pool),
        "n_query": len(split.query),
        "n_query_anomalies": int(yq.sum()),
    }
    where = f"{task.name} K={len(ys) - anomaly_shots} A={anomaly_shots} seed {repetition}"
    # One context per split: methods that share a fit (the student and the teacher) meet there.
    context = MethodContext(
        bundle=bundle,
        adapt=config.adapt,
        baselines=config.baselines,
        seed=config.seed + repetition,
        repetition=repetition,
        selected=tuple(methods),
    )
    records: list[dict[str, Any]] = []
    for method in methods:
        if method.needs_anomalies and anomaly_shots == 0:
            continue
        if method.needs_pool and xp is None:
            continue
        tick = time.perf_counter()
        # Building is timed too: e.g. the scratch teacher is initialised there.
        detector = method.build(dataclasses.replace(context, prepared=prepared.get(method.name)))
        detector.fit(xs, ys, unlabeled=xp)
        seconds = time.perf_counter() - tick
        if isinstance(detector, OwnFitTime):
            seconds = detector.fit_seconds()
        auroc, auprc = _scores_metrics(
            detector.decision_function(xq), yq, where=f"{where} {method.name}"
        )
        records.append(
            {"method": method.name, "auroc": auroc, "auprc": auprc, "fit_seconds": seconds} | sizes
        )
    return records


__all__ = ["RESULT_COLUMNS", "EvaluationResult", "check_extras", "run_evaluation"]
