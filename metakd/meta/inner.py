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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.func import grad_and_value

from metakd.meta.losses import LossFn
from metakd.models.stack import StackParams, stack_forward
from metakd.models.teachers import Teacher

# Per-layer learned rates for Meta-SGD (Li et al. 2017): (weight rate [out, in], bias rate [out]).
LayerRates = tuple[tuple[Tensor, Tensor | None], ...]


def _support_loss(
    perturb: dict[int, Tensor],
    params: StackParams,
    x: Tensor,
    y: Tensor,
    teacher: Teacher,
    loss: LossFn,
) -> tuple[Tensor, list[Tensor]]:
    out, inputs = stack_forward(params, x, activation=teacher.activation, perturb=perturb)
    reference = teacher.reference(out, 1.0 - y) if teacher.uses_reference else ()
    scores = teacher.head(out, x, reference, leave_one_out=True)
    return loss(scores, y), inputs


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
) -> tuple[StackParams, Tensor]:
    """Adapt one task's parameters with ``steps`` SGD steps on its support loss.

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

    Returns:
        ``(adapted params, support loss before the first step)``.
    """
    n_layers = len(params.weights)
    adapted = tuple(range(n_layers)) if layers is None else tuple(layers)
    weights, biases, factors = list(params.weights), list(params.biases), list(params.factors)
    initial_loss = support_x.new_zeros(())
    for step in range(steps):
        current = StackParams(tuple(weights), tuple(biases), tuple(factors))
        perturb = {
            layer: support_x.new_zeros(*support_x.shape[:-1], weights[layer].shape[-2])
            for layer in adapted
        }
        deltas, (value, inputs) = grad_and_value(_support_loss, has_aux=True)(
            perturb, current, support_x, support_y, teacher, loss
        )
        if step == 0:
            initial_loss = value
        for layer in adapted:
            g, h = deltas[layer], inputs[layer]
            if first_order:
                g, h = g.detach(), h.detach()
            if isinstance(lr, float):
                w_rate, b_rate = lr, lr
                factors[layer] = (*factors[layer], (h, w_rate * g))
            else:
                w_rate, b_rate = lr[layer]
                weights[layer] = weights[layer] - w_rate * (g.transpose(-1, -2) @ h)
            if biases[layer] is not None:
                rate = b_rate if b_rate is not None else w_rate
                biases[layer] = biases[layer] - rate * g.sum(-2)
    return StackParams(tuple(weights), tuple(biases), tuple(factors)), initial_loss


def task_scores(
    params: StackParams,
    x: Tensor,
    *,
    teacher: Teacher,
    support_x: Tensor,
    support_y: Tensor,
) -> tuple[Tensor, Tensor]:
    """Score rows of one task with its (adapted) parameters.

    Support-relative heads (centre, nearest neighbours) need the support's outputs under the same
    parameters, so support and ``x`` share one forward pass. Support rows are scored leave-one-out.

    Args:
        params: the task's parameters.
        x: rows to score ``[m, d]``.
        teacher: supplies activation and head.
        support_x: support rows ``[n, d]``.
        support_y: support labels ``[n]``.

    Returns:
        ``(scores of x [m], scores of the support [n])``.
    """
    n = support_x.shape[-2]
    both = torch.cat([support_x, x], dim=-2)
    out, _ = stack_forward(params, both, activation=teacher.activation)
    reference = (
        teacher.reference(out[..., :n, :], 1.0 - support_y) if teacher.uses_reference else ()
    )
    support_scores = teacher.head(out[..., :n, :], support_x, reference, leave_one_out=True)
    return teacher.head(out[..., n:, :], x, reference), support_scores


def support_reference(
    params: StackParams, *, teacher: Teacher, support_x: Tensor, support_y: Tensor
) -> tuple[Tensor, ...]:
    """The reference a support-relative head keeps for standalone scoring (see
    :meth:`~metakd.models.teachers.Teacher.store_reference`)."""
    out, _ = stack_forward(params, support_x, activation=teacher.activation)
    return teacher.reference(out, 1.0 - support_y)
