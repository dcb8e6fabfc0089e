"""The outer (meta) optimisation step, shared by meta-training and pooled pretraining."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def outer_step(
    parameters: Iterable[nn.Parameter], optimiser: torch.optim.Optimizer, *, grad_clip: float
) -> bool:
    """One optimiser step on the gradients in ``.grad``, clipped to a global norm of
    ``grad_clip`` (0: no clipping); returns whether it was taken. A step whose gradient is not
    finite (an inner loop that diverged on some task) is skipped, so one bad batch cannot turn
    every parameter into NaN."""
    params = list(parameters)
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    if not torch.isfinite(norm):
        optimiser.zero_grad(set_to_none=True)
        return False
    optimiser.step()
    return True


__all__ = ["outer_step"]
