"""Pooled multi-task training: the transfer-learning ablation, as a meta-learner."""

from __future__ import annotations

from metakd.meta.learners.maml import MAML
from metakd.meta.learners.registry import register


@register("pooled")
class Pooled(MAML):
    """Pooled multi-task pretraining: the network is trained on every task's labelled query rows
    at once, with no inner loop while training (MAML with zero inner steps, whose "meta-loss" is
    plain supervised multi-task training), and adapts as usual (``inner.steps``) afterwards.

    Not a meta-learning algorithm: it is what meta-learning is compared against (fine-tuning a
    pretrained network, as in Chen et al. 2019, "A Closer Look at Few-shot Classification"). The
    same episodes, losses and outer step as every meta-learner, so only the inner loop differs.
    """

    training_steps = 0
