"""Activation checkpointing of inner steps (``inner.checkpoint``): each step's activations are
recomputed in the backward pass instead of kept; the meta-graph holds only the low-rank factors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp

from metakd.meta.losses import LossFn
from metakd.meta.step import PoolTerm, inner_gradient
from metakd.models.stack import Prefix, StackParams
from metakd.models.teachers import Teacher


class Recompute(torch.autograd.Function):
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
        out = Recompute.apply(batched, *tensors)
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


class InnerGradient(nn.Module):
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
        return inner_gradient(
            params,
            rows,
            y,
            prefix,
            teacher=self.teacher,
            loss=self.loss,
            pool=self.pool,
            layers=self.layers,
        )


def checkpointed_step(
    step: InnerGradient, params: StackParams, rows: Tensor, y: Tensor, prefix: Prefix | None
) -> tuple[dict[int, Tensor], Tensor, dict[int, Tensor]]:
    """``step(params, rows, y, prefix)`` whose activations are recomputed in the backward pass.

    Every tensor goes through :class:`Recompute` as an argument: the stack parameters, the rows
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
    out = Recompute.apply(run, *held, *head.values(), *_leaves(params))
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
