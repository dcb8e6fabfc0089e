"""The one inner loop: few-step gradient adaptation of a teacher to one task.

Everything here is a pure function of one task's tensors. Meta-training, validation, evaluation
and ``metakd adapt`` all call :func:`adapt` and :func:`task_scores`; a meta-batch is adapted at
once by ``torch.func.vmap``-ing them over the task dimension with the meta-parameters unbatched
(``in_dims=None``), so every product with the shared weights is one matmul over the whole batch.

Gradients with respect to the weights are never formed. ``torch.func.grad`` differentiates the
support loss with respect to zero perturbations of each layer's pre-activations, which yields
``δ = ∂L/∂z`` per row; together with the layer inputs ``H`` these are the low-rank factors of the
SGD step (see :mod:`metakd.models.stack`). The meta-gradient flows through ``δ`` and ``H`` to any
order, so second-order MAML (Finn et al. 2017, Eq. 1) is exact.

With ``checkpoint=True`` each inner step's gradient is recomputed in the backward pass instead
of its activations being stored (:class:`Recompute`): the meta-graph then holds only each step's
low-rank factors.

An optimiser with state (SGD with momentum, Adam: :mod:`metakd.meta.optim`) or a proximal term
``λ/2 ‖φ - θ‖²`` (iMAML) takes the dense path: each adapted layer's gradient ``Gᵀ H`` is formed
per task, the optimiser's direction is computed from it and its state, and the layer's weight
becomes a dense per-task tensor (as with Meta-SGD's per-element rates). The state is created at
the first step and never leaves the call. Plain SGD without a proximal term keeps the low-rank
path above, operation for operation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from metakd.meta.losses import LossFn
from metakd.meta.optim import SGD, InnerOptimizer, OptimizerState, direction
from metakd.meta.recompute import InnerGradient, checkpointed_step
from metakd.meta.step import (
    PoolTerm,
    inner_gradient,
    inner_objective,
    reference_and_fit_scores,
    task_reference,
)
from metakd.models.stack import StackParams, append_factor, make_prefix, stack_forward
from metakd.models.teachers import Reference, Teacher

# Per-layer learned rates for Meta-SGD (Li et al. 2017): (weight rate [out, in], bias rate [out]).
LayerRates = tuple[tuple[Tensor, Tensor | None], ...]


def adapt(
    params: StackParams,
    support_x: Tensor,
    support_y: Tensor,
    *,
    teacher: Teacher,
    loss: LossFn,
    steps: int,
    lr: float | LayerRates,
    first_order: bool,
    layers: Sequence[int] | None = None,
    pool_x: Tensor | None = None,
    pool: PoolTerm | None = None,
    checkpoint: bool = False,
    optimizer: InnerOptimizer = SGD,
    proximal: float = 0.0,
) -> tuple[StackParams, Tensor]:
    """Adapt one task's parameters with ``steps`` optimiser steps on its support loss.

    The input parameters are never modified; a new :class:`StackParams` is returned.

    Args:
        params: the task's starting parameters (usually the shared meta-parameters).
        support_x: support rows ``[n, d]``.
        support_y: support labels ``[n]`` as floats (0 normal, 1 anomaly).
        teacher: supplies the activation and score head (its own weights are not used).
        loss: inner loss ``(scores [n], y [n]) -> scalar``.
        steps: number of SGD steps (0 returns ``params``).
        lr: a scalar step size, or learned per-element rates per layer (Meta-SGD). A scalar keeps
            the update low-rank; per-element rates make that layer's weight dense per task.
        first_order: drop second-order terms (FOMAML): the step is treated as a constant.
        layers: indices of the layers to adapt (ANIL adapts only the last); default all.
        pool_x: the task's unlabelled rows ``[m, d]``, used by the ``pool`` term and by heads
            with pool neighbours (``teacher.uses_pool``).
        pool: weight and trim of the transductive pool term (see :class:`PoolTerm`).
        checkpoint: recompute each step's activations in the backward pass rather than keep
            them (the same meta-gradient; see ``InnerConfig.checkpoint``). Applies only where a
            meta-gradient flows through the steps: second order, with gradients enabled.
        optimizer: the inner optimiser (``inner.optimizer``); its state is created here, per
            task. Default: plain SGD (the low-rank path).
        proximal: ``λ`` of the term ``λ/2 ‖φ - params‖²`` added to the support objective over
            the adapted layers (iMAML's anchor to the initialisation); 0: none. Its gradient
            ``λ (φ - params)`` is added to the loss gradient; the loss returned is the support
            loss alone (the term is 0 before the first step).

    Returns:
        ``(adapted params, support loss before the first step)``.
    """
    n_layers = len(params.weights)
    adapted = tuple(range(n_layers)) if layers is None else tuple(sorted(layers))
    weights, biases, factors = list(params.weights), list(params.biases), list(params.factors)
    rows, inner_pool = _inner_rows(support_x, pool_x, teacher, pool)
    initial_loss = support_x.new_zeros(())
    if steps == 0 or not adapted:
        return params, initial_loss
    # Layers below the first adapted one never change, so the rows' input to it is the same at
    # every step: each step's update of that layer has the same H and they merge into one factor
    # (H, Σ_k lr·G_k). With a scalar rate its weight stays the shared one too, so the product of
    # the rows with it is computed once (the Prefix) rather than once per step.
    first = adapted[0]
    prefix = None
    # An optimiser state or a proximal term needs each layer's dense gradient (see the module).
    dense = optimizer.name != "sgd" or proximal > 0
    states: dict[tuple[int, str], OptimizerState] = {}
    if isinstance(lr, float) and not dense:
        prefix = make_prefix(params, rows, activation=teacher.activation, layer=first)
        factors[first] = ()  # folded into prefix.product; the merged factor goes here
    merged: Tensor | None = None
    # First-order steps are constants of the meta-graph, and without autograd there is none.
    recompute = checkpoint and not first_order and torch.is_grad_enabled()
    step_module = InnerGradient(teacher, loss, inner_pool, adapted) if recompute else None
    for step in range(steps):
        current = StackParams(tuple(weights), tuple(biases), tuple(factors))
        if step_module is not None:
            deltas, value, inputs = checkpointed_step(step_module, current, rows, support_y, prefix)
        else:
            deltas, value, inputs = inner_gradient(
                current,
                rows,
                support_y,
                prefix,
                teacher=teacher,
                loss=loss,
                pool=inner_pool,
                layers=adapted,
            )
        if step == 0:
            initial_loss = value
        for layer in adapted:
            g = deltas[layer]
            h = prefix.inputs if prefix is not None and layer == first else inputs[layer]
            if first_order:
                g, h = g.detach(), h.detach()
            if dense:
                rate_w, rate_b = _rates(lr, layer)
                weights[layer], states[layer, "weight"] = _dense_update(
                    weights[layer],
                    params.weights[layer],
                    g.transpose(-1, -2) @ h,
                    states.get((layer, "weight"), ()),
                    rate_w,
                    step + 1,
                    optimizer=optimizer,
                    proximal=proximal,
                    first_order=first_order,
                )
                bias, anchor = biases[layer], params.biases[layer]
                if bias is not None and anchor is not None:
                    biases[layer], states[layer, "bias"] = _dense_update(
                        bias,
                        anchor,
                        g.sum(-2),
                        states.get((layer, "bias"), ()),
                        rate_b,
                        step + 1,
                        optimizer=optimizer,
                        proximal=proximal,
                        first_order=first_order,
                    )
                continue
            bias_rate: float | Tensor
            if isinstance(lr, float):
                if layer == first:
                    merged = lr * g if merged is None else merged + lr * g
                    factors[layer] = ((h, merged),)
                else:
                    factors[layer] = append_factor(factors[layer], h, lr * g)
                bias_rate = lr
            else:
                w_rate, b_rate = lr[layer]
                weights[layer] = weights[layer] - w_rate * (g.transpose(-1, -2) @ h)
                bias_rate = b_rate if b_rate is not None else w_rate
            bias = biases[layer]
            if bias is not None:
                biases[layer] = bias - bias_rate * g.sum(-2)
    if prefix is not None:
        factors[first] = (*params.factors[first], *factors[first])
    return StackParams(tuple(weights), tuple(biases), tuple(factors)), initial_loss


def _inner_rows(
    support_x: Tensor, pool_x: Tensor | None, teacher: Teacher, pool: PoolTerm | None
) -> tuple[Tensor, PoolTerm | None]:
    """The rows the inner objective runs on, and its pool term (``None`` when off or poolless)."""
    use_pool = pool is not None and pool.weight > 0 and pool_x is not None
    rows = support_x
    if pool_x is not None and (use_pool or teacher.uses_pool):
        # A head with pool neighbours scores the support against the pool: its rows ride along.
        rows = torch.cat([support_x, pool_x], dim=-2)
    return rows, pool if use_pool else None


def support_objective(
    params: StackParams,
    support_x: Tensor,
    support_y: Tensor,
    *,
    teacher: Teacher,
    loss: LossFn,
    pool_x: Tensor | None = None,
    pool: PoolTerm | None = None,
) -> Tensor:
    """The support objective :func:`adapt` descends, at ``params`` (arguments as there): the
    support loss plus the transductive pool term, without the proximal term. A function of the
    parameters' tensors that ``torch.func`` differentiates to any order (iMAML's Hessian)."""
    rows, inner_pool = _inner_rows(support_x, pool_x, teacher, pool)
    value, _ = inner_objective({}, params, rows, support_y, teacher, loss, inner_pool, None)
    return value


def _rates(lr: float | LayerRates, layer: int) -> tuple[float | Tensor, float | Tensor]:
    """A layer's ``(weight rate, bias rate)``: the scalar, or Meta-SGD's learned ones."""
    if isinstance(lr, float):
        return lr, lr
    w_rate, b_rate = lr[layer]
    return w_rate, b_rate if b_rate is not None else w_rate


def _dense_update(
    current: Tensor,
    anchor: Tensor,
    grad: Tensor,
    state: OptimizerState,
    rate: float | Tensor,
    step: int,
    *,
    optimizer: InnerOptimizer,
    proximal: float,
    first_order: bool,
) -> tuple[Tensor, OptimizerState]:
    """One optimiser step of one dense tensor on the dense path: the support loss's gradient
    ``grad`` plus ``λ (current - anchor)`` into the optimiser's direction, times the scalar or
    learned rate. Returns the new tensor and its optimiser state."""
    if proximal > 0:
        shift = current - anchor
        grad = grad + proximal * (shift.detach() if first_order else shift)
    d, state = direction(optimizer, state, grad, step)
    return current - rate * d, state


def task_scores(
    params: StackParams,
    x: Tensor,
    *,
    teacher: Teacher,
    support_x: Tensor,
    support_y: Tensor,
    pool_x: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Score rows of one task with its (adapted) parameters.

    Support-relative heads (centre, nearest neighbours) need the support's (and, for heads with
    pool neighbours, the pool's) outputs under the same parameters; all rows make one forward
    pass. Support rows are scored leave-one-out.

    Args:
        params: the task's parameters.
        x: rows to score ``[m, d]``.
        teacher: supplies activation and head.
        support_x: support rows ``[n, d]``.
        support_y: support labels ``[n]``.
        pool_x: the task's unlabelled rows ``[p, d]`` (read by heads with pool neighbours).

    Returns:
        ``(scores of x [m], the support's fit scores [n])``: the support's values are what the
        inner loss reads (:meth:`~metakd.models.teachers.Teacher.fit_scores`, the scores for
        most teachers), so the inner loss after adaptation compares with the one before.
    """
    n = support_x.shape[-2]
    with_pool = teacher.uses_reference and teacher.uses_pool and pool_x is not None
    parts = [support_x, *((pool_x,) if with_pool and pool_x is not None else ()), x]
    # One pass over all rows: on small tasks each op's fixed cost, not its rows, sets the time.
    out, _ = stack_forward(params, torch.cat(parts, dim=-2), activation=teacher.activation)
    m = pool_x.shape[-2] if with_pool and pool_x is not None else 0
    support_out, pool_out, rows_out = out.split([n, m, x.shape[-2]], dim=-2)
    reference, support_scores = reference_and_fit_scores(
        teacher, support_out, support_x, support_y, pool_out if with_pool else None, pool_x
    )
    return teacher.head(rows_out, x, reference), support_scores


def reference_scores(
    params: StackParams,
    *,
    teacher: Teacher,
    support_x: Tensor,
    support_y: Tensor,
    pool_x: Tensor | None = None,
) -> tuple[Reference, Tensor, Tensor | None]:
    """The task's reference and the scores of its own support ``[n]`` and pool ``[m]`` rows.

    The reference is what a support-relative head scores against (``()`` for other heads), kept
    for standalone scoring by :meth:`~metakd.models.teachers.Teacher.store_reference`. Each row
    is scored leave-one-out against a reference that holds it (a row is never its own
    neighbour), as a new row in the same place would be: thresholds and distillation targets are
    fitted on these scores. One forward pass serves both.
    """
    rows = support_x if pool_x is None else torch.cat([support_x, pool_x], dim=-2)
    out, _ = stack_forward(params, rows, activation=teacher.activation)
    n = support_x.shape[-2]
    pool_out = None if pool_x is None else out[..., n:, :]
    reference = task_reference(teacher, out[..., :n, :], support_x, support_y, pool_out, pool_x)
    scores = teacher.head(out, rows, reference, leave_one_out=True)
    return reference, scores[..., :n], (None if pool_x is None else scores[..., n:])


__all__ = [
    "LayerRates",
    "PoolTerm",
    "adapt",
    "reference_scores",
    "support_objective",
    "task_scores",
]
