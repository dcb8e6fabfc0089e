"""Reptile: move the initialisation towards each task's adapted weights."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import vmap

from metakd.meta.inner import task_scores
from metakd.meta.learners.base import InnerConfig, MetaConfig, MetaLearner, MetaStats
from metakd.meta.learners.registry import register
from metakd.meta.losses import inner_loss_fn
from metakd.models.stack import StackParams
from metakd.models.teachers import Teacher, score_logits


@register("reptile")
class Reptile(MetaLearner):
    """Reptile (Nichol et al. 2018, "On First-Order Meta-Learning Algorithms", Alg. 2): the
    meta-gradient is the pseudo-gradient ``θ - mean_b φ_b``, with ``φ_b`` the weights after
    first-order steps of the inner optimiser (``inner.optimizer``: SGD by default) on task ``b``.

    Reptile has no support/query split and no meta-loss, so ``meta.compile`` (which compiles a
    meta-loss) does not apply and is ignored.

    Args:
        teacher: the network whose initialisation is meta-learned.
        inner: adaptation settings (always first order).
        meta: outer-loop settings.
        anomaly_shots: whether supports carry labelled anomalies (chooses the ``auto`` loss that
            evaluation and ``metakd adapt`` adapt with).
    """

    first_order_only = True  # the pseudo-gradient never differentiates through the inner loop

    def __init__(
        self, teacher: Teacher, *, inner: InnerConfig, meta: MetaConfig, anomaly_shots: int
    ) -> None:
        super().__init__(teacher, inner=inner, meta=meta, anomaly_shots=anomaly_shots)
        # Each task's rows are all labelled (support ∪ query, anomalies included), so Reptile's
        # own inner loop is supervised, whatever the support-only loss of evaluation is.
        self.supervised_loss = inner_loss_fn(
            "auto", has_anomalies=True, score_is_logit=teacher.score_is_logit
        )

    def pseudo_gradients(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        pool_x: Tensor | None = None,
    ) -> tuple[list[Tensor], MetaStats]:
        """Reptile's pseudo-gradient ``θ - mean_b φ_b``.

        Each task's φ_b is ``steps`` first-order steps of the inner optimiser on all its
        labelled rows (support ∪ query) under the supervised inner loss. ``pool_x`` (``[B, m,
        d]`` or ``None``) serves heads with pool neighbours. Only the stack's weights get a
        pseudo-gradient; other meta-parameters of the head (input skip, pool trust) have no
        inner loop to move them and stay as they are.

        Returns:
            ``(one gradient per parameter of teacher.layers, in order; per-task stats)``; stats'
            query scores are from the un-adapted teacher (Reptile adapts on the query itself).
        """
        x = torch.cat([support_x, query_x], dim=1)
        y = torch.cat([support_y, query_y], dim=1)
        params = self.teacher.stack_params()
        plan = self.plan()
        pool_dim = None if pool_x is None else 0

        def task(p: StackParams, xb: Tensor, yb: Tensor, px: Tensor | None):
            adapted, before = self._adapt(
                p, xb, yb, px, plan=plan, loss=self.supervised_loss, first_order=True, pool=None
            )
            # vmap returns tensors only: a layer without a bias (None) is left out here.
            biases = tuple(b for b in adapted.biases if b is not None)
            # The dense path (an optimiser with state, a proximal term) moves the weights
            # themselves; the low-rank path only adds factors.
            weights = adapted.weights if plan.dense else ()
            return adapted.factors, weights, biases, before

        factors, weights, biases, before = vmap(task, in_dims=(None, 0, 0, pool_dim))(
            params, x, y, pool_x
        )
        adapted_biases = iter(biases)
        grads: list[Tensor] = []
        batch = x.shape[0]
        for layer, facs in enumerate(factors):
            w = params.weights[layer]
            # θ - φ summed over tasks: Σ_b Σ_k G_bkᵀ H_bk as one [out, B·n] @ [B·n, in] matmul.
            g_w = torch.zeros_like(w)
            for h, g in facs:
                g_w = g_w + g.reshape(-1, g.shape[-1]).T @ h.reshape(-1, h.shape[-1])
            if weights:
                g_w = g_w + (w - weights[layer]).sum(0)
            grads.append((g_w / batch).detach())
            bias = params.biases[layer]
            if bias is not None:
                grads.append((bias - next(adapted_biases)).mean(0).detach())
        with torch.no_grad():
            q_scores, s_scores = vmap(
                lambda sx, sy, qx, px: task_scores(
                    params, qx, teacher=self.teacher, support_x=sx, support_y=sy, pool_x=px
                ),
                in_dims=(0, 0, 0, pool_dim),
            )(support_x, support_y, query_x, pool_x)
            after = vmap(self.inner_loss)(s_scores, support_y)
            outer = vmap(self.outer_loss)(score_logits(self.teacher, q_scores), query_y)
        return grads, MetaStats(outer, before.detach(), after, q_scores)

    def meta_gradients(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        pool_x: Tensor | None = None,
    ) -> MetaStats:
        """Add :meth:`pseudo_gradients` to the stack's ``.grad`` (see
        :meth:`MetaLearner.meta_gradients`)."""
        grads, stats = self.pseudo_gradients(support_x, support_y, query_x, query_y, pool_x)
        for param, grad in zip(self.teacher.layers.parameters(), grads, strict=True):
            param.grad = grad if param.grad is None else param.grad + grad
        # A teacher's term of the meta-parameters alone (GANomaly's adversarial training).
        extra = self.teacher.outer_term(support_x, support_y)
        if extra is not None:
            extra.backward()
        return stats
