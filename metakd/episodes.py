"""Few-shot episodes: support, query and unlabelled pool rows drawn from tasks, batched.

An episode of a task holds

* a support set of ``K`` normal (and optionally ``A`` labelled anomalous) rows to adapt on,
* a labelled query set of ``Q`` rows to evaluate the adapted model on (the outer loss),
* optionally an unlabelled pool of ``P`` rows with the task's natural contamination.

The three never share a row. Features are scaled with statistics of the support and pool rows
only (the query stays unseen), then aligned to a common width, so episodes of tasks with
different feature counts stack into one ``[B, ...]`` tensor ready for ``torch.func.vmap``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from metakd.data.prior import PriorConfig, prior_task
from metakd.data.task import ANOMALY, NORMAL, Task
from metakd.data.transforms import (
    AlignmentConfig,
    Scaler,
    ScalingConfig,
    align_features,
    check_feature_counts,
)
from metakd.errors import ConfigError, DataError
from metakd.models.profile import NeighbourProfile, ProfileConfig


def round_half_up(x: float) -> int:
    """``x`` rounded to the nearest integer, halves up: the one rule for the anomalous count of
    a stratified sample (an episode's query here, an evaluation split's pool and query in
    :mod:`metakd.evaluate.splits`)."""
    return int(math.floor(x + 0.5))


@dataclass
class EpisodeConfig:
    """Episode shape. The defaults are the one default shape: meta-training's (``TrainConfig``),
    which ``metakd tasks show`` checks tasks against.

    Attributes:
        shots: ``K`` normal support rows.
        anomaly_shots: ``A`` labelled anomalous support rows (may be 0).
        query_size: ``Q`` labelled query rows.
        query_anomaly_fraction: Fraction of anomalies in the query; ``round(Q * f)`` of them.
            Far above natural contamination (often 1-5 %), at which most queries would hold
            zero or one anomaly and the outer loss would be very noisy; a quarter rather than a
            half keeps small tasks usable (digits tasks hold ~20 anomalies).
        pool_size: ``P`` unlabelled rows (any label, hidden), disjoint from support and query.
            A pool in every episode by default: scaling is fitted on support and pool, exactly
            as ``metakd adapt`` does with the domain's unlabelled rows, so the teacher meets the
            same statistics in meta-training as in deployment.
        meta_batch: ``B`` tasks per meta-batch.
    """

    shots: int = 10
    anomaly_shots: int = 0
    query_size: int = 32
    query_anomaly_fraction: float = 0.25
    pool_size: int = 32
    meta_batch: int = 16

    def __post_init__(self) -> None:
        minimum = {
            "shots": 1,
            "anomaly_shots": 0,
            "query_size": 1,
            "pool_size": 0,
            "meta_batch": 1,
        }
        for key, low in minimum.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"episode.{key} must be an integer >= {low}, got {value!r}")
        if not 0 <= self.query_anomaly_fraction <= 1:
            raise ConfigError(
                "episode.query_anomaly_fraction must be in [0, 1], got "
                f"{self.query_anomaly_fraction!r}"
            )

    @property
    def query_anomalies(self) -> int:
        """Anomalies per query, ``round(Q * f)`` with halves rounded up."""
        return round_half_up(self.query_size * self.query_anomaly_fraction)

    @property
    def query_normals(self) -> int:
        """Normal rows per query."""
        return self.query_size - self.query_anomalies


def episode_shortfall(task: Task, config: EpisodeConfig) -> str | None:
    """Why ``task`` cannot serve episodes of this shape, or ``None`` if it can.

    A task needs ``K + Q_normal`` normal rows, ``A + Q_anomaly`` anomalous rows and ``P``
    further rows (of any label, unlabelled included) for the pool.
    """
    need_normals = config.shots + config.query_normals
    need_anomalies = config.anomaly_shots + config.query_anomalies
    need_rows = config.shots + config.anomaly_shots + config.query_size + config.pool_size
    problems = []
    if task.n_normals < need_normals:
        problems.append(
            f"{task.n_normals} normal rows, needs {need_normals} "
            f"({config.shots} support + {config.query_normals} query)"
        )
    if task.n_anomalies < need_anomalies:
        problems.append(
            f"{task.n_anomalies} anomalous rows, needs {need_anomalies} "
            f"({config.anomaly_shots} support + {config.query_anomalies} query)"
        )
    if task.n_rows < need_rows:
        problems.append(f"{task.n_rows} rows, needs {need_rows} with a pool of {config.pool_size}")
    return "; ".join(problems) or None


@dataclass
class EpisodeBatch:
    """A batch of ``B`` episodes, one per task, as stacked tensors.

    Attributes:
        support_x: ``[B, K + A, D]`` float32, scaled and aligned.
        support_y: ``[B, K + A]`` float32, 0 normal / 1 anomaly; the ``K`` normals come first.
        query_x: ``[B, Q, D]`` float32.
        query_y: ``[B, Q]`` float32, 0 / 1.
        pool_x: ``[B, P, D]`` float32 (labels hidden), or ``None`` when ``P == 0``.
        task_names: ``B`` task names (a task can repeat when ``B`` exceeds the task count).
        support_index: ``B`` int64 arrays ``[K + A]``: the support's row indices in its task.
        query_index: ``B`` int64 arrays ``[Q]``.
        pool_index: ``B`` int64 arrays ``[P]`` (empty when ``P == 0``).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    pool_x: Tensor | None
    task_names: list[str]
    support_index: list[np.ndarray]
    query_index: list[np.ndarray]
    pool_index: list[np.ndarray]

    @property
    def batch_size(self) -> int:
        """Number of episodes ``B``."""
        return len(self.task_names)

    def to(self, device: torch.device | str) -> EpisodeBatch:
        """A copy with every tensor on ``device``."""
        return dataclasses.replace(
            self,
            support_x=self.support_x.to(device),
            support_y=self.support_y.to(device),
            query_x=self.query_x.to(device),
            query_y=self.query_y.to(device),
            pool_x=None if self.pool_x is None else self.pool_x.to(device),
        )


class EpisodeSampler:
    """Draws episodes and meta-batches from a set of tasks, reproducibly.

    Tasks that cannot serve the requested episode shape are left out with a warning naming
    their counts and needs.

    Args:
        tasks: Candidate tasks.
        config: Episode shape.
        scaling: Per-episode feature scaling (fitted on support and pool rows).
        alignment: Feature alignment to the common width.
        seed: Seed of the sampler's own generator, advanced by :meth:`sample`.
        profile: Append each row's neighbourhood profile (against the episode's support normals
            and pool) to its aligned features, as the ``profile`` teacher reads them.
        prior: Draw this share of each meta-batch as fresh tasks of the synthetic prior
            (:mod:`metakd.data.prior`); needs ``alignment: project``.

    Attributes:
        tasks: The usable tasks, in the given order.
        left_out: Name -> reason for each task left out.
        n_features: Feature count ``D`` of every episode after alignment.
        rng: The generator :meth:`sample` draws from.

    Raises:
        DataError: No task is usable (listing why for each), or the tasks' feature counts do
            not fit ``alignment``.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        config: EpisodeConfig,
        *,
        scaling: ScalingConfig,
        alignment: AlignmentConfig,
        seed: int,
        profile: ProfileConfig | None = None,
        prior: PriorConfig | None = None,
    ) -> None:
        if not tasks:
            raise DataError("episodes", "no tasks to sample from")
        self.config = config
        self.scaling = scaling
        self.alignment = alignment
        self.profile = profile
        self.prior = prior if prior is not None and prior.weight > 0 else None
        self.n_features = check_feature_counts(
            {task.name: task.n_features for task in tasks}, alignment, where="episodes"
        )
        # Projected tasks may have any width; otherwise prior tasks take the collection's own.
        self.prior_width = None if alignment.kind == "project" else self.n_features
        self.left_out: dict[str, str] = {}
        self.tasks: list[Task] = []
        for task in tasks:
            shortfall = episode_shortfall(task, config)
            if shortfall is None:
                self.tasks.append(task)
            else:
                self.left_out[task.name] = shortfall
                warnings.warn(
                    f"task '{task.name}' left out of episodes ({_describe(config)}): {shortfall}",
                    stacklevel=2,
                )
        if not self.tasks:
            listing = "; ".join(f"{name}: {why}" for name, why in self.left_out.items())
            raise DataError(
                "episodes", f"no task can serve episodes with {_describe(config)} ({listing})"
            )
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int | None = None) -> EpisodeBatch:
        """A meta-batch of ``batch_size`` (default ``config.meta_batch``) episodes.

        Tasks are drawn without replacement when ``batch_size <= len(tasks)``, with
        replacement otherwise; each drawn task gets a fresh episode.
        """
        size = self.config.meta_batch if batch_size is None else batch_size
        if size < 1:
            raise ValueError(f"batch_size must be >= 1, got {size}")
        chosen = self.rng.choice(len(self.tasks), size=size, replace=size > len(self.tasks))
        if self.prior is None:
            return _stack([self._draw(self.tasks[i], self.rng) for i in chosen])
        from_prior = self.rng.random(size) < self.prior.weight
        return _stack(
            [
                self._draw(self._prior_task() if p else self.tasks[i], self.rng)
                for i, p in zip(chosen, from_prior, strict=True)
            ]
        )

    def _prior_task(self) -> Task:
        assert self.prior is not None  # only drawn from when the prior is on (see sample)
        c = self.config
        return prior_task(
            self.rng,
            self.prior,
            normals=c.shots + c.query_normals,
            anomalies=c.anomaly_shots + c.query_anomalies,
            pool=c.pool_size,
            width=self.prior_width,
        )

    def episode(self, task: Task, rng: np.random.Generator) -> EpisodeBatch:
        """One episode of ``task`` (``B = 1``) drawn with ``rng``.

        ``task`` need not be one of :attr:`tasks` (e.g. a held-out test task), but it must fit
        the episode shape and the common feature width.
        """
        shortfall = episode_shortfall(task, self.config)
        if shortfall is not None:
            raise DataError(
                task.name, f"cannot serve an episode ({_describe(self.config)}): {shortfall}"
            )
        if self.alignment.kind == "none" and task.n_features != self.n_features:
            raise DataError(
                task.name,
                f"{task.n_features} features, but this sampler's tasks have {self.n_features} "
                "(alignment: none)",
            )
        check_feature_counts({task.name: task.n_features}, self.alignment, where=task.name)
        return _stack([self._draw(task, rng)])

    def _draw(self, task: Task, rng: np.random.Generator) -> _Episode:
        config = self.config
        normals = np.flatnonzero(task.y == NORMAL)
        anomalies = np.flatnonzero(task.y == ANOMALY)
        picked_normals = rng.choice(
            normals, size=config.shots + config.query_normals, replace=False
        )
        picked_anomalies = rng.choice(
            anomalies, size=config.anomaly_shots + config.query_anomalies, replace=False
        )
        support = np.concatenate(
            [picked_normals[: config.shots], picked_anomalies[: config.anomaly_shots]]
        )
        # Shuffled so that a query's row order says nothing about its labels.
        query = rng.permutation(
            np.concatenate(
                [picked_normals[config.shots :], picked_anomalies[config.anomaly_shots :]]
            )
        )
        if config.pool_size:
            free = np.ones(task.n_rows, dtype=bool)
            free[support] = False
            free[query] = False
            pool = rng.choice(np.flatnonzero(free), size=config.pool_size, replace=False)
        else:
            pool = np.zeros(0, dtype=np.int64)

        # Fancy indexing copies, so the tensors own writable memory (task arrays are read-only).
        support_x = torch.from_numpy(task.X[support])
        query_x = torch.from_numpy(task.X[query])
        pool_x = torch.from_numpy(task.X[pool])
        scaler = Scaler.fit(torch.cat([support_x, pool_x]), self.scaling)
        features = self._features(scaler, support_x, task.y[support] == NORMAL, pool_x, rng)
        # One pass over all the episode's rows: the profile and projection are per row.
        sx, qx, px = features(torch.cat([support_x, query_x, pool_x])).split(
            [len(support), len(query), len(pool)]
        )
        return _Episode(
            task_name=task.name,
            support_x=sx,
            support_y=torch.from_numpy((task.y[support] == ANOMALY).astype(np.float32)),
            query_x=qx,
            query_y=torch.from_numpy((task.y[query] == ANOMALY).astype(np.float32)),
            pool_x=px,
            support_index=support.astype(np.int64),
            query_index=query.astype(np.int64),
            pool_index=pool.astype(np.int64),
        )

    def _features(
        self,
        scaler: Scaler,
        support_x: Tensor,
        normal: np.ndarray,
        pool_x: Tensor,
        rng: np.random.Generator,
    ) -> Callable[[Tensor], Tensor]:
        """The episode's map from rows as read to model input: scaled and aligned, then (with a
        profile) each row's neighbourhood profile, fitted exactly as ``metakd adapt`` fits it."""
        profile = None
        if self.profile is not None:
            profile = NeighbourProfile.fit_task(
                support_x,
                torch.from_numpy(normal),
                pool_x,
                scale=scaler,
                config=self.profile,
                seed=int(rng.integers(2**62)),
            )

        def features(x: Tensor) -> Tensor:
            z = scaler(x)
            aligned = align_features(z, self.alignment)
            return aligned if profile is None else torch.cat([aligned, profile(x, z)], dim=1)

        return features


@dataclass
class _Episode:
    """One unbatched episode (see :class:`EpisodeBatch` for the fields)."""

    task_name: str
    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    pool_x: Tensor
    support_index: np.ndarray
    query_index: np.ndarray
    pool_index: np.ndarray


def _stack(episodes: Sequence[_Episode]) -> EpisodeBatch:
    has_pool = episodes[0].pool_x.shape[0] > 0
    return EpisodeBatch(
        support_x=torch.stack([e.support_x for e in episodes]),
        support_y=torch.stack([e.support_y for e in episodes]),
        query_x=torch.stack([e.query_x for e in episodes]),
        query_y=torch.stack([e.query_y for e in episodes]),
        pool_x=torch.stack([e.pool_x for e in episodes]) if has_pool else None,
        task_names=[e.task_name for e in episodes],
        support_index=[e.support_index for e in episodes],
        query_index=[e.query_index for e in episodes],
        pool_index=[e.pool_index for e in episodes],
    )


def _describe(config: EpisodeConfig) -> str:
    return (
        f"shots={config.shots}, anomaly_shots={config.anomaly_shots}, "
        f"query_size={config.query_size}, query_anomaly_fraction={config.query_anomaly_fraction}, "
        f"pool_size={config.pool_size}"
    )
