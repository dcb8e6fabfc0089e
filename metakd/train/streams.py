"""Where meta-training's episodes come from: the streams of each meta-batch (split across
ranks) and the fixed episodes of validation and the held-out report."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metakd.config import TrainConfig
from metakd.data.task import Task
from metakd.data.transforms import AlignmentConfig, ScalingConfig
from metakd.episodes import EpisodeBatch, EpisodeConfig, EpisodeSampler
from metakd.errors import ConfigError, DataError
from metakd.models.profile import ProfileConfig


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


def held_out(
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


__all__ = ["EpisodeStreams", "fixed_episodes", "held_out", "resolve_streams", "stack_episodes"]
