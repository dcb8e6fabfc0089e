"""Deployable scorers: the per-task preprocessing plus a network, as one ``nn.Module``.

A deployed detector maps raw feature rows to anomaly scores (higher = more anomalous): scale with
the statistics fitted on the task's support and unlabelled pool, align to the network's width,
run the network. Students are plain ``nn.Sequential`` MLPs so the whole scorer exports to
TorchScript and runs without metakd installed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn


@dataclass
class StudentConfig:
    """Architecture of the distilled per-task student."""

    hidden: list[int] = field(default_factory=lambda: [16])
    """Hidden widths of the student MLP (small: it is deployed per task)."""
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    """Activation between layers."""
    head: Literal["auto", "linear", "distance"] = "auto"
    """``linear``: the MLP's output is the score. ``distance``: the MLP outputs an embedding
    ``e`` and the score is ``a · log(‖e‖² + ε) + b`` (learned ``a``, ``b``), the shape of a distance
    teacher's log-distance to its centre, so the student grows away from the data as the teacher
    does instead of flattening out where it saw no rows. ``auto``: ``distance`` for distance
    teachers, ``linear`` for logit teachers."""
    embedding_dim: int = 16
    """Width of the embedding ``e`` of the ``distance`` head."""

    def __post_init__(self) -> None:
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"student hidden widths must be positive, got {self.hidden}")
        if self.embedding_dim < 1:
            raise ValueError(f"student embedding_dim must be positive, got {self.embedding_dim}")

    def resolved(self, *, teacher_is_logit: bool) -> StudentConfig:
        """This config with ``head: auto`` replaced by the head that suits the teacher."""
        if self.head != "auto":
            return self
        return dataclasses.replace(self, head="linear" if teacher_is_logit else "distance")


_ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


class LogSquaredNorm(nn.Module):
    """``[N, k] -> [N, 1]``: ``a · log(‖e‖² + ε) + b`` with learned scalars ``a`` and ``b``."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(1))
        self.offset = nn.Parameter(torch.zeros(1))

    def forward(self, e: Tensor) -> Tensor:
        return self.scale * torch.log(e.pow(2).sum(-1, keepdim=True) + self.eps) + self.offset


def build_student(input_dim: int, config: StudentConfig) -> nn.Sequential:
    """The student ``[N, input_dim] -> [N, 1]``, a score on the teacher's normalised scale: an MLP
    with ``config.hidden`` widths, ending in one output (``linear`` head) or in an embedding and
    :class:`LogSquaredNorm` (``distance`` head). ``head`` must be resolved (not ``auto``)."""
    if config.head == "auto":
        raise ValueError("resolve the student head first (StudentConfig.resolved)")
    out = 1 if config.head == "linear" else config.embedding_dim
    sizes = [input_dim, *config.hidden, out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(_ACTIVATION_MODULES[config.activation]())
    if config.head == "distance":
        layers.append(LogSquaredNorm())
    return nn.Sequential(*layers)


class Preprocessor(nn.Module):
    """Per-task scaling then feature alignment, fixed after fitting: ``[N, d] -> [N, D]``.

    Args:
        center, scale: ``[d]`` fitted on the task's support and unlabelled rows.
        clip: z-scores are clipped to ``±clip`` (``inf`` for none).
        projection: ``[d, D]`` alignment matrix, or ``None`` when features are used as they are.
    """

    def __init__(
        self, center: Tensor, scale: Tensor, clip: float, projection: Tensor | None
    ) -> None:
        super().__init__()
        self.register_buffer("center", center.detach().clone().float())
        self.register_buffer("scale", scale.detach().clone().float())
        # (x - c) / s == x * (1/s) + (-c/s): one fused addcmul instead of two passes over x, which
        # matters because a small student costs less per row than elementwise work on wide rows.
        self.register_buffer("inv_scale", 1.0 / self.scale)
        self.register_buffer("shift", -self.center / self.scale)
        self.clip = float(clip)
        self.use_projection = projection is not None
        self.register_buffer(
            "projection",
            projection.detach().clone().float() if projection is not None else torch.zeros(0, 0),
        )

    @property
    def input_dim(self) -> int:
        return int(self.center.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        z = torch.addcmul(self.shift, x, self.inv_scale)
        if self.clip != float("inf"):
            z = z.clamp_(-self.clip, self.clip)
        if self.use_projection:
            z = z @ self.projection
        return z


class ScoreHead(nn.Module):
    """Wraps a network whose output is ``[N, 1]`` or ``[N]`` into scores ``[N]``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out.reshape(out.shape[0])


class DeployedScorer(nn.Module):
    """Raw rows ``[N, d]`` to anomaly scores ``[N]``; ``threshold`` flags anomalies."""

    def __init__(self, preprocess: Preprocessor, net: nn.Module, threshold: float) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.net = net
        self.threshold = float(threshold)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.preprocess(x))

    @torch.jit.export
    def predict(self, x: Tensor) -> Tensor:
        """1 where the score exceeds the threshold, else 0."""
        return (self.forward(x) > self.threshold).to(torch.int64)
