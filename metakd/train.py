"""The meta-training loop behind ``metakd meta-train``: sampling, optimisation, validation, I/O.

The math of one meta-batch lives in :mod:`metakd.meta.learners`; this module only drives it.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from metakd import configio
from metakd.checkpoint import atomic_write_text, save_teacher
from metakd.config import TrainConfig
from metakd.data.collection import TaskCollection, load_collection
from metakd.data.task import Task
from metakd.data.transforms import AlignmentConfig, ScalingConfig
from metakd.episodes import EpisodeBatch, EpisodeConfig, EpisodeSampler
from metakd.errors import DataError
from metakd.meta.learners import MetaLearner, MetaStats, learner_class
from metakd.meta.losses import auroc
from metakd.models.profile import ProfileConfig
from metakd.models.teachers import build_teacher
from metakd.tracking import Run, progress_bar


@dataclass
class TrainResult:
    """What a meta-training run produced."""

    out_dir: Path
    best_iteration: int
    best_val_auroc: float | None
    test_auroc: dict[str, float]
    """Mean held-out few-shot AUROC per method (``metakd``, ``random_init``, ``knn_support``)."""
    test_tasks: list[str]
    seconds: float


def fixed_episodes(
    tasks: list[Task],
    config: EpisodeConfig,
    *,
    scaling: ScalingConfig,
    alignment: AlignmentConfig,
    per_task: int,
    seed: int,
    profile: ProfileConfig | None = None,
) -> EpisodeBatch:
    """``per_task`` episodes of every usable task, stacked into one batch (task-major order)."""
    sampler = EpisodeSampler(
        tasks, config, scaling=scaling, alignment=alignment, seed=seed, profile=profile
    )
    rng = np.random.default_rng(seed)
    episodes = [sampler.episode(task, rng) for task in sampler.tasks for _ in range(per_task)]
    return stack_episodes(episodes)


def stack_episodes(episodes: list[EpisodeBatch]) -> EpisodeBatch:
    """Concatenate batches of equal shapes along the task dimension."""

    def cat(name: str) -> Tensor:
        return torch.cat([getattr(e, name) for e in episodes])

    return EpisodeBatch(
        support_x=cat("support_x"),
        support_y=cat("support_y"),
        query_x=cat("query_x"),
        query_y=cat("query_y"),
        pool_x=cat("pool_x") if episodes[0].pool_x is not None else None,
        task_names=[n for e in episodes for n in e.task_names],
        support_index=[i for e in episodes for i in e.support_index],
        query_index=[i for e in episodes for i in e.query_index],
        pool_index=[i for e in episodes for i in e.pool_index],
    )


def few_shot_auroc(learner: MetaLearner, batch: EpisodeBatch) -> dict[str, float]:
    """Mean query AUROC per task after adapting to each episode's support."""
    scores = learner.adapted_scores(batch.support_x, batch.support_y, batch.query_x, batch.pool_x)
    per_episode = auroc(scores, batch.query_y).tolist()
    by_task: dict[str, list[float]] = {}
    for name, value in zip(batch.task_names, per_episode, strict=True):
        by_task.setdefault(name, []).append(value)
    return {name: float(np.mean(values)) for name, values in by_task.items()}


def knn_auroc(
    batch: EpisodeBatch, *, k: int = 5, width: int | None = None, pool: bool = False
) -> dict[str, float]:
    """Reference detector on the same episodes: mean distance to the ``k`` nearest support
    normals (``pool``: the ``k`` nearest unlabelled pool rows, a density) in the episode's scaled
    features (the first ``width`` columns, before any profile), mean query AUROC per task."""
    width = batch.support_x.shape[-1] if width is None else width
    if pool:
        if batch.pool_x is None:
            raise ValueError("knn_auroc(pool=True) needs episodes with a pool")
        reference = batch.pool_x[..., :width]
        excluded = torch.zeros(reference.shape[:-1], dtype=reference.dtype)
    else:
        reference, excluded = batch.support_x[..., :width], batch.support_y
    distance = torch.cdist(batch.query_x[..., :width], reference)  # [B, q, n]
    distance = distance + 1e12 * excluded.unsqueeze(1)  # only normals are neighbours
    k = min(k, int((excluded == 0).sum(-1).min()))
    scores = distance.topk(k, dim=-1, largest=False).values.mean(-1)
    by_task: dict[str, list[float]] = {}
    for name, value in zip(batch.task_names, auroc(scores, batch.query_y).tolist(), strict=True):
        by_task.setdefault(name, []).append(value)
    return {name: float(np.mean(values)) for name, values in by_task.items()}


def build_learner(config: TrainConfig, input_dim: int, *, seed: int) -> MetaLearner:
    """A fresh teacher (initialised from ``seed``) wrapped in its meta-learner."""
    torch.manual_seed(seed)
    teacher = build_teacher(input_dim, config.model)
    return learner_class(config.meta.algorithm)(
        teacher, inner=config.inner, meta=config.meta, anomaly_shots=config.episode.anomaly_shots
    )


def meta_train(config: TrainConfig, *, out_dir: Path, progress: bool = True) -> TrainResult:
    """Meta-train a teacher, validating and keeping the best checkpoint.

    Writes ``out_dir/teacher.pt`` (best by meta-val few-shot AUROC), ``config.yaml`` and
    ``metrics.jsonl``.
    """
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    collection = load_collection(config.tasks, split=config.split, alignment=config.alignment)
    collection.check_alignment()
    alignment = collection.alignment
    train_tasks = collection.split("train")
    val_tasks = collection.split("val")
    test_tasks = collection.split("test")
    if not train_tasks:
        raise DataError(collection.source, "no meta-train tasks in the split")

    sampler = EpisodeSampler(
        train_tasks,
        config.episode,
        scaling=config.scaling,
        alignment=alignment,
        seed=config.seed,
        profile=config.model.input_profile(),
        prior=config.prior,
    )
    val_batch = _held_out(
        val_tasks, config, alignment, per_task=config.val_episodes, seed=config.seed + 1
    )
    if val_batch is None:
        warnings.warn(
            f"{collection.source}: no usable meta-val tasks; keeping the last iterate", stacklevel=2
        )
    probe = sampler.sample(1)
    input_dim = probe.support_x.shape[-1]
    learner = build_learner(config, input_dim, seed=config.seed).to(config.device)
    optimiser = torch.optim.Adam(
        learner.parameters(), lr=config.meta.meta_lr, weight_decay=config.meta.weight_decay
    )
    resolved = configio.to_dict(config) | {"alignment": configio.to_dict(alignment)}
    atomic_write_text(out_dir / "config.yaml", configio.dump_yaml(config))

    best_state = copy.deepcopy(learner.state_dict())
    best_auroc: float | None = None
    best_iteration = 0

    def validate(iteration: int, metrics: dict[str, float | Tensor]) -> None:
        """Meta-val AUROC into ``metrics``; a new best is kept in memory and saved."""
        nonlocal best_auroc, best_iteration, best_state
        assert val_batch is not None
        val = float(np.mean(list(few_shot_auroc(learner, val_batch.to(config.device)).values())))
        metrics["val_auroc"] = val
        if best_auroc is None or val > best_auroc:
            best_auroc, best_iteration = val, iteration
            best_state = copy.deepcopy(learner.state_dict())
            _save(out_dir / "teacher.pt", learner, config, alignment, collection, iteration, val)
            metrics["best_val_auroc"] = val

    skipped = 0  # outer steps skipped for a non-finite meta-gradient
    with Run(out_dir, config=resolved, tracking=config.tracking, job_type="meta-train") as run:
        if val_batch is not None:
            # The initialisation is a candidate too: where meta-training never beats it on the
            # meta-val tasks, the teacher stays at iteration 0 instead of the least bad iterate.
            initial: dict[str, float | Tensor] = {}
            validate(0, initial)
            run.log(initial, step=0)
        bar = progress_bar(enabled=progress)
        with bar:
            job = bar.add_task("meta-train", total=config.iterations, info="")
            for iteration in range(1, config.iterations + 1):
                tick = time.perf_counter()
                batch = sampler.sample().to(config.device)
                stats, stepped = _meta_step(
                    learner, optimiser, batch, grad_clip=config.meta.grad_clip
                )
                skipped += not stepped
                elapsed = time.perf_counter() - tick
                metrics = {
                    "outer_loss": stats.outer_loss.mean(),
                    "support_loss_before": stats.support_loss_before.mean(),
                    "support_loss_after": stats.support_loss_after.mean(),
                    "query_auroc": auroc(stats.query_scores.detach(), batch.query_y).mean(),
                    "inner_lr": _mean_inner_lr(learner),
                    "meta_lr": optimiser.param_groups[0]["lr"],
                    "tasks_per_second": batch.support_x.shape[0] / elapsed,
                    "skipped_steps": skipped,
                }
                if val_batch is not None and (
                    iteration % config.val_every == 0 or iteration == config.iterations
                ):
                    validate(iteration, metrics)
                run.log(metrics, step=iteration)
                info = f"loss {metrics['outer_loss']:.3f}"
                if best_auroc is not None:
                    info += f" · best val AUROC {best_auroc:.3f}"
                bar.update(job, advance=1, info=info)
        if val_batch is None:
            best_iteration, best_state = config.iterations, learner.state_dict()
            _save(
                out_dir / "teacher.pt", learner, config, alignment, collection, best_iteration, None
            )
        learner.load_state_dict(best_state)

        test_auroc: dict[str, float] = {}
        test_batch = _held_out(
            test_tasks, config, alignment, per_task=config.test_episodes, seed=config.seed + 2
        )
        if test_batch is not None:
            test_batch = test_batch.to(config.device)
            baseline = build_learner(config, input_dim, seed=config.seed + 10_000).to(config.device)
            batch = test_batch

            def mean(per_task: dict[str, float]) -> float:
                return float(np.mean(list(per_task.values())))

            def reference(*, pool: bool) -> float:
                # The simple detector with the teacher's own k, on the same episodes.
                k = config.model.neighbours
                return mean(knn_auroc(batch, k=k, width=sampler.n_features, pool=pool))

            test_auroc = {
                "metakd": mean(few_shot_auroc(learner, batch)),
                "random_init": mean(few_shot_auroc(baseline, batch)),
                "knn_support": reference(pool=False),
            }
            if batch.pool_x is not None:
                test_auroc["knn_pool"] = reference(pool=True)
        seconds = time.perf_counter() - start
        if skipped:
            warnings.warn(
                f"{skipped} of {config.iterations} meta-steps had a non-finite meta-gradient (an "
                "inner loop diverged) and were skipped; a smaller inner.lr or meta.meta_lr avoids "
                "that",
                stacklevel=2,
            )
        run.summary(
            {
                "best_val_auroc": best_auroc,
                "best_iteration": best_iteration,
                "skipped_steps": skipped,
                "seconds": seconds,
            }
            | {f"test_auroc/{k}": v for k, v in test_auroc.items()}
        )
        run.log_artifact(
            out_dir / "teacher.pt",
            name="teacher",
            type="model",
            aliases=["latest", "best"],
            metadata={"best_val_auroc": best_auroc, "best_iteration": best_iteration},
        )
    return TrainResult(
        out_dir=out_dir,
        best_iteration=best_iteration,
        best_val_auroc=best_auroc,
        test_auroc=test_auroc,
        test_tasks=sorted({n for n in (test_batch.task_names if test_batch else [])}),
        seconds=seconds,
    )


def _meta_step(
    learner: MetaLearner,
    optimiser: torch.optim.Optimizer,
    batch: EpisodeBatch,
    *,
    grad_clip: float,
) -> tuple[MetaStats, bool]:
    """One outer step. Returns the batch's stats and whether the step was taken: a step whose
    meta-gradient is not finite (an inner loop that diverged on some task) is skipped, so one bad
    batch cannot turn every meta-parameter into NaN."""
    optimiser.zero_grad(set_to_none=True)
    stats = learner.meta_gradients(
        batch.support_x, batch.support_y, batch.query_x, batch.query_y, batch.pool_x
    )
    norm = torch.nn.utils.clip_grad_norm_(
        learner.parameters(), grad_clip if grad_clip > 0 else float("inf")
    )
    if not torch.isfinite(norm):
        optimiser.zero_grad(set_to_none=True)
        return stats, False
    optimiser.step()
    return stats, True


def _mean_inner_lr(learner: MetaLearner) -> float:
    if len(learner.rates) == 0:
        return learner.inner.lr
    return float(torch.cat([r.detach().flatten() for r in learner.rates]).mean())


def _held_out(
    tasks: list[Task], config: TrainConfig, alignment: AlignmentConfig, *, per_task: int, seed: int
) -> EpisodeBatch | None:
    if not tasks:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unusable held-out tasks were reported at load time
            return fixed_episodes(
                tasks,
                config.episode,
                scaling=config.scaling,
                alignment=alignment,
                per_task=per_task,
                seed=seed,
                profile=config.model.input_profile(),
            )
    except DataError:
        return None


def _save(
    path: Path,
    learner: MetaLearner,
    config: TrainConfig,
    alignment: AlignmentConfig,
    collection: TaskCollection,
    iteration: int,
    val_auroc: float | None,
) -> None:
    save_teacher(
        path,
        teacher=learner.teacher,
        model=configio.to_dict(config.model),
        inner=configio.to_dict(learner.inner),
        algorithm=config.meta.algorithm,
        rates=list(learner.rates),
        scaling=configio.to_dict(config.scaling),
        alignment=configio.to_dict(alignment),
        episode=configio.to_dict(config.episode),
        window=(
            None
            if collection.window is None
            else {
                "config": configio.to_dict(collection.window),
                "raw_widths": list(collection.raw_widths),
            }
        ),
        info={
            "tasks": collection.source,
            "splits": collection.splits,
            "iteration": iteration,
            "val_auroc": val_auroc,
            "seed": config.seed,
        },
    )
