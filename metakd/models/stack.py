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


def stack_forward(
    params: StackParams,
    x: Tensor,
    *,
    activation: Activation,
    perturb: dict[int, Tensor] | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Run the stack on ``x`` with (possibly adapted) per-task parameters.

    Args:
        params: the task's parameters.
        x: inputs ``[..., N, d]``.
        activation: applied after every layer but the last.
        perturb: optional ``{layer: zeros [..., N, out]}`` added to that layer's pre-activation.
            Differentiating the loss with respect to these zeros yields ``∂L/∂z`` per row, which
            is exactly the ``G`` of the low-rank update (see module docstring).

    Returns:
        ``(output [..., N, out_last], inputs)`` where ``inputs[l]`` is layer ``l``'s input.
    """
    inputs: list[Tensor] = []
    h = x
    last = len(params.weights) - 1
    for layer, (w, b, facs) in enumerate(
        zip(params.weights, params.biases, params.factors, strict=True)
    ):
        inputs.append(h)
        z = h @ w.transpose(-1, -2)
        for fh, fg in facs:
            z = z - (h @ fh.transpose(-1, -2)) @ fg
        if b is not None:
            z = z + b
        if perturb is not None and layer in perturb:
            z = z + perturb[layer]
        h = activation(z) if layer < last else z
    return h, inputs
