"""Drawing episodes from tasks: :class:`EpisodeSampler` makes every random choice of a
meta-batch (its shape, its tasks, each episode's rows as an
:class:`~metakd.episodes.batch.EpisodePlan`), then computes the episodes' features together
without randomness (scaled on support and pool, aligned, profiled) into one
:class:`~metakd.episodes.batch.EpisodeBatch`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence

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
    projection_matrix,
)
from metakd.episodes.batch import EpisodeBatch, EpisodePlan
from metakd.episodes.shape import EpisodeConfig, episode_shortfall
from metakd.errors import DataError
from metakd.models.profile import NeighbourProfile, ProfileConfig


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
        pool_rows: The teacher reads only the first (random) this many pool rows of an
            episode (``model.pool_rows``), as ``metakd adapt`` gives it a seeded subsample;
            scaling and the profile still use the whole pool. ``None``: all of them.

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
        pool_rows: int | None = None,
    ) -> None:
        if not tasks:
            raise DataError("episodes", "no tasks to sample from")
        self.config = config
        self.scaling = scaling
        self.alignment = alignment
        self.profile = profile
        self.pool_rows = pool_rows
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
        self._usable = frozenset(self.tasks)
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int | None = None) -> EpisodeBatch:
        """A meta-batch of ``batch_size`` (default ``config.meta_batch``) episodes.

        Tasks are drawn without replacement when ``batch_size <= len(tasks)``, with
        replacement otherwise; each drawn task gets a fresh episode. Equal to
        ``build(draw(batch_size))``.
        """
        return self.build(self.draw(batch_size))

    def draw(
        self, batch_size: int | None = None, *, shape: tuple[int, int] | None = None
    ) -> list[EpisodePlan]:
        """The plans of a meta-batch (see :meth:`sample`): every random choice, made in order
        from :attr:`rng`; :meth:`build` then computes the features without randomness.

        The meta-batch's anomaly shots ``A`` and pool size ``P`` are drawn first, once for all
        its episodes (``episode.anomaly_shots_max``, ``pool_size_max``; or given as ``shape``,
        as the streams of one meta-batch share theirs), so they stack into tensors of one
        shape; then its tasks, among those with anomalies enough for ``A``; each task's pool
        is ``P`` rows or as many as it holds.
        """
        size = self.config.meta_batch if batch_size is None else batch_size
        if size < 1:
            raise ValueError(f"batch_size must be >= 1, got {size}")
        anomaly_shots, pool_size = self.draw_shape(self.rng) if shape is None else shape
        c = self.config
        eligible = [
            i
            for i, t in enumerate(self.tasks)
            if t.n_anomalies >= anomaly_shots + c.query_anomalies
        ]
        if not eligible:  # A exceeds every task: the fewest anomaly shots instead
            anomaly_shots = c.anomaly_shots
            eligible = list(range(len(self.tasks)))
        picks = self.rng.choice(len(eligible), size=size, replace=size > len(eligible))
        chosen = [eligible[i] for i in picks]
        if self.prior is None:
            from_prior = np.zeros(size, dtype=bool)
        else:
            from_prior = self.rng.random(size) < self.prior.weight
        plans = []
        for i, p in zip(chosen, from_prior, strict=True):
            task = self._prior_task(anomaly_shots, pool_size) if p else self.tasks[i]
            # A task's pool is as large as the drawn size, or as its rows allow (on a grid of
            # sizes, so the episodes of a meta-batch share few pool sizes and batch together).
            room = task.n_rows - c.shots - anomaly_shots - c.query_size
            rows = pool_size if pool_size <= room else _grid_size(room, c.pool_size)
            plans.append(self.plan(task, self.rng, anomaly_shots=anomaly_shots, pool_size=rows))
        return plans

    def draw_shape(self, rng: np.random.Generator) -> tuple[int, int]:
        """A meta-batch's ``(A, P)``: uniform in ``anomaly_shots..anomaly_shots_max`` and
        log-uniform in ``pool_size..pool_size_max`` (each fixed without its maximum)."""
        c = self.config
        a, p = c.anomaly_shots, c.pool_size
        if c.anomaly_shots_max is not None:
            a = int(rng.integers(c.anomaly_shots, c.anomaly_shots_max + 1))
        if c.pool_size_max is not None and c.pool_size > 0:
            low, high = np.log(c.pool_size), np.log(c.pool_size_max + 1)
            p = min(int(np.exp(rng.uniform(low, high))), c.pool_size_max)
        return a, p

    def _prior_task(self, anomaly_shots: int, pool_size: int) -> Task:
        assert self.prior is not None  # only drawn from when the prior is on (see sample)
        c = self.config
        return prior_task(
            self.rng,
            self.prior,
            normals=c.shots + c.query_normals,
            anomalies=anomaly_shots + c.query_anomalies,
            pool=pool_size,
            width=self.prior_width,
        )

    def episode(self, task: Task, rng: np.random.Generator) -> EpisodeBatch:
        """One episode of ``task`` (``B = 1``) drawn with ``rng``, of the episode shape's
        smallest ``A`` and ``P``.

        ``task`` need not be one of :attr:`tasks` (e.g. a held-out test task), but it must fit
        the episode shape and the common feature width.
        """
        return self.build([self.plan(task, rng)])

    def plan(
        self,
        task: Task,
        rng: np.random.Generator,
        *,
        anomaly_shots: int | None = None,
        pool_size: int | None = None,
    ) -> EpisodePlan:
        """Draw one episode's rows of ``task`` with ``rng`` (checked as :meth:`episode`), with
        ``anomaly_shots`` and ``pool_size`` (default: the episode shape's smallest)."""
        config = self.config
        shots = config.anomaly_shots if anomaly_shots is None else anomaly_shots
        pool_rows = config.pool_size if pool_size is None else pool_size
        if task not in self._usable:
            shortfall = episode_shortfall(
                task, dataclasses.replace(config, anomaly_shots=shots, pool_size=pool_rows)
            )
            if shortfall is not None:
                raise DataError(
                    task.name, f"cannot serve an episode ({_describe(self.config)}): {shortfall}"
                )
            if self.alignment.kind == "none" and task.n_features != self.n_features:
                raise DataError(
                    task.name,
                    f"{task.n_features} features, but this sampler's tasks have "
                    f"{self.n_features} (alignment: none)",
                )
            check_feature_counts({task.name: task.n_features}, self.alignment, where=task.name)
        normals = np.flatnonzero(task.y == NORMAL)
        anomalies = np.flatnonzero(task.y == ANOMALY)
        picked_normals = rng.choice(
            normals, size=config.shots + config.query_normals, replace=False
        )
        picked_anomalies = rng.choice(anomalies, size=shots + config.query_anomalies, replace=False)
        support = np.concatenate([picked_normals[: config.shots], picked_anomalies[:shots]])
        # Shuffled so that a query's row order says nothing about its labels.
        query = rng.permutation(
            np.concatenate([picked_normals[config.shots :], picked_anomalies[shots:]])
        )
        if pool_rows:
            free = np.ones(task.n_rows, dtype=bool)
            free[support] = False
            free[query] = False
            # In random order: the first rows are the pool the teacher's embedding reads.
            pool = rng.choice(np.flatnonzero(free), size=pool_rows, replace=False)
        else:
            pool = np.zeros(0, dtype=np.int64)
        # The profile's pool-subsample seed, drawn only when there is a profile (as always).
        seed = int(rng.integers(2**62)) if self.profile is not None else 0
        return EpisodePlan(
            task=task,
            support=support.astype(np.int64),
            query=query.astype(np.int64),
            pool=pool.astype(np.int64),
            seed=seed,
        )

    def build(
        self, plans: Sequence[EpisodePlan], *, teacher_pool: int | None = None
    ) -> EpisodeBatch:
        """The episodes of ``plans`` (of one support and query shape; pools may differ) as
        one batch, computed together; the teacher reads the same number of pool rows in each
        (the first, as many as the smallest pool holds, at most ``pool_rows``).

        Each episode's rows are scaled with its own support and pool statistics, aligned, and
        (with a profile) given their neighbourhood profiles, exactly as ``metakd adapt`` fits
        them per task; the tasks' rows are zero-padded to the widest task's features, which
        changes no statistic of a real feature and no distance, so every step is one batched
        operation (float64 where the profile needs it) instead of one per episode.
        ``teacher_pool`` bounds the pool rows the teacher reads further (to stack batches).
        """
        if not plans:
            raise ValueError("build needs at least one episode plan")
        # Tasks of similar widths together (within 2×), so a narrow task is not padded to a
        # wide one's width: the synthetic prior's 2-128 features beside 1000-feature embeddings.
        # Episodes of one pool size together (a task's pool may be smaller than the batch's).
        groups: dict[tuple[int, int], list[int]] = {}
        for b, plan in enumerate(plans):
            key = (int(plan.task.n_features - 1).bit_length(), len(plan.pool))
            groups.setdefault(key, []).append(b)
        read = self.teacher_pool(min(len(plan.pool) for plan in plans), teacher_pool)
        parts = [(index, self._features(plans, index, read)) for index in groups.values()]
        if len(parts) == 1:
            features = parts[0][1]
        else:
            features = torch.empty((len(plans), *parts[0][1].shape[1:]))
            for index, part in parts:
                features[index] = part
        n_s, n_q = len(plans[0].support), len(plans[0].query)
        sx, qx, px = features.split([n_s, n_q, read], dim=1)

        def labels(part: str) -> Tensor:
            y = np.stack([plan.task.y[getattr(plan, part)] for plan in plans])
            return torch.from_numpy((y == ANOMALY).astype(np.float32))

        return EpisodeBatch(
            support_x=sx.contiguous(),
            support_y=labels("support"),
            query_x=qx.contiguous(),
            query_y=labels("query"),
            pool_x=px.contiguous() if len(plans[0].pool) else None,
            task_names=[plan.task.name for plan in plans],
            support_index=[plan.support for plan in plans],
            query_index=[plan.query for plan in plans],
            pool_index=[plan.pool for plan in plans],
        )

    def teacher_pool(self, pool_size: int, bound: int | None = None) -> int:
        """How many of an episode's ``pool_size`` pool rows the teacher reads (the first)."""
        return min([pool_size, *(b for b in (self.pool_rows, bound) if b is not None)])

    def _features(self, plans: Sequence[EpisodePlan], index: list[int], read_pool: int) -> Tensor:
        """Model inputs ``[len(index), K + A + Q + P', D]`` of the episodes ``plans[index]``:
        support, query and the teacher's ``P'`` pool rows, each episode's rows zero-padded to
        the group's width. Scaling and the profile are fitted on the whole pool."""
        chosen = [plans[b] for b in index]
        n_s, n_q, n_p = (len(getattr(chosen[0], part)) for part in ("support", "query", "pool"))
        widths = [plan.task.n_features for plan in chosen]
        rows = np.zeros((len(chosen), n_s + n_q + n_p, max(widths)), dtype=np.float32)
        for b, plan in enumerate(chosen):
            rows[b, :, : widths[b]] = plan.task.X[np.concatenate(plan.rows)]
        raw = torch.from_numpy(rows)
        raw_support, raw_pool = raw[:, :n_s], raw[:, n_s + n_q :]
        scaler = Scaler.fit(torch.cat([raw_support, raw_pool], dim=1), self.scaling)
        read = n_s + n_q + read_pool  # rows the teacher reads
        scaled = scaler(raw)
        features = self._align(scaled[:, :read], widths)
        if self.profile is None:
            return features
        k = self.config.shots  # the support's normals come first, then its anomalies
        profile = NeighbourProfile.fit(
            raw_support[:, :k],
            scaled[:, :k],
            scaled[:, n_s + n_q :] if n_p else None,
            config=self.profile,
            seed=[plan.seed for plan in chosen],
            n_features=torch.tensor(widths),
            scale_rows=self.pool_rows,
            raw_pool=raw_pool if n_p else None,
            anomalies_a=scaled[:, k:n_s] if n_s > k else None,
        )
        return torch.cat([features, profile(raw[:, :read], scaled[:, :read])], dim=-1)

    def _align(self, scaled: Tensor, widths: list[int]) -> Tensor:
        """Rows ``[B, N, d]`` (zero-padded beyond each task's width) to the common width."""
        if self.alignment.kind != "project" or len(set(widths)) == 1:
            # One width (none/project), or pad: its zero columns are the padding's own.
            return align_features(scaled, self.alignment)
        # Each task's projection, zero rows below its width: the padding contributes nothing.
        matrices = torch.zeros(len(widths), scaled.shape[-1], self.alignment.width)
        for b, d in enumerate(widths):
            matrices[b, :d] = projection_matrix(
                d, self.alignment.width, self.alignment.seed, orthonormal=self.alignment.orthonormal
            )
        return scaled @ matrices


def _grid_size(rows: int, smallest: int) -> int:
    """The largest pool size of the grid ``smallest · 2^(j/2)`` within ``rows`` (``rows`` if
    below ``smallest``)."""
    if rows <= smallest:
        return rows
    return int(smallest * 2 ** (math.floor(2 * math.log2(rows / smallest)) / 2))


def _describe(config: EpisodeConfig) -> str:
    return (
        f"shots={config.shots}, anomaly_shots={config.anomaly_shots}, "
        f"query_size={config.query_size}, query_anomaly_fraction={config.query_anomaly_fraction}, "
        f"pool_size={config.pool_size}"
    )
