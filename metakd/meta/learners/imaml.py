"""iMAML: the implicit meta-gradient of a proximally anchored inner loop."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad, vjp, vmap

from metakd.errors import ConfigError
from metakd.meta.inner import support_objective, task_scores
from metakd.meta.learners.base import InnerConfig, MetaConfig, MetaLearner, MetaStats
from metakd.meta.learners.registry import register
from metakd.models.stack import StackParams
from metakd.models.teachers import Teacher, score_logits

#: The adapted layers' tensors by name (``w{layer}``, ``b{layer}``): what iMAML differentiates.
Params = dict[str, Tensor]


def conjugate_gradient(apply: Callable[[Params], Params], rhs: Params, steps: int) -> Params:
    """``steps`` conjugate-gradient iterations on ``A x = rhs`` from ``x = 0``, where ``apply(p)``
    is ``A p`` for a symmetric ``A`` (Hestenes & Stiefel 1952). A fixed number of iterations with
    no test of the residual, so it runs under ``vmap``; a zero residual (already solved) stops
    moving ``x`` instead of dividing by zero."""
    x = {k: torch.zeros_like(v) for k, v in rhs.items()}
    r = dict(rhs)
    p = dict(rhs)
    rr = _dot(r, r)
    for _ in range(steps):
        ap = apply(p)
        pap = _dot(p, ap)
        alpha = rr / torch.where(pap != 0, pap, torch.ones_like(pap))
        x = {k: x[k] + alpha * p[k] for k in x}
        r = {k: r[k] - alpha * ap[k] for k in r}
        rr_next = _dot(r, r)
        beta = rr_next / torch.where(rr != 0, rr, torch.ones_like(rr))
        p = {k: r[k] + beta * p[k] for k in p}
        rr = rr_next
    return x


def implicit_gradient(
    support_loss: Callable[[Params], Tensor],
    query_grad: Params,
    phi: Params,
    *,
    lam: float,
    cg_steps: int,
) -> Params:
    """iMAML's meta-gradient ``g = (I + H/λ)⁻¹ ∇_φ L_query`` (Rajeswaran et al. 2019, Eq. 6),
    with ``H = ∇²_φ support_loss`` at the adapted ``phi``, by :func:`conjugate_gradient`.

    Each iteration is one Hessian-vector product: the pullback of ``torch.func.vjp`` of the
    support loss's ``torch.func.grad`` (``vᵀH = Hv``, ``H`` being symmetric), linearised once at
    ``phi`` and applied ``cg_steps`` times. Pure, so it runs under ``vmap`` over tasks.

    Args:
        support_loss: the inner objective without its proximal term, a function of ``phi``.
        query_grad: ``∇_φ L_query`` at ``phi``.
        phi: the adapted tensors (the inner problem's solution).
        lam: the proximal weight ``λ``.
        cg_steps: conjugate-gradient iterations.
    """
    pullback = vjp(grad(support_loss), phi)[1]

    def apply(p: Params) -> Params:
        (hp,) = pullback(p)
        return {k: p[k] + hp[k] / lam for k in p}

    return conjugate_gradient(apply, query_grad, cg_steps)


def _dot(a: Params, b: Params) -> Tensor:
    """``Σ_k ⟨a_k, b_k⟩`` over the tensors of two parameter sets of the same layout."""
    return sum((a[k] * b[k]).sum() for k in a)  # type: ignore[return-value]


@register("imaml")
class IMAML(MetaLearner):
    """Implicit MAML (Rajeswaran et al. 2019, "Meta-Learning with Implicit Gradients", Alg. 2).

    Each task's inner objective is its support loss plus ``λ/2 ‖φ - θ‖²`` (``inner.proximal``,
    set to ``meta.imaml.lam``), minimised by the one inner loop from ``θ`` without building a
    graph. At its solution ``φ*`` the meta-gradient is ``dφ*/dθᵀ ∇L_query(φ*) = (I + H/λ)⁻¹
    ∇L_query(φ*)``, ``H`` the support loss's Hessian at ``φ*``, solved by ``meta.imaml.cg_steps``
    conjugate-gradient iterations of Hessian-vector products (:func:`implicit_gradient`), all
    vmapped over the meta-batch. Memory does not grow with ``inner.steps``: nothing of the inner
    loop is kept. The implicit gradient is exact where the inner loop has reached ``φ*``: use
    enough ``inner.steps`` for ``inner.lr`` and ``λ``.

    Meta-parameters the inner loop does not adapt (a head's, or the body under ``inner.layers:
    head``) reach the query loss directly and through ``φ*``; by the implicit function theorem
    their gradient is ``∂_ψ L_query - ∂_ψ ⟨∇_φ L_support, g/λ⟩`` at ``φ*``, which
    :meth:`implicit_objective` includes. Any ``inner.optimizer`` solves the inner problem;
    ``inner.checkpoint`` and ``meta.compile`` do not apply (no graph through the inner loop, no
    meta-loss to compile) and are ignored.

    Args:
        teacher: the network whose initialisation is meta-learned.
        inner: adaptation settings (always first order; ``inner.proximal`` is ``meta.imaml.lam``).
        meta: outer-loop settings, with ``meta.imaml``.
        anomaly_shots: whether supports carry labelled anomalies (chooses the ``auto`` loss).
    """

    first_order_only = True  # the inner loop builds no graph: the meta-gradient is implicit

    def __init__(
        self, teacher: Teacher, *, inner: InnerConfig, meta: MetaConfig, anomaly_shots: int
    ) -> None:
        super().__init__(teacher, inner=inner, meta=meta, anomaly_shots=anomaly_shots)
        lam = meta.imaml.lam
        if self.inner.proximal not in (0.0, lam):
            raise ConfigError(
                f"inner.proximal={self.inner.proximal} conflicts with meta.imaml.lam={lam}: "
                "iMAML's proximal weight is meta.imaml.lam (leave inner.proximal unset)"
            )
        # Stored with the teacher, so that adaptation anchors to θ with the same weight.
        self.inner = dataclasses.replace(self.inner, proximal=lam)

    def implicit_objective(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        pool_x: Tensor | None = None,
    ) -> tuple[Tensor, MetaStats]:
        """A scalar whose gradient w.r.t. the meta-parameters is iMAML's meta-gradient.

        Per task, with ``φ*`` the adapted tensors (constants) and ``g`` the implicit gradient
        (a constant): ``⟨g, θ⟩ + L_query(φ*) - ⟨∇_φ L_support(φ*), g⟩ / λ``, averaged over the
        meta-batch, plus the teacher's :meth:`~metakd.models.teachers.Teacher.outer_term`. Its
        gradient w.r.t. the adapted ``θ`` is the mean ``g``; w.r.t. every other meta-parameter
        it is the implicit-function-theorem gradient (see the class). Its value is not the
        meta-loss, which is ``stats.outer_loss``.

        Args and the stats: as :meth:`MAML.meta_loss <metakd.meta.learners.MAML.meta_loss>`.
        """
        plan = self.plan()
        lam, cg_steps = self.meta.imaml.lam, self.meta.imaml.cg_steps
        theta = self.teacher.stack_params()
        layers = range(len(theta.weights)) if plan.layers is None else plan.layers
        names = {f"w{i}": (i, 0) for i in layers} | {
            f"b{i}": (i, 1) for i in layers if theta.biases[i] is not None
        }
        adapted_ids = {id(t) for t in _pick(theta, names).values()}
        # Meta-parameters outside the adapted tensors: the mixed second-order term reaches them.
        others = torch.is_grad_enabled() and any(
            p.requires_grad and id(p) not in adapted_ids for p in self.parameters()
        )
        pool = self.inner.pool_term()

        def task(params: StackParams, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, px):
            with torch.no_grad():
                adapted, before = self._adapt(
                    params, sx, sy, px, plan=plan, loss=self.inner_loss, first_order=True, pool=pool
                )
            phi = {k: v.detach() for k, v in _pick(adapted, names).items()}

            def support_loss(f: Params) -> Tensor:
                return support_objective(
                    _place(params, f, names),
                    sx,
                    sy,
                    teacher=self.teacher,
                    loss=self.inner_loss,
                    pool_x=px,
                    pool=pool,
                )

            def query(f: Params) -> tuple[Tensor, tuple[Tensor, Tensor]]:
                q, s = task_scores(
                    _place(params, f, names),
                    qx,
                    teacher=self.teacher,
                    support_x=sx,
                    support_y=sy,
                    pool_x=px,
                )
                return self.outer_loss(score_logits(self.teacher, q), qy), (q, s)

            with torch.no_grad():
                query_grad = grad(lambda f: query(f)[0])(phi)
                g = implicit_gradient(support_loss, query_grad, phi, lam=lam, cg_steps=cg_steps)
            outer, (q_scores, s_scores) = query(phi)
            objective = outer + _dot(g, _pick(params, names))
            if others:
                objective = objective - _dot(grad(support_loss)(phi), g) / lam
            after = self.inner_loss(s_scores, sy)
            return objective, outer.detach(), before, after.detach(), q_scores.detach()

        pool_dim = None if pool_x is None else 0
        objective, *stats = vmap(task, in_dims=(None, 0, 0, 0, 0, pool_dim))(
            theta, support_x, support_y, query_x, query_y, pool_x
        )
        return self.with_outer_term(objective.mean(), support_x, support_y), MetaStats(*stats)

    def meta_gradients(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        pool_x: Tensor | None = None,
    ) -> MetaStats:
        """Backpropagate :meth:`implicit_objective` (see :meth:`MetaLearner.meta_gradients`)."""
        objective, stats = self.implicit_objective(support_x, support_y, query_x, query_y, pool_x)
        objective.backward()
        return stats


def _pick(params: StackParams, names: dict[str, tuple[int, int]]) -> Params:
    """The tensors ``names`` point at (``(layer, 0)`` a weight, ``(layer, 1)`` a bias)."""
    picked = {}
    for name, (layer, which) in names.items():
        tensor = params.weights[layer] if which == 0 else params.biases[layer]
        assert tensor is not None
        picked[name] = tensor
    return picked


def _place(params: StackParams, f: Params, names: dict[str, tuple[int, int]]) -> StackParams:
    """``params`` with the tensors ``names`` point at replaced by ``f``'s. The low-rank factors
    stay: the proximal (dense) path of the inner loop moves the dense weights and keeps them."""
    weights, biases = list(params.weights), list(params.biases)
    for name, (layer, which) in names.items():
        if which == 0:
            weights[layer] = f[name]
        else:
            biases[layer] = f[name]
    return StackParams(tuple(weights), tuple(biases), params.factors)
