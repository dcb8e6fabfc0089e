"""``model.kind: autoencoder``: mean squared reconstruction error per row."""

from __future__ import annotations

from torch import Tensor

from metakd.models.teachers.base import Reference, Teacher, register_kind
from metakd.models.teachers.config import ModelConfig


@register_kind("autoencoder")
class AutoEncoder(Teacher):
    """Autoencoder scored by mean squared reconstruction error per row."""

    use_when = "reconstruction error; normal rows near a low-dimensional surface"

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        encoder = [input_dim, *config.hidden, config.embedding_dim]
        super().__init__(encoder + encoder[-2::-1], activation=config.activation)

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        return (out - x).pow(2).mean(-1)
