"""Distances in a teacher's embedding: the one masked kNN kernel, with the norm expansion's
floor against rounding noise (differentiable, vmap-safe: masks, never boolean indexing)."""

from __future__ import annotations

import torch
from torch import Tensor


def _expansion_distance(sq: Tensor, norms: Tensor) -> Tensor:
    """Distances from squared distances ``sq`` computed by the norm expansion
    ``‖a‖² + ‖b‖² − 2 a·b`` (``norms`` = ``‖a‖² + ‖b‖²``, same shape).

    In float32 the expansion is exact only to ~1e-7 × ``norms``, so a pair closer than
    ``1e-6 × norms`` is a duplicate: its distance is that floor, with no gradient. The square
    root's slope near 0 would otherwise multiply the expansion's rounding noise by up to 1e6: on
    a domain with repeated rows (ADBench mammography) an inner loop diverged to weights of 1e18
    whenever the thread count made two copies of a row embed a rounding error apart.
    """
    return _floored_sqrt(sq, (1e-6 * norms + 1e-12).detach())


def _floored_sqrt(sq: Tensor, floor: Tensor) -> Tensor:
    """``sqrt(max(sq, floor))``: the floor (no gradient) is :func:`_expansion_distance`'s."""
    return torch.maximum(sq, floor).sqrt()


def _pairwise_sq(e: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    """Squared distances ``[..., N, M]`` of rows ``e [..., N, E]`` to ``ref [..., M, E]`` by the
    norm expansion, and the ``‖e‖² + ‖r‖²`` they were computed from (its resolution)."""
    norms = e.pow(2).sum(-1, keepdim=True) + ref.pow(2).sum(-1).unsqueeze(-2)
    return norms - 2.0 * e @ ref.transpose(-1, -2), norms


def _masked_knn(e: Tensor, ref: Tensor, valid: Tensor, k: int) -> Tensor:
    """Mean distance ``[..., N]`` of rows ``e [..., N, E]`` to their ``k`` nearest valid rows of
    ``ref [..., M, E]`` (``valid [..., M]`` 1/0). A row's first exact match in ``ref`` is itself
    and never its own neighbour, so reference rows score leave-one-out, during training and when
    scored again later. Masks only, so it runs under vmap."""
    sq, norms = _pairwise_sq(e, ref)
    return _knn_mean(sq, norms, valid, k)


def _knn_mean(sq: Tensor, norms: Tensor, valid: Tensor, k: int) -> Tensor:
    """:func:`_masked_knn` from the squared distances and norms of :func:`_pairwise_sq` (or a
    block of columns of them, ``valid`` then that block's).

    The neighbours are chosen without gradient; only the chosen ``N × k`` squared distances are
    taken from the differentiable ``N × M`` matrix, so the square root, its floor and everything
    after them (and their second-order terms) run on ``k`` columns, not ``M``, and the top-k
    itself is never differentiated.
    """
    if sq.shape[-1] == 0 or sq.shape[-2] == 0:  # no rows to score, or nothing to score against
        return sq.sum(-1)
    with torch.no_grad():
        sq_, norms_ = sq.detach(), norms.detach()
        # float32 rounding of the norm expansion is ~1e-7 relative; distinct rows are far above.
        match = sq_ <= 1e-5 * norms_
        first = match & (match.cumsum(-1) == 1)
        ok = valid.unsqueeze(-2) * (~first).to(sq.dtype)
        nearest = sq_.masked_fill(ok == 0, float("inf"))
        index = nearest.topk(min(k, sq.shape[-1]), dim=-1, largest=False).indices
        keep = ok.gather(-1, index)
        floor = 1e-6 * norms_.gather(-1, index) + 1e-12
    distance = _floored_sqrt(sq.gather(-1, index), floor)
    return (distance * keep).sum(-1) / keep.sum(-1).clamp_min(1.0)


def _geometric_mean(d: Tensor, weight: Tensor) -> Tensor:
    """Weighted geometric mean over the last dimension of distances ``d`` (floored above 0)."""
    log_d = torch.log(d + 1e-12)
    return torch.exp((log_d * weight).sum(-1) / weight.sum(-1).clamp_min(1.0))
