"""Neighbourhood profiles: width- and scale-free evidence of how anomalous each row is in its task.

The detectors that transfer best to unseen domains score a row relative to references of that
domain: kNN to the few normals (AnomalyDINO), density among the unlabelled rows (MuSc), and in
LUNAR (Goodge et al., AAAI 2022) a network reads a row's sorted neighbour distances. A profile
holds, for each row, its *evidences* (``ProfileConfig.evidences``):

* ``support_b``: the sorted distances to its ``k`` nearest support normals, features
  standardised on the support only;
* ``support_a``: the same with features scaled on support and pool (the pipeline's scaling);
* ``pool``: to its ``k`` nearest unlabelled pool rows in that space (a density);
* ``raw_pool``: the same in the rows' own units, unscaled (PyOD-style kNN; on image embeddings
  the scaling's per-feature weights can hide what the embedding's geometry shows);
* ``cosine_support``, ``cosine_pool``: ``k`` nearest by angle (``1 − cos``) in the rows' own
  units, how embeddings are usually compared;
* ``gaussian_support``: the Mahalanobis distance to a Ledoit–Wolf-shrunk Gaussian of the support
  normals (scaled), where joint deviations matter more than any one neighbour;
* ``gaussian_pool`` (opt-in): the Mahalanobis distance, in the rows' own units, to Gaussians of
  the unlabelled pool, each fitted on a trimmed half of it and read by the rows it never saw
  (:func:`~metakd.models.evidence.pool_gaussians`): the whole-image Gaussian of PaDiM-style
  detectors, fitted where the rows are plentiful;
* ``anomalies``: with labelled anomalies in the support, ``log(d_normal / d_anomaly)`` from the
  nearest support normal and the nearest labelled anomaly (0 without any);
* ``linear``: with labelled anomalies, a ridge regression of the labels on the labelled rows
  (scaled), read relative to its normals' leave-one-out predictions (0 without any): the
  direction a supervised linear model finds, which no distance to a nearest row shows;

each distance divided by its task's typical value (the median, over the reference rows
themselves, of their leave-one-out value) and taken as ``log(d / σ + 0.01)``; then task
statistics that say which evidence to trust (MetaOD-style meta-features, Zhao et al., NeurIPS
2021): how the pool's scale compares to the support's, how typical the support is in the pool,
how far the pool lies from the support, the feature count, pool size and support size, and
(with ``anomalies``) the number of labelled anomalies, (with ``linear``) how well the ridge
regression separates the labelled rows it did not see (leave-one-out). None of it depends on
the domain's feature count or units, so one teacher reads profiles of any task.

A row that is itself in a reference set (a support row, a pool row being scored) is scored
leave-one-out: its first exact match in that set is not its own neighbour. An exact match is
identified by distance (zero up to float64 rounding), so the same rule serves training rows and
any later call that scores the pool's rows again, as ``metakd score`` on today's data does.
Everything is computed in float64 in row blocks, never an ``N × M`` matrix wider than a block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from metakd.data.transforms import population_std
from metakd.models.evidence import (
    RidgeDiscriminant,
    ShrunkGaussian,
    anomaly_evidence,
    both_distances,
    linear_evidence,
    log_ratio,
    mahalanobis,
    pool_gaussian_distance,
    pool_gaussians,
    sorted_distances,
    typical_scale,
)
from metakd.models.profile_config import (
    EVIDENCES,
    LEGACY_EVIDENCES,
    N_TASK_STATS,
    UNSCALED,
    ProfileConfig,
)
from metakd.models.subsample import bounded_rows, seeded_orders

#: Rows whose leave-one-out Gaussian distance is measured for its typical value (a median):
#: each costs a fit on the other rows, so a large support is sampled (evenly over its rows).
_LOO_ROWS = 32


class NeighbourProfile(nn.Module):
    """The fitted references of one task; ``forward`` maps rows to their profiles.

    Build with :meth:`fit`. Buffers only, so it saves in a ``state_dict``, loads with
    ``weights_only`` and exports to TorchScript with the scorer.

    Args (as stored): ``support_b [n, d]`` support normals standardised on the support,
    ``b_shift``/``b_scale [d]`` that standardisation, ``support_a [n, d]`` and ``pool_a [m, d]``
    the support normals and pool reference in the pipeline's scaling, ``raw_support``,
    ``raw_pool`` the same as read, ``anomalies_a [A, d]`` the labelled anomalies (scaled),
    ``g_*`` the support normals' shrunk Gaussian (:class:`~metakd.models.evidence.ShrunkGaussian`;
    no rows with fewer than 2 normals), ``gp_*`` the pool halves' two
    (:func:`~metakd.models.evidence.pool_gaussians`), ``l_*`` the labelled rows' ridge regression
    (:class:`~metakd.models.evidence.RidgeDiscriminant`: its rows, their leave-one-out
    predictions, weight, offset and scale; no rows without a labelled anomaly), ``scales`` one
    normaliser ``σ`` per evidence but those of ``UNSCALED``, ``stats`` the task statistics.
    References an evidence does not use are empty.
    """

    if TYPE_CHECKING:
        # The buffers registered in ``__init__``, for type checkers only: TorchScript reads class
        # annotations and cannot resolve the strings ``from __future__ import annotations`` makes.
        support_b: Tensor
        b_shift: Tensor
        b_scale: Tensor
        support_a: Tensor
        pool_a: Tensor
        raw_support: Tensor
        raw_pool: Tensor
        anomalies_a: Tensor
        g_mean: Tensor
        g_u: Tensor
        g_inverse: Tensor
        g_a: Tensor
        g_isotropic: Tensor
        gp_mean: Tensor
        gp_u: Tensor
        gp_inverse: Tensor
        gp_a: Tensor
        gp_isotropic: Tensor
        l_rows: Tensor
        l_loo: Tensor
        l_weight: Tensor
        l_offset: Tensor
        l_scale: Tensor
        scales: Tensor
        stats: Tensor

    def __init__(
        self, *, neighbours: int, clip: float, evidences: list[str], buffers: dict[str, Tensor]
    ) -> None:
        super().__init__()
        self.neighbours = int(neighbours)
        self.clip = float(clip)
        self.evidences = list(evidences)
        # Each evidence's column in ``scales`` (those of UNSCALED have none).
        scaled = [e for e in self.evidences if e not in UNSCALED]
        self.sigma_column = {e: i for i, e in enumerate(scaled)}
        for name in _BUFFERS:
            value = buffers.get(name, torch.zeros(0))
            self.register_buffer(name, value.detach().to(torch.float64).clone())

    @staticmethod
    def empty(
        *, neighbours: int, clip: float, n_features: int, evidences: list[str] | None = None
    ) -> NeighbourProfile:
        """A placeholder of the right buffer names, to :meth:`load_references` a stored one
        into (``evidences``: the stored profile's; ``None``: one saved before they existed)."""
        return NeighbourProfile(
            neighbours=neighbours,
            clip=clip,
            evidences=LEGACY_EVIDENCES if evidences is None else evidences,
            buffers={},
        )

    def load_references(self, state: dict[str, Tensor]) -> None:
        """Load stored references of any size. A profile saved before ``evidences`` existed
        holds only the buffers of those three (the others stay empty)."""
        needed: tuple[str, ...] = (
            _LEGACY_BUFFERS if self.evidences == LEGACY_EVIDENCES else _BUFFERS
        )
        for evidence, names in (("linear", _LINEAR_BUFFERS), ("gaussian_pool", _POOL_GAUSSIAN)):
            if evidence not in self.evidences:  # saved before the evidence existed, or without
                needed = tuple(name for name in needed if name not in names)
        missing = [name for name in needed if name not in state]
        unknown = [name for name in state if name not in _BUFFERS]
        if missing or unknown:
            raise KeyError(f"profile references: missing {missing}, unknown {unknown}")
        for name, value in state.items():
            setattr(self, name, value.detach().to(torch.float64).clone())

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
        scale_rows: int | None = None,
        raw_pool: Tensor | None = None,
        anomalies_a: Tensor | None = None,
    ) -> NeighbourProfile:
        """Fit on one task: ``raw_support [n, d]`` the support normals as read, ``support_a``
        and ``pool_a [m, d]`` the support normals and the pool in the pipeline's scaling (the
        pool may be ``None``: the support then stands in for it), ``raw_pool`` the pool as
        read and ``anomalies_a [A, d]`` the support's labelled anomalies, scaled (``None``:
        none). Pools above ``max_pool`` rows are subsampled (:func:`bounded_reference` with
        ``seed``).

        Or on a batch of tasks at once (meta-training's episodes): every tensor with the same
        leading dimensions ``[B, ...]``, features zero-padded to a common ``d`` (zero columns
        change no distance), ``n_features [B]`` each task's own feature count for its
        statistics and ``seed`` one seed per task. The references are then batched too, and
        :meth:`forward` takes rows ``[B, N, d]``.

        ``scale_rows``: the pool's typical distances and the pool's statistics are measured on
        its first this many rows (a random subsample: the caller's pool is in random order),
        against the whole pool: a cost linear, not quadratic, in the pool. ``None``: all rows.
        """
        k, evidences = config.neighbours, list(config.evidences)
        raw = raw_support.to(torch.float64)
        mean = raw.mean(-2, keepdim=True)
        std = population_std(raw, mean)
        std = torch.where(std < eps, torch.ones_like(std), std)
        sb = ((raw - mean) / std).clamp(-config.clip, config.clip)
        mean, std = mean.squeeze(-2), std.squeeze(-2)
        sa = support_a.to(torch.float64)
        no_pool = pool_a is None or pool_a.shape[-2] == 0
        pa = sa if pool_a is None or no_pool else pool_a.to(torch.float64)
        pa = bounded_rows(pa, config.max_pool, seed)
        sampled = pa if scale_rows is None else pa[..., :scale_rows, :]
        s_b_self = sorted_distances(sb, sb, k).mean(-1)
        s_a_self = sorted_distances(sa, sa, k).mean(-1)
        p_self = sorted_distances(sampled, pa, k).mean(-1)
        s_a_pool = sorted_distances(sampled, sa, k).mean(-1)  # pool rows' distance to support
        # One-normal supports have no leave-one-out distance: the pool's distance to it stands in.
        sigma_sa = typical_scale(s_a_self, s_a_pool.median(-1).values)
        scales = [typical_scale(s_b_self, sigma_sa), sigma_sa, typical_scale(p_self, sigma_sa)]
        n, m = sa.shape[-2], pa.shape[-2]
        d = (
            torch.full(sigma_sa.shape, float(sa.shape[-1]), dtype=torch.float64)
            if n_features is None
            else n_features.to(torch.float64)
        )
        buffers = {
            "support_b": sb,
            "b_shift": -mean / std,
            "b_scale": 1.0 / std,
            "support_a": sa,
            "pool_a": pa,
        }
        rp = raw if raw_pool is None or no_pool else raw_pool.to(torch.float64)
        rp = bounded_rows(rp, config.max_pool, seed)
        raw_sampled = rp if scale_rows is None else rp[..., :scale_rows, :]
        if {"raw_pool", "cosine_support", "cosine_pool"} & set(evidences):
            buffers |= {"raw_support": raw, "raw_pool": rp}
        if {"raw_pool", "cosine_pool"} & set(evidences):
            # The sampled pool rows' own neighbours in the raw pool, both ways at once.
            raw_self, cos_p = both_distances(
                raw_sampled,
                rp,
                k,
                euclidean="raw_pool" in evidences,
                cosine="cosine_pool" in evidences,
            )
        for evidence in evidences[3:]:
            if evidence == "raw_pool":
                own = sorted_distances(raw, raw, k).mean(-1)
                scales.append(
                    typical_scale(raw_self.mean(-1), typical_scale(own, torch.ones_like(sigma_sa)))
                )
            elif evidence == "cosine_support":
                cos_self = sorted_distances(raw, raw, k, "cosine").mean(-1)
                cos_pool = sorted_distances(raw_sampled, raw, k, "cosine").mean(-1)
                scales.append(typical_scale(cos_self, cos_pool.median(-1).values))
            elif evidence == "cosine_pool":
                cos_s = sorted_distances(raw, raw, k, "cosine").mean(-1)
                scales.append(
                    typical_scale(cos_p.mean(-1), typical_scale(cos_s, torch.ones_like(sigma_sa)))
                )
            elif evidence == "gaussian_support":
                if n >= 2:
                    # A bounded subsample: its n × n Gram (Woodbury) and the leave-one-out fits
                    # cost O(n³) each, so a large support must not enter them whole.
                    fitted_rows = bounded_rows(sa, config.max_gaussian, seed)
                    gaussian = ShrunkGaussian(fitted_rows, d)
                    buffers |= {
                        "g_mean": gaussian.mean,
                        "g_u": gaussian.u,
                        "g_inverse": gaussian.inverse,
                        "g_a": gaussian.a,
                        "g_isotropic": gaussian.isotropic.to(torch.float64),
                    }
                    loo = ShrunkGaussian.leave_one_out(fitted_rows, d, rows=_LOO_ROWS)
                    scales.append(typical_scale(loo, gaussian.distance(sampled).median(-1).values))
                else:  # no Gaussian of one row: the evidence is neutral (log 1)
                    scales.append(torch.ones_like(sigma_sa))
            elif evidence == "gaussian_pool":
                # Halves in a seeded order: a pool may arrive sorted (by time, say).
                order = seeded_orders(rp.shape[-2], seed)
                parts = pool_gaussians(rp, order, d, cap=config.max_gaussian, trim=config.pool_trim)
                buffers |= dict(zip(_POOL_GAUSSIAN, parts, strict=True))
                ones = torch.ones_like(sigma_sa)
                far = pool_gaussian_distance(raw_sampled, *parts) if parts[1].numel() else None
                scales.append(ones if far is None else typical_scale(far, ones))
        if anomalies_a is not None and anomalies_a.shape[-2] == 0:
            anomalies_a = None
        if "anomalies" in evidences and anomalies_a is not None:
            buffers["anomalies_a"] = anomalies_a.to(torch.float64)
        separation = torch.zeros_like(d)
        if "linear" in evidences and anomalies_a is not None:
            ridge = RidgeDiscriminant(
                bounded_rows(sa, config.max_gaussian, seed),
                bounded_rows(anomalies_a.to(torch.float64), config.max_gaussian, seed),
                config.ridge,
            )
            buffers |= {
                "l_rows": ridge.rows,
                "l_loo": ridge.loo,
                "l_weight": ridge.weight,
                "l_offset": ridge.offset,
                "l_scale": ridge.scale,
            }
            separation = ridge.separation
        counts = torch.full_like(d, 1.0)
        scale = torch.stack(scales, dim=-1)
        stats = [
            torch.log(scale[..., 2] / scale[..., 1]),
            log_ratio(sorted_distances(sa, pa, k).mean(-1), scale[..., 2:3]).median(-1).values,
            log_ratio(s_a_pool, scale[..., 1:2]).median(-1).values,
            torch.log(d) / 5.0,
            torch.log(counts * float(m + 1)) / 5.0,
            torch.log(counts * float(n)) / 5.0,
        ]
        if "anomalies" in evidences:
            shots = 0 if anomalies_a is None else anomalies_a.shape[-2]
            stats.append(torch.log(counts * float(shots + 1)) / 5.0)
        if "linear" in evidences:
            stats.append(separation)
        buffers |= {"scales": scale, "stats": torch.stack(stats, dim=-1)}
        return NeighbourProfile(
            neighbours=k, clip=config.clip, evidences=evidences, buffers=buffers
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
        scale_rows: int | None = None,
    ) -> NeighbourProfile:
        """:meth:`fit` from one task's rows as read: ``support [n, d]`` with ``normal [n]``
        (bool) marking its normals (the others are labelled anomalies), the pool ``[m, d]`` (or
        ``None``, or empty), and ``scale`` the task's fitted pipeline scaling. ``metakd adapt``
        calls this; meta-training calls :meth:`fit` on a batch of episodes."""
        normals, anomalies = support[normal], support[~normal]
        has_pool = pool is not None and pool.shape[0] > 0
        return NeighbourProfile.fit(
            normals,
            scale(normals),
            scale(pool) if pool is not None and has_pool else None,
            config=config,
            seed=seed,
            scale_rows=scale_rows,
            raw_pool=pool if has_pool else None,
            anomalies_a=scale(anomalies) if anomalies.shape[0] > 0 else None,
        )

    def forward(self, raw: Tensor, scaled: Tensor) -> Tensor:
        """Profiles ``[..., N, width]`` (float32) of rows given as read (``raw [..., N, d]``)
        and in the pipeline's scaling (``scaled [..., N, d]``); leading dimensions as the
        references' (a batch of tasks), or none."""
        k = self.neighbours
        x = raw.to(torch.float64)
        b_scale, b_shift = self.b_scale.unsqueeze(-2), self.b_shift.unsqueeze(-2)
        zb = (x * b_scale + b_shift).clamp(-self.clip, self.clip)
        za = scaled.to(torch.float64)
        scales = self.scales.unsqueeze(-2)
        columns = [
            log_ratio(sorted_distances(zb, self.support_b, k), scales[..., 0:1]),
            log_ratio(sorted_distances(za, self.support_a, k), scales[..., 1:2]),
            log_ratio(sorted_distances(za, self.pool_a, k), scales[..., 2:3]),
        ]
        raw_pool, cosine_pool = "raw_pool" in self.evidences, "cosine_pool" in self.evidences
        pool_near = [x.new_zeros(0), x.new_zeros(0)]
        if raw_pool or cosine_pool:
            pool_near = both_distances(x, self.raw_pool, k, euclidean=raw_pool, cosine=cosine_pool)
        for evidence in self.evidences[3:]:
            column = self.sigma_column.get(evidence, 0)  # read only by evidences that have one
            sigma = scales[..., column : column + 1]
            if evidence == "raw_pool":
                columns.append(log_ratio(pool_near[0], sigma))
            elif evidence == "cosine_support":
                near = sorted_distances(x, self.raw_support, k, "cosine")
                columns.append(log_ratio(near, sigma))
            elif evidence == "cosine_pool":
                columns.append(log_ratio(pool_near[1], sigma))
            elif evidence == "gaussian_support" or evidence == "gaussian_pool":
                g = sigma[..., 0] + torch.zeros_like(za[..., 0])  # fitted on too few rows: neutral
                if evidence == "gaussian_support" and self.g_u.numel() > 0:
                    g = mahalanobis(
                        za, self.g_mean, self.g_u, self.g_inverse, self.g_a, self.g_isotropic
                    )
                elif evidence == "gaussian_pool" and self.gp_u.numel() > 0:
                    g = pool_gaussian_distance(
                        x, self.gp_mean, self.gp_u, self.gp_inverse, self.gp_a, self.gp_isotropic
                    )
                columns.append(log_ratio(g.unsqueeze(-1), sigma))
            elif evidence == "anomalies":
                columns.append(anomaly_evidence(za, self.support_a, self.anomalies_a))
            elif evidence == "linear":
                columns.append(
                    linear_evidence(
                        za, self.l_rows, self.l_loo, self.l_weight, self.l_offset, self.l_scale
                    )
                )
        columns.append(self.stats.unsqueeze(-2) + torch.zeros_like(za[..., :1]))
        return torch.cat(columns, dim=-1).to(torch.float32)


#: The ``linear`` and ``gaussian_pool`` evidences' references (absent from profiles without).
_LINEAR_BUFFERS = ("l_rows", "l_loo", "l_weight", "l_offset", "l_scale")
_POOL_GAUSSIAN = ("gp_mean", "gp_u", "gp_inverse", "gp_a", "gp_isotropic")
#: Every reference a profile may hold, and those of a profile saved before ``evidences``.
_BUFFERS = (
    "support_b",
    "b_shift",
    "b_scale",
    "support_a",
    "pool_a",
    "raw_support",
    "raw_pool",
    "anomalies_a",
    "g_mean",
    "g_u",
    "g_inverse",
    "g_a",
    "g_isotropic",
    *_POOL_GAUSSIAN,
    *_LINEAR_BUFFERS,
    "scales",
    "stats",
)
_LEGACY_BUFFERS = ("support_b", "b_shift", "b_scale", "support_a", "pool_a", "scales", "stats")


__all__ = [
    "EVIDENCES",
    "LEGACY_EVIDENCES",
    "N_TASK_STATS",
    "NeighbourProfile",
    "ProfileConfig",
]
