"""The teacher interface, the registry of ``model.kind`` and the score scale.

A teacher is a plain ``nn.Module`` stack of linear layers with a score head, driven
functionally during meta-learning (:mod:`metakd.meta.inner` passes per-task
:class:`~metakd.models.stack.StackParams`); ``forward`` uses the module's own weights, so a
teacher with adapted weights loaded is an ordinary standalone scorer. No BatchNorm: running
statistics would leak across tasks inside inner loops. Scores follow PyOD's convention: higher
means more anomalous.

A kind is a :class:`Teacher` subclass decorated ``@register_kind("name")`` in a module of
:mod:`metakd.models.teachers` (the package imports each); ``model.kind: name`` then builds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, TypeVar, cast

import torch
from torch import Tensor, nn

from metakd.errors import ConfigError
from metakd.models.stack import ACTIVATIONS, StackParams, stack_forward
from metakd.models.teachers.config import KIND_SETTINGS, ModelConfig

Reference = tuple[Tensor, ...]


class Teacher(nn.Module):
    """A stack of linear layers followed by a score head.

    Subclasses define the layer sizes and :meth:`head`. ``score_is_logit`` says whether scores are
    logits (BCE applies directly) or non-negative distances. Heads that score relative to the
    task's support (``uses_reference``) get a *reference* computed from the support normals'
    outputs; after adaptation it is stored in the ``memory`` buffer so the module scores alone.
    """

    use_when: ClassVar[str] = ""
    """One line for users choosing ``model.kind``: what it scores and when to use it."""
    score_is_logit: bool = False
    uses_reference: bool = False
    uses_pool: bool = False
    input_skip: bool = False
    profile_width: int = 0
    """Trailing columns of each input row that hold its neighbourhood profile (0: none)."""
    memory: Tensor
    """Buffer: the stored reference's rows (see :meth:`store_reference`)."""

    def __init__(self, sizes: list[int], *, activation: str, bias: bool = True) -> None:
        super().__init__()
        self.activation_name = activation
        self.layers = nn.ModuleList(
            nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.register_buffer("memory", torch.zeros(0, sizes[-1]))

    def linear_layers(self) -> list[nn.Linear]:
        """The stack's layers, in order (``self.layers`` holds only ``nn.Linear``)."""
        # nn.ModuleList is not generic: its items are typed as plain nn.Module.
        return [cast(nn.Linear, layer) for layer in self.layers]

    @property
    def input_dim(self) -> int:
        return self.linear_layers()[0].in_features

    def stack_params(self) -> StackParams:
        """The module's own weights as un-adapted :class:`StackParams` (differentiable)."""
        return StackParams.from_layers(
            [(layer.weight, layer.bias) for layer in self.linear_layers()]
        )

    def load_stack(self, params: StackParams) -> None:
        """Copy (materialised) per-task parameters into the module's weights, in place."""
        with torch.no_grad():
            for layer, (w, b) in zip(self.linear_layers(), params.materialize(), strict=True):
                layer.weight.copy_(w)
                if b is not None:
                    layer.bias.copy_(b)

    def load_weights(self, state_dict: dict[str, Tensor]) -> None:
        """``load_state_dict`` that accepts a stored reference of any size."""
        for name, value in state_dict.items():
            if name.startswith("memory"):
                setattr(self, name, torch.empty_like(value))
        self.load_state_dict(state_dict)

    def activation(self, x: Tensor) -> Tensor:
        return ACTIVATIONS[self.activation_name](x)

    def reference(
        self,
        out: Tensor,
        x: Tensor,
        normal_weight: Tensor,
        pool_out: Tensor | None = None,
        pool_x: Tensor | None = None,
    ) -> Reference:
        """What :meth:`head` needs from the task: ``out [n, k]`` and ``x [n, d]`` are the support
        rows' outputs and inputs, ``normal_weight [n]`` is 1 for normals and 0 for anomalies;
        ``pool_out [m, k]``, ``pool_x [m, d]`` the unlabelled pool's (read only when
        :attr:`uses_pool`). Leave-one-out scoring (:meth:`head`) takes the reference rows in this
        order: support, then pool."""
        return ()

    def trust_parameters(self) -> list[nn.Parameter]:
        """The few parameters that weigh the teacher's evidences against each other, given
        their own outer step size (``meta.trust_lr``); none by default."""
        return []

    def reference_and_fit_scores(
        self,
        out: Tensor,
        x: Tensor,
        normal_weight: Tensor,
        pool_out: Tensor | None = None,
        pool_x: Tensor | None = None,
    ) -> tuple[Reference, Tensor]:
        """:meth:`reference` (same arguments) and the support rows' own leave-one-out
        :meth:`fit_scores` ``[..., n]`` against it, what the inner loss reads. A teacher whose
        reference already holds what those scores need overrides this to compute it once."""
        reference = self.reference(out, x, normal_weight, pool_out, pool_x)
        return reference, self.fit_scores(out, x, reference, leave_one_out=True)

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

    def fit_scores(
        self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
    ) -> Tensor:
        """Per-row values ``[..., N]`` the inner loop's losses are applied to (arguments as
        :meth:`head`): the anomaly scores themselves, unless a teacher trains on an energy other
        than its score (GANomaly: reconstruction + latent mismatch, scored by the latter; the
        VAE scoring reconstruction probability still fits the ELBO). Same scale convention as
        the scores: logits when :attr:`score_is_logit`, else non-negative."""
        return self.head(out, x, reference, leave_one_out=leave_one_out)

    def outer_term(self, support_x: Tensor, support_y: Tensor) -> Tensor | None:
        """A term of the meta-parameters alone, added to the meta-loss of a meta-batch (support
        rows ``[B, n, d]``, labels ``[B, n]``): the inner loop never sees it (GANomaly's
        adversarial training). ``None``: no such term."""
        return None

    def forward(self, x: Tensor) -> Tensor:
        """Anomaly scores ``[N]`` for rows ``x [N, d]`` with the module's own weights."""
        out, _ = stack_forward(self.stack_params(), x, activation=self.activation)
        return self.head(out, x, self.stored_reference())


#: ``model.kind`` -> the teacher class built for it (constructor ``(input_dim, config)``).
_KINDS: dict[str, Callable[[int, ModelConfig], Teacher]] = {}

T = TypeVar("T", bound=type[Teacher])


def register_kind(kind: str, *, settings: type | None = None) -> Callable[[T], T]:
    """Class decorator: make a :class:`Teacher` subclass the one built for ``model.kind: kind``
    (its constructor takes ``(input_dim, config)``).

    Args:
        kind: the ``model.kind`` name.
        settings: the kind's own settings, a dataclass: it becomes the section ``model.<kind>``
            (YAML, ``--set``, stored checkpoints), read with ``config.section(settings)``.

    Raises:
        ValueError: ``kind`` is taken.
    """

    def add(cls: T) -> T:
        if kind in _KINDS:
            raise ValueError(f"teacher kind {kind!r} is registered twice")
        if settings is not None:
            KIND_SETTINGS.register(kind, settings)
        _KINDS[kind] = cls
        return cls

    return add


def teacher_kinds() -> dict[str, str]:
    """Every ``model.kind``, the default first, then by name, with its one line on when to use
    it."""
    default = ModelConfig().kind
    order = sorted(_KINDS, key=lambda kind: (kind != default, kind))
    # Every registered constructor is a Teacher subclass (register_kind's bound).
    return {kind: cast("type[Teacher]", _KINDS[kind]).use_when for kind in order}


def check_kind(kind: str) -> None:
    """Raise :class:`ConfigError` naming the known kinds when ``kind`` is not one."""
    if kind not in _KINDS:
        raise ConfigError(f"model.kind: unknown teacher kind {kind!r}; known: {', '.join(_KINDS)}")


def build_teacher(input_dim: int, config: ModelConfig) -> Teacher:
    """Instantiate the teacher of ``config.kind`` for ``input_dim`` features."""
    check_kind(config.kind)
    return _KINDS[config.kind](input_dim, config)


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
    "LogitScorer",
    "Reference",
    "Teacher",
    "build_teacher",
    "check_kind",
    "count_parameters",
    "register_kind",
    "score_logits",
    "teacher_kinds",
]
