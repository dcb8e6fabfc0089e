"""Teacher networks: plain ``nn.Module`` stacks of linear layers with a score head.

All three are driven functionally during meta-learning (:mod:`metakd.meta.inner` passes per-task
:class:`~metakd.models.stack.StackParams`); ``forward`` uses the module's own weights, so a
teacher with adapted weights loaded is an ordinary standalone scorer. No BatchNorm: running
statistics would leak across tasks inside inner loops.

Scores follow PyOD's convention: higher means more anomalous.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from metakd.models.stack import ACTIVATIONS, StackParams, stack_forward

TeacherKind = Literal["mlp", "svdd", "autoencoder"]


@dataclass
class ModelConfig:
    """Architecture of the teacher."""

    kind: TeacherKind = "mlp"
    """``mlp``: x → anomaly logit; ``svdd``: embedding scored by squared distance to the centre of
    the support normals' embeddings (Deep SVDD, Ruff et al. 2018); ``autoencoder``: reconstruction
    error."""
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    """Hidden layer widths (for ``autoencoder``, the encoder's; the decoder mirrors them)."""
    embedding_dim: int = 32
    """Output width of ``svdd`` and bottleneck of ``autoencoder`` (unused by ``mlp``)."""
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    """Elementwise activation between layers."""

    def __post_init__(self) -> None:
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(
                f"hidden must be a non-empty list of positive widths, got {self.hidden}"
            )
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {self.embedding_dim}")


class Teacher(nn.Module):
    """A stack of linear layers followed by a score head.

    Subclasses define the layer sizes and :meth:`head`. ``score_is_logit`` says whether scores are
    logits (BCE applies directly) or non-negative distances.
    """

    score_is_logit: bool = False
    needs_centre: bool = False

    def __init__(self, sizes: list[int], *, activation: str, bias: bool = True) -> None:
        super().__init__()
        self.activation_name = activation
        self.layers = nn.ModuleList(
            nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        # Deployment-time centre for centre-based heads (set after adaptation).
        self.register_buffer("centre", torch.zeros(sizes[-1]) if self.needs_centre else None)

    @property
    def input_dim(self) -> int:
        return self.layers[0].in_features

    def stack_params(self) -> StackParams:
        """The module's own weights as un-adapted :class:`StackParams` (differentiable)."""
        return StackParams.from_layers([(layer.weight, layer.bias) for layer in self.layers])

    def load_stack(self, params: StackParams) -> None:
        """Copy (materialised) per-task parameters into the module's weights, in place."""
        with torch.no_grad():
            for layer, (w, b) in zip(self.layers, params.materialize(), strict=True):
                layer.weight.copy_(w)
                if b is not None:
                    layer.bias.copy_(b)

    def activation(self, x: Tensor) -> Tensor:
        return ACTIVATIONS[self.activation_name](x)

    def head(self, out: Tensor, x: Tensor, centre: Tensor | None) -> Tensor:
        """Scores ``[..., N]`` from stack outputs ``out [..., N, k]`` and inputs ``x [..., N, d]``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Anomaly scores ``[N]`` for rows ``x [N, d]`` with the module's own weights."""
        out, _ = stack_forward(self.stack_params(), x, activation=self.activation)
        return self.head(out, x, self.centre)


class MLPScorer(Teacher):
    """MLP mapping a row to an anomaly logit (OC-MAML style, Frikha et al. 2021)."""

    score_is_logit = True

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        super().__init__([input_dim, *config.hidden, 1], activation=config.activation)

    def head(self, out: Tensor, x: Tensor, centre: Tensor | None) -> Tensor:
        return out.squeeze(-1)


class SVDDNet(Teacher):
    """Embedding network scored by squared distance to a centre (Deep SVDD, Ruff et al. 2018).

    Bias-free, as Deep SVDD requires to rule out the trivial constant map. During meta-learning
    the centre is the mean embedding of the task's support normals.
    """

    needs_centre = True

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        super().__init__(
            [input_dim, *config.hidden, config.embedding_dim],
            activation=config.activation,
            bias=False,
        )

    def head(self, out: Tensor, x: Tensor, centre: Tensor | None) -> Tensor:
        assert centre is not None
        return (out - centre.unsqueeze(-2)).pow(2).sum(-1)


class AutoEncoder(Teacher):
    """Autoencoder scored by mean squared reconstruction error per row."""

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        encoder = [input_dim, *config.hidden, config.embedding_dim]
        super().__init__(encoder + encoder[-2::-1], activation=config.activation)

    def head(self, out: Tensor, x: Tensor, centre: Tensor | None) -> Tensor:
        return (out - x).pow(2).mean(-1)


_KINDS: dict[str, type[Teacher]] = {"mlp": MLPScorer, "svdd": SVDDNet, "autoencoder": AutoEncoder}


def build_teacher(input_dim: int, config: ModelConfig) -> Teacher:
    """Instantiate the teacher for ``input_dim`` features."""
    return _KINDS[config.kind](input_dim, config)  # type: ignore[call-arg]


class LogitScorer(nn.Module):
    """A teacher whose scores are mapped to the logit-like scale (see :func:`score_logits`)."""

    def __init__(self, teacher: Teacher) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, x: Tensor) -> Tensor:
        return score_logits(self.teacher, self.teacher(x))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def score_logits(teacher: Teacher, scores: Tensor) -> Tensor:
    """Map scores to an unbounded logit-like scale (identity for logits, log for distances)."""
    return scores if teacher.score_is_logit else torch.log(scores + 1e-6)


__all__ = [
    "AutoEncoder",
    "LogitScorer",
    "MLPScorer",
    "ModelConfig",
    "SVDDNet",
    "Teacher",
    "build_teacher",
    "count_parameters",
    "score_logits",
]
