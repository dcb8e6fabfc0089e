"""ANIL: MAML with the inner loop on the last layer only."""

from __future__ import annotations

import dataclasses

from metakd.meta.learners.base import InnerConfig
from metakd.meta.learners.maml import MAML
from metakd.meta.learners.registry import register


@register("anil")
class ANIL(MAML):
    """Almost No Inner Loop (Raghu et al. 2020, "Rapid Learning or Feature Reuse? Towards
    Understanding the Effectiveness of MAML"): MAML whose inner loop adapts only the last layer.

    The body is still meta-learned through the outer loss; since it never changes per task, its
    forward pass over the support is done once per task rather than once per inner step (see
    :func:`metakd.meta.inner.adapt`).
    """

    @classmethod
    def resolve(cls, inner: InnerConfig) -> InnerConfig:
        """Head only, whatever ``inner.layers`` says."""
        return dataclasses.replace(inner, layers="head")
