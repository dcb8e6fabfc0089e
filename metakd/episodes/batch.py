"""What episodes are made of: one episode's drawn row indices in its task
(:class:`EpisodePlan`) and a batch of episodes as stacked tensors (:class:`EpisodeBatch`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from metakd.data.task import Task


@dataclass
class EpisodeBatch:
    """A batch of ``B`` episodes, one per task, as stacked tensors.

    Attributes:
        support_x: ``[B, K + A, D]`` float32, scaled and aligned.
        support_y: ``[B, K + A]`` float32, 0 normal / 1 anomaly; the ``K`` normals come first.
        query_x: ``[B, Q, D]`` float32.
        query_y: ``[B, Q]`` float32, 0 / 1.
        pool_x: ``[B, P', D]`` float32 (labels hidden), or ``None`` when ``P == 0``: the
            pool rows the teacher reads, the first ``P'`` of ``pool_index`` (all ``P`` unless
            the sampler's ``pool_rows`` bounds them).
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


@dataclass(frozen=True, eq=False)
class EpisodePlan:
    """One episode's rows of one task, as drawn (:meth:`EpisodeSampler.plan`).

    Attributes:
        task: The task.
        support: ``K + A`` row indices, the normals first.
        query: ``Q`` row indices, shuffled.
        pool: ``P`` row indices (empty when ``P == 0``).
        seed: Seed of the profile's pool subsample (:func:`~metakd.models.subsample.bounded_reference`).
    """

    task: Task
    support: np.ndarray
    query: np.ndarray
    pool: np.ndarray
    seed: int

    @property
    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Support, query and pool indices, in the order :class:`EpisodeBatch` stacks them."""
        return self.support, self.query, self.pool
