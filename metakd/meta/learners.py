"""Meta-learners: MAML, first-order MAML, ANIL, Meta-SGD and Reptile over a teacher.

This module is math only: it turns one meta-batch into a meta-loss (or, for Reptile, a
pseudo-gradient). Sampling, optimisation steps, validation and I/O live in
:mod:`metakd.train`. The meta-parameters are never changed here; :func:`metakd.meta.inner.adapt`
returns new per-task parameters.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import vmap

from metakd.meta.inner import LayerRates, PoolTerm, adapt, task_scores
from metakd.meta.losses import InnerLossName, OuterLossName, inner_loss_fn, outer_loss_fn
from metakd.models.stack import StackParams
from metakd.models.teachers import Teacher, score_logits

Algorithm = Literal["maml", "fomaml", "reptile", "anil", "metasgd"]


@dataclass
class InnerConfig:
    """How a teacher adapts to one task; stored in checkpoints and reused by ``metakd adapt``."""

    steps: int = 3
    """SGD steps on the support loss."""
    lr: float = 0.1
    """Inner step size (Meta-SGD's learned rates start here)."""
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

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.pool_weight < 0 or not 0.0 <= self.pool_trim < 1.0:
            raise ValueError("pool_weight must be >= 0 and pool_trim in [0, 1)")

    def pool_term(self) -> PoolTerm | None:
        """The transductive pool term, or ``None`` when it is off."""
        return PoolTerm(self.pool_weight, self.pool_trim) if self.pool_weight > 0 else None


@dataclass
class MetaConfig:
    """The outer loop."""

    algorithm: Algorithm = "maml"
    """``maml`` (second order), ``fomaml``, ``anil`` (inner loop on the head only), ``metasgd``
    (learned per-parameter inner rates) or ``reptile``."""
    meta_lr: float = 5e-4
    """Adam step size of the outer optimiser. Small: with few meta-train tasks a large step
    memorises them (held-out AUROC falls below a random initialisation's)."""
    outer_loss: OuterLossName = "ranking"
    """Query loss: ``ranking`` (pairwise AUROC surrogate) or ``bce`` (class-balanced)."""
    grad_clip: float = 10.0
    """Clip the meta-gradient's global norm (0 disables)."""
    weight_decay: float = 0.0
    """Adam weight decay on the meta-parameters."""
    compile: bool = False
    """``torch.compile`` the meta-batch loss (TorchInductor; not Reptile). Measured 1.0-1.8x per step
    on 2 CPU cores at meta-batch 32 (benchmarks/meta_train_speed.py; least for a 1000-feature
    teacher, most for a 64-feature one), after a one-off compilation of about a minute: worth it
    only for runs of thousands of iterations."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.meta_lr) and self.meta_lr > 0):
            raise ValueError(f"meta_lr must be a positive number, got {self.meta_lr}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


class MetaStats(NamedTuple):
    """Per-task diagnostics of one meta-batch (each ``[B]``)."""

    outer_loss: Tensor
    support_loss_before: Tensor
    support_loss_after: Tensor
    query_scores: Tensor


class MetaLearner(nn.Module):
    """A teacher plus everything the outer loop optimises (Meta-SGD's inner rates).

    Args:
        teacher: the network whose initialisation is meta-learned.
        inner: adaptation settings; ``algorithm`` may override ``first_order`` and ``layers``.
        meta: outer-loop settings.
        anomaly_shots: whether supports carry labelled anomalies (chooses the ``auto`` loss).
    """

    def __init__(
        self, teacher: Teacher, *, inner: InnerConfig, meta: MetaConfig, anomaly_shots: int
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.inner = resolve_inner(inner, meta.algorithm)
        self.meta = meta
        self.inner_loss = inner_loss_fn(
            self.inner.loss, has_anomalies=anomaly_shots > 0, score_is_logit=teacher.score_is_logit
        )
        self.outer_loss = outer_loss_fn(meta.outer_loss)
        self.rates = nn.ParameterList()
        if meta.algorithm == "metasgd":
            for layer in teacher.layers:
                self.rates.append(nn.Parameter(torch.full_like(layer.weight, inner.lr)))
                if layer.bias is not None:
                    self.rates.append(nn.Parameter(torch.full_like(layer.bias, inner.lr)))

    # -- shared pieces -------------------------------------------------------------------------

    def layer_rates(self) -> float | LayerRates:
        """The inner step size: a scalar, or Meta-SGD's per-element rates per layer."""
        if self.meta.algorithm != "metasgd":
            return self.inner.lr
        rates = iter(self.rates)
        return tuple(
            (next(rates), next(rates) if layer.bias is not None else None)
            for layer in self.teacher.layers
        )

    def adapted_layers(self) -> tuple[int, ...] | None:
        return (len(self.teacher.layers) - 1,) if self.inner.layers == "head" else None

    def _adapt_and_score(
        self,
        params: StackParams,
        sx: Tensor,
        sy: Tensor,
        qx: Tensor,
        px: Tensor | None,
        *,
        first_order: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        adapted, before = adapt(
            params,
            sx,
            sy,
            teacher=self.teacher,
            loss=self.inner_loss,
            steps=self.inner.steps,
            lr=self.layer_rates(),
            first_order=first_order,
            layers=self.adapted_layers(),
            pool_x=px,
            pool=self.inner.pool_term(),
        )
        q_scores, s_scores = task_scores(
            adapted, qx, teacher=self.teacher, support_x=sx, support_y=sy, pool_x=px
        )
        return q_scores, before, self.inner_loss(s_scores, sy)

    # -- MAML family ---------------------------------------------------------------------------

    def meta_loss(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        pool_x: Tensor | None = None,
    ) -> tuple[Tensor, MetaStats]:
        """Mean query loss after adaptation, differentiable w.r.t. the meta-parameters.

        Args:
            support_x: ``[B, n, d]``; support_y: ``[B, n]``; query_x: ``[B, q, d]``;
            query_y: ``[B, q]`` (labels as floats); pool_x: ``[B, m, d]`` unlabelled rows or
            ``None`` (used by the transductive pool term when ``inner.pool_weight > 0``).

        Returns:
            ``(scalar meta-loss, per-task stats)``.
        """
        if self.meta.algorithm == "reptile":
            raise RuntimeError("Reptile has no meta-loss; use reptile_gradients()")

        def task(params: StackParams, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, px):
            q_scores, before, after = self._adapt_and_score(
                params, sx, sy, qx, px, first_order=self.inner.first_order
            )
            outer = self.outer_loss(score_logits(self.teacher, q_scores), qy)
            return outer, before, after, q_scores

        pool_dim = None if pool_x is None else 0
        stats = MetaStats(
            *vmap(task, in_dims=(None, 0, 0, 0, 0, pool_dim))(
                self.teacher.stack_params(), support_x, support_y, query_x, query_y, pool_x
            )
        )
        return stats.outer_loss.mean(), stats

    # -- Reptile -------------------------------------------------------------------------------

    def reptile_gradients(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        pool_x: Tensor | None = None,
    ) -> tuple[list[Tensor], MetaStats]:
        """Reptile's pseudo-gradient ``θ - mean_b φ_b`` (Nichol et al. 2018, Alg. 2).

        Reptile has no support/query split: each task's φ_b is ``steps`` first-order SGD steps on
        all its labelled rows (support ∪ query) under the supervised inner loss. ``pool_x``
        (``[B, m, d]`` or ``None``) serves heads with pool neighbours. Only the stack's weights
        get a pseudo-gradient; other meta-parameters of the head (input skip, pool trust) have
        no inner loop to move them and stay as they are.

        Returns:
            ``(one gradient per parameter of teacher.layers, in order; per-task stats)``; stats'
            query scores are from the un-adapted teacher (Reptile adapts on the query itself).
        """
        x = torch.cat([support_x, query_x], dim=1)
        y = torch.cat([support_y, query_y], dim=1)
        supervised = inner_loss_fn(
            "auto", has_anomalies=True, score_is_logit=self.teacher.score_is_logit
        )
        params = self.teacher.stack_params()

        pool_dim = None if pool_x is None else 0

        def task(p: StackParams, xb: Tensor, yb: Tensor, px: Tensor | None):
            adapted, before = adapt(
                p,
                xb,
                yb,
                teacher=self.teacher,
                loss=supervised,
                steps=self.inner.steps,
                lr=self.inner.lr,
                first_order=True,
                layers=self.adapted_layers(),
                pool_x=px,
            )
            return adapted, before

        adapted, before = vmap(task, in_dims=(None, 0, 0, pool_dim))(params, x, y, pool_x)
        grads: list[Tensor] = []
        batch = x.shape[0]
        for layer, (facs, bias) in enumerate(zip(adapted.factors, adapted.biases, strict=True)):
            w = params.weights[layer]
            # θ - φ summed over tasks: Σ_b Σ_k G_bkᵀ H_bk as one [out, B·n] @ [B·n, in] matmul.
            g_w = torch.zeros_like(w)
            for h, g in facs:
                g_w = g_w + g.reshape(-1, g.shape[-1]).T @ h.reshape(-1, h.shape[-1])
            grads.append((g_w / batch).detach())
            if params.biases[layer] is not None:
                grads.append((params.biases[layer] - bias).mean(0).detach())
        with torch.no_grad():
            q_scores, s_scores = vmap(
                lambda sx, sy, qx, px: task_scores(
                    params, qx, teacher=self.teacher, support_x=sx, support_y=sy, pool_x=px
                ),
                in_dims=(0, 0, 0, pool_dim),
            )(support_x, support_y, query_x, pool_x)
            after = vmap(self.inner_loss)(s_scores, support_y)
            outer = vmap(self.outer_loss)(score_logits(self.teacher, q_scores), query_y)
        return grads, MetaStats(outer, before.detach(), after, q_scores)

    # -- evaluation ----------------------------------------------------------------------------

    @torch.no_grad()
    def adapted_scores(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, pool_x: Tensor | None = None
    ) -> Tensor:
        """Query scores ``[B, q]`` after adapting to each task's support (no meta-graph kept)."""

        def task(params: StackParams, sx: Tensor, sy: Tensor, qx: Tensor, px) -> Tensor:
            return self._adapt_and_score(params, sx, sy, qx, px, first_order=True)[0]

        return vmap(task, in_dims=(None, 0, 0, 0, None if pool_x is None else 0))(
            self.teacher.stack_params(), support_x, support_y, query_x, pool_x
        )


def resolve_inner(inner: InnerConfig, algorithm: Algorithm) -> InnerConfig:
    """The adaptation settings an algorithm implies (FOMAML: first order; ANIL: head only)."""
    first_order = inner.first_order or algorithm in ("fomaml", "reptile")
    layers = "head" if algorithm == "anil" else inner.layers
    return dataclasses.replace(inner, first_order=first_order, layers=layers)
