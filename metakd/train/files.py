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
from metakd.persist import TeacherWeights

SHARE_GROUPS: tuple[
    tuple[str, Literal["train", "val"], Literal["initialisation", "teacher"]], ...
] = (
    ("meta-train", "train", "initialisation"),
    ("meta-val", "val", "teacher"),
)
"""The groups of domains the pool Gaussian's share is fitted on: their names, the splits they
are, and the weights they are adapted from. The meta-train domains are adapted from the
initialisation the run started from, which has never seen them (the trained teacher ranks its
own domains almost perfectly, whatever holds on a new one); the meta-val domains, never
trained on, from the trained teacher."""

PoolShareFitter = Callable[
    [Path, Mapping[str, tuple[Sequence[Task], TeacherWeights | None]]], dict[str, Any]
]
"""Fits the share of the pool's Gaussian in adapted scores for the teacher saved at a path, on
groups of tasks by name, each adapted from the initialisation's weights given with it or
(``None``) from the saved teacher's, and returns ``{"share", "episodes", "auroc", "groups",
"with_anomalies"}`` (what ``teacher.pt`` stores);
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


def teacher_weights(learner: MetaLearner) -> TeacherWeights:
    """A copy of ``learner``'s teacher weights and Meta-SGD rates, on the CPU."""
    return (
        {name: v.detach().cpu().clone() for name, v in learner.teacher.state_dict().items()},
        [rate.detach().cpu().clone() for rate in learner.rates],
    )


def share_groups(
    collection: TaskCollection, *, initial: TeacherWeights
) -> dict[str, tuple[Sequence[Task], TeacherWeights | None]]:
    """What :data:`PoolShareFitter` fits on: each of :data:`SHARE_GROUPS` that has tasks in
    ``collection``, with the weights it is adapted from (``initial``, or ``None``: the saved
    teacher's)."""
    return {
        name: (tasks, initial if weights == "initialisation" else None)
        for name, part, weights in SHARE_GROUPS
        if (tasks := collection.split(part))
    }


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


__all__ = [
    "SHARE_GROUPS",
    "PoolShareFitter",
    "init_learner",
    "share_groups",
    "teacher_weights",
    "write_teacher",
]
