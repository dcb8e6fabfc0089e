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
of its activations being stored (:class:`_Recompute`): the meta-graph then holds only each step's
low-rank factors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vjp

from metakd.meta.losses import LossFn, one_class_loss
from metakd.models.stack import Prefix, StackParams, append_factor, make_prefix, stack_forward
from metakd.models.teachers import Reference, Teacher

# Per-layer learned rates for Meta-SGD (Li et al. 2017): (weight rate [out, in], bias rate [out]).
LayerRates = tuple[tuple[Tensor, Tensor | None], ...]


def _inner_objective(
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
    reference, support_scores = _reference_and_fit_scores(
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


def _inner_gradient(
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
    deltas, (value, inputs) = grad_and_value(_inner_objective, has_aux=True)(
        perturb, params, rows, y, teacher, loss, pool, prefix
    )
    return deltas, value, inputs


class _Recompute(torch.autograd.Function):
    """Activation checkpoint of a pure function of tensors: only its inputs are saved, and the
    backward pass runs it again under ``torch.func.vjp``.

    ``torch.utils.checkpoint`` cannot wrap an inner step in torch 2.13: the non-reentrant form
    records through saved-tensor hooks, which ``torch.func.grad`` refuses ("don't yet support
    saved tensor hooks"), and the reentrant form calls ``autograd.backward``, which cannot run
    under ``vmap``. An ``autograd.Function`` composes with both: under ``vmap`` its rule
    (:meth:`vmap`) checkpoints the batched function, and the backward pass recomputes it with
    ``torch.func.vjp``, which nests over the inner ``grad``. ``fn`` must read every tensor it is
    differentiated with respect to from its arguments: a tensor it closes over would get no
    gradient.
    """

    @staticmethod
    def forward(fn: Callable[..., tuple[Tensor, ...]], *tensors: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        return fn(*tensors)

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[int | None, ...],
        fn: Callable[..., tuple[Tensor, ...]],
        *tensors: Tensor,
    ) -> tuple[tuple[Tensor, ...], tuple[int, ...]]:
        # Checkpoint the vmap-ed function over the whole batch, rather than vmap the
        # checkpoint: the backward's vjp then sees the tasks as one batch, so the gradient of a
        # shared weight is one matmul over all tasks' rows instead of a [B, out, in] per-task
        # gradient summed afterwards (what a generated vmap rule computes).
        batched = torch.func.vmap(fn, in_dims=in_dims[1:], randomness=info.randomness)
        out = _Recompute.apply(batched, *tensors)
        return out, tuple(0 for _ in out)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        fn, *tensors = inputs
        ctx.fn = fn
        ctx.save_for_backward(*tensors)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        tensors = list(ctx.saved_tensors)
        # Only the inputs that need a gradient are primals: none is computed for the rows.
        wanted = [i for i, need in enumerate(ctx.needs_input_grad[1:]) if need]

        def of_wanted(*chosen: Tensor) -> tuple[Tensor, ...]:
            full = list(tensors)
            for i, tensor in zip(wanted, chosen, strict=True):
                full[i] = tensor
            return ctx.fn(*full)

        pullback = vjp(of_wanted, *(tensors[i] for i in wanted))[1]
        result: list[Tensor | None] = [None] * len(tensors)
        for i, grad in zip(wanted, pullback(grads), strict=True):
            result[i] = grad
        return (None, *result)


class _InnerGradient(nn.Module):
    """One inner step's ``(δ per adapted layer, support loss, layer inputs)``, as a module holding
    the teacher so that ``functional_call`` can pass the teacher's own parameters (the head's)
    explicitly to a checkpointed step."""

    def __init__(
        self, teacher: Teacher, loss: LossFn, pool: PoolTerm | None, layers: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.loss = loss
        self.pool = pool
        self.layers = layers

    def forward(
        self, params: StackParams, rows: Tensor, y: Tensor, prefix: Prefix | None
    ) -> tuple[dict[int, Tensor], Tensor, dict[int, Tensor]]:
        return _inner_gradient(
            params,
            rows,
            y,
            prefix,
            teacher=self.teacher,
            loss=self.loss,
            pool=self.pool,
            layers=self.layers,
        )


def _checkpointed(
    step: _InnerGradient, params: StackParams, rows: Tensor, y: Tensor, prefix: Prefix | None
) -> tuple[dict[int, Tensor], Tensor, dict[int, Tensor]]:
    """``step(params, rows, y, prefix)`` whose activations are recomputed in the backward pass.

    Every tensor goes through :class:`_Recompute` as an argument: the stack parameters, the rows
    and prefix, and the teacher's parameters outside the stack (its head's), which the step reads
    through ``functional_call``. The input of the first layer run is one of those arguments, so
    it is not returned (a Function's output must not be its input).
    """
    stack = {id(p) for layer in step.teacher.linear_layers() for p in layer.parameters()}
    head = {
        f"teacher.{name}": p for name, p in step.teacher.named_parameters() if id(p) not in stack
    }
    start = 0 if prefix is None else prefix.layer
    later = tuple(layer for layer in step.layers if layer > start)
    layout = _layout(params)
    prefix_layer = None if prefix is None else prefix.layer

    def run(*tensors: Tensor) -> tuple[Tensor, ...]:
        leaves = iter(tensors)
        r, labels = next(leaves), next(leaves)
        pre = None if prefix_layer is None else Prefix(prefix_layer, next(leaves), next(leaves))
        head_now = {name: next(leaves) for name in head}
        deltas, value, inputs = functional_call(
            step, head_now, (_rebuild(layout, leaves), r, labels, pre)
        )
        return (*(deltas[i] for i in step.layers), value, *(inputs[i] for i in later))

    held = [rows, y, *(() if prefix is None else (prefix.inputs, prefix.product))]
    out = _Recompute.apply(run, *held, *head.values(), *_leaves(params))
    n = len(step.layers)
    inputs = dict(zip(later, out[n + 1 :], strict=True))
    inputs[start] = rows if prefix is None else prefix.inputs
    return dict(zip(step.layers, out[:n], strict=True)), out[n], inputs


# Where a StackParams' tensors sit: per layer, whether it has a bias and how many factors.
_Layout = tuple[tuple[bool, int], ...]


def _layout(params: StackParams) -> _Layout:
    return tuple(
        (b is not None, len(f)) for b, f in zip(params.biases, params.factors, strict=True)
    )


def _leaves(params: StackParams) -> list[Tensor]:
    """The tensors of ``params`` in :func:`_rebuild`'s order."""
    biases = [b for b in params.biases if b is not None]
    return [*params.weights, *biases, *(t for facs in params.factors for f in facs for t in f)]


def _rebuild(layout: _Layout, leaves: Iterator[Tensor]) -> StackParams:
    """The :class:`StackParams` of ``layout`` from :func:`_leaves`' tensors."""
    weights = tuple(next(leaves) for _ in layout)
    biases = tuple(next(leaves) if has_bias else None for has_bias, _ in layout)
    factors = tuple(tuple((next(leaves), next(leaves)) for _ in range(k)) for _, k in layout)
    return StackParams(weights, biases, factors)


class PoolTerm(NamedTuple):
    """Transductive use of a task's unlabelled pool in the inner loss: ``weight`` times the
    one-class loss of the pool rows, except the ``trim`` fraction that score highest."""

    weight: float
    trim: float


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
        pool_x: the task's unlabelled rows ``[m, d]``, used by the ``pool`` term and by heads
            with pool neighbours (``teacher.uses_pool``).
        pool: weight and trim of the transductive pool term (see :class:`PoolTerm`).
        checkpoint: recompute each step's activations in the backward pass rather than keep
            them (the same meta-gradient; see ``InnerConfig.checkpoint``). Applies only where a
            meta-gradient flows through the steps: second order, with gradients enabled.

    Returns:
        ``(adapted params, support loss before the first step)``.
    """
    n_layers = len(params.weights)
    adapted = tuple(range(n_layers)) if layers is None else tuple(sorted(layers))
    weights, biases, factors = list(params.weights), list(params.biases), list(params.factors)
    use_pool = pool is not None and pool.weight > 0 and pool_x is not None
    rows = support_x
    if pool_x is not None and (use_pool or teacher.uses_pool):
        # A head with pool neighbours scores the support against the pool: its rows ride along.
        rows = torch.cat([support_x, pool_x], dim=-2)
    initial_loss = support_x.new_zeros(())
    if steps == 0 or not adapted:
        return params, initial_loss
    # Layers below the first adapted one never change, so the rows' input to it is the same at
    # every step: each step's update of that layer has the same H and they merge into one factor
    # (H, Σ_k lr·G_k). With a scalar rate its weight stays the shared one too, so the product of
    # the rows with it is computed once (the Prefix) rather than once per step.
    first = adapted[0]
    prefix = None
    if isinstance(lr, float):
        prefix = make_prefix(params, rows, activation=teacher.activation, layer=first)
        factors[first] = ()  # folded into prefix.product; the merged factor goes here
    merged: Tensor | None = None
    inner_pool = pool if use_pool else None
    # First-order steps are constants of the meta-graph, and without autograd there is none.
    recompute = checkpoint and not first_order and torch.is_grad_enabled()
    step_module = _InnerGradient(teacher, loss, inner_pool, adapted) if recompute else None
    for step in range(steps):
        current = StackParams(tuple(weights), tuple(biases), tuple(factors))
        if step_module is not None:
            deltas, value, inputs = _checkpointed(step_module, current, rows, support_y, prefix)
        else:
            deltas, value, inputs = _inner_gradient(
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
    reference, support_scores = _reference_and_fit_scores(
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
    reference = _reference(teacher, out[..., :n, :], support_x, support_y, pool_out, pool_x)
    scores = teacher.head(out, rows, reference, leave_one_out=True)
    return reference, scores[..., :n], (None if pool_x is None else scores[..., n:])


def _reference(
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


def _reference_and_fit_scores(
    teacher: Teacher,
    support_out: Tensor,
    support_x: Tensor,
    support_y: Tensor,
    pool_out: Tensor | None,
    pool_x: Tensor | None,
) -> tuple[Reference, Tensor]:
    """:func:`_reference` and the support's own leave-one-out fit scores ``[n]`` against it
    (:meth:`Teacher.reference_and_fit_scores`): what the inner loss reads."""
    if not teacher.uses_reference:
        return (), teacher.fit_scores(support_out, support_x, (), leave_one_out=True)
    return teacher.reference_and_fit_scores(
        support_out, support_x, 1.0 - support_y, pool_out, pool_x
    )
