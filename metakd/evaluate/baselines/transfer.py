"""The teacher's network without meta-training, adapted with metakd's inner loop: the
``scratch`` (random initialisation, :func:`scratch_bundle`) and ``pooled-finetune`` (non-meta
multi-task pretraining, :func:`pretrain_pooled`) ablations, both scored by a
:class:`TeacherDetector`."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metakd import configio
from metakd.checkpoint import load_checkpoint, save_teacher
from metakd.data.task import Task
from metakd.detect import AdaptConfig, FewShotDetector
from metakd.episodes import EpisodeConfig, EpisodeSampler
from metakd.errors import DataError
from metakd.evaluate.methods import Detector, Method, MethodContext, Setup
from metakd.evaluate.settings import PretrainConfig
from metakd.evaluate.tasks import meta_train_tasks
from metakd.meta.learners import InnerConfig, MetaConfig, build_learner
from metakd.meta.outer import outer_step
from metakd.models.teachers import Teacher, build_teacher
from metakd.persist import TeacherBundle

#: The pooled pre-training cached in an evaluation's output folder (reused by a re-run into it).
POOLED_CACHE = "pooled_pretrain.pt"


class TeacherDetector(Detector):
    """A teacher adapted with metakd's inner loop (no student); scores are the adapted teacher's.

    Args:
        bundle: the teacher to start from and its adaptation settings.
        config: adaptation settings (``student`` is forced off).
    """

    def __init__(self, bundle: TeacherBundle, *, config: AdaptConfig) -> None:
        self.bundle = bundle
        self.config = dataclasses.replace(config, student=False)

    def fit(
        self, X: np.ndarray, y: np.ndarray, unlabeled: np.ndarray | None = None
    ) -> TeacherDetector:
        self.detector_ = FewShotDetector(self.bundle, config=self.config).fit(
            X, y, unlabeled=unlabeled
        )
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.detector_.decision_function(X)


def _fresh_teacher(bundle: TeacherBundle, seed: int) -> Teacher:
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(seed)
        return build_teacher(bundle.teacher.input_dim, bundle.model)


def scratch_bundle(bundle: TeacherBundle, *, seed: int) -> TeacherBundle:
    """The meta-trained bundle's architecture and adaptation settings on a random init.

    Meta-SGD's learned per-parameter rates are meta-knowledge, so they are dropped: the scratch
    teacher adapts with the scalar ``inner.lr``.
    """
    return dataclasses.replace(
        bundle,
        teacher=_fresh_teacher(bundle, seed).eval(),
        rates=[],
        info={"init": "random", "seed": seed},
        path="",
    )


def pretrain_pooled(
    bundle: TeacherBundle,
    tasks: Sequence[Task],
    *,
    episode: EpisodeConfig,
    config: PretrainConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> Teacher:
    """Pooled multi-task pretraining of the bundle's architecture: the transfer-learning ablation.

    The same episodes as meta-training (same shapes, per-episode scaling on support + pool,
    alignment) and the ``pooled`` meta-learner (:class:`~metakd.meta.learners.Pooled`: no inner
    loop while training, so plain supervised multi-task training); its optimiser step is
    meta-training's (:func:`~metakd.meta.outer.outer_step`): clipped, and skipped when the
    gradient is not finite.

    Args:
        bundle: supplies architecture, scaling, alignment and inner loss.
        tasks: the meta-train tasks.
        episode: episode shapes (the teacher's meta-training ones).
        config: steps, step size, loss, seed.
        on_step: called with ``(iteration, loss)`` after every step (progress display).

    Returns:
        The pretrained teacher (eval mode).
    """
    with warnings.catch_warnings():
        # Tasks too small for these episodes were already reported when meta-training.
        warnings.simplefilter("ignore")
        sampler = EpisodeSampler(
            tasks,
            episode,
            scaling=bundle.scaling,
            alignment=bundle.alignment,
            seed=config.seed,
            profile=bundle.model.input_profile(),
        )
    teacher = _fresh_teacher(bundle, config.seed)
    learner = build_learner(
        teacher,
        inner=InnerConfig(lr=bundle.inner.lr, loss=bundle.inner.loss),
        meta=MetaConfig(algorithm="pooled", meta_lr=config.lr, outer_loss=config.loss),
        anomaly_shots=episode.anomaly_shots,
    )
    optimiser = torch.optim.Adam(teacher.parameters(), lr=config.lr)
    for iteration in range(1, config.iterations + 1):
        batch = sampler.sample()
        optimiser.zero_grad(set_to_none=True)
        stats = learner.meta_gradients(
            batch.support_x, batch.support_y, batch.query_x, batch.query_y
        )
        outer_step(teacher.parameters(), optimiser, grad_clip=learner.meta.grad_clip)
        if on_step is not None:
            on_step(iteration, float(stats.outer_loss.mean()))
    return teacher.eval()


def load_or_pretrain_pooled(
    path: Path,
    bundle: TeacherBundle,
    tasks: Sequence[Task],
    *,
    episode: EpisodeConfig,
    config: PretrainConfig,
    provenance: dict[str, Any],
    on_step: Callable[[int, float], None] | None = None,
) -> TeacherBundle:
    """The pooled-pretrained teacher, reused from ``path`` when it was made the same way.

    The checkpoint records a fingerprint (pretraining settings, architecture, scaling, alignment,
    episode shapes and ``provenance``, e.g. the collection and its meta-train task names); a file
    whose fingerprint differs is retrained and overwritten.

    Returns:
        A bundle with the pretrained teacher and ``bundle``'s adaptation settings (scalar rate).
    """
    fingerprint = {
        "pretrain": configio.to_dict(config),
        "model": configio.to_dict(bundle.model),
        "input_dim": bundle.teacher.input_dim,
        "scaling": configio.to_dict(bundle.scaling),
        "alignment": configio.to_dict(bundle.alignment),
        "episode": configio.to_dict(episode),
        "provenance": copy.deepcopy(provenance),
    }
    if path.is_file():
        try:
            cached = TeacherBundle.load(path)
        except DataError:
            cached = None  # unreadable or stale format: retrain below
        if cached is not None and cached.info.get("fingerprint") == fingerprint:
            return dataclasses.replace(cached, inner=bundle.inner, rates=[])
    teacher = pretrain_pooled(bundle, tasks, episode=episode, config=config, on_step=on_step)
    save_teacher(
        path,
        teacher=teacher,
        model=configio.to_dict(bundle.model),
        inner=configio.to_dict(bundle.inner),
        # Only selects adaptation settings, which are the meta-trained teacher's (see info).
        algorithm=bundle.algorithm,
        rates=[],
        scaling=configio.to_dict(bundle.scaling),
        alignment=configio.to_dict(bundle.alignment),
        episode=configio.to_dict(episode),
        info={"pretraining": "pooled multi-task, no inner loop", "fingerprint": fingerprint},
    )
    return dataclasses.replace(
        bundle, teacher=teacher, rates=[], info={"pretraining": "pooled"}, path=str(path)
    )


def _prepare_pooled(setup: Setup) -> TeacherBundle:
    """Pretrain (or reuse) the pooled teacher on the meta-trained teacher's meta-train tasks,
    with its meta-training episode shapes; cached as ``pooled_pretrain.pt`` in the output."""
    train = meta_train_tasks(setup.bundle, setup.collection, needed_by=setup.method)
    episode = configio.from_dict(
        EpisodeConfig, load_checkpoint(setup.teacher_path, "teacher")["episode"]
    )
    iterations = setup.pretrain.iterations
    job = setup.progress.add_task("pooled pretraining", total=iterations, info="")
    pooled = load_or_pretrain_pooled(
        setup.out_dir / POOLED_CACHE,
        setup.bundle,
        train.tasks,
        episode=episode,
        config=setup.pretrain,
        provenance={"tasks": train.collection.source, "train_tasks": train.names},
        on_step=lambda i, loss: setup.progress.update(job, completed=i, info=f"loss {loss:.3f}"),
    )
    setup.progress.update(job, completed=iterations)
    return pooled


def _pooled(context: MethodContext) -> TeacherDetector:
    pooled: TeacherBundle = context.prepared  # from _prepare_pooled
    return TeacherDetector(pooled, config=context.adapt)


METHODS: tuple[Method, ...] = (
    Method(
        "scratch",
        group="transfer",
        build=lambda c: TeacherDetector(scratch_bundle(c.bundle, seed=c.seed), config=c.adapt),
    ),
    Method("pooled-finetune", group="transfer", prepare=_prepare_pooled, build=_pooled),
)


__all__ = [
    "METHODS",
    "POOLED_CACHE",
    "TeacherDetector",
    "load_or_pretrain_pooled",
    "pretrain_pooled",
    "scratch_bundle",
]
