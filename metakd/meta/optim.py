"""The inner loop's optimisers as pure functions: SGD, SGD with momentum and Adam.

Each is an update rule ``(state, gradient, step) -> (direction, new state)`` on one tensor, with
no ``torch.optim`` object and no in-place operation, so it runs under ``torch.func.vmap`` and is
differentiable to any order (a second-order meta-gradient flows through the state). The state
(momentum buffer, Adam's moments) is created by the first step of :func:`metakd.meta.inner.adapt`
and lives only inside that call: each task, and each adaptation, starts from none.

The step is ``p - rate · direction``, where the rate is ``inner.lr`` or Meta-SGD's learned
per-element rate: the learned rate multiplies the optimiser's direction. The directions are those
of ``torch.optim.SGD(momentum=μ)`` (dampening 0, no Nesterov) and ``torch.optim.Adam`` (no weight
decay, no AMSGrad), whose ``eps`` is added to the bias-corrected ``√v̂``; `higher` 0.2.1's
``DifferentiableAdam`` adds it to ``√v`` before the correction, which is torch's rule with
``eps · √(1 - β₂ᵗ)`` at step ``t`` (how the tests compare the two).
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch
from torch import Tensor

InnerOptimizerName = Literal["sgd", "momentum", "adam"]
"""``inner.optimizer``: plain SGD, SGD with momentum, or Adam."""

INNER_OPTIMIZERS: tuple[str, ...] = get_args(InnerOptimizerName)

# One tensor's optimiser state: () before the first step; (buffer,) for momentum; (m, v) for Adam.
OptimizerState = tuple[Tensor, ...]


class InnerOptimizer(NamedTuple):
    """An inner optimiser's settings (``inner.optimizer`` and its hyper-parameters). A pure
    description: the state it needs lives inside one adaptation.

    Attributes:
        name: ``sgd``, ``momentum`` or ``adam``.
        momentum: the momentum factor ``μ`` (``momentum`` only).
        betas: Adam's decay rates of the first and second moments.
        eps: Adam's term added to ``√v̂``.
    """

    name: InnerOptimizerName = "sgd"
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


SGD = InnerOptimizer()
"""Plain SGD: the default, and the low-rank path of :func:`~metakd.meta.inner.adapt`."""


def direction(
    optimizer: InnerOptimizer, state: OptimizerState, grad: Tensor, step: int
) -> tuple[Tensor, OptimizerState]:
    """The update direction of one tensor at ``step`` (1 for the first) and the new state.

    Args:
        optimizer: which rule, and its hyper-parameters.
        state: this tensor's state after the previous step (``()`` at the first).
        grad: the gradient of the inner objective with respect to the tensor.
        step: the 1-based step number (Adam's bias correction).

    Returns:
        ``(direction, state)``: the tensor moves by ``-rate · direction``.
    """
    if optimizer.name == "sgd":
        return grad, ()
    if optimizer.name == "momentum":
        # torch.optim.SGD: the buffer starts as the first gradient, then b ← μ b + g.
        buffer = grad if not state else optimizer.momentum * state[0] + grad
        return buffer, (buffer,)
    if optimizer.name == "adam":
        beta1, beta2 = optimizer.betas
        if state:
            m = beta1 * state[0] + (1 - beta1) * grad
            v = beta2 * state[1] + (1 - beta2) * grad.square()
        else:
            m, v = (1 - beta1) * grad, (1 - beta2) * grad.square()
        # torch.optim.Adam's m̂ / (√v̂ + ε) with m̂ = m / (1 - β₁ᵗ), v̂ = v / (1 - β₂ᵗ), as
        # (√(1 - β₂ᵗ) / (1 - β₁ᵗ)) · m / (√v + ε √(1 - β₂ᵗ)): fewer passes over the tensor.
        root = (1 - beta2**step) ** 0.5
        return (root / (1 - beta1**step)) * m / (_sqrt(v) + optimizer.eps * root), (m, v)
    raise ValueError(f"unknown inner optimiser {optimizer.name!r}")


def _sqrt(v: Tensor) -> Tensor:
    """``√v`` for ``v ≥ 0`` whose derivative is 0, not infinite, where ``v`` is 0: an entry whose
    gradient has been exactly zero at every step (a dead unit) gets no second-order term rather
    than ``0 · ∞ = NaN`` (`higher` masks those entries' gradients for the same reason). There
    the value is ``√tiny`` (about 1e-19 in float32), not 0; the direction is 0 either way (its
    numerator ``m`` is 0) and ``ε`` dwarfs it in the denominator."""
    return v.clamp_min(torch.finfo(v.dtype).tiny).sqrt()


__all__ = [
    "INNER_OPTIMIZERS",
    "InnerOptimizer",
    "InnerOptimizerName",
    "SGD",
    "OptimizerState",
    "direction",
]
