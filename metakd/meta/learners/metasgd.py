"""Meta-SGD: MAML with learned per-parameter inner step sizes."""

from __future__ import annotations

import torch
from torch import nn

from metakd.meta.learners.base import InnerConfig, MetaConfig
from metakd.meta.learners.maml import MAML
from metakd.meta.learners.registry import register
from metakd.models.teachers import Teacher


@register("metasgd")
class MetaSGD(MAML):
    """Meta-SGD (Li et al. 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning"):
    MAML whose inner step ``θ - α ∘ ∇L`` has a learned rate ``α`` per element of every weight and
    bias, meta-learned with the initialisation.

    The rates start at ``inner.lr`` and live in :attr:`rates` (weight, then bias if any, per
    layer), which checkpoints store and :class:`~metakd.meta.learners.AdaptationPlan` reads back.
    """

    def __init__(
        self, teacher: Teacher, *, inner: InnerConfig, meta: MetaConfig, anomaly_shots: int
    ) -> None:
        super().__init__(teacher, inner=inner, meta=meta, anomaly_shots=anomaly_shots)
        for layer in teacher.linear_layers():
            self.rates.append(nn.Parameter(torch.full_like(layer.weight, inner.lr)))
            if layer.bias is not None:
                self.rates.append(nn.Parameter(torch.full_like(layer.bias, inner.lr)))
