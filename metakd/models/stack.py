"""Functional core shared by every teacher: a stack of linear layers with per-task weights.

A teacher is a stack of ``nn.Linear`` layers with an elementwise activation between them. During
adaptation each task owns its own weights, but materialising a ``[B, out, in]`` weight per task is
memory-bound and slower than a per-task loop on CPU. We never materialise them: an SGD step on a
linear layer changes its weight by a rank-``n`` matrix,

    ΔW = -lr · Σ_i δ_i h_iᵀ = -Gᵀ H,       (δ_i = ∂L/∂z_i, h_i the layer input of support row i)

so an adapted layer is ``W - Σ_k G_kᵀ H_k`` and ``x W'ᵀ = x Wᵀ - Σ_k (x H_kᵀ) G_k``. The product
``x Wᵀ`` uses the shared meta-parameters, so under ``vmap`` it is one large matmul over the whole
meta-batch; the correction costs ``O(n·(in + out))`` per row instead of ``O(in·out)`` per task.
This is exact (not an approximation) and differentiable to any order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

Activation = Callable[[Tensor], Tensor]

ACTIVATIONS: dict[str, Activation] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
}

# One low-rank weight update: (H [n, in], G [n, out]); the layer's weight changes by -Gᵀ H.
Factor = tuple[Tensor, Tensor]


class StackParams(NamedTuple):
    """Parameters of a linear stack for one task (a pytree, so ``vmap`` can batch it).

    Attributes:
        weights: per layer, ``[out, in]``. Shared meta-parameters, or a dense per-task weight
            once a per-element learning rate (Meta-SGD) has updated it.
        biases: per layer, ``[out]`` or ``None``.
        factors: per layer, the low-rank updates applied so far; the effective weight is
            ``weights[l] - Σ_k G_kᵀ H_k``.
    """

    weights: tuple[Tensor, ...]
    biases: tuple[Tensor | None, ...]
    factors: tuple[tuple[Factor, ...], ...]

    @staticmethod
    def from_layers(layers: list[tuple[Tensor, Tensor | None]]) -> StackParams:
        """Un-adapted parameters from ``[(weight, bias), ...]``."""
        return StackParams(
            weights=tuple(w for w, _ in layers),
            biases=tuple(b for _, b in layers),
            factors=tuple(() for _ in layers),
        )

    def materialize(self) -> list[tuple[Tensor, Tensor | None]]:
        """Dense ``[(weight, bias), ...]`` with every low-rank update folded in."""
        out = []
        for w, b, facs in zip(self.weights, self.biases, self.factors, strict=True):
            for h, g in facs:
                w = w - g.transpose(-1, -2) @ h
            out.append((w, b))
        return out


class Prefix(NamedTuple):
    """Fixed rows' state at one layer, computed once and reused by every inner step.

    While an inner loop adapts layers ``>= layer`` only, the layers below never change, so the
    rows' input to ``layer`` and its product with that layer's shared weight are the same at every
    step: the one matmul with a wide weight (e.g. ``[256, 1000]``) is not repeated per step.

    Attributes:
        layer: the first layer run from this state.
        inputs: the rows' input to ``layer``, ``[..., N, in]``.
        product: ``inputs @ weightᵀ`` with the low-rank factors of the parameters it was computed
            from folded in, ``[..., N, out]`` (no bias). Factors in the parameters passed to
            :func:`stack_forward` with this prefix are applied on top.
    """

    layer: int
    inputs: Tensor
    product: Tensor


def layer_product(params: StackParams, layer: int, h: Tensor) -> Tensor:
    """``h`` times the layer's effective weight transposed, ``[..., N, out]`` (no bias)."""
    return _apply_factors(h @ params.weights[layer].transpose(-1, -2), params.factors[layer], h)


def _apply_factors(z: Tensor, factors: tuple[Factor, ...], h: Tensor) -> Tensor:
    """``z`` minus the rows ``h``'s products with the low-rank factors ``(H, G)``: ``h Hᵀ G``."""
    for fh, fg in factors:
        z = z - (h @ fh.transpose(-1, -2)) @ fg
    return z


def append_factor(factors: tuple[Factor, ...], h: Tensor, g: Tensor) -> tuple[Factor, ...]:
    """``factors`` plus the update ``(h [n, in], g [n, out])``, merged into the last factor.

    ``Σ_k (x H_kᵀ) G_k`` equals ``(x [H_1; H_2]ᵀ) [G_1; G_2]``: one factor of stacked rows costs
    two products per forward pass however many steps made it, where separate factors cost two
    each (an inner loop's time on small tasks is the number of its operations).
    """
    if not factors:
        return ((h, g),)
    fh, fg = factors[-1]
    return (*factors[:-1], (torch.cat([fh, h], dim=-2), torch.cat([fg, g], dim=-2)))


def make_prefix(params: StackParams, x: Tensor, *, activation: Activation, layer: int) -> Prefix:
    """The rows ``x``'s :class:`Prefix` at ``layer``: run the layers below it, then one product."""
    h = x
    for below in range(layer):
        z = layer_product(params, below, h)
        b = params.biases[below]
        h = activation(z if b is None else z + b)
    return Prefix(layer, h, layer_product(params, layer, h))


def stack_forward(
    params: StackParams,
    x: Tensor,
    *,
    activation: Activation,
    perturb: dict[int, Tensor] | None = None,
    prefix: Prefix | None = None,
) -> tuple[Tensor, dict[int, Tensor]]:
    """Run the stack on ``x`` with (possibly adapted) per-task parameters.

    Args:
        params: the task's parameters.
        x: inputs ``[..., N, d]`` (ignored when ``prefix`` is given).
        activation: applied after every layer but the last.
        perturb: optional ``{layer: zeros [..., N, out]}`` added to that layer's pre-activation.
            Differentiating the loss with respect to these zeros yields ``∂L/∂z`` per row, which
            is exactly the ``G`` of the low-rank update (see module docstring).
        prefix: start at ``prefix.layer`` from its cached state instead of at layer 0; the
            factors of ``params`` at that layer are applied on top of ``prefix.product``.

    Returns:
        ``(output [..., N, out_last], inputs)`` where ``inputs[l]`` is layer ``l``'s input, for
        every layer that ran.
    """
    inputs: dict[int, Tensor] = {}
    first = 0 if prefix is None else prefix.layer
    h = x if prefix is None else prefix.inputs
    last = len(params.weights) - 1
    for layer in range(first, last + 1):
        inputs[layer] = h
        if prefix is not None and layer == first:
            z = _apply_factors(prefix.product, params.factors[layer], h)
        else:
            z = layer_product(params, layer, h)
        b = params.biases[layer]
        if b is not None:
            z = z + b
        if perturb is not None and layer in perturb:
            z = z + perturb[layer]
        h = activation(z) if layer < last else z
    return h, inputs
