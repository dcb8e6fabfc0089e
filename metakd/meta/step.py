"""One inner step: the support loss (plus the transductive pool term) and its gradient with
respect to each adapted layer's pre-activations, the factors of the low-rank SGD update."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import grad_and_value

from metakd.meta.losses import LossFn, one_class_loss
from metakd.models.stack import Prefix, StackParams, stack_forward
from metakd.models.teachers import Reference, Teacher


class PoolTerm(NamedTuple):
    """Transductive use of a task's unlabelled pool in the inner loss: ``weight`` times the
    one-class loss of the pool rows, except the ``trim`` fraction that score highest."""

    weight: float
    trim: float


def inner_objective(
    perturb: dict[int, Tensor],
    params: StackParams,
    x: Tensor,
    y: Tensor,
    teacher: Teacher,
    loss: LossFn,
    pool: PoolTerm | None,
    prefix: Prefix | None,
) -> tuple[Tensor, dict[int, Tensor]]:
    """Support loss (support rows scored leave-one-out), plus the transductive pool term, both on
    the teacher's :meth:`~metakd.models.teachers.Teacher.fit_scores` (its scores, unless it
    trains on another energy).

    ``x`` holds the ``len(y)`` support rows followed by the pool rows, if any; ``prefix`` is their
    cached state at the first adapted layer.
    """
    out, inputs = stack_forward(
        params, x, activation=teacher.activation, perturb=perturb, prefix=prefix
    )
    n = y.shape[-1]
    support_out, support_x = out[..., :n, :], x[..., :n, :]
    pool_out, pool_x = (out[..., n:, :], x[..., n:, :]) if x.shape[-2] > n else (None, None)
    reference, support_scores = reference_and_fit_scores(
        teacher, support_out, support_x, y, pool_out, pool_x
    )
    value = loss(support_scores, y)
    if pool is not None:
        if pool_out is None or pool_x is None:
            raise ValueError("the inner pool term needs the pool rows after the support rows")
        pool_scores = teacher.fit_scores(pool_out, pool_x, reference)
        keep = max(1, round((1.0 - pool.trim) * pool_scores.shape[-1]))
        # The most normal-looking share of the pool; the rest may hold anomalies.
        kept = pool_scores.topk(keep, dim=-1, largest=False).values
        value = value + pool.weight * one_class_loss(
            kept, torch.zeros_like(kept), logit=teacher.score_is_logit
        )
    return value, inputs


def inner_gradient(
    params: StackParams,
    rows: Tensor,
    y: Tensor,
    prefix: Prefix | None,
    *,
    teacher: Teacher,
    loss: LossFn,
    pool: PoolTerm | None,
    layers: tuple[int, ...],
) -> tuple[dict[int, Tensor], Tensor, dict[int, Tensor]]:
    """One inner step's ``δ = ∂L/∂z`` per adapted layer, support loss and layer inputs."""
    perturb = {
        layer: rows.new_zeros(*rows.shape[:-1], params.weights[layer].shape[-2]) for layer in layers
    }
    deltas, (value, inputs) = grad_and_value(inner_objective, has_aux=True)(
        perturb, params, rows, y, teacher, loss, pool, prefix
    )
    return deltas, value, inputs


def task_reference(
    teacher: Teacher,
    support_out: Tensor,
    support_x: Tensor,
    support_y: Tensor,
    pool_out: Tensor | None,
    pool_x: Tensor | None,
) -> Reference:
    """:meth:`Teacher.reference` from the support's and pool's outputs and inputs (``()`` for
    heads without one); the pool is read only by heads with pool neighbours."""
    if not teacher.uses_reference:
        return ()
    return teacher.reference(support_out, support_x, 1.0 - support_y, pool_out, pool_x)


def reference_and_fit_scores(
    teacher: Teacher,
    support_out: Tensor,
    support_x: Tensor,
    support_y: Tensor,
    pool_out: Tensor | None,
    pool_x: Tensor | None,
) -> tuple[Reference, Tensor]:
    """:func:`task_reference` and the support's own leave-one-out fit scores ``[n]`` against it
    (:meth:`Teacher.reference_and_fit_scores`): what the inner loss reads."""
    if not teacher.uses_reference:
        return (), teacher.fit_scores(support_out, support_x, (), leave_one_out=True)
    return teacher.reference_and_fit_scores(
        support_out, support_x, 1.0 - support_y, pool_out, pool_x
    )
