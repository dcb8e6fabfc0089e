"""Deployable scorers: the per-task preprocessing plus a network, as one ``nn.Module``.

A deployed detector maps raw feature rows to anomaly scores (higher = more anomalous): scale with
the statistics fitted on the task's support and unlabelled pool, align to the network's width,
run the network. Students are small MLPs (``nn.Sequential``, or one inside a
:class:`DistanceStudent`) built from TorchScript-friendly modules, so the whole scorer exports to
TorchScript and runs without metakd installed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from metakd.errors import ConfigError
from metakd.models.experts import PoolGaussianMix
from metakd.models.profile import NeighbourProfile


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
    input_skip: bool | None = None
    """``distance`` head: add ``w · ‖x - c‖² / D`` inside the log (a learned centre ``c`` of the
    ``D`` inputs and weight ``w``), the student's copy of a teacher's input skip: the raw distance
    a teacher keeps spans all ``D`` directions and cannot pass through a 16-wide embedding
    (measured on MVTec: student-teacher AUROC gap 0.021 without, see benchmarks/RESULTS.md).
    ``null``: as the teacher."""

    def __post_init__(self) -> None:
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"student hidden widths must be positive, got {self.hidden}")
        if self.embedding_dim < 1:
            raise ConfigError(f"student embedding_dim must be positive, got {self.embedding_dim}")

    def resolved(self, *, teacher_is_logit: bool, teacher_skip: bool) -> StudentConfig:
        """This config with ``auto`` / ``null`` choices made to suit the teacher."""
        head = self.head if self.head != "auto" else "linear" if teacher_is_logit else "distance"
        skip = self.input_skip if self.input_skip is not None else teacher_skip
        return dataclasses.replace(self, head=head, input_skip=skip and head == "distance")


_ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


class DistanceStudent(nn.Module):
    """``[N, D] -> [N, 1]``: ``a · log(‖e(x)‖² + w · ‖x - c‖² / D + ε) + b``, the skip term only
    with ``input_skip``; ``e`` is an MLP, ``a``, ``b``, ``c``, ``w = exp(ρ)`` are learned."""

    def __init__(self, embed: nn.Sequential, input_dim: int, *, input_skip: bool) -> None:
        super().__init__()
        self.embed = embed
        self.skip = input_skip
        self.eps = 1e-6
        # Preprocessed rows are centred on the task's median, so the centre starts at 0.
        self.centre = nn.Parameter(torch.zeros(input_dim if input_skip else 0))
        self.log_skip = nn.Parameter(torch.zeros(1 if input_skip else 0))
        self.scale = nn.Parameter(torch.ones(1))
        self.offset = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        sq = self.embed(x).pow(2).sum(-1, keepdim=True)
        if self.skip:
            # One fused norm over the wide rows: (x - c).pow(2).mean() makes two more passes,
            # which cost more than the whole MLP on 1000 features.
            raw = torch.linalg.vector_norm(x - self.centre, dim=-1, keepdim=True).pow(2)
            sq = sq + torch.exp(self.log_skip) * raw / x.shape[-1]
        return self.scale * torch.log(sq + self.eps) + self.offset


def build_student(input_dim: int, config: StudentConfig) -> nn.Module:
    """The student ``[N, input_dim] -> [N, 1]``, a score on the teacher's normalised scale: an MLP
    with ``config.hidden`` widths, ending in one output (``linear`` head) or in an embedding
    scored by :class:`DistanceStudent` (``distance`` head). Choices must be resolved
    (:meth:`StudentConfig.resolved`)."""
    if config.head == "auto" or (config.head == "distance" and config.input_skip is None):
        raise ValueError("resolve the student config first (StudentConfig.resolved)")
    out = 1 if config.head == "linear" else config.embedding_dim
    sizes = [input_dim, *config.hidden, out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(_ACTIVATION_MODULES[config.activation]())
    mlp = nn.Sequential(*layers)
    if config.head == "linear":
        return mlp
    return DistanceStudent(mlp, input_dim, input_skip=bool(config.input_skip))


class Preprocessor(nn.Module):
    """Per-task scaling then feature alignment, fixed after fitting: ``[N, d] -> [N, D]``; with
    a neighbourhood profile, ``[N, D + P]``: the aligned rows, then each row's profile.

    Args:
        center, scale: ``[d]`` fitted on the task's support and unlabelled rows.
        clip: z-scores are clipped to ``±clip`` (``inf`` for none).
        projection: ``[d, D]`` alignment matrix, or ``None`` when features are used as they are.
        profile: the task's fitted :class:`NeighbourProfile`, or ``None``.
    """

    if TYPE_CHECKING:
        # The buffers registered in ``__init__``, for type checkers only: TorchScript reads class
        # annotations and cannot resolve the strings ``from __future__ import annotations`` makes.
        center: Tensor
        scale: Tensor
        inv_scale: Tensor
        shift: Tensor
        projection: Tensor

    def __init__(
        self,
        center: Tensor,
        scale: Tensor,
        clip: float,
        projection: Tensor | None,
        profile: NeighbourProfile | None = None,
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
        # Always a module (TorchScript needs one type); an empty one when unused.
        self.use_profile = profile is not None
        self.profile = (
            profile
            if profile is not None
            else NeighbourProfile.empty(neighbours=1, clip=1.0, n_features=self.input_dim)
        )

    @property
    def input_dim(self) -> int:
        return int(self.center.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        z = torch.addcmul(self.shift, x, self.inv_scale)
        if self.clip != float("inf"):
            z = z.clamp_(-self.clip, self.clip)
        out = z @ self.projection if self.use_projection else z
        if self.use_profile:
            out = torch.cat([out, self.profile(x, z)], dim=1)
        return out


class ScoreHead(nn.Module):
    """Wraps a network whose output is ``[N, 1]`` or ``[N]`` into scores ``[N]``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out.reshape(out.shape[0])


class DeployedScorer(nn.Module):
    """Raw rows ``[N, d]`` to anomaly scores ``[N]``; ``threshold`` flags anomalies. ``mix``:
    the pool Gaussian mixed into the net's scores (:class:`PoolGaussianMix`; none: an empty
    one, which leaves them as they are)."""

    def __init__(
        self,
        preprocess: Preprocessor,
        net: nn.Module,
        threshold: float,
        mix: PoolGaussianMix | None = None,
    ) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.net = net
        self.threshold = float(threshold)
        self.mix = mix if mix is not None else PoolGaussianMix()

    def forward(self, x: Tensor) -> Tensor:
        # Rows of any real dtype (float64 from NumPy, say) are cast to the fitted buffers' dtype:
        # the networks' weights would reject them. A no-op for float32 rows.
        x = x.to(self.preprocess.center.dtype)
        return self.mix(x, self.net(self.preprocess(x)))

    @torch.jit.export
    def predict(self, x: Tensor) -> Tensor:
        """1 where the score exceeds the threshold, else 0."""
        return (self.forward(x) > self.threshold).to(torch.int64)
