"""Distance kernels behind the neighbourhood profile's evidences (float64, batched, no gradient).

* :func:`sorted_distances`: the ``k`` nearest reference rows of each row, Euclidean or cosine,
  a row's first exact match in the reference left out (leave-one-out wherever a row is scored
  against a reference that holds it).
* :class:`ShrunkGaussian`: the Mahalanobis distance to a Ledoit–Wolf-shrunk Gaussian (Ledoit &
  Wolf 2004), computed through the ``n × n`` Gram matrix of its rows (Woodbury), so a few rows in
  a thousand dimensions cost ``O(n² d)``, never a ``d × d`` matrix; with each fitted row's
  leave-one-out distance.
* :func:`typical_scale`, :func:`log_ratio`: a task's typical distance and a distance on its
  scale; :func:`mahalanobis`, :func:`anomaly_evidence`, :func:`linear_evidence`: the scalar
  evidences from stored parts.
* :func:`pool_gaussians`: two shrunk Gaussians of the unlabelled pool, each fitted on a trimmed
  half of it, so every pool row is read by one that never saw it.
* :class:`RidgeDiscriminant`: a ridge regression of the labels on a support with labelled
  anomalies, in its dual, with each fitted row's leave-one-out prediction.

Every function takes leading batch dimensions (a batch of tasks zero-padded to one width: zero
columns change no distance and no covariance; the shrinkage target's mean variance is taken over
each task's own ``n_features``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Metric = Literal["euclidean", "cosine"]


def sorted_distances(x: Tensor, ref: Tensor, k: int, metric: str = "euclidean") -> Tensor:
    """``[..., N, k]`` ascending distances of rows ``x [..., N, d]`` to ``ref [..., M, d]``
    (float64; leading dimensions are batches of tasks), the first exact match of each row left
    out; fewer than ``k`` neighbours repeat the farthest one, none at all give ``inf``.

    ``metric``: ``euclidean``, or ``cosine`` (``1 - cos``, rows of zero norm as if orthogonal
    to every row).
    """
    return both_distances(x, ref, k, euclidean=metric != "cosine", cosine=metric == "cosine")[
        0 if metric != "cosine" else 1
    ]


def both_distances(
    x: Tensor, ref: Tensor, k: int, euclidean: bool = True, cosine: bool = True
) -> list[Tensor]:
    """:func:`sorted_distances` Euclidean and cosine (each an empty tensor unless asked for),
    from one product of the rows with the reference, the costly part."""
    ref_sq = ref.pow(2).sum(-1).unsqueeze(-2)
    ref_norm = ref_sq.sqrt().clamp_min(1e-300)
    euclid: list[Tensor] = []
    angle: list[Tensor] = []
    take = min(k + 1, ref.shape[-2])
    block_rows = _block_rows(x)
    for start in range(0, x.shape[-2], block_rows):
        block = x[..., start : start + block_rows, :]
        block_sq, dot, sq, first = _expansion(block, ref, ref_sq)
        if euclidean:
            near = sq.masked_fill(first, float("inf")).topk(take, dim=-1, largest=False).values
            euclid.append(near.sqrt())
        if cosine:
            cos = 1.0 - dot / (block_sq.sqrt().clamp_min(1e-300) * ref_norm)
            cos = cos.clamp_min(0.0).masked_fill(first, float("inf"))
            angle.append(cos.topk(take, dim=-1, largest=False).values)
    first_kind = _finish(euclid, x, k, take) if euclidean else x.new_zeros(0)
    second_kind = _finish(angle, x, k, take) if cosine else x.new_zeros(0)
    return [first_kind, second_kind]


def _block_rows(x: Tensor) -> int:
    """Rows of ``x [..., N, d]`` per block against a reference of ``M`` rows: bounds memory at
    block_rows × M × 8 bytes, summed over the leading batch of tasks."""
    batch = 1
    for size in x.shape[:-2]:
        batch *= size
    return max(1, 2048 // max(1, batch))


def _expansion(block: Tensor, ref: Tensor, ref_sq: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Squared norms ``[..., N, 1]``, products ``[..., N, M]`` and squared distances of rows
    ``block`` to ``ref`` (``ref_sq [..., 1, M]`` its squared norms) by the norm expansion, and
    each row's first exact match among the reference rows ``[..., N, M]`` (bool)."""
    block_sq = block.pow(2).sum(-1, keepdim=True)
    dot = block @ ref.transpose(-1, -2)
    sq = (block_sq + ref_sq - 2.0 * dot).clamp_min(0.0)
    match = _exact_match(sq, block_sq, ref_sq)
    return block_sq, dot, sq, match & (match.cumsum(-1) == 1)


def _exact_match(sq: Tensor, row_sq: Tensor, ref_sq: Tensor) -> Tensor:
    """Where squared distances ``sq [..., N, M]`` by the norm expansion (squared norms
    ``row_sq [..., N, 1]``, ``ref_sq [..., 1, M]``) are the row itself: zero up to float64
    rounding of the expansion (~1e-16 relative)."""
    return sq <= 1e-9 * (row_sq + ref_sq) + 1e-300


def _finish(parts: list[Tensor], x: Tensor, k: int, take: int) -> Tensor:
    """``k`` columns from the blocks' ``take`` nearest (see :func:`sorted_distances`)."""
    d = (
        torch.cat(parts, dim=-2)[..., :k]
        if parts
        else x.new_zeros(list(x.shape[:-1]) + [min(k, take)])
    )
    if d.shape[-1] < k:
        d = torch.cat([d, d[..., -1:].expand(list(d.shape[:-1]) + [k - d.shape[-1]])], dim=-1)
    # A row with no neighbour but itself (a one-row reference): repeat what it has, else inf.
    finite = torch.isfinite(d)
    last = torch.where(finite, d, torch.zeros_like(d)).amax(-1, keepdim=True)
    return torch.where(finite | ~finite.any(-1, keepdim=True), d, last)


class ShrunkGaussian:
    """A Gaussian of rows ``x [..., n, d]`` with the Ledoit–Wolf shrunk covariance
    ``Σ = λ μ I + (1 − λ) S``: ``S`` the sample covariance, ``μ = tr(S) / d`` (``d`` each task's
    ``n_features``), ``λ`` the shrinkage that minimises the expected Frobenius error.

    Held as the centred rows ``U``, ``a = λ μ`` and ``L = (a n / (1 − λ)) I + U Uᵀ`` inverted:
    ``d²(x) = (‖v‖² − (U v)ᵀ L⁻¹ (U v)) / a`` for ``v = x − mean``. Needs ``n ≥ 2``.
    """

    def __init__(self, x: Tensor, n_features: Tensor) -> None:
        n = x.shape[-2]
        self.mean = x.mean(-2, keepdim=True)
        u = x - self.mean
        gram = u @ u.transpose(-1, -2)  # [..., n, n]
        trace = torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1)  # n · tr(S)
        frob = gram.pow(2).sum((-1, -2))  # n² ‖S‖²_F
        mu = trace / (n * n_features)
        # δ² = ‖S − μI‖²_F; β² = (1/n²) Σ_i ‖x_i x_iᵀ − S‖²_F; λ = min(β² / δ², 1).
        delta = frob / n**2 - trace.pow(2) / (n**2 * n_features)
        beta = (torch.diagonal(gram, dim1=-2, dim2=-1).pow(2).sum(-1) - frob / n) / n**2
        shrink = torch.where(delta > 0, (beta / delta.clamp_min(1e-300)).clamp(0.0, 1.0), 1.0)
        self.a = (shrink * mu).clamp_min(1e-12)  # [...]
        # (1 − λ) S = (1 − λ)/n UᵀU: Woodbury through the n × n system.
        ratio = self.a * n / (1.0 - shrink).clamp_min(1e-12)
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        system = ratio[..., None, None] * eye + gram
        self.u = u
        # Positive definite (ratio > 0): Cholesky, not LU, whose batched MKL kernel fails on
        # entry ("DLASWP") and stalls with two torch threads on large batches of systems.
        self.inverse = torch.cholesky_inverse(torch.linalg.cholesky(system))
        # λ = 1 (no usable covariance): the isotropic distance alone.
        self.isotropic = shrink >= 1.0 - 1e-12

    def distance(self, x: Tensor) -> Tensor:
        """Mahalanobis distances ``[..., N]`` of rows ``x [..., N, d]``."""
        return mahalanobis(x, self.mean, self.u, self.inverse, self.a, self.isotropic)

    @staticmethod
    def leave_one_out(x: Tensor, n_features: Tensor, *, rows: int | None = None) -> Tensor:
        """``[..., r]``: each row's distance to the Gaussian of the other ``n − 1`` rows (for
        rows that are themselves in the fit, as kNN scores them); ``inf`` with fewer than 3
        rows. ``rows``: only that many rows, evenly spaced over ``x`` (each costs an ``O(n³)``
        fit; ``None``: every row, ``r = n``)."""
        n = x.shape[-2]
        picked = torch.arange(n, device=x.device)
        if rows is not None and rows < n:
            picked = torch.linspace(0, n - 1, rows, device=x.device).round().long()
        if n < 3:
            return torch.full(
                (*x.shape[:-2], len(picked)), float("inf"), dtype=x.dtype, device=x.device
            )
        keep = ~torch.eye(n, dtype=torch.bool, device=x.device)[picked]  # [r, n]
        others = x.unsqueeze(-3).expand(*x.shape[:-2], len(picked), n, x.shape[-1])
        others = others[..., keep, :].reshape(*x.shape[:-2], len(picked), n - 1, x.shape[-1])
        fitted = ShrunkGaussian(others, n_features.unsqueeze(-1))
        return fitted.distance(x[..., picked, :].unsqueeze(-2)).squeeze(-1)


def typical_scale(mean_distances: Tensor, fallback: Tensor) -> Tensor:
    """Median ``[...]`` of the finite leave-one-out mean distances ``[..., n]`` (``fallback``
    where none is finite), floored above 0. Of an even count, the lower middle value."""
    finite = torch.isfinite(mean_distances)
    value = torch.where(finite, mean_distances, torch.full_like(mean_distances, float("nan")))
    value = value.nanmedian(-1).values
    return torch.where(finite.any(-1), value, fallback).clamp_min(1e-12)


def log_ratio(d: Tensor, scale: Tensor) -> Tensor:
    # A row without any neighbour (inf) is as typical as the reference's own rows (log 1).
    d = torch.where(torch.isfinite(d), d, scale)
    # The floor: a duplicate row (distance 0) is very normal, but not infinitely so.
    return torch.log(d / scale + 0.01)


def mahalanobis(
    x: Tensor, mean: Tensor, u: Tensor, inverse: Tensor, a: Tensor, isotropic: Tensor
) -> Tensor:
    """:meth:`ShrunkGaussian.distance` from its stored parts (scriptable)."""
    return _centred_mahalanobis(x - mean, u, inverse, a, isotropic)[0]


def _centred_mahalanobis(
    v: Tensor, u: Tensor, inverse: Tensor, a: Tensor, isotropic: Tensor
) -> tuple[Tensor, Tensor]:
    """Distances ``[..., N]`` of rows ``v [..., N, d]`` already centred on the Gaussian's mean,
    and their products ``[..., N, n]`` with its centred rows ``u``."""
    proj = v @ u.transpose(-1, -2)
    quad = (proj @ inverse * proj).sum(-1)
    explained = torch.where(isotropic.unsqueeze(-1) > 0, torch.zeros_like(quad), quad)
    return ((v.pow(2).sum(-1) - explained) / a.unsqueeze(-1)).clamp_min(0.0).sqrt(), proj


def pool_gaussians(
    rows: Tensor, order: Tensor, n_features: Tensor, *, cap: int, trim: float
) -> list[Tensor]:
    """Two shrunk Gaussians of a pool ``rows [..., m, d]``, each fitted on one half of it in
    the seeded ``order [..., m]`` (at most ``cap`` rows a half), so that every pool row can be
    read by a Gaussian that never saw it (cross-fitting: a fitted row lies in its Gaussian's
    span and reads near, whatever it is). ``trim``: the fraction of each half farthest from the
    *other* half's Gaussian is dropped and both are refitted, so the anomalies an unlabelled
    pool holds shape the covariance less (as a minimum-covariance-determinant fit trims them,
    Rousseeuw 1984).

    Returns the stacked parts ``[mean [..., 2, 1, d], u [..., 2, h, d], inverse [..., 2, h, h],
    a [..., 2], isotropic [..., 2]]`` that :func:`pool_gaussian_distance` reads; empty tensors
    with fewer than 3 rows a half.
    """
    half = min(rows.shape[-2], 2 * cap) // 2
    kept = half - int(trim * half)
    if kept < 3:
        return [rows.new_zeros(0)] * 5
    index = order[..., : 2 * half].unsqueeze(-1).expand(*order.shape[:-1], 2 * half, rows.shape[-1])
    halves = torch.take_along_dim(rows, index, dim=-2).unflatten(-2, (2, half))  # [..., 2, h, d]
    counts = n_features.unsqueeze(-1)
    fitted = ShrunkGaussian(halves, counts)
    if kept < half:
        # Each half's rows as the other half's Gaussian reads them: keep the nearest ``kept``.
        other = fitted.distance(halves.flip(-3)).flip(-2)
        nearest = other.topk(kept, dim=-1, largest=False).indices.sort(-1).values
        halves = torch.take_along_dim(halves, nearest.unsqueeze(-1), dim=-2)
        fitted = ShrunkGaussian(halves, counts)
    return [fitted.mean, fitted.u, fitted.inverse, fitted.a, fitted.isotropic.to(rows.dtype)]


def pool_gaussian_distance(
    x: Tensor, mean: Tensor, u: Tensor, inverse: Tensor, a: Tensor, isotropic: Tensor
) -> Tensor:
    """Distances ``[..., N]`` of rows ``x [..., N, d]`` to the pool's two Gaussians
    (:func:`pool_gaussians`): their mean, or for a row that is one of a half's fitted rows the
    other half's distance alone (leave-one-out as every evidence). Scriptable."""
    parts: list[Tensor] = []
    block_rows = _block_rows(x)
    for start in range(0, x.shape[-2], block_rows):
        v = x[..., start : start + block_rows, :].unsqueeze(-3) - mean  # [..., 2, N, d]
        both, proj = _centred_mahalanobis(v, u, inverse, a, isotropic)  # [..., 2, N]
        # A fitted row of a half, found from the same products with its rows.
        v_sq, u_sq = v.pow(2).sum(-1, keepdim=True), u.pow(2).sum(-1).unsqueeze(-2)
        sq = (v_sq + u_sq - 2.0 * proj).clamp_min(0.0)
        own = _exact_match(sq, v_sq, u_sq).any(-1)  # [..., 2, N]
        first, second = both.unbind(-2)
        mean_of_two = (first + second) / 2.0
        parts.append(
            torch.where(own[..., 0, :], second, torch.where(own[..., 1, :], first, mean_of_two))
        )
    return torch.cat(parts, dim=-1)


def nearest_distance(x: Tensor, ref: Tensor) -> Tensor:
    """Distance ``[..., N]`` to the nearest row of ``ref`` (leave-one-out; ``inf`` if none)."""
    if ref.numel() == 0:  # none (an empty reference is stored as a 0-element buffer)
        return torch.full(x.shape[:-1], float("inf"), dtype=x.dtype, device=x.device)
    return sorted_distances(x, ref, 1)[..., 0]


def anomaly_evidence(za: Tensor, normals: Tensor, anomalies: Tensor) -> Tensor:
    """``[..., N, 1]`` ``log(d_normal / d_anomaly)``: positive nearer a labelled anomaly than
    any normal; 0 without a labelled anomaly (or without a neighbour of either kind)."""
    to_normal, to_anomaly = nearest_distance(za, normals), nearest_distance(za, anomalies)
    ratio = torch.log((to_normal + 1e-12) / (to_anomaly + 1e-12))
    both = torch.isfinite(to_normal) & torch.isfinite(to_anomaly)
    return torch.where(both, ratio, torch.zeros_like(ratio)).unsqueeze(-1)


class RidgeDiscriminant:
    """Ridge regression of the labels (normal −1, anomaly +1) on a support's rows: the linear
    model a few labelled anomalies support (as logistic regression on them does), fitted in its
    dual through the ``r × r`` Gram matrix of the ``r`` labelled rows (Saunders, Gammerman &
    Vovk, ICML 1998), so a few rows in a thousand dimensions cost ``O(r² d)``.

    Rows are centred on the midpoint of the two class means, and the ridge is
    ``ridge · tr(G) / r`` (``G`` the centred Gram matrix): a penalty relative to the rows' own
    spread, the same for any units or feature count. Scores are read relative to the normals,
    ``z = (w·x − offset) / scale``, ``offset`` and ``scale`` the mean and spread of the normals'
    *leave-one-out* predictions (the closed form ``(f_i − h_ii y_i) / (1 − h_ii)`` of a linear
    smoother, the centre held fixed; Hastie, Tibshirani & Friedman, *Elements of Statistical
    Learning*, §7.10), so an unseen normal reads about 0 whether or not the labelled rows are
    separable.

    Args:
        normals: ``[..., n, d]`` labelled normals (scaled).
        anomalies: ``[..., A, d]`` labelled anomalies, ``A ≥ 1``.
        ridge: the penalty relative to ``tr(G) / r``.
    """

    def __init__(self, normals: Tensor, anomalies: Tensor, ridge: float) -> None:
        n, a = normals.shape[-2], anomalies.shape[-2]
        rows = torch.cat([normals, anomalies], dim=-2)
        y = torch.cat([-normals.new_ones(n), normals.new_ones(a)])
        y = y.expand(*rows.shape[:-1])
        centre = (normals.mean(-2) + anomalies.mean(-2)) / 2.0
        centred = rows - centre.unsqueeze(-2)
        gram = centred @ centred.transpose(-1, -2)  # [..., r, r]
        eye = torch.eye(n + a, dtype=rows.dtype, device=rows.device)
        penalty = ridge * torch.diagonal(gram, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
        inverse = torch.linalg.inv(gram + penalty[..., None, None] * eye)
        dual = (inverse @ y.unsqueeze(-1)).squeeze(-1)  # [..., r]
        self.weight = (centred.transpose(-1, -2) @ dual.unsqueeze(-1)).squeeze(-1)  # [..., d]
        fitted = (gram @ dual.unsqueeze(-1)).squeeze(-1)
        # The hat matrix's diagonal h = diag(G (G + λI)⁻¹) lies in [0, 1) for λ > 0.
        hat = (gram * inverse.transpose(-1, -2)).sum(-1)
        loo = (fitted - hat * y) / (1.0 - hat)
        shift = (centre * self.weight).sum(-1)
        self.rows = rows
        self.loo = loo + shift.unsqueeze(-1)  # in the units of w·x
        normal_loo, anomaly_loo = self.loo[..., :n], self.loo[..., n:]
        self.offset = normal_loo.mean(-1)
        spread = (anomaly_loo.mean(-1) - self.offset).abs()
        floor = 1e-3 * self.loo.abs().mean(-1) + 1e-12
        self.scale = torch.maximum(
            normal_loo.std(-1, correction=0), torch.maximum(0.25 * spread, floor)
        )
        # How well the model separates the labelled rows it did not see: the leave-one-out
        # AUROC over (normal, anomaly) pairs, as 2·AUROC − 1 in [−1, 1].
        pairs = anomaly_loo.unsqueeze(-2) - normal_loo.unsqueeze(-1)  # [..., n, A]
        auroc = ((pairs > 0).to(rows.dtype) + 0.5 * (pairs == 0).to(rows.dtype)).mean((-1, -2))
        self.separation = 2.0 * auroc - 1.0


def linear_evidence(
    x: Tensor, rows: Tensor, loo: Tensor, weight: Tensor, offset: Tensor, scale: Tensor
) -> Tensor:
    """``[..., N, 1]``: ``asinh(z)`` of :class:`RidgeDiscriminant`'s normal-relative score of
    rows ``x [..., N, d]``, a row that is one of the fitted ``rows`` given its leave-one-out
    prediction; 0 without a fit (no labelled anomaly: ``rows`` empty). Scriptable."""
    if rows.numel() == 0 or x.shape[-2] == 0:
        return torch.zeros_like(x[..., :1])
    score = (x * weight.unsqueeze(-2)).sum(-1)  # [..., N]
    ref_sq = rows.pow(2).sum(-1).unsqueeze(-2)
    held_out: list[Tensor] = []
    block_rows = _block_rows(x)
    for start in range(0, x.shape[-2], block_rows):
        first = _expansion(x[..., start : start + block_rows, :], rows, ref_sq)[3]
        own = (first.to(x.dtype) * loo.unsqueeze(-2)).sum(-1)
        held_out.append(torch.where(first.any(-1), own, score[..., start : start + block_rows]))
    z = (torch.cat(held_out, dim=-1) - offset.unsqueeze(-1)) / scale.unsqueeze(-1)
    return torch.asinh(z).unsqueeze(-1)


__all__ = [
    "Metric",
    "RidgeDiscriminant",
    "ShrunkGaussian",
    "anomaly_evidence",
    "linear_evidence",
    "both_distances",
    "log_ratio",
    "mahalanobis",
    "nearest_distance",
    "pool_gaussian_distance",
    "pool_gaussians",
    "sorted_distances",
    "typical_scale",
]
