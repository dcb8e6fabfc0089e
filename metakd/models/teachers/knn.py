"""``model.kind: knn``: mean distance to the k nearest reference rows in a meta-learned metric."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metakd.models.teachers.base import Reference, register_kind
from metakd.models.teachers.config import ModelConfig
from metakd.models.teachers.distance import _expansion_distance
from metakd.models.teachers.embedding import _DistanceTeacher


@register_kind("knn")
class KNNNet(_DistanceTeacher):
    """Embedding network scored by the mean distance to the k nearest reference rows.

    A meta-learned metric for kNN anomaly detection. The reference is the support normals and,
    with ``pool_neighbours``, the unlabelled pool rows, whose distances count ``c`` times (a
    meta-learned trust in the pool). With the input skip the detector starts as plain kNN on
    the scaled features and meta-training shapes the metric across tasks. Neighbours are selected
    with masks (anomalous support rows and, in leave-one-out mode, the row itself are excluded),
    so it runs under vmap.
    """

    use_when = "as svdd, scored by the nearest support normals (and pool rows) in a learned metric"
    uses_reference = True

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        super().__init__(input_dim, config, bias=True)
        self.neighbours = config.neighbours
        self.uses_pool = config.pool_neighbours
        self.log_pool_factor = nn.Parameter(torch.zeros(())) if config.pool_neighbours else None
        # Stored reference for standalone scoring: embeddings (memory), each row's distance factor.
        self.register_buffer("memory_factor", torch.zeros(0))

    def reference(
        self,
        out: Tensor,
        x: Tensor,
        normal_weight: Tensor,
        pool_out: Tensor | None = None,
        pool_x: Tensor | None = None,
    ) -> Reference:
        ref = self.embed(out, x)
        factor = torch.ones_like(normal_weight)
        if self.log_pool_factor is not None and pool_out is not None and pool_x is not None:
            ref = torch.cat([ref, self.embed(pool_out, pool_x)], dim=-2)
            pool_factor = torch.exp(self.log_pool_factor).expand(pool_out.shape[:-1])
            factor = torch.cat([factor, pool_factor], dim=-1)
            normal_weight = torch.cat([normal_weight, torch.ones_like(pool_factor)], dim=-1)
        return (ref, normal_weight, factor)

    def store_reference(self, reference: Reference) -> None:
        ref, weight, factor = reference
        keep = weight > 0
        self.memory = ref[keep].detach().clone()
        self.memory_factor = factor[keep].detach().clone()

    def stored_reference(self) -> Reference:
        return (self.memory, torch.ones_like(self.memory_factor), self.memory_factor)

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        ref, weight, factor = reference
        e = self.embed(out, x)
        norms = e.pow(2).sum(-1, keepdim=True) + ref.pow(2).sum(-1).unsqueeze(-2)
        sq = norms - 2.0 * e @ ref.transpose(-1, -2)  # [..., N, n]
        valid = weight.unsqueeze(-2).expand_as(sq)
        if leave_one_out:
            # Row i is reference row i (support first, then pool): never its own neighbour.
            eye = torch.eye(sq.shape[-2], sq.shape[-1], dtype=sq.dtype, device=sq.device)
            valid = valid * (1.0 - eye)
        distance = _expansion_distance(sq, norms) * factor.unsqueeze(-2)
        if distance.numel() == 0:  # no rows to score (an empty pool)
            return distance.sum(-1)
        # Invalid neighbours sort last; only valid ones among the k nearest are averaged.
        big = distance.detach().max() + 1.0
        masked = distance + (1.0 - valid) * big
        k = min(self.neighbours, sq.shape[-1])
        nearest, index = masked.topk(k, dim=-1, largest=False)
        keep = valid.gather(-1, index)
        return (nearest * keep).sum(-1) / keep.sum(-1).clamp_min(1.0)
