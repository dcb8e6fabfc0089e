"""The meta-training loop behind ``metakd meta-train``: sampling, optimisation, validation, I/O.

The math of one meta-batch lives in :mod:`metakd.meta.learners`; a :class:`MetaTrainer` only
drives it, with exact resume (:mod:`metakd.resume`) and data-parallel ranks
(:mod:`metakd.distributed`): set up from a config, then per iteration a meta-gradient and an
outer step, validation and checkpoints at their intervals, and a report at the end.
"""

from __future__ import annotations

import contextlib
import copy
import random
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metakd import configio
from metakd.checkpoint import atomic_write_text, fitted_shares
from metakd.config import TrainConfig
from metakd.data.collection import load_collection
from metakd.distributed import ProcessGroup
from metakd.episodes import EpisodeBatch, EpisodeSampler
from metakd.errors import DataError
from metakd.meta.learners import MetaStats
from metakd.meta.outer import outer_step
from metakd.prefetch import Prefetch
from metakd.resume import RESUME_FILE, ResumeState
from metakd.tracking import Run, progress_bar
from metakd.train import files
from metakd.train.references import (
    STEP_METRICS,
    few_shot_auroc,
    mean_inner_lr,
    meta_test_report,
    step_metrics,
)
from metakd.train.signals import StopSignals, TrainingInterrupted, early_stop
from metakd.train.streams import EpisodeStreams, held_out, resolve_streams


@dataclass
class TrainResult:
    """What a meta-training run produced."""

    out_dir: Path | None
    """The run folder (``None`` on the ranks of a distributed job other than 0)."""
    best_iteration: int
    best_val_auroc: float | None
    test_auroc: dict[str, float]
    """Mean held-out few-shot AUROC per method (``metakd``, ``untrained``, ``knn_support``,
    ``knn_pool``; see :func:`~metakd.train.references.held_out_report`)."""
    test_tasks: list[str]
    seconds: float
    stopped_at: int | None = None
    """The iteration early stopping (``patience``) ended the run at, or ``None``."""
    pool_share: dict[str, Any] | None = None
    """The pool Gaussian's share fitted for the teacher
    (:data:`~metakd.train.files.PoolShareFitter`), or ``None``."""


class MetaTrainer:
    """One meta-training run: its tasks, sampler, learner and optimiser, the best iterate so far
    and the counters a resume checkpoint holds. :meth:`run` drives it.

    Args: as :func:`~metakd.train.run.meta_train`.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        out_dir: Path | None,
        resume: ResumeState | None,
        group: ProcessGroup | None,
        fit_pool_share: files.PoolShareFitter | None = None,
    ) -> None:
        self.start = time.perf_counter()
        self.config, self.out_dir, self.resume, self.group = config, out_dir, resume, group
        self.fit_pool_share = fit_pool_share
        self.pool_share: dict[str, Any] | None = None
        self.world, self.rank = (1, 0) if group is None else (group.world_size, group.rank)
        self.streams = resolve_streams(config, self.world)
        if resume is not None:
            resume.check_config(configio.to_dict(config), streams=self.streams)
        self.device: torch.device | str = (
            config.device if group is None else group.device(config.device)
        )
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        collection = load_collection(config.tasks, split=config.split, alignment=config.alignment)
        collection.check_alignment()
        self.collection, self.alignment = collection, collection.alignment
        train_tasks = collection.split("train")
        if not train_tasks:
            raise DataError(collection.source, "no meta-train tasks in the split")
        self.sampler = EpisodeSampler(
            train_tasks,
            config.episode,
            scaling=config.scaling,
            alignment=self.alignment,
            seed=config.seed,
            profile=config.model.input_profile(),
            prior=config.prior,
            pool_rows=config.model.pool_rows,
        )
        self.val_batch = held_out(
            collection.split("val"),
            config,
            self.alignment,
            per_task=config.val_episodes,
            seed=config.seed + 1,
        )
        if self.val_batch is None:
            warnings.warn(
                f"{collection.source}: no usable meta-val tasks; keeping the last iterate",
                stacklevel=3,
            )
        probe = self.sampler.sample(1)
        self.input_dim = probe.support_x.shape[-1]
        self.learner = files.init_learner(config, self.input_dim, seed=config.seed).to(self.device)
        if group is not None:
            group.broadcast_(list(self.learner.state_dict().values()))
        self.optimiser = torch.optim.Adam(
            self.learner.param_groups(),
            lr=config.meta.meta_lr,
            weight_decay=config.meta.weight_decay,
        )
        self.episodes = EpisodeStreams(
            self.sampler,
            seed=config.seed,
            streams=self.streams,
            rank=self.rank,
            world_size=self.world,
        )
        if out_dir is not None:
            atomic_write_text(out_dir / "config.yaml", configio.dump_yaml(config))
        self.best_state = copy.deepcopy(self.learner.state_dict())
        self.initial = files.teacher_weights(self.learner)  # before resuming: where the run started
        self.best_auroc: float | None = None
        self.best_iteration = 0
        self.skipped = 0  # outer steps skipped for a non-finite meta-gradient
        self.stopped_at: int | None = None  # the iteration early stopping ended the run at
        self.done = 0  # iterations done before this session (resume)
        self.seconds_before = 0.0
        if resume is not None:
            self._restore(resume)
        # The sampler's state after the last meta-batch trained on (the prefetching worker may
        # have drawn further): what a checkpoint must hold to resume the same stream.
        self.sampler_state = (
            dict(self.sampler.rng.bit_generator.state) if self.streams == 1 else None
        )

    def _restore(self, resume: ResumeState) -> None:
        """Continue an interrupted run from its checkpoint."""
        self.learner.load_state_dict(resume.learner)
        self.optimiser.load_state_dict(resume.optimiser)
        if resume.sampler_rng is not None:
            self.sampler.rng.bit_generator.state = resume.sampler_rng
        resume.restore_global_rngs()
        self.best_state, self.best_auroc = resume.best_state, resume.best_val_auroc
        self.best_iteration, self.skipped = resume.best_iteration, resume.skipped
        self.done, self.seconds_before = resume.iteration, resume.seconds
        if self.out_dir is not None and self.best_auroc is not None:
            # teacher.pt of the staging folder may be from past the checkpoint: rewrite it.
            current = copy.deepcopy(self.learner.state_dict())
            self.learner.load_state_dict(self.best_state)
            self._save(self.best_iteration, self.best_auroc)
            self.learner.load_state_dict(current)

    def _save(self, iteration: int, val_auroc: float | None) -> None:
        """Write the learner's teacher as ``teacher.pt`` with everything adapting it needs."""
        assert self.out_dir is not None
        files.write_teacher(
            self.out_dir / "teacher.pt",
            learner=self.learner,
            config=self.config,
            alignment=self.alignment,
            collection=self.collection,
            iteration=iteration,
            val_auroc=val_auroc,
            pool_share=self.pool_share,
        )

    def validate(self, iteration: int, metrics: dict[str, float | Tensor]) -> None:
        """Meta-val AUROC into ``metrics``; a new best is kept in memory and saved."""
        assert self.val_batch is not None
        per_task = few_shot_auroc(self.learner, self.val_batch.to(self.device))
        val = float(np.mean(list(per_task.values())))
        metrics["val_auroc"] = val
        if self.best_auroc is None or val > self.best_auroc:
            self.best_auroc, self.best_iteration = val, iteration
            self.best_state = copy.deepcopy(self.learner.state_dict())
            if self.out_dir is not None:
                self._save(iteration, val)
            metrics["best_val_auroc"] = val

    def checkpoint(self, iteration: int, run: Run) -> None:
        """Write everything the next iteration needs to ``resume.pt``."""
        assert self.out_dir is not None
        ResumeState(
            config=configio.to_dict(self.config),
            streams=self.streams,
            iteration=iteration,
            learner=self.learner.state_dict(),
            optimiser=self.optimiser.state_dict(),
            sampler_rng=self.sampler_state,
            torch_rng=torch.get_rng_state(),
            python_rng=random.getstate(),
            skipped=self.skipped,
            best_iteration=self.best_iteration,
            best_val_auroc=self.best_auroc,
            best_state=self.best_state,
            metrics=list(run.lines),
            seconds=self.seconds_before + time.perf_counter() - self.start,
            wandb_id=run.wandb_id,
        ).save(self.out_dir / RESUME_FILE)

    def meta_gradient(self, batch: EpisodeBatch) -> tuple[EpisodeBatch, MetaStats]:
        """A meta-batch (moved to the device) and its meta-gradient, into ``.grad``."""
        batch = batch.to(self.device)
        self.optimiser.zero_grad(set_to_none=True)
        stats = self.learner.meta_gradients(
            batch.support_x, batch.support_y, batch.query_x, batch.query_y, batch.pool_x
        )
        return batch, stats

    def finish(self, run: Run) -> tuple[EpisodeBatch | None, dict[str, float], float]:
        """Rank 0 after the last iteration: the best teacher, held-out AUROC, the summary."""
        assert self.out_dir is not None
        config, learner = self.config, self.learner
        if self.val_batch is None:
            self.best_iteration, self.best_state = config.iterations, learner.state_dict()
            self._save(self.best_iteration, None)
        learner.load_state_dict(self.best_state)
        if self.fit_pool_share is not None:  # on the file adapt reads; then stored in it
            groups = files.share_groups(self.collection, initial=self.initial)
            self.pool_share = self.fit_pool_share(self.out_dir / "teacher.pt", groups)
            self._save(self.best_iteration, self.best_auroc)
        test_batch, test_auroc = meta_test_report(
            learner,
            config=config,
            tasks=self.collection.split("test"),
            alignment=self.alignment,
            input_dim=self.input_dim,
            width=self.sampler.n_features,
            device=self.device,
        )
        seconds = self.seconds_before + time.perf_counter() - self.start
        if self.skipped:
            warnings.warn(
                f"{self.skipped} of {self.stopped_at or config.iterations} meta-steps had a "
                "non-finite meta-gradient (an inner loop diverged) and were skipped; a smaller "
                "inner.lr or meta.meta_lr avoids that",
                stacklevel=4,
            )
        run.summary(
            {
                "best_val_auroc": self.best_auroc,
                "best_iteration": self.best_iteration,
                "skipped_steps": self.skipped,
                "seconds": seconds,
                "stopped_at": self.stopped_at,
            }
            | fitted_shares(self.pool_share)
            | {f"test_auroc/{k}": v for k, v in test_auroc.items()}
        )
        run.log_artifact(
            self.out_dir / "teacher.pt",
            name="teacher",
            type="model",
            aliases=["latest", "best"],
            metadata={"best_val_auroc": self.best_auroc, "best_iteration": self.best_iteration},
        )
        return test_batch, test_auroc, seconds

    def run(
        self, *, progress: bool, stop: StopSignals, resources: contextlib.ExitStack
    ) -> TrainResult:
        """Every remaining iteration, then the report (rank 0); see :func:`~metakd.train.run.meta_train`."""
        config, out_dir, group, resume = self.config, self.out_dir, self.group, self.resume
        # Started now, so the worker's start overlaps the set-up below (first validation, W&B).
        stream = resources.enter_context(
            Prefetch(
                self.episodes.sample,
                start=self.done + 1,
                stop=config.iterations,
                depth=config.prefetch,
            )
        )
        resolved = configio.to_dict(config) | {"alignment": configio.to_dict(self.alignment)}
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
            if self.val_batch is not None and resume is None:
                # The initialisation is a candidate too: where meta-training never beats it on
                # the meta-val tasks, the teacher stays at iteration 0, not the least bad iterate.
                initial: dict[str, float | Tensor] = {}
                self.validate(0, initial)
                if run is not None:
                    run.log(initial, step=0)
            pending = self._loop(stream, run, progress=progress, stop=stop)
            test_auroc: dict[str, float] = {}
            test_batch: EpisodeBatch | None = None
            seconds: float | None = None
            failure: Exception | None = pending
            if run is not None and failure is None:
                try:
                    test_batch, test_auroc, seconds = self.finish(run)
                except Exception as err:
                    if group is None:
                        raise
                    failure = err
            if group is not None:
                group.finish(failure, what="the end of meta-training")
                if failure is not None:
                    raise failure
        if out_dir is not None:
            (out_dir / RESUME_FILE).unlink(missing_ok=True)  # nothing to resume when finished
        if seconds is None:  # no report on this rank
            seconds = self.seconds_before + time.perf_counter() - self.start
        return TrainResult(
            out_dir=out_dir,
            best_iteration=self.best_iteration,
            best_val_auroc=self.best_auroc,
            test_auroc=test_auroc,
            test_tasks=sorted({n for n in (test_batch.task_names if test_batch else [])}),
            seconds=seconds,
            stopped_at=self.stopped_at,
            pool_share=self.pool_share,
        )

    def _loop(
        self,
        stream: Prefetch[tuple[EpisodeBatch, dict[str, Any] | None]],
        run: Run | None,
        *,
        progress: bool,
        stop: StopSignals,
    ) -> Exception | None:
        """The iterations: meta-gradient, (all-reduce), outer step, metrics, validation and
        checkpoints. Returns a failure held for the ranks' last collective (distributed runs:
        a failure on one rank is held until the next all-reduce, which tells every rank)."""
        config, group = self.config, self.group
        pending: Exception | None = None
        bar = progress_bar(enabled=progress and self.out_dir is not None)
        summary = ""

        def phase(what: str) -> None:
            """Say in the bar what the loop is doing now, before the last results."""
            bar.update(job, info=" · ".join(filter(None, (what, summary))))

        with bar:
            job = bar.add_task("meta-train", total=config.iterations, completed=self.done, info="")
            for iteration in range(self.done + 1, config.iterations + 1):
                tick = time.perf_counter()
                batch: EpisodeBatch | None = None
                stats: MetaStats | None = None
                if pending is None:
                    try:
                        phase("sampling")
                        drawn, self.sampler_state = stream.get(iteration)
                        phase("meta-step")
                        batch, stats = self.meta_gradient(drawn)
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
                            [v.detach().float() for v in step_metrics(stats, batch).values()]
                        )
                    means, stopping = group.reduce_step(
                        list(self.learner.parameters()),
                        local,
                        n_metrics=len(STEP_METRICS),
                        error=pending,
                        stop=stopping,
                        iteration=iteration,
                    )
                    if pending is not None:
                        raise pending
                    shared = dict(zip(STEP_METRICS, means.cpu(), strict=True))
                assert batch is not None and stats is not None
                stepped = outer_step(
                    self.learner.parameters(), self.optimiser, grad_clip=config.meta.grad_clip
                )
                self.skipped += not stepped
                elapsed = time.perf_counter() - tick
                try:
                    metrics: dict[str, float | Tensor] = {
                        **(shared or step_metrics(stats, batch)),
                        "inner_lr": mean_inner_lr(self.learner),
                        "meta_lr": self.optimiser.param_groups[0]["lr"],
                        "tasks_per_second": batch.support_x.shape[0] * self.world / elapsed,
                        "skipped_steps": self.skipped,
                    }
                    if self.val_batch is not None and (
                        iteration % config.val_every == 0 or iteration == config.iterations
                    ):
                        phase("validating")
                        self.validate(iteration, metrics)
                    if run is not None:
                        run.log(metrics, step=iteration)
                        every = config.checkpoint_every
                        periodic = every > 0 and iteration % every == 0
                        if stopping or (periodic and iteration < config.iterations):
                            self.checkpoint(iteration, run)
                    summary = f"loss {metrics['outer_loss']:.3f}"
                    if self.best_auroc is not None:
                        summary += f" · best val AUROC {self.best_auroc:.3f}"
                    bar.update(job, advance=1, info=summary)
                except Exception as err:
                    if group is None or stopping:
                        raise
                    pending = err  # held, and every rank still reaches early_stop's broadcast
                if stopping:
                    raise TrainingInterrupted(iteration, stop.signum or signal.SIGTERM)
                if self.val_batch is not None and early_stop(
                    iteration, self.best_iteration, config=config, group=group
                ):
                    bar.update(job, info=f"stopped early · {summary}")
                    self.stopped_at = iteration
                    break
        return pending


__all__ = ["MetaTrainer", "TrainResult"]
