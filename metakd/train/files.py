"""What a meta-training run builds and writes: a fresh learner, and ``teacher.pt`` with everything
adapting it needs (:func:`metakd.checkpoint.save_teacher` writes it atomically)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from metakd import configio
from metakd.checkpoint import save_teacher
from metakd.config import TrainConfig
from metakd.data.collection import TaskCollection
from metakd.data.task import Task
from metakd.data.transforms import AlignmentConfig
from metakd.meta.learners import MetaLearner, build_learner
from metakd.models.teachers import build_teacher

SHARE_GROUPS: tuple[tuple[str, Literal["train", "val"]], ...] = (
    ("meta-train", "train"),
    ("meta-val", "val"),
)
"""The groups of domains the pool Gaussian's share is fitted on, and the splits they are."""

PoolShareFitter = Callable[[Path, Mapping[str, Sequence[Task]]], dict[str, Any]]
"""Fits the share of the pool's Gaussian in adapted scores for the teacher saved at a path, on
groups of tasks by name (the meta-train and the meta-val ones), and returns ``{"share",
"episodes", "auroc", "groups"}`` (what ``teacher.pt`` stores);
:func:`metakd.detect.pool_share.pool_share_fitter` builds one (adaptation lives above training)."""


def init_learner(config: TrainConfig, input_dim: int, *, seed: int) -> MetaLearner:
    """A fresh teacher of ``config.model`` (initialised from ``seed``) in its meta-learner."""
    torch.manual_seed(seed)
    return build_learner(
        build_teacher(input_dim, config.model),
        inner=config.inner,
        meta=config.meta,
        # The most any meta-batch holds: its inner loss must serve supports with anomalies.
        anomaly_shots=max(config.episode.anomaly_shots, config.episode.anomaly_shots_max or 0),
    )


def write_teacher(
    path: Path,
    *,
    learner: MetaLearner,
    config: TrainConfig,
    alignment: AlignmentConfig,
    collection: TaskCollection,
    iteration: int,
    val_auroc: float | None,
    pool_share: dict[str, Any] | None = None,
) -> None:
    """Save ``learner``'s teacher at ``iteration`` with the run's settings and provenance (and
    the pool Gaussian's share fitted for it, :data:`PoolShareFitter`)."""
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
        window=_window_record(collection),
        info={
            "tasks": collection.source,
            "splits": collection.splits,
            "iteration": iteration,
            "val_auroc": val_auroc,
            "seed": config.seed,
        },
        pool_share=pool_share,
    )


def _window_record(collection: TaskCollection) -> dict | None:
    """How the collection's rows were windowed, as a teacher keeps it (``None``: not)."""
    if collection.window is None:
        return None
    return {
        "config": configio.to_dict(collection.window),
        "raw_widths": list(collection.raw_widths),
    }


__all__ = ["SHARE_GROUPS", "PoolShareFitter", "init_learner", "write_teacher"]
