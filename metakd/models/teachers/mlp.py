"""``model.kind: mlp``: an anomaly logit (OC-MAML, Frikha et al. 2021)."""

from __future__ import annotations

from torch import Tensor

from metakd.models.teachers.base import Reference, Teacher, register_kind
from metakd.models.teachers.config import ModelConfig


@register_kind("mlp")
class MLPScorer(Teacher):
    """MLP mapping a row to an anomaly logit (OC-MAML style, Frikha et al. 2021)."""

    use_when = "an anomaly logit (OC-MAML); best with labelled anomalies in every support"
    score_is_logit = True

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        super().__init__([input_dim, *config.hidden, 1], activation=config.activation)

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        return out.squeeze(-1)
