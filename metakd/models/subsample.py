"""Seeded row subsamples: the bounded references and random orders profiles and adapt share."""

from __future__ import annotations

import torch
from torch import Tensor


def bounded_reference(rows: int, cap: int, seed: int) -> Tensor:
    """Sorted indices of at most ``cap`` of ``rows`` rows: all of them, or a seeded subsample."""
    if rows <= cap:
        return torch.arange(rows)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(rows, generator=generator)[:cap].sort().values


def seeded_order(rows: int, seed: int) -> Tensor:
    """A seeded random order of ``rows`` rows (its first ``n`` are a random subsample)."""
    return torch.randperm(rows, generator=torch.Generator().manual_seed(seed))


def seeded_orders(rows: int, seed: int | list[int]) -> Tensor:
    """:func:`seeded_order` of ``rows`` rows: ``[rows]``, or ``[B, rows]`` one per task's seed."""
    if isinstance(seed, int):
        return seeded_order(rows, seed)
    return torch.stack([seeded_order(rows, s) for s in seed])


def bounded_rows(rows: Tensor, cap: int, seed: int | list[int]) -> Tensor:
    """``rows [..., m, d]`` bounded to ``cap`` rows by :func:`bounded_reference`: one seed, or
    one per task of a batch ``[B, m, d]`` (each task its own subsample)."""
    if rows.shape[-2] <= cap:
        return rows
    if isinstance(seed, int):
        return rows[..., bounded_reference(rows.shape[-2], cap, seed), :]
    return torch.stack(
        [task[bounded_reference(task.shape[0], cap, s)] for task, s in zip(rows, seed, strict=True)]
    )


__all__ = ["bounded_reference", "bounded_rows", "seeded_order", "seeded_orders"]
