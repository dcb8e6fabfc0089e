"""The few-shot evaluation benchmark behind ``metakd evaluate``.

For every held-out task, shot setting (``K`` normal and ``A`` anomalous support rows) and seed,
a task's rows are split into three disjoint parts (:func:`draw_split`):

* **support**: ``K`` normals and ``A`` anomalies, labelled;
* **pool**: up to ``pool_size`` unlabelled rows, a stratified sample of the remaining rows with
  the task's natural contamination (unlabelled rows first), never more than half of them;
* **query**: every remaining labelled row, capped at ``query_max`` by a stratified subsample.

Every method sees only the support and the pool, and fits any scaling on those; the query is
scored once and only enters AUROC and AUPRC. metakd adapts (and distils) exactly as
``metakd adapt`` does (:class:`~metakd.adapt.FewShotDetector`); the baselines of
:mod:`metakd.baselines` run on the very same splits.

For a given task and seed the three parts are prefixes of one permutation per label, so the
support of ``K = 5`` is contained in that of ``K = 10`` and the query changes as little as the
shot setting allows: comparisons across shot settings are (nearly) paired.

Outputs in ``out_dir``: ``results.csv`` (one row per task × setting × seed × method),
``summary.md`` (means with 95 % t-intervals over task × seed runs, best per setting in bold),
``auroc_vs_shots.png``, ``config.yaml`` and ``metrics.jsonl`` (plus a W&B run when tracking is on).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from metakd import configio
from metakd.adapt import AdaptConfig, FewShotDetector, TeacherBundle
from metakd.baselines import (
    BaselineConfig,
    Detector,
    DevNetDetector,
    IForestDetector,
    KNNDetector,
    LogRegDetector,
    PretrainConfig,
    TeacherDetector,
    load_or_pretrain_pooled,
    scratch_bundle,
)
from metakd.checkpoint import atomic_write_bytes, atomic_write_text, load_checkpoint
from metakd.data.collection import TaskCollection, load_collection
from metakd.data.task import ANOMALY, NORMAL, UNLABELLED, Task
from metakd.episodes import EpisodeConfig
from metakd.errors import ConfigError, DataError, MetakdError
from metakd.tracking import Run, TrackingConfig, progress_bar

#: Every method, in report order. ``metakd-*`` are ours; ``teacher-no-adapt`` is an ablation.
METHODS: tuple[str, ...] = (
    "metakd-student",
    "metakd-teacher",
    "teacher-no-adapt",
    "scratch",
    "pooled-finetune",
    "knn-support",
    "iforest-support",
    "knn-pool",
    "iforest-pool",
    "logreg-support",
    "devnet",
)
OURS: tuple[str, ...] = ("metakd-student", "metakd-teacher")
#: Methods that do not use the meta-trained teacher: "best baseline" is taken over these.
BASELINES: tuple[str, ...] = tuple(m for m in METHODS if m not in (*OURS, "teacher-no-adapt"))
#: Methods that need labelled anomalies; they run only in settings with ``A > 0``.
NEEDS_ANOMALIES: tuple[str, ...] = ("logreg-support", "devnet")
#: Methods that need the unlabelled pool.
NEEDS_POOL: tuple[str, ...] = ("knn-pool", "iforest-pool")

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
class EvaluateConfig:
    """Everything ``metakd evaluate`` needs besides the teacher."""

    tasks: str | None = None
    """Task collection to evaluate on (built-in name, manifest, directory or file); null uses the
    teacher's own collection with its recorded split, i.e. its held-out meta-test tasks."""
    split: Literal["test", "val", "train", "all"] = "test"
    """Which tasks of the collection to evaluate on (``all``: every task)."""
    shots: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    """Normal support sizes ``K``."""
    anomaly_shots: list[int] = field(default_factory=lambda: [0, 1, 5])
    """Labelled anomalous support sizes ``A``."""
    seeds: int = 5
    """Repetitions (independent splits) per task and shot setting."""
    seed: int = 0
    """Base seed: repetition ``s`` draws its splits from ``(seed, task, s)`` and seeds every
    stochastic method with ``seed + s`` (the student with ``adapt.seed + s``)."""
    pool_size: int = 64
    """Unlabelled rows per split, capped by availability (at most half the non-support rows)."""
    query_max: int = 1000
    """Largest query; bigger remainders are subsampled with the class ratio kept."""
    min_query_per_class: int = 5
    """A setting is skipped (with a warning) for a task whose query would hold fewer normal or
    anomalous rows than this: AUROC over fewer anomalies says little."""
    methods: list[str] | None = None
    """Methods to run (see ``METHODS``); null runs all (without ``metakd-student`` when
    ``adapt.student`` is false, and without the pool methods when ``pool_size`` is 0)."""
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    """Adaptation and distillation, exactly as ``metakd adapt``; also used by ``scratch``,
    ``pooled-finetune`` and ``teacher-no-adapt`` (without a student)."""
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    """Hyper-parameters of the classical baselines."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Pooled multi-task pretraining of ``pooled-finetune`` (cached as ``pooled_pretrain.pt``)."""
    threads: int | None = 1
    """Torch intra-op threads while evaluating (restored afterwards); null keeps torch's. The
    per-task networks are tiny, so extra threads mostly add synchronisation: on two busy cores
    distillation ran ten times slower with 2 threads than with 1."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Run tracking (W&B mode, project, ...); metrics.jsonl is always written."""

    def __post_init__(self) -> None:
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer or null, got {self.threads!r}")
        for key in ("shots", "anomaly_shots"):
            values = getattr(self, key)
            low = 1 if key == "shots" else 0
            if not values:
                raise ConfigError(f"{key} must list at least one value")
            if any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
                raise ConfigError(f"{key} must be integers >= {low}, got {values!r}")
            if len(set(values)) != len(values):
                raise ConfigError(f"{key} lists a value twice: {values!r}")
        minimum = {"seeds": 1, "pool_size": 0, "query_max": 2, "min_query_per_class": 1}
        for key, low in minimum.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")
        if self.query_max < 2 * self.min_query_per_class:
            raise ConfigError(
                f"query_max ({self.query_max}) must be at least twice min_query_per_class "
                f"({self.min_query_per_class})"
            )
        if self.methods is not None:
            unknown = [m for m in self.methods if m not in METHODS]
            if unknown:
                raise ConfigError(
                    f"methods: unknown method '{unknown[0]}' (known: {', '.join(METHODS)})"
                )
            if not self.methods:
                raise ConfigError("methods must list at least one method (or be null for all)")
            if "metakd-student" in self.methods and not self.adapt.student:
                raise ConfigError("methods lists metakd-student but adapt.student is false")
            pool_methods = [m for m in self.methods if m in NEEDS_POOL]
            if pool_methods and self.pool_size == 0:
                raise ConfigError(f"methods lists {pool_methods[0]}, which needs pool_size > 0")

    def resolved_methods(self) -> list[str]:
        """The methods to run, in report order."""
        if self.methods is not None:
            return [m for m in METHODS if m in self.methods]
        return [
            m
            for m in METHODS
            if (m != "metakd-student" or self.adapt.student)
            and (m not in NEEDS_POOL or self.pool_size > 0)
        ]


def load_evaluate_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> EvaluateConfig:
    """Load an :class:`EvaluateConfig` from optional YAML plus ``key=value`` overrides."""
    return configio.load(EvaluateConfig, path, overrides)


# -- splits --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Row indices into one task (int64, pairwise disjoint).

    Attributes:
        support: ``[K + A]``: ``K`` normals, then ``A`` anomalies.
        pool: ``[P]`` unlabelled rows (their labels are never used).
        query: ``[Q]`` labelled rows, shuffled.
    """

    support: np.ndarray
    pool: np.ndarray
    query: np.ndarray


@dataclass(frozen=True)
class _Counts:
    pool_normal: int
    pool_anomaly: int
    pool_unlabelled: int
    query_normal: int
    query_anomaly: int


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _split_counts(
    task: Task,
    *,
    shots: int,
    anomaly_shots: int,
    pool_size: int,
    query_max: int,
    min_query_per_class: int,
) -> _Counts | str:
    """Part sizes of a split, or why the task cannot serve this setting. Depends on the label
    counts only, so whether a setting is served never depends on the seed."""
    n_normal, n_anomaly, n_unlabelled = task.n_normals, task.n_anomalies, task.n_unlabelled
    rest_normal, rest_anomaly = n_normal - shots, n_anomaly - anomaly_shots
    if rest_normal < min_query_per_class or rest_anomaly < min_query_per_class:
        return (
            f"{n_normal} normal and {n_anomaly} anomalous rows; needs {shots} + "
            f"{min_query_per_class} normal and {anomaly_shots} + {min_query_per_class} anomalous "
            "(support + query)"
        )
    labelled = rest_normal + rest_anomaly
    # At most half of the remaining labelled rows go to the pool, so the query stays sizeable.
    pool = min(pool_size, n_unlabelled + labelled // 2)
    pool_unlabelled = min(n_unlabelled, pool)
    pool_anomaly = _round_half_up((pool - pool_unlabelled) * rest_anomaly / labelled)
    pool_normal = pool - pool_unlabelled - pool_anomaly
    query_normal, query_anomaly = rest_normal - pool_normal, rest_anomaly - pool_anomaly
    if query_normal < min_query_per_class or query_anomaly < min_query_per_class:
        return (
            f"after a pool of {pool} rows ({pool_anomaly} anomalous) the query would hold "
            f"{query_normal} normal and {query_anomaly} anomalous rows, fewer than "
            f"min_query_per_class = {min_query_per_class}"
        )
    if query_normal + query_anomaly > query_max:
        ratio = query_anomaly / (query_normal + query_anomaly)
        query_anomaly = max(min_query_per_class, _round_half_up(query_max * ratio))
        query_normal = query_max - query_anomaly
    return _Counts(pool_normal, pool_anomaly, pool_unlabelled, query_normal, query_anomaly)


def split_seed(task_name: str, *, base_seed: int, repetition: int) -> np.random.SeedSequence:
    """The seed sequence of one task and repetition (stable across runs and processes)."""
    return np.random.SeedSequence([base_seed, zlib.crc32(task_name.encode()), repetition])


def draw_split(
    task: Task,
    *,
    shots: int,
    anomaly_shots: int,
    pool_size: int,
    query_max: int,
    min_query_per_class: int,
    seed: np.random.SeedSequence | int,
) -> Split:
    """Draw disjoint support, pool and query rows of ``task`` (see the module docstring).

    Args:
        task: the task.
        shots: ``K`` normal support rows; anomaly_shots: ``A`` anomalous support rows.
        pool_size: unlabelled rows wanted (fewer when the task is small).
        query_max: largest query (stratified subsample beyond).
        min_query_per_class: least normal and least anomalous query rows.
        seed: seed of the permutations; the same seed gives nested supports across ``K``/``A``.

    Raises:
        DataError: the task cannot serve the setting (the message says why).
    """
    counts = _split_counts(
        task,
        shots=shots,
        anomaly_shots=anomaly_shots,
        pool_size=pool_size,
        query_max=query_max,
        min_query_per_class=min_query_per_class,
    )
    if isinstance(counts, str):
        raise DataError(
            task.name, f"cannot serve shots={shots}, anomaly_shots={anomaly_shots}: {counts}"
        )
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(task.y == NORMAL))
    anomaly = rng.permutation(np.flatnonzero(task.y == ANOMALY))
    unlabelled = rng.permutation(np.flatnonzero(task.y == UNLABELLED))
    k, a = shots, anomaly_shots
    pn, pa = k + counts.pool_normal, a + counts.pool_anomaly
    support = np.concatenate([normal[:k], anomaly[:a]])
    pool = rng.permutation(
        np.concatenate([normal[k:pn], anomaly[a:pa], unlabelled[: counts.pool_unlabelled]])
    )
    query = rng.permutation(
        np.concatenate(
            [normal[pn : pn + counts.query_normal], anomaly[pa : pa + counts.query_anomaly]]
        )
    )
    return Split(support.astype(np.int64), pool.astype(np.int64), query.astype(np.int64))


# -- running -------------------------------------------------------------------------------------


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
    with _torch_threads(config.threads):
        return _run_evaluation(
            config, teacher_path=teacher_path, out_dir=out_dir, progress=progress
        )


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run_evaluation(
    config: EvaluateConfig, *, teacher_path: Path, out_dir: Path, progress: bool
) -> EvaluationResult:
    start = time.perf_counter()
    bundle = TeacherBundle.load(teacher_path)
    methods = config.resolved_methods()
    teacher_spec = _teacher_collection_spec(bundle)
    collection = _load(config.tasks or teacher_spec, bundle, what="evaluation tasks")
    tasks = _evaluation_tasks(config, bundle, collection, teacher_spec)
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
        "methods": methods,
    }
    with Run(out_dir, config=resolved, tracking=config.tracking, job_type="evaluate") as run:
        bar = progress_bar(enabled=progress)
        with bar:
            pooled = None
            if "pooled-finetune" in methods:
                pooled = _pooled_bundle(
                    config, bundle, teacher_path, teacher_spec, out_dir, collection, bar
                )
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
                    config, bundle, pooled, methods, task, split, repetition=repetition
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
        plot_auroc_vs_shots(summary, files["plot"])
        run.summary(
            {
                f"auroc/{r.method}/K{r.shots}-A{r.anomaly_shots}": r.auroc
                for r in summary.itertuples()
            }
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


def _teacher_collection_spec(bundle: TeacherBundle) -> str | None:
    source = bundle.info.get("tasks")
    if not isinstance(source, str) or not source:
        return None
    return source.removeprefix("builtin:")


def _load(spec: str | None, bundle: TeacherBundle, *, what: str) -> TaskCollection:
    if spec is None:
        raise ConfigError(
            f"the teacher checkpoint {bundle.path} records no task collection; pass the {what} "
            "explicitly (tasks: / --tasks)"
        )
    return load_collection(spec, alignment=bundle.alignment)


def _same_source(a: str, b: str) -> bool:
    if a.startswith("builtin:") or b.startswith("builtin:"):
        return a == b
    return os.path.realpath(a) == os.path.realpath(b)


def _evaluation_tasks(
    config: EvaluateConfig,
    bundle: TeacherBundle,
    collection: TaskCollection,
    teacher_spec: str | None,
) -> list[Task]:
    """The tasks to evaluate on, checked against the teacher's input width and training tasks."""
    recorded = bundle.info.get("splits") or {}
    if config.tasks is None:
        # The teacher's own collection: use its recorded split, not today's split settings.
        if config.split == "all":
            names = [t.name for t in collection.tasks]
        else:
            names = list(recorded.get(config.split, []))
        tasks = [collection.task(name) for name in names]
    else:
        tasks = collection.tasks if config.split == "all" else collection.split(config.split)
    if not tasks:
        raise DataError(
            collection.source,
            f"no tasks in the '{config.split}' split to evaluate on (set split: or pass other tasks)",
        )
    teacher_source = str(bundle.info.get("tasks", ""))
    if teacher_source and _same_source(collection.source, teacher_source):
        seen = set(recorded.get("train", [])) | set(recorded.get("val", []))
        leaked = [t.name for t in tasks if t.name in seen]
        if leaked:
            warnings.warn(
                f"{collection.source}: evaluating on tasks the teacher was meta-trained or "
                f"validated on ({', '.join(leaked)}); their scores are not held-out results",
                stacklevel=4,  # the caller of run_evaluation
            )
    if bundle.alignment.kind == "none":
        width = bundle.teacher.input_dim - bundle.teacher.profile_width
        for task in tasks:
            if task.n_features != width:
                raise DataError(
                    task.name,
                    f"{task.n_features} features but the teacher takes {width} "
                    "(it was meta-trained without feature alignment)",
                )
    return tasks


def _plan(
    config: EvaluateConfig, tasks: list[Task]
) -> tuple[list[tuple[Task, int, int, int]], list[str]]:
    """Runs (task, K, A, seed) that can be served, and a warning line per skipped setting."""
    plan: list[tuple[Task, int, int, int]] = []
    skipped: list[str] = []
    for task in tasks:
        for anomaly_shots in config.anomaly_shots:
            for shots in config.shots:
                counts = _split_counts(
                    task,
                    shots=shots,
                    anomaly_shots=anomaly_shots,
                    pool_size=config.pool_size,
                    query_max=config.query_max,
                    min_query_per_class=config.min_query_per_class,
                )
                if isinstance(counts, str):
                    line = f"{task.name}: skipping shots={shots}, anomaly_shots={anomaly_shots}: {counts}"
                    warnings.warn(line, stacklevel=4)  # the caller of run_evaluation
                    skipped.append(line)
                    continue
                plan.extend((task, shots, anomaly_shots, s) for s in range(config.seeds))
    return plan, skipped


def _pooled_bundle(
    config: EvaluateConfig,
    bundle: TeacherBundle,
    teacher_path: Path,
    teacher_spec: str | None,
    out_dir: Path,
    collection: TaskCollection,
    bar: Progress,
) -> TeacherBundle:
    """Pretrain (or reuse) the pooled teacher on the meta-trained teacher's meta-train tasks."""
    if teacher_spec is not None and _same_source(collection.source, str(bundle.info.get("tasks"))):
        source = collection
    else:
        try:
            source = _load(teacher_spec, bundle, what="meta-train tasks of pooled-finetune")
        except MetakdError as err:
            raise DataError(
                "pooled-finetune",
                f"needs the teacher's meta-train tasks, which failed to load ({err}); run from "
                "the directory the teacher was trained in, or drop it from methods",
            ) from None
    names = list((bundle.info.get("splits") or {}).get("train", []))
    if not names:
        raise DataError(
            bundle.path, "the teacher records no meta-train tasks (needed by pooled-finetune)"
        )
    train = [source.task(name) for name in names]
    episode = configio.from_dict(EpisodeConfig, load_checkpoint(teacher_path, "teacher")["episode"])
    job = bar.add_task("pooled pretraining", total=config.pretrain.iterations, info="")
    pooled = load_or_pretrain_pooled(
        out_dir / "pooled_pretrain.pt",
        bundle,
        train,
        episode=episode,
        config=config.pretrain,
        provenance={"tasks": source.source, "train_tasks": names},
        on_step=lambda i, loss: bar.update(job, completed=i, info=f"loss {loss:.3f}"),
    )
    bar.update(job, completed=config.pretrain.iterations)
    return pooled


def _scores_metrics(scores: np.ndarray, y: np.ndarray, *, where: str) -> tuple[float, float]:
    if not np.isfinite(scores).all():
        # stacklevel 6: the caller of run_evaluation.
        warnings.warn(f"{where}: non-finite scores; AUROC/AUPRC recorded as NaN", stacklevel=6)
        return float("nan"), float("nan")
    return float(roc_auc_score(y, scores)), float(average_precision_score(y, scores))


def _baseline(
    method: str,
    config: EvaluateConfig,
    bundle: TeacherBundle,
    pooled: TeacherBundle | None,
    seed: int,
) -> Detector:
    cfg, scaling = config.baselines, bundle.scaling
    adapt = dataclasses.replace(config.adapt, student=False)
    if method == "teacher-no-adapt":
        return TeacherDetector(
            bundle, config=dataclasses.replace(adapt, inner=adapt.inner | {"steps": 0})
        )
    if method == "scratch":
        return TeacherDetector(scratch_bundle(bundle, seed=seed), config=adapt)
    if method == "pooled-finetune":
        assert pooled is not None
        return TeacherDetector(pooled, config=adapt)
    if method in ("knn-support", "knn-pool"):
        return KNNDetector(
            k=cfg.knn_k, source="support" if method == "knn-support" else "pool", scaling=scaling
        )
    if method in ("iforest-support", "iforest-pool"):
        source = "support" if method == "iforest-support" else "pool"
        return IForestDetector(n_estimators=cfg.iforest_trees, source=source, seed=seed)
    if method == "logreg-support":
        return LogRegDetector(c=cfg.logreg_c, scaling=scaling, seed=seed)
    if method == "devnet":
        return DevNetDetector(config=cfg, scaling=scaling, seed=seed)
    raise ValueError(f"unknown method {method!r}")


def _evaluate_split(
    config: EvaluateConfig,
    bundle: TeacherBundle,
    pooled: TeacherBundle | None,
    methods: list[str],
    task: Task,
    split: Split,
    *,
    repetition: int,
) -> list[dict[str, Any]]:
    """Fit every method on one split's support (+ pool) and score its query."""
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
    seed = config.seed + repetition
    where = f"{task.name} K={len(ys) - anomaly_shots} A={anomaly_shots} seed {repetition}"
    records: list[dict[str, Any]] = []

    def record(method: str, scores: np.ndarray, seconds: float) -> None:
        auroc, auprc = _scores_metrics(scores, yq, where=f"{where} {method}")
        records.append(
            {"method": method, "auroc": auroc, "auprc": auprc, "fit_seconds": seconds} | sizes
        )

    ours = [m for m in methods if m in OURS]
    if ours:
        adapt = dataclasses.replace(
            config.adapt, student="metakd-student" in ours, seed=config.adapt.seed + repetition
        )
        tick = time.perf_counter()
        detector = FewShotDetector(bundle, config=adapt).fit(xs, ys, unlabeled=xp)
        total = time.perf_counter() - tick
        timings = detector.report_["timings"]
        xq_t = torch.from_numpy(np.ascontiguousarray(xq))
        with torch.no_grad():
            if "metakd-student" in ours:
                assert detector.student_scorer_ is not None
                record("metakd-student", detector.student_scorer_(xq_t).numpy(), total)
            if "metakd-teacher" in ours:
                # Adaptation only: the distillation time belongs to the student.
                seconds = total - timings.get("distill_seconds", 0.0)
                record("metakd-teacher", detector.teacher_scorer_(xq_t).numpy(), seconds)
    for method in methods:
        if method in OURS:
            continue
        if method in NEEDS_ANOMALIES and anomaly_shots == 0:
            continue
        if method in NEEDS_POOL and xp is None:
            continue
        tick = time.perf_counter()
        detector_b = _baseline(method, config, bundle, pooled, seed).fit(xs, ys, unlabeled=xp)
        seconds = time.perf_counter() - tick
        record(method, detector_b.decision_function(xq), seconds)
    return records


# -- reporting -----------------------------------------------------------------------------------


def _mean_ci(values: pd.Series) -> tuple[float, float, int]:
    """Mean, 95 % t-interval half-width and count of the finite values (half-width NaN if n < 2)."""
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(v[0]), float("nan"), 1
    half = float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return float(v.mean()), half, n


SUMMARY_COLUMNS: tuple[str, ...] = (
    "anomaly_shots",
    "shots",
    "method",
    "auroc",
    "auroc_ci",
    "auprc",
    "auprc_ci",
    "n",
    "failed",
)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean AUROC and AUPRC with 95 % t-interval half-widths per method × setting.

    Each task × seed run is one observation (the interval is over runs, so it reflects both
    task-to-task and split-to-split variation). Runs whose scores were not finite count as
    ``failed`` and are left out of the means, which are then flagged wherever they are shown.

    Returns:
        Columns ``SUMMARY_COLUMNS`` (``n``: runs averaged, ``failed``: runs without a score),
        ordered by setting and ``METHODS``.
    """
    out = []
    for (anomaly_shots, shots, method), group in results.groupby(
        ["anomaly_shots", "shots", "method"], sort=False
    ):
        auroc, auroc_ci, n = _mean_ci(group["auroc"])
        auprc, auprc_ci, _ = _mean_ci(group["auprc"])
        out.append(
            {
                "anomaly_shots": int(anomaly_shots),
                "shots": int(shots),
                "method": method,
                "auroc": auroc,
                "auroc_ci": auroc_ci,
                "auprc": auprc,
                "auprc_ci": auprc_ci,
                "n": n,
                "failed": len(group) - n,
            }
        )
    summary = pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))
    order = {m: i for i, m in enumerate(METHODS)}
    summary["_order"] = summary["method"].map(order)
    return (
        summary.sort_values(["anomaly_shots", "shots", "_order"])
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def _cell(mean: float, half: float, failed: int, n: int, *, bold: bool) -> str:
    if not np.isfinite(mean):
        return f"failed {failed}/{failed}" if failed else "–"
    text = f"{mean:.3f}" if not np.isfinite(half) else f"{mean:.3f} ± {half:.3f}"
    text = f"**{text}**" if bold else text
    return f"{text} (failed {failed}/{n + failed})" if failed else text


def _metric_table(summary: pd.DataFrame, metric: str, anomaly_shots: int) -> list[str]:
    part = summary[summary["anomaly_shots"] == anomaly_shots]
    shots = sorted(part["shots"].unique())
    methods = [m for m in METHODS if m in set(part["method"])]
    # A mean over the runs that did not fail is not comparable: such cells are never "best".
    clean = part[part["failed"] == 0]
    best = {k: clean[clean["shots"] == k][metric].max() for k in shots}
    lines = [
        "| method | " + " | ".join(f"K={k}" for k in shots) + " |",
        "|---|" + "---|" * len(shots),
    ]
    for method in methods:
        cells = []
        for k in shots:
            row = part[(part["shots"] == k) & (part["method"] == method)]
            if row.empty:
                cells.append("–")
                continue
            r = row.iloc[0]
            bold = bool(r["failed"] == 0 and r[metric] == best[k])
            cells.append(
                _cell(r[metric], r[f"{metric}_ci"], int(r["failed"]), int(r["n"]), bold=bold)
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def headline_gaps(summary: pd.DataFrame) -> pd.DataFrame:
    """Per setting: metakd-student's mean AUROC minus the best baseline's (``BASELINES``).

    The best baseline is the one with the highest mean among those that never failed (among all
    when every one failed somewhere).

    Returns:
        Columns ``anomaly_shots, shots, student, student_failed, best_baseline, best_auroc,
        gap``; ``student_failed`` counts the student's failed runs, whose gap is then not a
        like-for-like comparison.
    """
    out = []
    for (anomaly_shots, shots), part in summary.groupby(["anomaly_shots", "shots"], sort=True):
        student = part[part["method"] == "metakd-student"]
        base = part[part["method"].isin(BASELINES)].dropna(subset=["auroc"])
        if student.empty or base.empty:
            continue
        if (base["failed"] == 0).any():
            base = base[base["failed"] == 0]
        best = base.loc[base["auroc"].idxmax()]
        value = float(student["auroc"].iloc[0])
        out.append(
            {
                "anomaly_shots": int(anomaly_shots),
                "shots": int(shots),
                "student": value,
                "student_failed": int(student["failed"].iloc[0]),
                "best_baseline": best["method"],
                "best_auroc": float(best["auroc"]),
                "gap": value - float(best["auroc"]),
            }
        )
    columns = [
        "anomaly_shots",
        "shots",
        "student",
        "student_failed",
        "best_baseline",
        "best_auroc",
        "gap",
    ]
    return pd.DataFrame(out, columns=columns)


def summary_markdown(
    summary: pd.DataFrame,
    *,
    config: EvaluateConfig,
    teacher_path: Path,
    tasks: list[Task],
    skipped: list[str],
) -> str:
    """``summary.md``: per anomaly-shot setting, AUROC and AUPRC tables (methods × K) with the
    best mean per column in bold, the student-vs-best-baseline gaps and the skipped settings."""
    lines = [
        "# Few-shot evaluation",
        "",
        f"Teacher: `{teacher_path}`. Tasks ({len(tasks)}): {', '.join(t.name for t in tasks)}. "
        f"Seeds: {config.seeds}. Pool: up to {config.pool_size} unlabelled rows. Query: all "
        f"remaining labelled rows (at most {config.query_max}, stratified).",
        "",
        "Cells: mean over task × seed runs ± half-width of the 95 % t-interval; best mean per "
        "column in bold. A run *fails* when a method's query scores are not all finite; failed "
        "runs are left out of a cell's mean and counted beside it, and such cells are never "
        "marked best.",
    ]
    for anomaly_shots in sorted(summary["anomaly_shots"].unique()):
        for metric in ("auroc", "auprc"):
            lines += ["", f"## {metric.upper()}, {anomaly_shots} anomaly shots", ""]
            lines += _metric_table(summary, metric, int(anomaly_shots))
    gaps = headline_gaps(summary)
    if not gaps.empty:
        lines += [
            "",
            "## metakd-student vs the best baseline (mean AUROC)",
            "",
            "| A | K | metakd-student | best baseline | its AUROC | gap |",
            "|---|---|---|---|---|---|",
        ]
        for g in gaps.itertuples():
            flag = f" (student failed {g.student_failed} runs)" if g.student_failed else ""
            lines.append(
                f"| {g.anomaly_shots} | {g.shots} | {g.student:.3f} | {g.best_baseline} | "
                f"{g.best_auroc:.3f} | {g.gap:+.3f}{flag} |"
            )
    if skipped:
        lines += ["", "## Skipped settings", ""] + [f"- {line}" for line in skipped]
    return "\n".join(lines) + "\n"


def plot_auroc_vs_shots(summary: pd.DataFrame, path: Path) -> None:
    """Mean AUROC (95 % interval bars) against ``K``, one line per method, one panel per ``A``;
    a red cross marks a mean from which failed runs were left out."""
    # The object-oriented API renders with Agg without touching pyplot's global backend.
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    settings = sorted(summary["anomaly_shots"].unique())
    fig = Figure(figsize=(4.5 * len(settings), 4), layout="constrained")
    axes = fig.subplots(1, len(settings), sharey=True, squeeze=False)[0]
    colours = dict(zip(METHODS, colormaps["tab20"].colors, strict=False))
    legend: dict[str, Any] = {}
    for ax, anomaly_shots in zip(axes, settings, strict=True):
        part = summary[summary["anomaly_shots"] == anomaly_shots]
        for method in [m for m in METHODS if m in set(part["method"])]:
            rows = part[part["method"] == method].sort_values("shots")
            legend[method] = ax.errorbar(
                rows["shots"],
                rows["auroc"],
                yerr=rows["auroc_ci"].fillna(0.0),
                color=colours[method],
                marker="o",
                linewidth=2.5 if method in OURS else 1.2,
                elinewidth=0.7,
                capsize=2,
            )
            failed = rows[rows["failed"] > 0]
            # Means that leave failed runs out are marked, not hidden.
            ax.scatter(failed["shots"], failed["auroc"], marker="x", s=80, color="red", zorder=3)
        ax.set_xscale("log")
        ax.set_xticks(sorted(part["shots"].unique()))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("normal shots K")
        ax.set_title(f"{anomaly_shots} anomaly shots")
        ax.grid(alpha=0.3)
    # Interval bars may pass 1 (t-intervals are unbounded); AUROC itself cannot.
    axes[0].set_ylim(top=1.02)
    axes[0].set_ylabel("mean query AUROC")
    ordered = [m for m in METHODS if m in legend]
    fig.legend([legend[m] for m in ordered], ordered, loc="outside right center", frameon=False)
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=120))


__all__ = [
    "BASELINES",
    "METHODS",
    "EvaluateConfig",
    "EvaluationResult",
    "Split",
    "draw_split",
    "headline_gaps",
    "load_evaluate_config",
    "plot_auroc_vs_shots",
    "run_evaluation",
    "split_seed",
    "summarise",
    "summary_markdown",
]
