"""``model.kind: svdd``: squared distance to the centre of the support normals' embeddings."""

from __future__ import annotations

from torch import Tensor

from metakd.models.teachers.base import Reference, register_kind
from metakd.models.teachers.config import ModelConfig
from metakd.models.teachers.embedding import _DistanceTeacher


@register_kind("svdd")
class SVDDNet(_DistanceTeacher):
    """Embedding network scored by squared distance to a centre (Deep SVDD, Ruff et al. 2018).

    Bias-free, as Deep SVDD requires to rule out the trivial constant map. The centre is the mean
    embedding of the task's support normals.
    """

    use_when = (
        "domains that share their features (one sensor rig, one embedding model): "
        "a meta-learned centre distance"
    )

    uses_reference = True

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        super().__init__(input_dim, config, bias=False)

    def reference(
        self,
        out: Tensor,
        x: Tensor,
        normal_weight: Tensor,
        pool_out: Tensor | None = None,
        pool_x: Tensor | None = None,
    ) -> Reference:
        w = normal_weight.unsqueeze(-1)
        return ((self.embed(out, x) * w).sum(-2) / w.sum(-2).clamp_min(1.0),)

    def store_reference(self, reference: Reference) -> None:
        self.memory = reference[0].detach().reshape(1, -1).clone()

    def stored_reference(self) -> Reference:
        return (self.memory[0],)

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        (centre,) = reference
        return (self.embed(out, x) - centre.unsqueeze(-2)).pow(2).sum(-1)
