"""The distance heads' shared embedding ``[γ·x/√D, φ(x)]`` (``svdd``, ``knn``, ``gaussian``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metakd.models.teachers.base import Teacher
from metakd.models.teachers.config import ModelConfig


class _DistanceTeacher(Teacher):
    """Shared embedding of the distance heads: ``φ(x)``, or ``[γ·x/√D, φ(x)]`` with the input skip."""

    def __init__(self, input_dim: int, config: ModelConfig, *, bias: bool) -> None:
        super().__init__(
            [input_dim, *config.hidden, config.embedding_dim],
            activation=config.activation,
            bias=bias,
        )
        self.input_skip = config.input_skip
        # log γ: γ > 0 always, so the input part can fade but never flips sign.
        self.log_skip = nn.Parameter(torch.zeros(())) if config.input_skip else None
        width = config.embedding_dim + (input_dim if config.input_skip else 0)
        self.register_buffer("memory", torch.zeros(0, width))

    def embed(self, out: Tensor, x: Tensor) -> Tensor:
        """Embeddings ``[..., N, k (+ D)]`` from stack outputs and inputs."""
        if self.log_skip is None:
            return out
        scale = torch.exp(self.log_skip) / x.shape[-1] ** 0.5
        return torch.cat([scale * x, out], dim=-1)
