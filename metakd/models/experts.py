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
Ledoit–Wolf Gaussians (:func:`~metakd.models.evidence.pool_gaussians`), each standardised over
the pool (the median and standard deviation of its scores of the pool's rows), so the two weigh
alike whatever their units: the z-scores by which outlier ensembles combine their members'
scores of the data they score (Aggarwal & Sathe, *Outlier Ensembles*, 2017, §4.2; PyOD's
``standardizer``). The pool's hundreds of rows give each expert a steadier unit than the
support's ten normals, which weighed the experts before (RESULTS.md §11).

A third expert may share the scorer's part: the distance ``q`` to the ``k``-th nearest pool
row, ``k`` a fraction of the pool (5 %; ``profile.pool_knn_fraction``), in the rows' own units.
A density of the few nearest rows, as the profile's ``pool`` evidence reads it, calls a small
cluster of anomalies normal: its rows are each other's neighbours. With ``k`` above the
clusters' size they stay far (kNN's masking; Campos et al., *Data Min. Knowl. Disc.* 2016). On
tables that is where the support's evidence wins (RESULTS.md §11). With its share ``κ`` the
scorer's part reads ``(1 − κ) (s − m_s) / σ_s + κ (q − m_q) / σ_q``; ``κ`` is fitted with ``λ``
(``0`` or ``½``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from metakd.models.evidence import pool_gaussian_distance, pool_gaussians, sorted_distances
from metakd.models.profile_config import ProfileConfig
from metakd.models.subsample import seeded_order

#: The Gaussian parts' buffer names, in :func:`pool_gaussians`' order (and a saved mix's keys).
PARTS = ("mean", "u", "inverse", "a", "isotropic")


class PoolGaussianMix(nn.Module):
    """The mix of a scorer's scores with the pool Gaussian's distances (module docstring).

    Empty (no Gaussian) it returns the scores as they are, bitwise: every scorer holds one, so
    TorchScript sees one type. Buffers only (float64): it saves in a ``state_dict``, loads with
    ``weights_only`` and exports with the scorer.

    Args (as stored): ``mean``, ``u``, ``inverse``, ``a``, ``isotropic`` the two pool halves'
    Gaussians; ``reference [m, d]`` the kNN expert's pool rows (empty without it); ``terms``
    ``[λ, m_s, σ_s, m_g, σ_g, κ, m_q, σ_q, k]`` (mixes saved before the kNN expert hold the
    first five: ``κ = 0``).
    """

    # TorchScript reads the name; the properties serve Python callers only.
    __jit_unused_properties__ = ["share", "knn_share"]  # noqa: RUF012

    if TYPE_CHECKING:
        mean: Tensor
        u: Tensor
        inverse: Tensor
        a: Tensor
        isotropic: Tensor
        reference: Tensor
        terms: Tensor

    def __init__(
        self,
        parts: list[Tensor] | None = None,
        terms: Tensor | None = None,
        reference: Tensor | None = None,
    ) -> None:
        super().__init__()
        given = parts if parts is not None else [torch.zeros(0, dtype=torch.float64)] * 5
        for name, part in zip(PARTS, given, strict=True):
            self.register_buffer(name, part.detach().clone().to(torch.float64))
        self.register_buffer(
            "reference",
            torch.zeros(0, dtype=torch.float64)
            if reference is None
            else reference.detach().clone().to(torch.float64),
        )
        self.register_buffer(
            "terms",
            torch.zeros(0, dtype=torch.float64)
            if terms is None
            else terms.detach().clone().to(torch.float64),
        )
        # The kNN expert's k as a plain int (also the terms' last, which save it): an exported
        # graph slices by it, and ONNX takes no slice bound computed from a float tensor.
        self.k = int(self.terms[8]) if self.terms.numel() > 5 else 0

    @staticmethod
    def fit(
        pool: Tensor,
        pool_scores: Tensor,
        *,
        share: float,
        knn_share: float,
        seed: int,
        sizes: ProfileConfig,
    ) -> PoolGaussianMix | None:
        """The mix of a task: Gaussians of ``pool [m, d]`` (as the scorer reads rows; two
        seeded halves of at most ``sizes.max_gaussian`` rows, ``sizes.pool_trim`` of each
        dropped) and, with ``knn_share`` ``κ > 0``, the kNN expert's reference (at most
        ``sizes.max_pool`` seeded pool rows, :meth:`sample`; ``k`` =
        ``sizes.pool_knn_fraction`` of them, at least ``sizes.neighbours``), each expert
        standardised over those rows, the scorer by its ``pool_scores [m]``. ``None`` (no mix)
        with too few pool rows for two Gaussians or no spread in an expert's scores."""
        rows = pool.detach().cpu().to(torch.float64)
        features = torch.tensor(float(rows.shape[-1]), dtype=torch.float64)
        order = seeded_order(rows.shape[0], seed)
        parts = pool_gaussians(rows, order, features, cap=sizes.max_gaussian, trim=sizes.pool_trim)
        if parts[0].numel() == 0:
            return None
        sample = PoolGaussianMix.sample(len(rows), seed=seed, sizes=sizes)
        reference, k = None, 0
        if knn_share > 0:
            reference = rows[sample]
            k = round(sizes.pool_knn_fraction * len(reference))
            k = min(max(sizes.neighbours, k), len(reference))
        mix = PoolGaussianMix(parts, reference=reference)
        done = mix.standardise(
            rows[sample], pool_scores[sample], share=share, knn_share=knn_share, k=k
        )
        return mix if done else None

    @staticmethod
    def sample(rows: int, *, seed: int, sizes: ProfileConfig) -> Tensor:
        """Indices of the pool rows (of ``rows``) the experts are standardised over, and the
        kNN expert's reference: at most ``sizes.max_pool``, seeded, so the cost is bounded
        whatever the pool's size (the same rows for every scorer of one pool)."""
        return seeded_order(rows, seed)[: sizes.max_pool]

    def standardise(
        self, rows: Tensor, scores: Tensor, *, share: float, knn_share: float, k: int
    ) -> bool:
        """Set the terms from pool ``rows [r, d]`` and a scorer's ``scores [r]`` of them (a
        student re-standardises its own): each expert's median and standard deviation over
        them. False, and nothing set, where an expert's spread is 0."""
        own = scores.detach().cpu().to(torch.float64)
        experts = [own, self.distance(rows)]
        if knn_share > 0:
            experts.append(self._kth(rows.to(torch.float64), k))
        spreads = torch.stack([e.std(correction=0) for e in experts])
        if len(own) < 2 or not bool((spreads > 1e-9).all()):
            return False
        centres = torch.stack([e.quantile(0.5) for e in experts])
        terms = [float(share), centres[0], spreads[0], centres[1], spreads[1]]
        if knn_share > 0:
            terms += [float(knn_share), centres[2], spreads[2], float(k)]
        self.terms = torch.stack([torch.as_tensor(t, dtype=torch.float64) for t in terms])
        self.k = k if knn_share > 0 else 0
        return True

    def for_scores(
        self, pool_scores: Tensor, *, seed: int, sizes: ProfileConfig
    ) -> PoolGaussianMix | None:
        """The same experts and shares for another scorer (a student): only the scorer's own
        terms change, its median and standard deviation over the rows :meth:`fit` read
        (:meth:`sample`, with the same ``seed`` and ``sizes``) from its ``pool_scores [m]``;
        the pool experts' terms do not depend on the scorer. ``None`` where those scores have
        no spread."""
        sample = PoolGaussianMix.sample(len(pool_scores), seed=seed, sizes=sizes)
        own = pool_scores.detach().cpu().to(torch.float64)[sample]
        spread = own.std(correction=0)
        if len(own) < 2 or not bool(spread > 1e-9):
            return None
        terms = self.terms.clone()
        terms[1], terms[2] = own.quantile(0.5), spread
        return PoolGaussianMix(
            [getattr(self, name) for name in PARTS], terms, reference=self.reference
        )

    @property
    def share(self) -> float:
        """``λ``; 0 for an empty mix."""
        return float(self.terms[0]) if self.terms.numel() else 0.0

    @property
    def knn_share(self) -> float:
        """``κ``; 0 for a mix without the kNN expert."""
        return float(self.terms[5]) if self.terms.numel() > 5 else 0.0

    def _kth(self, x: Tensor, k: int) -> Tensor:
        """``[N]`` distances of rows ``x [N, d]`` to their ``k``-th nearest reference row (a
        reference row's own match left out)."""
        return sorted_distances(x, self.reference, k)[..., -1]

    def distance(self, x: Tensor) -> Tensor:
        """``[N]`` Mahalanobis distances of rows ``x [N, d]`` to the pool's Gaussians (a pool
        row read by the half that did not fit it), float64."""
        return pool_gaussian_distance(
            x.to(torch.float64), self.mean, self.u, self.inverse, self.a, self.isotropic
        )

    def standardised(self, x: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Each expert standardised over the pool: the scorer's ``scores [N]``, the
        kNN expert's distances of rows ``x [N, d]`` (empty without it) and their pool-Gaussian
        distances (float64; a standardised mix only)."""
        centre, spread, g_centre, g_spread = self.terms[1:5].unbind()
        own = (scores.to(torch.float64) - centre) / spread
        gaussian = (self.distance(x) - g_centre) / g_spread
        knn = own.new_zeros(0)
        if self.reference.numel() > 0:
            q_centre, q_spread = self.terms[6], self.terms[7]
            knn = (self._kth(x.to(torch.float64), self.k) - q_centre) / q_spread
        return own, knn, gaussian

    def experts(self, x: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
        """The two parts the mix weighs (:meth:`standardised`): the scorer's (with the kNN
        expert's share ``κ`` of it, where it has one) and the pool Gaussian's."""
        own, knn, gaussian = self.standardised(x, scores)
        if knn.numel() > 0:
            own = (1.0 - self.terms[5]) * own + self.terms[5] * knn
        return own, gaussian

    def forward(self, x: Tensor, scores: Tensor) -> Tensor:
        """``scores [N]`` of rows ``x [N, d]`` mixed with their pool-Gaussian distances."""
        if self.terms.numel() == 0:
            return scores
        own, gaussian = self.experts(x, scores)
        share = self.terms[0]
        return ((1.0 - share) * own + share * gaussian).to(scores.dtype)


__all__ = ["PARTS", "PoolGaussianMix"]
