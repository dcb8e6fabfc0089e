"""The meta-training loop behind ``metakd meta-train``: sampling, optimisation, validation, I/O.

The math of one meta-batch lives in :mod:`metakd.meta.learners`; this module only drives it,
with exact resume (:mod:`metakd.resume`) and data-parallel ranks (:mod:`metakd.distributed`).
"""

from __future__ import annotations

import contextlib
import copy
import random
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metakd import configio
from metakd.checkpoint import atomic_write_text, save_teacher
from metakd.config import TrainConfig
from metakd.data.collection import TaskCollection, load_collection
from metakd.data.task import Task
from metakd.data.transforms import AlignmentConfig, ScalingConfig
from metakd.distributed import ProcessGroup
from metakd.episodes import EpisodeBatch, EpisodeConfig, EpisodeSampler
from metakd.errors import ConfigError, DataError
from metakd.meta.learners import MetaLearner, MetaStats, learner_class
from metakd.meta.losses import auroc
from metakd.meta.outer import outer_step
from metakd.models.profile import ProfileConfig
from metakd.models.teachers import build_teacher
from metakd.prefetch import Prefetch
from metakd.resume import RESUME_FILE, ResumeState
from metakd.threads import torch_threads
from metakd.tracking import Run, progress_bar


@dataclass
class TrainResult:
    """What a meta-training run produced."""

    out_dir: Path | None
    """The run folder (``None`` on the ranks of a distributed job other than 0)."""
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
    pool_rows: int | None = None,
) -> EpisodeBatch:
    """``per_task`` episodes of every usable task, stacked into one batch (task-major order).

    Each task's pool is as large as the episode shape allows (``pool_size_max``, as far as the
    task's rows go: how ``metakd adapt`` meets a domain), with ``anomaly_shots`` (the smallest);
    the teacher reads the same number of pool rows in every episode, so they stack.
    """
    sampler = EpisodeSampler(
        tasks,
        config,
        scaling=scaling,
        alignment=alignment,
        seed=seed,
        profile=profile,
        pool_rows=pool_rows,
    )
    rng = np.random.default_rng(seed)
    need = config.shots + config.anomaly_shots + config.query_size
    plans = [
        sampler.plan(
            task,
            rng,
            pool_size=config.pool_size
            if config.pool_size_max is None or config.pool_size == 0
            else min(config.pool_size_max, task.n_rows - need),
        )
        for task in sampler.tasks
        for _ in range(per_task)
    ]
    read = sampler.teacher_pool(min(len(plan.pool) for plan in plans))
    # Built in meta-batch-sized blocks: batched like training's, memory bounded however many.
    block = max(1, config.meta_batch)
    return stack_episodes(
        [
            sampler.build(plans[i : i + block], teacher_pool=read)
            for i in range(0, len(plans), block)
        ]
    )


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
        teacher,
        inner=config.inner,
        meta=config.meta,
        # The most any meta-batch holds: its inner loss must serve supports with anomalies.
        anomaly_shots=max(config.episode.anomaly_shots, config.episode.anomaly_shots_max or 0),
    )


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped meta-training at the end of an iteration, after it wrote its
    resume checkpoint (``resume.pt``).

    A ``KeyboardInterrupt``, so whatever handles Ctrl-C (run folders, tracking) handles it too.

    Attributes:
        iteration: the iterations done (the checkpoint's).
        signum: the signal that asked to stop.
    """

    def __init__(self, iteration: int, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name} at iteration {iteration}")
        self.iteration = iteration
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's status for death by this signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class _StopSignals:
    """While active, SIGINT and SIGTERM only ask the loop to stop (it does at the end of the
    iteration, writing a checkpoint); a second signal raises ``KeyboardInterrupt`` at once.
    Outside the main thread, where Python cannot set handlers, signals keep their defaults."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def resolve_streams(config: TrainConfig, world_size: int) -> int:
    """The number of episode streams (``episode_streams``; null: one per rank).

    Raises:
        ConfigError: the meta-batch (or the streams) cannot be shared equally by ``world_size``
            ranks, naming the key.
    """
    meta_batch = config.episode.meta_batch
    if config.episode_streams is None:
        if meta_batch % world_size:
            raise ConfigError(
                f"episode.meta_batch={meta_batch} is not divisible by the world size "
                f"{world_size} (WORLD_SIZE): each rank takes an equal share of every meta-batch"
            )
        return world_size
    if config.episode_streams % world_size:
        raise ConfigError(
            f"episode_streams={config.episode_streams} is not divisible by the world size "
            f"{world_size} (WORLD_SIZE): each rank draws whole episode streams"
        )
    return config.episode_streams


class EpisodeStreams:
    """This rank's share of every meta-batch, drawn from independent episode streams.

    With one stream (a single process, by default) each meta-batch is the sampler's next draw
    from its one generator, as ever. With ``S`` streams, stream ``s`` draws ``meta_batch / S``
    episodes at iteration ``t`` from a generator seeded with ``(seed, s, t)``: nothing to carry
    between iterations or ranks, so each rank draws only its own streams (sampling is split, not
    repeated) and the whole meta-batch, streams in order, is the same at any world size.

    Args:
        sampler: draws the episodes (its ``rng`` is replaced per stream with several streams).
        seed: the run's seed.
        streams: ``S`` (see :func:`resolve_streams`).
        rank: this rank; world_size: the number of ranks, dividing ``S``.
    """

    def __init__(
        self, sampler: EpisodeSampler, *, seed: int, streams: int, rank: int, world_size: int
    ) -> None:
        self.sampler = sampler
        self.seed = seed
        self.streams = streams
        share = streams // world_size
        self.owned = range(rank * share, (rank + 1) * share)
        self.per_stream = sampler.config.meta_batch // streams

    def sample(self, iteration: int) -> tuple[EpisodeBatch, dict[str, Any] | None]:
        """This rank's episodes of iteration ``iteration`` (1-based), and the sampler
        generator's state after them, what a resume checkpoint of that iteration holds (``None``
        with several streams, which keep no state between iterations)."""
        if self.streams == 1:
            batch = self.sampler.sample()
            return batch, dict(self.sampler.rng.bit_generator.state)
        # The streams of a meta-batch share its shape (anomaly shots, pool size), drawn from
        # the iteration's own generator, so their episodes stack.
        shape = self.sampler.draw_shape(np.random.default_rng([self.seed, iteration]))
        plans = {}
        for stream in range(self.streams):
            self.sampler.rng = np.random.default_rng([self.seed, stream, iteration])
            plans[stream] = self.sampler.draw(self.per_stream, shape=shape)
        # As many pool rows for the teacher in every stream's episodes, at any world size: the
        # fewest of the whole meta-batch (drawing every stream's rows is cheap; only this
        # rank's are built).
        read = self.sampler.teacher_pool(min(len(p.pool) for part in plans.values() for p in part))
        built = [self.sampler.build(plans[stream], teacher_pool=read) for stream in self.owned]
        return stack_episodes(built), None


_STEP_METRICS = ("outer_loss", "support_loss_before", "support_loss_after", "query_auroc")


def meta_train(
    config: TrainConfig,
    *,
    out_dir: Path | None,
    progress: bool = True,
    resume: ResumeState | None = None,
    group: ProcessGroup | None = None,
) -> TrainResult:
    """Meta-train a teacher, validating and keeping the best checkpoint.

    Writes ``out_dir/teacher.pt`` (best by meta-val few-shot AUROC), ``config.yaml`` and
    ``metrics.jsonl``; while it works also ``out_dir/resume.pt`` every ``checkpoint_every``
    iterations (removed when it finishes). SIGINT and SIGTERM stop it at the end of the current
    iteration: it writes ``resume.pt`` and raises :class:`TrainingInterrupted`.

    Args:
        config: the run.
        out_dir: where the files go; ``None`` on the ranks of a distributed job other than 0,
            which write nothing.
        progress: show a progress bar.
        resume: the state of an interrupted run of the same config to continue
            (:meth:`~metakd.resume.ResumeState.check_config` says what may differ); the result
            equals an uninterrupted run's.
        group: the torch.distributed job this process is a rank of: each rank computes the
            meta-gradient of its share of every meta-batch (:class:`EpisodeStreams`) and the
            ranks average them before every step; every rank also validates (identically, so
            they stay in step), rank 0 alone evaluates on the meta-test tasks.

    Raises:
        TrainingInterrupted: SIGINT/SIGTERM (on any rank) stopped the run.
        DistributedError: another rank failed, died or timed out.
    """
    with (
        _StopSignals() as stop,
        torch_threads(config.threads or 1),
        contextlib.ExitStack() as resources,
    ):
        return _meta_train(
            config,
            out_dir=out_dir,
            progress=progress,
            resume=resume,
            group=group,
            stop=stop,
            resources=resources,
        )


def _meta_train(
    config: TrainConfig,
    *,
    out_dir: Path | None,
    progress: bool,
    resume: ResumeState | None,
    group: ProcessGroup | None,
    stop: _StopSignals,
    resources: contextlib.ExitStack,
) -> TrainResult:
    start = time.perf_counter()
    world, rank = (1, 0) if group is None else (group.world_size, group.rank)
    streams = resolve_streams(config, world)
    if resume is not None:
        resume.check_config(configio.to_dict(config), streams=streams)
    device: torch.device | str = config.device if group is None else group.device(config.device)
    if out_dir is not None:
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
        pool_rows=config.model.pool_rows,
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
    learner = build_learner(config, input_dim, seed=config.seed).to(device)
    if group is not None:
        group.broadcast_(list(learner.state_dict().values()))
    optimiser = torch.optim.Adam(
        learner.param_groups(), lr=config.meta.meta_lr, weight_decay=config.meta.weight_decay
    )
    episodes = EpisodeStreams(
        sampler, seed=config.seed, streams=streams, rank=rank, world_size=world
    )
    resolved = configio.to_dict(config) | {"alignment": configio.to_dict(alignment)}
    if out_dir is not None:
        atomic_write_text(out_dir / "config.yaml", configio.dump_yaml(config))

    best_state = copy.deepcopy(learner.state_dict())
    best_auroc: float | None = None
    best_iteration = 0
    skipped = 0  # outer steps skipped for a non-finite meta-gradient
    done = 0  # iterations done before this session (resume)
    seconds_before = 0.0
    if resume is not None:
        learner.load_state_dict(resume.learner)
        optimiser.load_state_dict(resume.optimiser)
        if resume.sampler_rng is not None:
            sampler.rng.bit_generator.state = resume.sampler_rng
        resume.restore_global_rngs()
        best_state, best_auroc, best_iteration = (
            resume.best_state,
            resume.best_val_auroc,
            resume.best_iteration,
        )
        skipped, done, seconds_before = resume.skipped, resume.iteration, resume.seconds
        if out_dir is not None and best_auroc is not None:
            # teacher.pt of the staging folder may be from past the checkpoint: rewrite it.
            current = copy.deepcopy(learner.state_dict())
            learner.load_state_dict(best_state)
            _save(
                out_dir / "teacher.pt",
                learner,
                config,
                alignment,
                collection,
                best_iteration,
                best_auroc,
            )
            learner.load_state_dict(current)

    # The sampler's state after the last meta-batch trained on (the prefetching thread may
    # have drawn further): what a checkpoint must hold to resume the same stream.
    sampler_state = dict(sampler.rng.bit_generator.state) if streams == 1 else None
    # Started now, so the worker's start overlaps the set-up below (first validation, W&B).
    stream = resources.enter_context(
        Prefetch(episodes.sample, start=done + 1, stop=config.iterations, depth=config.prefetch)
    )

    def validate(iteration: int, metrics: dict[str, float | Tensor]) -> None:
        """Meta-val AUROC into ``metrics``; a new best is kept in memory and saved."""
        nonlocal best_auroc, best_iteration, best_state
        assert val_batch is not None
        val = float(np.mean(list(few_shot_auroc(learner, val_batch.to(device)).values())))
        metrics["val_auroc"] = val
        if best_auroc is None or val > best_auroc:
            best_auroc, best_iteration = val, iteration
            best_state = copy.deepcopy(learner.state_dict())
            if out_dir is not None:
                _save(
                    out_dir / "teacher.pt", learner, config, alignment, collection, iteration, val
                )
            metrics["best_val_auroc"] = val

    def checkpoint(iteration: int, run: Run) -> None:
        """Write everything the next iteration needs to ``resume.pt``."""
        assert out_dir is not None
        ResumeState(
            config=configio.to_dict(config),
            streams=streams,
            iteration=iteration,
            learner=learner.state_dict(),
            optimiser=optimiser.state_dict(),
            sampler_rng=sampler_state,
            torch_rng=torch.get_rng_state(),
            python_rng=random.getstate(),
            skipped=skipped,
            best_iteration=best_iteration,
            best_val_auroc=best_auroc,
            best_state=best_state,
            metrics=list(run.lines),
            seconds=seconds_before + time.perf_counter() - start,
            wandb_id=run.wandb_id,
        ).save(out_dir / RESUME_FILE)

    def finish(run: Run) -> tuple[EpisodeBatch | None, dict[str, float], float]:
        """Rank 0 after the last iteration: the best teacher, held-out AUROC, the summary."""
        nonlocal best_iteration, best_state
        assert out_dir is not None
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
            test_batch = test_batch.to(device)
            baseline = build_learner(config, input_dim, seed=config.seed + 10_000).to(device)
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
        seconds = seconds_before + time.perf_counter() - start
        if skipped:
            warnings.warn(
                f"{skipped} of {config.iterations} meta-steps had a non-finite meta-gradient (an "
                "inner loop diverged) and were skipped; a smaller inner.lr or meta.meta_lr avoids "
                "that",
                stacklevel=3,
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
        return test_batch, test_auroc, seconds

    tracked = (
        Run(
            out_dir,
            config=resolved,
            tracking=config.tracking,
            job_type="meta-train",
            history=() if resume is None else resume.metrics,
            resume_id=None if resume is None else resume.wandb_id,
        )
        if out_dir is not None
        else contextlib.nullcontext()
    )
    with tracked as run:
        if val_batch is not None and resume is None:
            # The initialisation is a candidate too: where meta-training never beats it on the
            # meta-val tasks, the teacher stays at iteration 0 instead of the least bad iterate.
            initial: dict[str, float | Tensor] = {}
            validate(0, initial)
            if run is not None:
                run.log(initial, step=0)
        # A failure on one rank is held until the next all-reduce, which tells every rank.
        pending: Exception | None = None
        bar = progress_bar(enabled=progress and out_dir is not None)
        summary = ""

        def phase(what: str) -> None:
            """Say in the bar what the loop is doing now, before the last results."""
            bar.update(job, info=" · ".join(filter(None, (what, summary))))

        with bar:
            job = bar.add_task("meta-train", total=config.iterations, completed=done, info="")
            for iteration in range(done + 1, config.iterations + 1):
                tick = time.perf_counter()
                batch: EpisodeBatch | None = None
                stats: MetaStats | None = None
                if pending is None:
                    try:
                        phase("sampling")
                        batch, sampler_state = stream.get(iteration)
                        batch = batch.to(device)
                        phase("meta-step")
                        optimiser.zero_grad(set_to_none=True)
                        stats = learner.meta_gradients(
                            batch.support_x,
                            batch.support_y,
                            batch.query_x,
                            batch.query_y,
                            batch.pool_x,
                        )
                    except Exception as err:
                        if group is None:
                            raise
                        pending = err
                stopping = stop.signum is not None
                shared: dict[str, Tensor] = {}
                if group is not None:
                    local = None
                    if batch is not None and stats is not None:
                        local = torch.stack(
                            [v.detach().float() for v in _step_metrics(stats, batch).values()]
                        )
                    means, stopping = group.reduce_step(
                        list(learner.parameters()),
                        local,
                        n_metrics=len(_STEP_METRICS),
                        error=pending,
                        stop=stopping,
                        iteration=iteration,
                    )
                    if pending is not None:
                        raise pending
                    shared = dict(zip(_STEP_METRICS, means.cpu(), strict=True))
                assert batch is not None and stats is not None
                stepped = outer_step(learner.parameters(), optimiser, grad_clip=config.meta.grad_clip)
                skipped += not stepped
                elapsed = time.perf_counter() - tick
                try:
                    metrics: dict[str, float | Tensor] = {
                        **(shared or _step_metrics(stats, batch)),
                        "inner_lr": _mean_inner_lr(learner),
                        "meta_lr": optimiser.param_groups[0]["lr"],
                        "tasks_per_second": batch.support_x.shape[0] * world / elapsed,
                        "skipped_steps": skipped,
                    }
                    if val_batch is not None and (
                        iteration % config.val_every == 0 or iteration == config.iterations
                    ):
                        phase("validating")
                        validate(iteration, metrics)
                    if run is not None:
                        run.log(metrics, step=iteration)
                        every = config.checkpoint_every
                        periodic = every > 0 and iteration % every == 0
                        if stopping or (periodic and iteration < config.iterations):
                            checkpoint(iteration, run)
                    summary = f"loss {metrics['outer_loss']:.3f}"
                    if best_auroc is not None:
                        summary += f" · best val AUROC {best_auroc:.3f}"
                    bar.update(job, advance=1, info=summary)
                except Exception as err:
                    if group is None or stopping:
                        raise
                    pending = err
                    continue
                if stopping:
                    raise TrainingInterrupted(iteration, stop.signum or signal.SIGTERM)

        test_auroc: dict[str, float] = {}
        test_batch: EpisodeBatch | None = None
        seconds: float | None = None
        failure: Exception | None = pending
        if run is not None and failure is None:
            try:
                test_batch, test_auroc, seconds = finish(run)
            except Exception as err:
                if group is None:
                    raise
                failure = err
        if group is not None:
            group.finish(failure, what="the end of meta-training")
            if failure is not None:
                raise failure
    if out_dir is not None:
        (out_dir / RESUME_FILE).unlink(missing_ok=True)  # a finished run has nothing to resume
    return TrainResult(
        out_dir=out_dir,
        best_iteration=best_iteration,
        best_val_auroc=best_auroc,
        test_auroc=test_auroc,
        test_tasks=sorted({n for n in (test_batch.task_names if test_batch else [])}),
        seconds=seconds_before + time.perf_counter() - start if seconds is None else seconds,
    )


def _step_metrics(stats: MetaStats, batch: EpisodeBatch) -> dict[str, Tensor]:
    """The per-iteration means of :data:`_STEP_METRICS` over this rank's episodes."""
    return {
        "outer_loss": stats.outer_loss.mean(),
        "support_loss_before": stats.support_loss_before.mean(),
        "support_loss_after": stats.support_loss_after.mean(),
        "query_auroc": auroc(stats.query_scores.detach(), batch.query_y).mean(),
    }


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
                pool_rows=config.model.pool_rows,
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
