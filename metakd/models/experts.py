"""The pool's Gaussian as a second expert beside a fitted scorer: the share the teacher learned.

On natural-image embeddings the whole-image Gaussian of PaDiM-style detectors, fitted on the
unlabelled pool, ranks anomalies better than anything the profile teacher learns from its
evidences (RESULTS.md §11: 0.927 against the teacher's 0.886 on held-out MVTec AD categories);
on tables and sensor series it ranks them worse (0.75 against 0.79 on ADBench). Which one to
believe is a property of the collection, so the share ``λ`` of the Gaussian in the adapted
score is fitted after meta-training on the meta-train and meta-val domains
(:mod:`metakd.detect.pool_share`) and stored with the teacher; ``metakd adapt``
then scores

    (1 − λ) · (s − m_s) / σ_s + λ · (g − m_g) / σ_g,

``s`` the scorer's score, ``g`` the Mahalanobis distance to the pool's cross-fitted, trimmed
Ledoit–Wolf Gaussians (:func:`~metakd.models.evidence.pool_gaussians`), each standardised by
the support normals' median and spread so the two weigh alike whatever their units.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from metakd.models.evidence import pool_gaussian_distance, pool_gaussians
from metakd.models.subsample import seeded_order

#: The Gaussian parts' buffer names, in :func:`pool_gaussians`' order (and a saved mix's keys).
PARTS = ("mean", "u", "inverse", "a", "isotropic")


class PoolGaussianMix(nn.Module):
    """The mix of a scorer's scores with the pool Gaussian's distances (module docstring).

    Empty (no Gaussian) it returns the scores as they are, bitwise: every scorer holds one, so
    TorchScript sees one type. Buffers only (float64): it saves in a ``state_dict``, loads with
    ``weights_only`` and exports with the scorer.

    Args (as stored): ``mean``, ``u``, ``inverse``, ``a``, ``isotropic`` the two pool halves'
    Gaussians; ``terms`` ``[λ, m_s, σ_s, m_g, σ_g]``.
    """

    __jit_unused_properties__ = ["share"]  # noqa: RUF012 (TorchScript reads the name)

    if TYPE_CHECKING:
        mean: Tensor
        u: Tensor
        inverse: Tensor
        a: Tensor
        isotropic: Tensor
        terms: Tensor

    def __init__(self, parts: list[Tensor] | None = None, terms: Tensor | None = None) -> None:
        super().__init__()
        given = parts if parts is not None else [torch.zeros(0, dtype=torch.float64)] * 5
        for name, part in zip(PARTS, given, strict=True):
            self.register_buffer(name, part.detach().clone().to(torch.float64))
        self.register_buffer(
            "terms",
            torch.zeros(0, dtype=torch.float64)
            if terms is None
            else terms.detach().clone().to(torch.float64),
        )

    @staticmethod
    def fit(
        pool: Tensor,
        normals: Tensor,
        normal_scores: Tensor,
        *,
        share: float,
        seed: int,
        cap: int,
        trim: float,
    ) -> PoolGaussianMix | None:
        """The mix of a task: Gaussians of ``pool [m, d]`` (as the scorer reads rows; two
        seeded halves of at most ``cap`` rows, ``trim`` of each dropped), standardised by the
        support ``normals [n, d]`` and the scorer's leave-one-out ``normal_scores [n]`` of
        them. ``None`` (no mix) with too few pool rows for two Gaussians or no spread in
        either expert's scores of the normals."""
        rows = pool.detach().cpu().to(torch.float64)
        features = torch.tensor(float(rows.shape[-1]), dtype=torch.float64)
        order = seeded_order(rows.shape[0], seed)
        parts = pool_gaussians(rows, order, features, cap=cap, trim=trim)
        if parts[0].numel() == 0:
            return None
        mix = PoolGaussianMix(parts)
        return mix if mix.standardise(normals, normal_scores, share=share) else None

    def standardise(self, normals: Tensor, normal_scores: Tensor, *, share: float) -> bool:
        """Set the terms from the support ``normals`` and a scorer's scores of them (a student
        re-standardises its own); False, and nothing set, where either spread is 0."""
        scores = normal_scores.detach().cpu().to(torch.float64)
        distances = self.distance(normals)
        spreads = torch.stack([scores.std(correction=0), distances.std(correction=0)])
        if len(scores) < 2 or not bool((spreads > 1e-9).all()):
            return False
        centres = torch.stack([scores.quantile(0.5), distances.quantile(0.5)])
        self.terms = torch.stack(
            [
                torch.tensor(float(share), dtype=torch.float64),
                centres[0],
                spreads[0],
                centres[1],
                spreads[1],
            ]
        )
        return True

    def for_scores(self, normals: Tensor, normal_scores: Tensor) -> PoolGaussianMix | None:
        """The same Gaussians and share standardised for another scorer's scores (a
        student's), or ``None`` where :meth:`standardise` finds no spread."""
        other = PoolGaussianMix([getattr(self, name) for name in PARTS])
        return other if other.standardise(normals, normal_scores, share=self.share) else None

    @property
    def share(self) -> float:
        """``λ``; 0 for an empty mix."""
        return float(self.terms[0]) if self.terms.numel() else 0.0

    def distance(self, x: Tensor) -> Tensor:
        """``[N]`` Mahalanobis distances of rows ``x [N, d]`` to the pool's Gaussians (a pool
        row read by the half that did not fit it), float64."""
        return pool_gaussian_distance(
            x.to(torch.float64), self.mean, self.u, self.inverse, self.a, self.isotropic
        )

    def experts(self, x: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
        """The two experts the mix weighs, each standardised by the support normals: the
        scorer's ``scores [N]`` and the pool-Gaussian distances of rows ``x [N, d]`` (float64;
        a standardised mix only)."""
        _, centre, spread, g_centre, g_spread = self.terms.unbind()
        own = (scores.to(torch.float64) - centre) / spread
        return own, (self.distance(x) - g_centre) / g_spread

    def forward(self, x: Tensor, scores: Tensor) -> Tensor:
        """``scores [N]`` of rows ``x [N, d]`` mixed with their pool-Gaussian distances."""
        if self.terms.numel() == 0:
            return scores
        own, gaussian = self.experts(x, scores)
        share = self.terms[0]
        return ((1.0 - share) * own + share * gaussian).to(scores.dtype)


__all__ = ["PARTS", "PoolGaussianMix"]
