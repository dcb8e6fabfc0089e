"""What every meta-learner shares: the settings, the adaptation plan and the base class.

A meta-learner is math only: it turns one meta-batch into meta-gradients. Sampling, optimisation
steps, validation and I/O live in :mod:`metakd.train`. The meta-parameters are never changed
here; :func:`metakd.meta.inner.adapt` returns new per-task parameters.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import vmap

from metakd.errors import ConfigError
from metakd.meta.inner import LayerRates, PoolTerm, adapt, task_scores
from metakd.meta.losses import InnerLossName, OuterLossName, inner_loss_fn, outer_loss_fn
from metakd.meta.optim import INNER_OPTIMIZERS, SGD, InnerOptimizer, InnerOptimizerName
from metakd.models.stack import StackParams
from metakd.models.teachers import Teacher

#: A meta-learner's name: any name registered with :func:`~metakd.meta.learners.register`
#: (``MetaConfig`` checks it against the registry, so a new learner needs no edit here).
Algorithm = str


@dataclass
class InnerConfig:
    """How a teacher adapts to one task; stored in checkpoints and reused by ``metakd adapt``."""

    steps: int = 3
    """Optimiser steps on the support loss."""
    lr: float = 0.1
    """Inner step size (Meta-SGD's learned rates start here; they multiply the optimiser's
    direction). Adam's steps are about ``lr`` per weight whatever the gradient's scale, so it
    wants a smaller one than SGD (e.g. 0.01)."""
    first_order: bool = False
    """Drop second-order terms. OC-MAML (Frikha et al. 2021) found first-order variants fail with
    one-class supports, so second order is the default."""
    loss: InnerLossName = "auto"
    """Support loss: ``auto`` is ``one_class`` without anomaly shots, else ``bce`` (logit teachers)
    or ``ranking`` (one-class plus pairwise ranking of the labelled anomalies; any teacher); also
    ``deviation`` (DevNet, logit teachers) and ``sad`` (Deep SAD, distance teachers)."""
    layers: Literal["all", "head"] = "all"
    """Which layers adapt: ``head`` adapts only the last layer (ANIL)."""
    pool_weight: float = 0.0
    """Weight of the transductive term: the one-class loss of the task's unlabelled pool rows
    (0 uses the pool for scaling statistics only)."""
    pool_trim: float = 0.2
    """Fraction of the pool, the highest-scoring rows, left out of that term as possible anomalies."""
    checkpoint: bool = False
    """Activation checkpointing of the inner loop: the meta-graph keeps only each inner step's
    low-rank update, and the backward pass recomputes the step's activations (the same
    meta-gradient). Trades time for memory where the meta-gradient goes through the inner steps
    (second order: ``maml``, ``anil``, ``metasgd``); first-order learners and adaptation without
    a meta-gradient ignore it. Measured per meta-step (benchmarks/memory.py: default teacher,
    meta-batch 16, 128 pool rows; three runs): 0.84-0.92x MAML's peak memory at 4 inner steps
    and 0.64-0.65x at 8 (0.60x and 0.40x with 512 pool rows), for 1.3-1.6x the CPU time; no
    saving at 1-2 steps, where little is stored."""
    optimizer: InnerOptimizerName = "sgd"
    """The inner optimiser: ``sgd``, ``momentum`` (SGD with momentum, as ``torch.optim.SGD``) or
    ``adam`` (as ``torch.optim.Adam``), pure functions differentiable to second order
    (:mod:`metakd.meta.optim`); their state starts afresh in every task's adaptation. ``sgd``
    keeps each step a low-rank update of the shared weights; ``momentum`` and ``adam`` make
    every adapted weight a dense tensor per task (more memory and time per inner step, as
    Meta-SGD's learned rates do; with ``checkpoint`` the meta-graph keeps each step's dense
    weights and optimiser state). Every learner and ``inner.layers`` setting takes them."""
    momentum: float = 0.9
    """Momentum factor ``μ`` of ``optimizer: momentum`` (``b ← μ b + g``), in [0, 1)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam's decay rates of the gradient's first and second moments, each in [0, 1)."""
    eps: float = 1e-8
    """Adam's term added to the bias-corrected ``√v̂`` (> 0), as ``torch.optim.Adam``'s. The
    derivative of Adam's direction is of order ``1/eps`` where a gradient entry is of order
    ``eps``: second-order meta-gradients through Adam grow as ``eps`` shrinks (their largest
    entry 80x larger at 1e-8 than at 1e-4 for a 1000-feature MLP, 2 steps) and pick up float32
    rounding; 1e-4 to 1e-3 tames them, first order avoids them."""
    proximal: float = 0.0
    """Weight ``λ`` of the term ``λ/2 ‖φ - θ‖²`` of the inner objective, which anchors the adapted
    weights ``φ`` to the meta-learned ones ``θ`` (>= 0; 0: none). ``imaml`` sets it to
    ``meta.imaml.lam``; other learners may use it as a regulariser of adaptation. Non-zero makes
    adapted weights dense per task, as ``momentum`` and ``adam`` do."""

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or self.steps < 0:
            raise ConfigError(f"steps must be >= 0, got {self.steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.pool_weight) and self.pool_weight >= 0):
            raise ConfigError(f"inner.pool_weight must be >= 0, got {self.pool_weight}")
        if not 0.0 <= self.pool_trim < 1.0:
            raise ConfigError(f"inner.pool_trim must be in [0, 1), got {self.pool_trim}")
        if not isinstance(self.checkpoint, bool):
            raise ConfigError(f"inner.checkpoint must be true or false, got {self.checkpoint!r}")
        if self.optimizer not in INNER_OPTIMIZERS:
            choices = ", ".join(INNER_OPTIMIZERS)
            raise ConfigError(f"inner.optimizer must be one of {choices}, got {self.optimizer!r}")
        if not (_is_number(self.momentum) and 0.0 <= self.momentum < 1.0):
            raise ConfigError(f"inner.momentum must be in [0, 1), got {self.momentum!r}")
        betas = list(self.betas) if isinstance(self.betas, (list, tuple)) else []
        if len(betas) != 2 or not all(_is_number(b) and 0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"inner.betas must be two numbers in [0, 1), got {self.betas!r}")
        if not (_is_number(self.eps) and self.eps > 0):
            raise ConfigError(f"inner.eps must be a positive number, got {self.eps!r}")
        if not (_is_number(self.proximal) and self.proximal >= 0):
            raise ConfigError(f"inner.proximal must be a number >= 0, got {self.proximal!r}")

    def inner_optimizer(self) -> InnerOptimizer:
        """The inner optimiser these settings describe (:func:`~metakd.meta.inner.adapt`'s)."""
        if self.optimizer == "sgd":
            return SGD
        beta1, beta2 = self.betas
        return InnerOptimizer(self.optimizer, self.momentum, (beta1, beta2), self.eps)

    def pool_term(self) -> PoolTerm | None:
        """The transductive pool term, or ``None`` when it is off."""
        return PoolTerm(self.pool_weight, self.pool_trim) if self.pool_weight > 0 else None


def _is_number(value: Any) -> bool:
    """A finite real number (a bool is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class IMAMLConfig:
    """iMAML's implicit meta-gradient (``meta.algorithm: imaml``; Rajeswaran et al. 2019)."""

    lam: float = 1.0
    """``λ``, the weight of the proximal term ``λ/2 ‖φ - θ‖²`` in the inner objective (> 0): how
    strongly adaptation is anchored to the meta-learned weights. It is the teacher's
    ``inner.proximal``, so ``metakd adapt`` anchors the same way. Large: adapted weights stay
    near θ and the meta-gradient nears the query gradient; small: the inner problem must be
    solved further (more ``inner.steps``) for the implicit gradient to hold."""
    cg_steps: int = 5
    """Conjugate-gradient iterations solving ``(I + H/λ) g = ∇L_query`` per task (>= 1), each one
    Hessian-vector product of the support objective."""

    def __post_init__(self) -> None:
        if not (_is_number(self.lam) and self.lam > 0):
            raise ConfigError(f"meta.imaml.lam must be a positive number, got {self.lam!r}")
        if isinstance(self.cg_steps, bool) or not isinstance(self.cg_steps, int):
            raise ConfigError(f"meta.imaml.cg_steps must be an integer, got {self.cg_steps!r}")
        if self.cg_steps < 1:
            raise ConfigError(f"meta.imaml.cg_steps must be >= 1, got {self.cg_steps}")


@dataclass
class MetaConfig:
    """The outer loop."""

    algorithm: Algorithm = "maml"
    """A registered meta-learner: ``maml`` (second order), ``fomaml``, ``anil`` (inner loop on the
    head only), ``metasgd`` (learned per-parameter inner rates), ``reptile`` or ``imaml``
    (implicit gradients; see ``imaml``) (checked by ``TrainConfig`` and
    :func:`~metakd.meta.learners.learner_class`)."""
    meta_lr: float = 5e-4
    """Adam step size of the outer optimiser. Small: with few meta-train tasks a large step
    memorises them (held-out AUROC falls below a random initialisation's)."""
    outer_loss: OuterLossName = "ranking"
    """Query loss: ``ranking`` (pairwise AUROC surrogate) or ``bce`` (class-balanced)."""
    grad_clip: float = 10.0
    """Clip the meta-gradient's global norm (0 disables)."""
    weight_decay: float = 0.0
    """Adam weight decay on the meta-parameters."""
    trust_lr: float | None = 5e-3
    """Adam step size of the teacher's trust in its evidences (the ``profile`` teacher's ``α``
    and ``G``; other kinds have none); null: ``meta_lr``. A few dozen numbers that meta-training
    must move by tenths: at ``meta_lr`` they moved from (0.5, 0, 0.5, 0, 0) to
    (0.53, 0.03, 0.54, 0.10, 0.08) in 400 steps on MVTec, even where one evidence was far
    better; ten times ``meta_lr`` lets them cross that range in a run."""
    compile: bool = False
    """``torch.compile`` the meta-batch loss (TorchInductor; not Reptile). Measured 1.0-1.8x per step
    on 2 CPU cores at meta-batch 32 (benchmarks/meta_train_speed.py; least for a 1000-feature
    teacher, most for a 64-feature one), after a one-off compilation of about a minute: worth it
    only for runs of thousands of iterations."""
    imaml: IMAMLConfig = field(default_factory=IMAMLConfig)
    """iMAML's settings (read only by ``algorithm: imaml``)."""

    def __post_init__(self) -> None:
        # The name is checked against the registry where a run's config is assembled
        # (``TrainConfig``), above both, and again when a learner is built.
        if not (math.isfinite(self.meta_lr) and self.meta_lr > 0):
            raise ConfigError(f"meta_lr must be a positive number, got {self.meta_lr}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ConfigError(f"grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.trust_lr is not None and not (math.isfinite(self.trust_lr) and self.trust_lr > 0):
            raise ConfigError(
                f"meta.trust_lr must be a positive number or null, got {self.trust_lr}"
            )


class MetaStats(NamedTuple):
    """Per-task diagnostics of one meta-batch (each ``[B]``)."""

    outer_loss: Tensor
    support_loss_before: Tensor
    support_loss_after: Tensor
    query_scores: Tensor


@dataclass(frozen=True)
class AdaptationPlan:
    """The step sizes and layers of one adaptation: what :func:`~metakd.meta.inner.adapt` is given
    by meta-training, evaluation and ``metakd adapt`` alike, so the three cannot disagree."""

    lr: float | LayerRates
    """A scalar step size, or Meta-SGD's per-element ``(weight, bias)`` rates per layer."""
    layers: tuple[int, ...] | None
    """Indices of the adapted layers (``None``: all)."""
    checkpoint: bool = False
    """Recompute each inner step's activations in the backward pass (``inner.checkpoint``)."""
    optimizer: InnerOptimizer = SGD
    """The inner optimiser (``inner.optimizer`` and its hyper-parameters)."""
    proximal: float = 0.0
    """Weight of the proximal term anchoring adaptation to the start (``inner.proximal``)."""

    @property
    def dense(self) -> bool:
        """Whether adapted weights come back dense per task (the dense path of
        :func:`~metakd.meta.inner.adapt`: learned rates, an optimiser with state, a proximal
        term) rather than as the shared weights plus low-rank factors."""
        return not isinstance(self.lr, float) or self.optimizer.name != "sgd" or self.proximal > 0

    @staticmethod
    def of(teacher: Teacher, inner: InnerConfig, rates: Sequence[Tensor] = ()) -> AdaptationPlan:
        """The plan of a teacher adapted with resolved settings ``inner``.

        Args:
            teacher: supplies the layers (count, and which have a bias).
            inner: resolved adaptation settings (``layers: head`` adapts only the last layer;
                ``checkpoint``, the optimiser and the proximal weight are carried over).
            rates: Meta-SGD's learned rates as stored (weight, then bias if any, per layer in
                order); empty for the scalar ``inner.lr``.

        Raises:
            ValueError: ``rates`` do not fit the teacher's layers.
        """
        layers = (len(teacher.layers) - 1,) if inner.layers == "head" else None
        optimizer, proximal = inner.inner_optimizer(), inner.proximal
        if len(rates) == 0:
            return AdaptationPlan(inner.lr, layers, inner.checkpoint, optimizer, proximal)
        expected = sum(1 + (layer.bias is not None) for layer in teacher.layers)
        if len(rates) != expected:
            raise ConfigError(f"{len(rates)} inner rates for a teacher with {expected} parameters")
        flat = iter(rates)
        per_layer = tuple(
            (next(flat), next(flat) if layer.bias is not None else None) for layer in teacher.layers
        )
        return AdaptationPlan(per_layer, layers, inner.checkpoint, optimizer, proximal)


class MetaLearner(nn.Module, abc.ABC):
    """A teacher plus everything the outer loop optimises; one subclass per algorithm.

    A subclass implements :meth:`meta_gradients` and registers itself under its algorithm's name
    with :func:`~metakd.meta.learners.register`; :meth:`resolve` states what the algorithm
    implies for adaptation. Build one with :func:`~metakd.meta.learners.build_learner`.

    Args:
        teacher: the network whose initialisation is meta-learned.
        inner: adaptation settings; the algorithm may override some (see :meth:`resolve`).
        meta: outer-loop settings; ``meta.algorithm`` must name this class.
        anomaly_shots: whether supports carry labelled anomalies (chooses the ``auto`` loss).
    """

    algorithm: ClassVar[str] = ""
    """The registered name (set by :func:`~metakd.meta.learners.register`)."""

    def __init__(
        self, teacher: Teacher, *, inner: InnerConfig, meta: MetaConfig, anomaly_shots: int
    ) -> None:
        super().__init__()
        if meta.algorithm != self.algorithm:
            # A mismatch would save a checkpoint naming one algorithm trained by another.
            raise ConfigError(
                f"{type(self).__name__} implements {self.algorithm!r}, not meta.algorithm="
                f"{meta.algorithm!r}; build_learner() picks the class for an algorithm"
            )
        self.teacher = teacher
        self.inner = self.resolve(inner)
        self.meta = meta
        self.inner_loss = inner_loss_fn(
            self.inner.loss, has_anomalies=anomaly_shots > 0, score_is_logit=teacher.score_is_logit
        )
        self.outer_loss = outer_loss_fn(meta.outer_loss)
        # Learned inner rates (Meta-SGD fills them). Every learner has the list, empty when the
        # rate is the scalar inner.lr, so checkpoints and metrics read it the same way.
        self.rates = nn.ParameterList()

    def param_groups(self) -> list[dict[str, Any]]:
        """The outer optimiser's parameter groups: the teacher's trust
        (:meth:`~metakd.models.teachers.Teacher.trust_parameters`) at ``meta.trust_lr``, every
        other meta-parameter at ``meta.meta_lr``."""
        trust = list(self.teacher.trust_parameters())
        if not trust or self.meta.trust_lr is None:
            return [{"params": list(self.parameters())}]
        ids = {id(p) for p in trust}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": rest}, {"params": trust, "lr": self.meta.trust_lr}]

    first_order_only: ClassVar[bool] = False
    """The algorithm never differentiates through the inner loop (FOMAML, Reptile, iMAML): its
    adaptation is first order whatever ``inner.first_order`` says."""

    @classmethod
    def resolve(cls, inner: InnerConfig) -> InnerConfig:
        """The adaptation settings this algorithm implies (a copy): first order where
        :attr:`first_order_only`, else unchanged."""
        return dataclasses.replace(inner, first_order=inner.first_order or cls.first_order_only)

    def plan(self) -> AdaptationPlan:
        """Step sizes and adapted layers of the inner loop, under the current meta-parameters."""
        return AdaptationPlan.of(self.teacher, self.inner, list(self.rates))

    def with_outer_term(self, loss: Tensor, support_x: Tensor, support_y: Tensor) -> Tensor:
        """``loss`` plus the teacher's :meth:`~metakd.models.teachers.Teacher.outer_term`, a
        term of the meta-parameters alone (GANomaly's adversarial training), where it has one."""
        extra = self.teacher.outer_term(support_x, support_y)
        return loss if extra is None else loss + extra

    @abc.abstractmethod
    def meta_gradients(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        pool_x: Tensor | None = None,
    ) -> MetaStats:
        """Accumulate one meta-batch's meta-gradient into the meta-parameters' ``.grad``.

        Like ``Tensor.backward``, the gradient is added to any already there; meta-parameters
        the algorithm gives no gradient keep theirs (``None`` after ``zero_grad``).

        Args:
            support_x: ``[B, n, d]``; support_y: ``[B, n]``; query_x: ``[B, q, d]``;
            query_y: ``[B, q]`` (labels as floats); pool_x: ``[B, m, d]`` unlabelled rows or
            ``None`` (the transductive pool term, and heads with pool neighbours).

        Returns:
            Per-task stats of the batch, detached from the graph (diagnostics only).
        """

    def _adapt(
        self,
        params: StackParams,
        x: Tensor,
        y: Tensor,
        px: Tensor | None,
        *,
        plan: AdaptationPlan,
        loss: Callable[[Tensor, Tensor], Tensor],
        first_order: bool,
        pool: PoolTerm | None,
        steps: int | None = None,
    ) -> tuple[StackParams, Tensor]:
        """The one inner loop (:func:`metakd.meta.inner.adapt`) on rows ``x``, labels ``y``, with
        this learner's teacher and ``steps`` (``None``: ``inner.steps``): ``(adapted params, loss
        before)``."""
        return adapt(
            params,
            x,
            y,
            teacher=self.teacher,
            loss=loss,
            steps=self.inner.steps if steps is None else steps,
            lr=plan.lr,
            first_order=first_order,
            layers=plan.layers,
            pool_x=px,
            pool=pool,
            checkpoint=plan.checkpoint,
            optimizer=plan.optimizer,
            proximal=plan.proximal,
        )

    def _adapt_and_score(
        self,
        params: StackParams,
        sx: Tensor,
        sy: Tensor,
        qx: Tensor,
        px: Tensor | None,
        *,
        plan: AdaptationPlan,
        first_order: bool,
        steps: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One task: adapt on its support (``steps``: as :meth:`_adapt`), then ``(query scores,
        support loss before, after)``."""
        adapted, before = self._adapt(
            params,
            sx,
            sy,
            px,
            plan=plan,
            loss=self.inner_loss,
            first_order=first_order,
            pool=self.inner.pool_term(),
            steps=steps,
        )
        q_scores, s_scores = task_scores(
            adapted, qx, teacher=self.teacher, support_x=sx, support_y=sy, pool_x=px
        )
        return q_scores, before, self.inner_loss(s_scores, sy)

    @torch.no_grad()
    def adapted_scores(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, pool_x: Tensor | None = None
    ) -> Tensor:
        """Query scores ``[B, q]`` after adapting to each task's support (no meta-graph kept).

        Every algorithm is evaluated this way, as ``metakd adapt`` deploys it: the support loss
        and the plan's steps, first order since no meta-gradient is needed.
        """
        plan = self.plan()

        def task(params: StackParams, sx: Tensor, sy: Tensor, qx: Tensor, px) -> Tensor:
            return self._adapt_and_score(params, sx, sy, qx, px, plan=plan, first_order=True)[0]

        return vmap(task, in_dims=(None, 0, 0, 0, None if pool_x is None else 0))(
            self.teacher.stack_params(), support_x, support_y, query_x, pool_x
        )
