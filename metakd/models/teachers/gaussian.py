"""``model.kind: gaussian``: Mahalanobis distance to a shrunk Gaussian of the task's normals.

The head fits a Gaussian to the embeddings of the support normals (and, with ``gaussian.pool``,
the unlabelled pool rows but the ``pool_trim`` share farthest from the normals) and scores a row
by its squared Mahalanobis distance

    d²(e) = (e - μ)ᵀ Σ*⁻¹ (e - μ),

with the Ledoit–Wolf (2004) shrunk covariance ``Σ* = (1 - s) S + s·m·I`` (``S`` the sample
covariance, ``m = tr S / p``, intensity ``s`` below). A few-shot support holds fewer rows than the
embedding has dimensions, so ``S`` is singular; shrinkage makes ``Σ*`` well conditioned with an
intensity estimated from the rows themselves.

Squared, not its root: ``d²`` is the negative log-density of the Gaussian up to the task's
constant ``log det Σ*`` (so the one-class inner loss is a log-mean negative log-likelihood), and
it is smooth where ``d`` is not (at the mean). Rankings, which is what AUROC and the ranking
losses read, are the same.

Everything is computed from Gram matrices of the rows, with weights as masks (never boolean
indexing), so it runs under ``torch.func.vmap`` and is differentiable to any order (the inner
loop's second-order meta-gradient goes through the covariance and its solves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from metakd.errors import ConfigError
from metakd.models.teachers.base import Reference, register_kind
from metakd.models.teachers.config import ModelConfig
from metakd.models.teachers.embedding import _DistanceTeacher

#: Floor of the shrunk covariance's isotropic part, as a fraction of the fit's mean variance
#: ``tr S / p``. Ledoit–Wolf's intensity is exactly 0 for two rows (their outer products are the
#: same) and the covariance of one row is 0: the floor keeps ``Σ*`` positive definite there (a
#: support of 3 normals scored leave-one-out is such a fit). Where the intensity is above it,
#: the estimate is Ledoit–Wolf's exactly.
MIN_VARIANCE = 1e-3


class _Fit(NamedTuple):
    """One weighted fit: ``rows [M, p]`` centred on the weighted mean ``mean [p]``, their Gram
    matrix ``gram [M, M]``, weights ``weight [M]`` (0 or 1), their sum ``total`` and the
    normalised weights ``share = weight / total``."""

    mean: Tensor
    rows: Tensor
    gram: Tensor
    weight: Tensor
    total: Tensor
    share: Tensor


def _fit(rows: Tensor, weight: Tensor) -> _Fit:
    count = weight.sum(-1)
    share = weight / count.clamp_min(1.0).unsqueeze(-1)
    mean = (share.unsqueeze(-1) * rows).sum(-2)
    centred = rows - mean.unsqueeze(-2)
    return _Fit(mean, centred, centred @ centred.transpose(-1, -2), weight, count, share)


def _intensity(trace: Tensor, frobenius: Tensor, fourth: Tensor, count: Tensor, p: int) -> Tensor:
    """Ledoit–Wolf (2004) shrinkage intensity ``s = min(b², d²) / d²`` (their Lemma 3.3 and
    Theorem 3.4, in the form of ``sklearn.covariance.ledoit_wolf_shrinkage``).

    From a fit's moments: ``trace = tr S``, ``frobenius = ‖S‖²_F``, ``fourth = Σ_k π_k ‖c_k‖⁴``
    (``c_k`` the centred rows, ``π_k`` their shares) and ``count = n``:
    ``d² = ‖S - m I‖²_F / p`` (dispersion about the target) and
    ``b̄² = (1 / n²) Σ_k ‖c_k c_kᵀ - S‖²_F / p = (Σ_k π_k ‖c_k‖⁴ - ‖S‖²_F) / (n p)`` (the
    estimation error of ``S``), ``b² = min(b̄², d²)``; ``s = 0`` where ``d² = 0``.
    """
    dispersion = (frobenius - trace.pow(2) / p) / p
    error = ((fourth - frobenius) / (p * count.clamp_min(1.0))).clamp_min(0.0)
    positive = dispersion > 0
    safe = torch.where(positive, dispersion, torch.ones_like(dispersion))
    return torch.where(positive, torch.minimum(error, safe) / safe, torch.zeros_like(safe))


def _moments(fit: _Fit) -> tuple[Tensor, Tensor, Tensor]:
    """``(tr S, ‖S‖²_F, Σ_k π_k ‖c_k‖⁴)`` of a fit, from its Gram matrix."""
    diag = fit.gram.diagonal(dim1=-2, dim2=-1)
    share = fit.share
    trace = (share * diag).sum(-1)
    frobenius = (share.unsqueeze(-1) * fit.gram.pow(2) * share.unsqueeze(-2)).sum((-1, -2))
    return trace, frobenius, (share * diag.pow(2)).sum(-1)


def ledoit_wolf(rows: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted mean, Ledoit–Wolf shrunk covariance and intensity of ``rows [..., M, p]``.

    ``weight [..., M]`` is 1 for the rows of the fit and 0 for the others: the result is
    ``sklearn.covariance.LedoitWolf`` on the rows with weight 1 (the sample covariance ``S`` is the
    maximum-likelihood one, divided by ``n``). The head never forms ``Σ*`` when ``p`` exceeds the
    number of rows; this function does, for inspection and tests.

    Returns:
        ``(mean [..., p], shrunk covariance [..., p, p], intensity [...])``.
    """
    fit = _fit(rows, weight)
    p = rows.shape[-1]
    trace, frobenius, fourth = _moments(fit)
    s = _intensity(trace, frobenius, fourth, fit.total, p)
    sample = fit.rows.transpose(-1, -2) @ (fit.share.unsqueeze(-1) * fit.rows)
    eye = torch.eye(p, dtype=rows.dtype, device=rows.device)
    target = (trace / p)[..., None, None] * eye
    s_ = s[..., None, None]
    return fit.mean, (1.0 - s_) * sample + s_ * target, s


def _quadratic(fit: _Fit, c: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """``q = cᵀ (α S + β I)⁻¹ c`` for rows ``c`` against a fit's sample covariance ``S``.

    ``alpha``, ``beta`` are ``[G]`` (one matrix per group) and ``c`` is ``[G, R, p]`` (``R`` rows
    scored against each); returns ``[G, R]``. With ``p`` at most the fit's ``M`` rows the
    ``p × p`` system is solved; with more dimensions than rows the ``M × M`` one of the Woodbury
    identity ``(β I + α CᵀΠC)⁻¹ = (I - α CᵀΠ½ (β I + α Π½ K Π½)⁻¹ Π½ C) / β`` is, so the cost is set
    by the smaller of the two. A solve rather than a Cholesky factor: the matrices are positive
    definite either way, and the backward pass of a solve needs only solves with the ``R``
    right-hand sides, where Cholesky's solves with square ones (5x slower at second order).
    """
    p, m = c.shape[-1], fit.rows.shape[-2]
    a, b = alpha[:, None, None], beta[:, None, None]
    if p <= m:
        sample = fit.rows.transpose(-1, -2) @ (fit.share.unsqueeze(-1) * fit.rows)
        eye = torch.eye(p, dtype=c.dtype, device=c.device)
        rhs = c.transpose(-1, -2)  # [G, p, R]
        return (rhs * torch.linalg.solve(a * sample + b * eye, rhs)).sum(-2)
    root = fit.share.clamp_min(0.0).sqrt()
    projected = root.unsqueeze(-1) * fit.gram * root.unsqueeze(-2)
    eye = torch.eye(m, dtype=c.dtype, device=c.device)
    g = root.unsqueeze(-1) * (fit.rows @ c.transpose(-1, -2))  # Π½ C cᵀ, [G, M, R]
    inner = (g * torch.linalg.solve(b * eye + a * projected, g)).sum(-2)
    return (c.pow(2).sum(-1) - alpha[:, None] * inner) / beta[:, None]


def mahalanobis(
    e: Tensor, reference: Tensor, weight: Tensor, *, leave_one_out: bool = False
) -> Tensor:
    """Squared Mahalanobis distances ``[N]`` of rows ``e [N, p]`` to the Ledoit–Wolf Gaussian of
    the ``reference [M, p]`` rows with ``weight [M]`` 1 (0: not in the fit).

    ``leave_one_out``: row ``i < M`` of ``e`` is reference row ``i`` and is scored against the
    fit without it, in closed form: with ``c = e_i - μ`` and ``n' = n - w_i``, the mean moves to
    ``μ - c w_i / n'``, the sample covariance is the rank-one downdate
    ``S' = (n S - r c cᵀ) / n'`` (``r = w_i n / n'``), and ``tr S'``, ``‖S'‖²_F`` and the fourth
    moments of the intensity follow from the Gram matrices; ``Σ*' = α S + β I - γ c cᵀ`` is then
    solved with one solve of ``α S + β I`` per row and Sherman–Morrison. Exactly the fit
    recomputed without the row, at ``O(M)`` extra moments per row.
    """
    fit = _fit(reference, weight)
    p = e.shape[-1]
    trace, frobenius, fourth = _moments(fit)
    n = fit.total
    c = e - fit.mean.unsqueeze(-2)  # [N, p]
    scale = trace / p
    if not leave_one_out:
        s = _intensity(trace, frobenius, fourth, n, p)
        beta = _floored(s * scale, scale)
        q = _quadratic(fit, c.unsqueeze(0), (1.0 - s).reshape(1), beta.reshape(1))
        return q[0]
    rows, m = e.shape[-2], reference.shape[-2]
    own = min(rows, m)
    self_weight = torch.cat([weight[:own], weight.new_zeros(rows - own)])  # [N]
    not_self = 1.0 - torch.eye(rows, m, dtype=e.dtype, device=e.device)
    cross = c @ fit.rows.transpose(-1, -2)  # [N, M]: c_iᵀ c_k
    norm = c.pow(2).sum(-1)  # [N]
    left = (n - self_weight).clamp_min(1.0)  # a row alone: no fit left, scored 0
    shift = self_weight / left  # the mean moves by -shift·c
    r = self_weight * n / left
    trace_i = (n * trace - r * norm) / left
    along = (fit.share * cross.pow(2)).sum(-1)  # cᵀ S c
    frobenius_i = (n.pow(2) * frobenius - 2 * n * r * along + r.pow(2) * norm.pow(2)) / left.pow(2)
    diag = fit.gram.diagonal(dim1=-2, dim2=-1)
    moved = diag + 2 * shift.unsqueeze(-1) * cross + (shift.pow(2) * norm).unsqueeze(-1)
    fourth_i = (weight * not_self * moved.pow(2)).sum(-1) / left
    s = _intensity(trace_i, frobenius_i, fourth_i, left, p)
    alpha = (1.0 - s) * n / left
    beta = _floored(s * trace_i / p, scale)
    gamma = (1.0 - s) * r / left
    q = _quadratic(fit, c.unsqueeze(-2), alpha, beta)[:, 0]
    # Sherman–Morrison: cᵀ (A - γ c cᵀ)⁻¹ c = q / (1 - γ q); the row's own offset is (1 + shift) c.
    tiny = torch.finfo(e.dtype).eps
    return (1.0 + shift).pow(2) * q / (1.0 - gamma * q).clamp_min(tiny)


def _floored(isotropic: Tensor, scale: Tensor) -> Tensor:
    """The shrunk covariance's isotropic part, at least :data:`MIN_VARIANCE` of the full fit's
    mean variance ``scale`` (and positive when every row is the same)."""
    floor = MIN_VARIANCE * scale + torch.finfo(scale.dtype).tiny ** 0.5
    return torch.maximum(isotropic, floor)


@dataclass
class GaussianConfig:
    """The ``gaussian`` teacher's fit ."""

    pool: bool = True
    """The task's unlabelled pool rows join the support normals in the Gaussian's fit, except
    the ``pool_trim`` share of them that lie farthest from the support normals' own Gaussian
    (possible anomalies). Few-shot supports hold far fewer rows than the embedding has
    dimensions; the mostly normal pool makes the covariance much better determined."""
    pool_trim: float = 0.2
    """Fraction of the pool, the rows with the largest distance under the support normals'
    Gaussian, left out of the fit."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.pool_trim < 1.0:
            raise ConfigError(f"gaussian.pool_trim must be in [0, 1), got {self.pool_trim!r}")


@register_kind("gaussian", settings=GaussianConfig)
class GaussianTeacher(_DistanceTeacher):
    """Embedding scored by squared Mahalanobis distance to the task's normals' shrunk Gaussian.

    The embedding is the stack's output, with ``input_skip`` next to the scaled input
    (``[γ·x/√D, φ(x)]``, as the other distance heads): the raw rows' own Gaussian is then part of
    the detector from the start, and ``γ`` is meta-learned. The reference is the rows the
    Gaussian is fitted on (support normals, then the kept pool rows) with their weights; the
    head recomputes the fit from them (:func:`mahalanobis`), so support rows are scored without
    themselves in their own mean and covariance. After adaptation the kept rows are stored in
    ``memory`` and the module scores alone.

    Cost: the fit solves a ``min(p, M)``-square system (``p`` embedding width, ``M`` rows of the
    fit) once per call, and once per row when scoring reference rows leave-one-out.
    """

    use_when = (
        "Mahalanobis distance to a shrunk Gaussian of the normals: normal rows that vary "
        "together, where joint deviations matter"
    )
    uses_reference = True

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        # Biases throughout, the last layer's included, though the distance does not change when
        # every embedding moves by the same vector (its gradient is zero): Reptile cannot return
        # a stack with some biases missing out of vmap.
        super().__init__(input_dim, config, bias=True)
        settings = config.section(GaussianConfig)
        self.uses_pool = settings.pool
        self.pool_trim = settings.pool_trim

    def reference(
        self,
        out: Tensor,
        x: Tensor,
        normal_weight: Tensor,
        pool_out: Tensor | None = None,
        pool_x: Tensor | None = None,
    ) -> Reference:
        ref = self.embed(out, x)
        if not self.uses_pool or pool_out is None or pool_x is None:
            return (ref, normal_weight)
        pool = self.embed(pool_out, pool_x)
        m = pool.shape[-2]
        if m == 0:
            return (ref, normal_weight)
        # Which pool rows join the fit is a choice, not a function to differentiate: rank them
        # under the support normals' own Gaussian, on values cut from the graph.
        distance = mahalanobis(pool.detach(), ref.detach(), normal_weight.detach())
        keep = max(1, round((1.0 - self.pool_trim) * m))
        last = distance.topk(keep, largest=False).values[..., -1:]
        pool_weight = (distance <= last).to(ref.dtype)
        return (torch.cat([ref, pool], dim=-2), torch.cat([normal_weight, pool_weight], dim=-1))

    def store_reference(self, reference: Reference) -> None:
        ref, weight = reference
        self.memory = ref[weight > 0].detach().clone()

    def stored_reference(self) -> Reference:
        return (self.memory, torch.ones_like(self.memory[..., 0]))

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        ref, weight = reference
        return mahalanobis(self.embed(out, x), ref, weight, leave_one_out=leave_one_out)


__all__ = ["MIN_VARIANCE", "GaussianTeacher", "ledoit_wolf", "mahalanobis"]
