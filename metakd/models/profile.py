"""Neighbourhood profiles: width- and scale-free evidence of how anomalous each row is in its task.

The detectors that transfer best to unseen domains score a row relative to references of that
domain: kNN to the few normals (AnomalyDINO), density among the unlabelled rows (MuSc), and in
LUNAR (Goodge et al., AAAI 2022) a network reads a row's sorted neighbour distances. A profile
holds, for each row, the sorted distances to its ``k`` nearest

* support normals, features standardised on the support only (``s_B``),
* support normals, features scaled on support and pool (``s_A``; the pipeline's scaling),
* unlabelled pool rows, in that same space (``p``; a density),

each divided by its task's typical value (the median, over the reference rows themselves, of
their leave-one-out mean distance) and taken as ``log(d / σ + 0.01)``; then six task statistics
that say which evidence to trust (MetaOD-style meta-features, Zhao et al., NeurIPS 2021): how the
pool's scale compares to the support's, how typical the support is in the pool, how far the pool
lies from the support, and the feature count, pool size and support size. None of it depends on
the domain's feature count or units, so one teacher reads profiles of any task.

A row that is itself in a reference set (a support row, a pool row being scored) is scored
leave-one-out: its first exact match in that set is not its own neighbour. An exact match is
identified by distance (zero up to float64 rounding), so the same rule serves training rows and
any later call that scores the pool's rows again, as ``metakd score`` on today's data does.
Everything is computed in float64 in row blocks, never an ``N × M`` matrix wider than a block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from metakd.data.transforms import population_std
from metakd.errors import ConfigError

#: Task statistics after the ``3k`` per-row columns.
N_TASK_STATS = 6


@dataclass
class ProfileConfig:
    """Neighbourhood profile read by the ``profile`` teacher."""

    neighbours: int = 5
    """k: sorted distances kept per reference set."""
    max_pool: int = 1024
    """Most pool rows kept as the density reference (a seeded subsample above it), so scoring
    costs at most ``max_pool + K`` distances per row whatever the pool size. ``metakd adapt``
    bounds the stored reference of every teacher that keeps one (``knn``, ``svdd``) the same
    way; every pool row is still scored and distilled on."""
    clip: float = 10.0
    """Support-standardised values are clipped to ``±clip`` (as ``scaling.clip``)."""

    def __post_init__(self) -> None:
        if isinstance(self.neighbours, bool) or self.neighbours < 1:
            raise ConfigError(f"profile.neighbours must be >= 1, got {self.neighbours!r}")
        if isinstance(self.max_pool, bool) or self.max_pool < 1:
            raise ConfigError(f"profile.max_pool must be >= 1, got {self.max_pool!r}")
        if not self.clip > 0:
            raise ConfigError(f"profile.clip must be positive, got {self.clip!r}")

    @property
    def width(self) -> int:
        """Columns of a profile row: ``3k`` distances and the task statistics."""
        return 3 * self.neighbours + N_TASK_STATS


def bounded_reference(rows: int, cap: int, seed: int) -> Tensor:
    """Sorted indices of at most ``cap`` of ``rows`` rows: all of them, or a seeded subsample."""
    if rows <= cap:
        return torch.arange(rows)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(rows, generator=generator)[:cap].sort().values


def _sorted_distances(x: Tensor, ref: Tensor, k: int) -> Tensor:
    """``[..., N, k]`` ascending distances of rows ``x [..., N, d]`` to ``ref [..., M, d]``
    (float64; leading dimensions are batches of tasks), the first exact match of each row left
    out; fewer than ``k`` neighbours repeat the farthest one, none at all give ``inf``."""
    ref_sq = ref.pow(2).sum(-1).unsqueeze(-2)
    out: list[Tensor] = []
    take = min(k + 1, ref.shape[-2])
    batch = 1
    for size in x.shape[:-2]:
        batch *= size
    # Bounds memory at block_rows × M × 8 bytes (summed over the batch of tasks).
    block_rows = max(1, 2048 // max(1, batch))
    for start in range(0, x.shape[-2], block_rows):
        block = x[..., start : start + block_rows, :]
        block_sq = block.pow(2).sum(-1, keepdim=True)
        sq = (block_sq + ref_sq - 2.0 * block @ ref.transpose(-1, -2)).clamp_min(0.0)
        # The row itself: zero up to float64 rounding of the norm expansion (~1e-16 relative).
        match = sq <= 1e-9 * (block_sq + ref_sq) + 1e-300
        first = match & (match.cumsum(-1) == 1)
        sq = sq.masked_fill(first, float("inf"))
        out.append(sq.topk(take, dim=-1, largest=False).values.sqrt())
    d = torch.cat(out, dim=-2)[..., :k] if out else x.new_zeros(list(x.shape[:-1]) + [min(k, take)])
    if d.shape[-1] < k:
        d = torch.cat([d, d[..., -1:].expand(list(d.shape[:-1]) + [k - d.shape[-1]])], dim=-1)
    # A row with no neighbour but itself (a one-row reference): repeat what it has, else inf.
    finite = torch.isfinite(d)
    last = torch.where(finite, d, torch.zeros_like(d)).amax(-1, keepdim=True)
    return torch.where(finite | ~finite.any(-1, keepdim=True), d, last)


def _typical(mean_distances: Tensor, fallback: Tensor) -> Tensor:
    """Median ``[...]`` of the finite leave-one-out mean distances ``[..., n]`` (``fallback``
    where none is finite), floored above 0. Of an even count, the lower middle value."""
    finite = torch.isfinite(mean_distances)
    value = torch.where(finite, mean_distances, torch.full_like(mean_distances, float("nan")))
    value = value.nanmedian(-1).values
    return torch.where(finite.any(-1), value, fallback).clamp_min(1e-12)


def _log_ratio(d: Tensor, scale: Tensor) -> Tensor:
    # A row without any neighbour (inf) is as typical as the reference's own rows (log 1).
    d = torch.where(torch.isfinite(d), d, scale)
    # The floor: a duplicate row (distance 0) is very normal, but not infinitely so.
    return torch.log(d / scale + 0.01)


class NeighbourProfile(nn.Module):
    """The fitted references of one task; ``forward`` maps rows to their profiles.

    Build with :meth:`fit`. Buffers only, so it saves in a ``state_dict``, loads with
    ``weights_only`` and exports to TorchScript with the scorer.

    Args (as stored): ``support_b [n, d]`` support normals standardised on the support,
    ``b_shift``/``b_scale [d]`` that standardisation, ``support_a [n, d]`` and ``pool_a [m, d]``
    the support normals and pool reference in the pipeline's scaling, ``scales [3]`` the
    normalisers ``σ`` of ``s_B``, ``s_A``, ``p``, ``stats [6]`` the task statistics.
    """

    if TYPE_CHECKING:
        # The buffers registered in ``__init__``, for type checkers only: TorchScript reads class
        # annotations and cannot resolve the strings ``from __future__ import annotations`` makes.
        support_b: Tensor
        b_shift: Tensor
        b_scale: Tensor
        support_a: Tensor
        pool_a: Tensor
        scales: Tensor
        stats: Tensor

    def __init__(
        self,
        *,
        neighbours: int,
        clip: float,
        support_b: Tensor,
        b_shift: Tensor,
        b_scale: Tensor,
        support_a: Tensor,
        pool_a: Tensor,
        scales: Tensor,
        stats: Tensor,
    ) -> None:
        super().__init__()
        self.neighbours = int(neighbours)
        self.clip = float(clip)
        for name, value in (
            ("support_b", support_b),
            ("b_shift", b_shift),
            ("b_scale", b_scale),
            ("support_a", support_a),
            ("pool_a", pool_a),
            ("scales", scales),
            ("stats", stats),
        ):
            self.register_buffer(name, value.detach().to(torch.float64).clone())

    @staticmethod
    def empty(*, neighbours: int, clip: float, n_features: int) -> NeighbourProfile:
        """A placeholder of the right buffer names, to ``load_state_dict`` a stored one into."""
        z = torch.zeros(0, n_features)
        v = torch.zeros(n_features)
        return NeighbourProfile(
            neighbours=neighbours,
            clip=clip,
            support_b=z,
            b_shift=v,
            b_scale=v,
            support_a=z,
            pool_a=z,
            scales=torch.zeros(3),
            stats=torch.zeros(N_TASK_STATS),
        )

    def load_references(self, state: dict[str, Tensor]) -> None:
        """``load_state_dict`` for stored references of any size."""
        for name, value in state.items():
            setattr(self, name, torch.empty_like(value, dtype=torch.float64))
        self.load_state_dict(state)

    @staticmethod
    def fit(
        raw_support: Tensor,
        support_a: Tensor,
        pool_a: Tensor | None,
        *,
        config: ProfileConfig,
        eps: float = 1e-6,
        seed: int | list[int] = 0,
        n_features: Tensor | None = None,
    ) -> NeighbourProfile:
        """Fit on one task: ``raw_support [n, d]`` the support normals as read, ``support_a``
        and ``pool_a [m, d]`` the support normals and the pool in the pipeline's scaling (the
        pool may be ``None``: the support then stands in for it). Pools above ``max_pool`` rows
        are subsampled (:func:`bounded_reference` with ``seed``).

        Or on a batch of tasks at once (meta-training's episodes): every tensor with the same
        leading dimensions ``[B, ...]``, features zero-padded to a common ``d`` (zero columns
        change no distance), ``n_features [B]`` each task's own feature count for its
        statistics and ``seed`` one seed per task. The references are then batched too, and
        :meth:`forward` takes rows ``[B, N, d]``.
        """
        k = config.neighbours
        raw = raw_support.to(torch.float64)
        mean = raw.mean(-2, keepdim=True)
        std = population_std(raw, mean)
        std = torch.where(std < eps, torch.ones_like(std), std)
        sb = ((raw - mean) / std).clamp(-config.clip, config.clip)
        mean, std = mean.squeeze(-2), std.squeeze(-2)
        sa = support_a.to(torch.float64)
        pa = sa if pool_a is None or pool_a.shape[-2] == 0 else pool_a.to(torch.float64)
        pa = _bounded_rows(pa, config.max_pool, seed)
        s_b_self = _sorted_distances(sb, sb, k).mean(-1)
        s_a_self = _sorted_distances(sa, sa, k).mean(-1)
        p_self = _sorted_distances(pa, pa, k).mean(-1)
        s_a_pool = _sorted_distances(pa, sa, k).mean(-1)  # pool rows' distance to the support
        # One-normal supports have no leave-one-out distance: the pool's distance to it stands in.
        sigma_sa = _typical(s_a_self, s_a_pool.median(-1).values)
        scales = torch.stack(
            [
                _typical(s_b_self, sigma_sa),
                sigma_sa,
                _typical(p_self, sigma_sa),
            ],
            dim=-1,
        )
        p_of_support = _sorted_distances(sa, pa, k).mean(-1)
        n, m = sa.shape[-2], pa.shape[-2]
        d = (
            torch.full(scales.shape[:-1], float(sa.shape[-1]), dtype=torch.float64)
            if n_features is None
            else n_features.to(torch.float64)
        )
        counts = torch.full_like(d, 1.0)
        stats = torch.stack(
            [
                torch.log(scales[..., 2] / scales[..., 1]),
                _log_ratio(p_of_support, scales[..., 2:3]).median(-1).values,
                _log_ratio(s_a_pool, scales[..., 1:2]).median(-1).values,
                torch.log(d) / 5.0,
                torch.log(counts * float(m + 1)) / 5.0,
                torch.log(counts * float(n)) / 5.0,
            ],
            dim=-1,
        )
        return NeighbourProfile(
            neighbours=k,
            clip=config.clip,
            support_b=sb,
            b_shift=-mean / std,
            b_scale=1.0 / std,
            support_a=sa,
            pool_a=pa,
            scales=scales,
            stats=stats,
        )

    @staticmethod
    def fit_task(
        support: Tensor,
        normal: Tensor,
        pool: Tensor | None,
        *,
        scale: Callable[[Tensor], Tensor],
        config: ProfileConfig,
        seed: int,
    ) -> NeighbourProfile:
        """:meth:`fit` from one task's rows as read: ``support [n, d]`` with ``normal [n]``
        (bool) marking its normals, the pool ``[m, d]`` (or ``None``, or empty), and ``scale``
        the task's fitted pipeline scaling. Meta-training and ``metakd adapt`` both call this."""
        normals = support[normal]
        return NeighbourProfile.fit(
            normals,
            scale(normals),
            scale(pool) if pool is not None and pool.shape[0] > 0 else None,
            config=config,
            seed=seed,
        )

    def forward(self, raw: Tensor, scaled: Tensor) -> Tensor:
        """Profiles ``[..., N, 3k + 6]`` (float32) of rows given as read (``raw [..., N, d]``)
        and in the pipeline's scaling (``scaled [..., N, d]``); leading dimensions as the
        references' (a batch of tasks), or none."""
        k = self.neighbours
        b_scale, b_shift = self.b_scale.unsqueeze(-2), self.b_shift.unsqueeze(-2)
        zb = (raw.to(torch.float64) * b_scale + b_shift).clamp(-self.clip, self.clip)
        za = scaled.to(torch.float64)
        scales = self.scales.unsqueeze(-2)
        columns = torch.cat(
            [
                _log_ratio(_sorted_distances(zb, self.support_b, k), scales[..., 0:1]),
                _log_ratio(_sorted_distances(za, self.support_a, k), scales[..., 1:2]),
                _log_ratio(_sorted_distances(za, self.pool_a, k), scales[..., 2:3]),
                self.stats.unsqueeze(-2) + torch.zeros_like(za[..., :1]),
            ],
            dim=-1,
        )
        return columns.to(torch.float32)


def _bounded_rows(rows: Tensor, cap: int, seed: int | list[int]) -> Tensor:
    """``rows [..., m, d]`` bounded to ``cap`` rows by :func:`bounded_reference`: one seed, or
    one per task of a batch ``[B, m, d]`` (each task its own subsample)."""
    if rows.shape[-2] <= cap:
        return rows
    if isinstance(seed, int):
        return rows[..., bounded_reference(rows.shape[-2], cap, seed), :]
    return torch.stack(
        [task[bounded_reference(task.shape[0], cap, s)] for task, s in zip(rows, seed, strict=True)]
    )


__all__ = ["N_TASK_STATS", "NeighbourProfile", "ProfileConfig", "bounded_reference"]
