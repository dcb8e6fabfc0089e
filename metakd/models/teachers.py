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

TeacherKind = Literal["knn", "mlp", "svdd", "autoencoder"]
Reference = tuple[Tensor, ...]


@dataclass
class ModelConfig:
    """Architecture of the teacher."""

    kind: TeacherKind = "svdd"
    """``svdd``: embedding scored by squared distance to the centre of the support normals'
    embeddings (Deep SVDD, Ruff et al. 2018; a prototype, so it starts useful and generalises
    best in our held-out measurements); ``knn``: mean distance to the k nearest support normals'
    embeddings (a meta-learned metric); ``autoencoder``: reconstruction error; ``mlp``:
    x → anomaly logit (OC-MAML, Frikha et al. 2021)."""
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    """Hidden layer widths (for ``autoencoder``, the encoder's; the decoder mirrors them)."""
    embedding_dim: int = 32
    """Output width of ``knn`` and ``svdd``, bottleneck of ``autoencoder`` (unused by ``mlp``)."""
    neighbours: int = 5
    """k of the ``knn`` head (fewer when the support has fewer normals)."""
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    """Elementwise activation between layers."""

    def __post_init__(self) -> None:
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(
                f"hidden must be a non-empty list of positive widths, got {self.hidden}"
            )
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {self.embedding_dim}")
        if self.neighbours < 1:
            raise ValueError(f"neighbours must be positive, got {self.neighbours}")


class Teacher(nn.Module):
    """A stack of linear layers followed by a score head.

    Subclasses define the layer sizes and :meth:`head`. ``score_is_logit`` says whether scores are
    logits (BCE applies directly) or non-negative distances. Heads that score relative to the
    task's support (``uses_reference``) get a *reference* computed from the support normals'
    outputs; after adaptation it is stored in the ``memory`` buffer so the module scores alone.
    """

    score_is_logit: bool = False
    uses_reference: bool = False

    def __init__(self, sizes: list[int], *, activation: str, bias: bool = True) -> None:
        super().__init__()
        self.activation_name = activation
        self.layers = nn.ModuleList(
            nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.register_buffer("memory", torch.zeros(0, sizes[-1]))

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

    def load_weights(self, state_dict: dict[str, Tensor]) -> None:
        """``load_state_dict`` that accepts a stored reference of any size."""
        if "memory" in state_dict:
            self.memory = torch.empty_like(state_dict["memory"])
        self.load_state_dict(state_dict)

    def activation(self, x: Tensor) -> Tensor:
        return ACTIVATIONS[self.activation_name](x)

    def reference(self, out: Tensor, normal_weight: Tensor) -> Reference:
        """What :meth:`head` needs from the support: ``out [n, k]`` are the support rows' outputs
        and ``normal_weight [n]`` is 1 for normals, 0 for anomalies."""
        return ()

    def store_reference(self, reference: Reference) -> None:
        """Keep a task's reference in ``memory`` for standalone scoring."""

    def stored_reference(self) -> Reference:
        return ()

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        """Scores ``[..., N]`` from stack outputs ``out [..., N, k]`` and inputs ``x [..., N, d]``.

        ``leave_one_out``: ``out`` are the reference rows themselves; a row must not count as its
        own neighbour.
        """
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Anomaly scores ``[N]`` for rows ``x [N, d]`` with the module's own weights."""
        out, _ = stack_forward(self.stack_params(), x, activation=self.activation)
        return self.head(out, x, self.stored_reference())


class MLPScorer(Teacher):
    """MLP mapping a row to an anomaly logit (OC-MAML style, Frikha et al. 2021)."""

    score_is_logit = True

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        super().__init__([input_dim, *config.hidden, 1], activation=config.activation)

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        return out.squeeze(-1)


class SVDDNet(Teacher):
    """Embedding network scored by squared distance to a centre (Deep SVDD, Ruff et al. 2018).

    Bias-free, as Deep SVDD requires to rule out the trivial constant map. The centre is the mean
    embedding of the task's support normals.
    """

    uses_reference = True

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        super().__init__(
            [input_dim, *config.hidden, config.embedding_dim],
            activation=config.activation,
            bias=False,
        )

    def reference(self, out: Tensor, normal_weight: Tensor) -> Reference:
        w = normal_weight.unsqueeze(-1)
        return ((out * w).sum(-2) / w.sum(-2).clamp_min(1.0),)

    def store_reference(self, reference: Reference) -> None:
        self.memory = reference[0].detach().reshape(1, -1).clone()

    def stored_reference(self) -> Reference:
        return (self.memory[0],)

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        (centre,) = reference
        return (out - centre.unsqueeze(-2)).pow(2).sum(-1)


class KNNNet(Teacher):
    """Embedding network scored by the mean distance to the k nearest support normals.

    A meta-learned metric for kNN anomaly detection: at a random initialisation the embedding is
    a random-feature map, so the detector starts close to plain kNN on the scaled features, and
    meta-training shapes the metric across tasks. Neighbours are selected with masks (anomalous
    support rows and, in leave-one-out mode, the row itself are excluded), so it runs under vmap.
    """

    uses_reference = True

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        super().__init__(
            [input_dim, *config.hidden, config.embedding_dim], activation=config.activation
        )
        self.neighbours = config.neighbours

    def reference(self, out: Tensor, normal_weight: Tensor) -> Reference:
        return (out, normal_weight)

    def store_reference(self, reference: Reference) -> None:
        out, weight = reference
        self.memory = out[weight > 0].detach().clone()

    def stored_reference(self) -> Reference:
        return (self.memory, torch.ones(self.memory.shape[0], device=self.memory.device))

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        ref, weight = reference
        sq = (
            out.pow(2).sum(-1, keepdim=True)
            + ref.pow(2).sum(-1).unsqueeze(-2)
            - 2.0 * out @ ref.transpose(-1, -2)
        ).clamp_min(0.0)  # [..., N, n]
        valid = weight.unsqueeze(-2).expand_as(sq)
        if leave_one_out:
            valid = valid * (1.0 - torch.eye(sq.shape[-1], dtype=sq.dtype, device=sq.device))
        # Invalid neighbours sort last; only valid ones among the k nearest are averaged.
        big = sq.detach().max() + 1.0
        masked = sq + (1.0 - valid) * big
        k = min(self.neighbours, sq.shape[-1])
        nearest, index = masked.topk(k, dim=-1, largest=False)
        keep = valid.gather(-1, index)
        distance = (nearest * keep + 1e-12).sqrt() * keep
        return distance.sum(-1) / keep.sum(-1).clamp_min(1.0)


class AutoEncoder(Teacher):
    """Autoencoder scored by mean squared reconstruction error per row."""

    def __init__(self, input_dim: int, config: ModelConfig) -> None:
        encoder = [input_dim, *config.hidden, config.embedding_dim]
        super().__init__(encoder + encoder[-2::-1], activation=config.activation)

    def head(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        return (out - x).pow(2).mean(-1)


_KINDS: dict[str, type[Teacher]] = {
    "knn": KNNNet,
    "mlp": MLPScorer,
    "svdd": SVDDNet,
    "autoencoder": AutoEncoder,
}


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
    "KNNNet",
    "LogitScorer",
    "MLPScorer",
    "ModelConfig",
    "SVDDNet",
    "Teacher",
    "build_teacher",
    "count_parameters",
    "score_logits",
]
