"""MAML and first-order MAML: the meta-gradient of the query loss after adaptation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import vmap

from metakd.meta.learners.base import InnerConfig, MetaConfig, MetaLearner, MetaStats
from metakd.meta.learners.registry import register
from metakd.models.stack import StackParams
from metakd.models.teachers import Teacher, score_logits


@register("maml")
class MAML(MetaLearner):
    """Model-Agnostic Meta-Learning (Finn et al. 2017, "Model-Agnostic Meta-Learning for Fast
    Adaptation of Deep Networks", Alg. 1).

    The meta-loss is the mean query loss after ``inner.steps`` SGD steps on each task's support;
    its gradient flows through the inner steps to second order (unless ``inner.first_order``).
    Subclasses change what adapts or how (:class:`FOMAML`, ANIL, Meta-SGD) and keep this loss.

    Args:
        teacher: the network whose initialisation is meta-learned.
        inner: adaptation settings.
        meta: outer-loop settings; ``meta.compile`` compiles :meth:`meta_loss`.
        anomaly_shots: whether supports carry labelled anomalies (chooses the ``auto`` loss).
    """

    training_steps: int | None = None
    """Inner steps inside :meth:`meta_loss` (``None``: ``inner.steps``, as adaptation takes)."""

    def __init__(
        self, teacher: Teacher, *, inner: InnerConfig, meta: MetaConfig, anomaly_shots: int
    ) -> None:
        super().__init__(teacher, inner=inner, meta=meta, anomaly_shots=anomaly_shots)
        # Compiled lazily on the first call, for the fixed episode shapes: that step pays the
        # compilation.
        self._loss: Callable[..., tuple[Tensor, MetaStats]] = (
            torch.compile(self.meta_loss) if meta.compile else self.meta_loss
        )

    def meta_loss(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        pool_x: Tensor | None = None,
    ) -> tuple[Tensor, MetaStats]:
        """Mean query loss after adaptation, differentiable w.r.t. the meta-parameters.

        Args:
            support_x: ``[B, n, d]``; support_y: ``[B, n]``; query_x: ``[B, q, d]``;
            query_y: ``[B, q]`` (labels as floats); pool_x: ``[B, m, d]`` unlabelled rows or
            ``None`` (used by the transductive pool term when ``inner.pool_weight > 0``).

        Returns:
            ``(scalar meta-loss, per-task stats)``.
        """
        plan = self.plan()

        def task(params: StackParams, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, px):
            q_scores, before, after = self._adapt_and_score(
                params,
                sx,
                sy,
                qx,
                px,
                plan=plan,
                first_order=self.inner.first_order,
                steps=self.training_steps,
            )
            outer = self.outer_loss(score_logits(self.teacher, q_scores), qy)
            return outer, before, after, q_scores

        pool_dim = None if pool_x is None else 0
        stats = MetaStats(
            *vmap(task, in_dims=(None, 0, 0, 0, 0, pool_dim))(
                self.teacher.stack_params(), support_x, support_y, query_x, query_y, pool_x
            )
        )
        return self.with_outer_term(stats.outer_loss.mean(), support_x, support_y), stats

    def meta_gradients(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        pool_x: Tensor | None = None,
    ) -> MetaStats:
        """Backpropagate :meth:`meta_loss` (see :meth:`MetaLearner.meta_gradients`)."""
        loss, stats = self._loss(support_x, support_y, query_x, query_y, pool_x)
        loss.backward()
        # Diagnostics, not part of the graph: a caller reading them as numbers must not meet
        # tensors that still require grad (torch warns on each conversion).
        return MetaStats(*(s.detach() for s in stats))


@register("fomaml")
class FOMAML(MAML):
    """First-order MAML (Finn et al. 2017, §5.2): MAML with the inner steps treated as constants,
    so the meta-gradient is the query gradient at the adapted weights."""

    first_order_only = True
