"""``metakd meta-train``'s entry point: a :class:`~metakd.train.loop.MetaTrainer` run inside
its resources (signal handlers, torch threads, the prefetching worker)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from metakd.config import TrainConfig
from metakd.distributed import ProcessGroup
from metakd.resume import ResumeState
from metakd.threads import torch_threads
from metakd.train.files import PoolShareFitter
from metakd.train.loop import MetaTrainer, TrainResult
from metakd.train.signals import StopSignals


def meta_train(
    config: TrainConfig,
    *,
    out_dir: Path | None,
    progress: bool = True,
    resume: ResumeState | None = None,
    group: ProcessGroup | None = None,
    fit_pool_share: PoolShareFitter | None = None,
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
        fit_pool_share: fits the pool Gaussian's share for the best teacher after the last
            iteration (rank 0), stored in its ``teacher.pt`` and the run's summary; ``None``:
            none stored (adapt reads share 0). ``metakd meta-train`` passes
            :func:`metakd.detect.pool_share.pool_share_fitter`'s.

    Raises:
        TrainingInterrupted: SIGINT/SIGTERM (on any rank) stopped the run.
        DistributedError: another rank failed, died or timed out.
    """
    with (
        StopSignals() as stop,
        torch_threads(config.threads or 1),
        contextlib.ExitStack() as resources,
    ):
        trainer = MetaTrainer(
            config, out_dir=out_dir, resume=resume, group=group, fit_pool_share=fit_pool_share
        )
        return trainer.run(progress=progress, stop=stop, resources=resources)


__all__ = ["meta_train"]
