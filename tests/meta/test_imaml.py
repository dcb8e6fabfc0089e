"""iMAML (float64): the implicit meta-gradient against closed forms on quadratic inner problems
and against second-order MAML through many proximal steps; memory flat in the inner steps; its
settings."""

from __future__ import annotations

import pytest
import torch
from helpers import episode_batch, tanh_teacher
from torch import Tensor
from torch.func import grad, hessian, vmap

from metakd.config import load_train_config
from metakd.errors import ConfigError
from metakd.meta.inner import adapt, support_objective, task_scores
from metakd.meta.learners import InnerConfig, MetaConfig, MetaLearner, build_learner
from metakd.meta.learners.base import IMAMLConfig
from metakd.meta.learners.imaml import IMAML, implicit_gradient
from metakd.models.profile import ProfileConfig
from metakd.models.stack import StackParams
from metakd.models.teachers import Teacher, score_logits

B, N, Q, P, D = 3, 6, 8, 5, 5

pytestmark = pytest.mark.usefixtures("float64")


def _teacher(kind: str) -> tuple[Teacher, int]:
    """A small tanh teacher off its initialisation (no gradient zero by symmetry), and its input
    width (the profile teacher reads its profile columns besides)."""
    d = 4 + ProfileConfig().width if kind == "profile" else D
    teacher = tanh_teacher(kind, d)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return teacher, d


def _imaml(teacher: Teacher, inner: InnerConfig, lam: float, cg_steps: int, shots: int) -> IMAML:
    meta = MetaConfig(algorithm="imaml", imaml=IMAMLConfig(lam=lam, cg_steps=cg_steps))
    learner = build_learner(teacher, inner=inner, meta=meta, anomaly_shots=shots)
    assert isinstance(learner, IMAML)
    return learner


def _gradients(learner: MetaLearner, batch: tuple[Tensor, ...]) -> list[Tensor]:
    """What ``meta_gradients`` leaves in ``.grad`` (the trainer's call), per teacher parameter."""
    learner.zero_grad(set_to_none=True)
    learner.meta_gradients(*batch)
    return [
        torch.zeros_like(p) if p.grad is None else p.grad.clone()
        for p in learner.teacher.parameters()
    ]


def test_implicit_gradient_equals_the_closed_form_of_a_quadratic() -> None:
    """``L_support = ½(φ-a)ᵀA(φ-a)``, ``L_query = ½‖φ-b‖²``: ``φ* = (A + λI)⁻¹(Aa + λθ)`` and
    ``g = (I + A/λ)⁻¹(φ* - b)``, for a batch of tasks under ``vmap``."""
    g = torch.Generator().manual_seed(0)
    tasks, dim, lam = 4, 6, 0.7
    m = torch.randn(tasks, dim, dim, generator=g)
    A = m @ m.transpose(-1, -2) / dim + 0.1 * torch.eye(dim)
    a, b, theta = (torch.randn(tasks, dim, generator=g) for _ in range(3))
    eye = torch.eye(dim)
    phi = torch.linalg.solve(A + lam * eye, (A @ a.unsqueeze(-1)).squeeze(-1) + lam * theta)
    expected = torch.linalg.solve(eye + A / lam, phi - b)

    def one(A: Tensor, a: Tensor, b: Tensor, phi: Tensor) -> Tensor:
        def support(f: dict[str, Tensor]) -> Tensor:
            d = f["phi"] - a
            return 0.5 * d @ A @ d

        query_grad = grad(lambda f: 0.5 * (f["phi"] - b).pow(2).sum())({"phi": phi})
        return implicit_gradient(support, query_grad, {"phi": phi}, lam=lam, cg_steps=dim)["phi"]

    torch.testing.assert_close(vmap(one)(A, a, b, phi), expected, rtol=1e-10, atol=1e-12)


def test_learner_meta_gradient_equals_the_closed_form_of_a_quadratic_inner_problem() -> None:
    """Adapting the last layer of a Deep SVDD teacher under the Deep SAD loss of an all-normal
    support is a quadratic problem ``½φᵀAφ + βᵀφ`` (the embedding is linear in it, the centre
    too). Its proximal solution is ``φ* = (A + λI)⁻¹(λθ - β)``: the query loss at that closed
    form, differentiated by autograd through the solve and through ``A`` and ``β``, is the
    exact meta-gradient of every meta-parameter, the layers below and the input skip too."""
    teacher, d = _teacher("svdd")
    lam = 1.0
    inner = InnerConfig(steps=60, lr=0.5, layers="head", loss="sad")
    learner = _imaml(teacher, inner, lam=lam, cg_steps=20, shots=0)
    batch = episode_batch(d, tasks=B, support=N, query=Q, pool=P, anomaly_shots=0)
    sx, sy, qx, qy, _ = batch
    theta = teacher.stack_params()
    last = len(theta.weights) - 1
    w = theta.weights[last]

    def with_last(v: Tensor) -> StackParams:
        weights = (*theta.weights[:last], v)
        return StackParams(weights, theta.biases, theta.factors)

    total = sx.new_zeros(())
    for b in range(B):

        def support(v: Tensor, b: int = b) -> Tensor:
            return support_objective(
                with_last(v), sx[b], sy[b], teacher=teacher, loss=learner.inner_loss
            )

        A = hessian(support)(w).reshape(w.numel(), w.numel())  # constant in φ, not in the body
        beta = grad(support)(torch.zeros_like(w)).reshape(-1)
        rhs = lam * w.reshape(-1) - beta
        phi = torch.linalg.solve(A + lam * torch.eye(w.numel()), rhs).reshape(w.shape)
        q, _ = task_scores(with_last(phi), qx[b], teacher=teacher, support_x=sx[b], support_y=sy[b])
        total = total + learner.outer_loss(score_logits(teacher, q), qy[b]) / B
    expected = torch.autograd.grad(total, list(teacher.parameters()))
    ours = _gradients(learner, batch)
    assert all(g.abs().sum() > 0 for g in ours), "every meta-parameter gets a gradient"
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize(("kind", "steps"), [("mlp", 60), ("svdd", 60), ("profile", 60)])
def test_meta_gradient_is_maml_through_many_proximal_steps(kind: str, steps: int) -> None:
    """Second-order MAML differentiating ``steps`` SGD steps on the same proximal objective (to
    convergence: ``lr·λ = 0.5``) gives the implicit gradient, for the adapted layers and for the
    heads' own meta-parameters (the profile teacher's gate, base and residual network) alike:
    within 1e-6 relative (1e-9 absolute)."""
    teacher, d = _teacher(kind)
    lam, lr = 10.0, 0.05
    batch = episode_batch(d, tasks=2, support=N, query=Q, pool=P)
    imaml = _imaml(teacher, InnerConfig(steps=steps, lr=lr), lam=lam, cg_steps=15, shots=1)
    ours = _gradients(imaml, batch)
    maml = build_learner(
        teacher,
        inner=InnerConfig(steps=steps, lr=lr, proximal=lam),
        meta=MetaConfig(),
        anomaly_shots=1,
    )
    expected = _gradients(maml, batch)
    assert all(g.abs().sum() > 0 for g in ours), "every meta-parameter gets a gradient"
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def _graph_size(loss: Tensor) -> int:
    """Autograd nodes reachable from ``loss``: what the meta-graph keeps until backward."""
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return len(seen)


def test_meta_graph_does_not_grow_with_inner_steps() -> None:
    teacher, d = _teacher("mlp")
    batch = episode_batch(d, tasks=B, support=N, query=Q, pool=P)
    sizes = {}
    for algorithm, steps in [("imaml", 2), ("imaml", 8), ("maml", 2), ("maml", 8)]:
        meta = MetaConfig(algorithm=algorithm)
        learner = build_learner(teacher, inner=InnerConfig(steps=steps), meta=meta, anomaly_shots=1)
        if isinstance(learner, IMAML):
            loss, _ = learner.implicit_objective(*batch)
        else:
            loss, _ = learner.meta_loss(*batch)  # type: ignore[attr-defined]
        sizes[algorithm, steps] = _graph_size(loss)
    assert sizes["imaml", 2] == sizes["imaml", 8]
    assert sizes["maml", 8] > sizes["maml", 2]


def test_adaptation_anchors_to_the_initialisation() -> None:
    """The proximal weight is stored with the teacher's inner settings, so every adaptation
    (evaluation, ``metakd adapt``) runs the training's inner objective."""
    teacher, d = _teacher("svdd")
    learner = _imaml(teacher, InnerConfig(steps=4, lr=0.1), lam=3.0, cg_steps=2, shots=1)
    assert learner.inner.proximal == 3.0 and learner.inner.first_order
    plan = learner.plan()
    assert plan.proximal == 3.0
    sx, sy, qx, *_ = episode_batch(d, tasks=B, support=N, query=Q, pool=P)
    scores = learner.adapted_scores(sx, sy, qx)
    for b in range(B):
        adapted, _ = adapt(
            teacher.stack_params(),
            sx[b],
            sy[b],
            teacher=teacher,
            loss=learner.inner_loss,
            steps=4,
            lr=0.1,
            first_order=True,
            proximal=3.0,
        )
        q, _ = task_scores(adapted, qx[b], teacher=teacher, support_x=sx[b], support_y=sy[b])
        torch.testing.assert_close(scores[b], q.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["mlp", "svdd", "profile", "knn"])
def test_meta_step_with_each_optimiser(kind: str) -> None:
    teacher, d = _teacher(kind)
    batch = episode_batch(d, tasks=2, support=N, query=Q, pool=P)
    for optimizer in ("sgd", "adam"):
        inner = InnerConfig(steps=3, lr=0.05, optimizer=optimizer, pool_weight=0.5)
        learner = _imaml(teacher, inner, lam=2.0, cg_steps=3, shots=1)
        stats = learner.meta_gradients(*batch)
        grads = [p.grad for p in learner.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert stats.outer_loss.shape == (2,) and stats.query_scores.shape == (2, Q)
        assert all(torch.isfinite(s).all() for s in stats)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("meta.imaml.lam=0", r"meta\.imaml\.lam"),
        ("meta.imaml.lam=-1", r"meta\.imaml\.lam"),
        ("meta.imaml.cg_steps=0", r"meta\.imaml\.cg_steps"),
        ("meta.imaml.cg_steps=1.5", r"meta\.imaml\.cg_steps"),
    ],
)
def test_bad_settings_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_train_config(overrides=["meta.algorithm=imaml", override])


def test_settings_and_the_proximal_weight() -> None:
    config = load_train_config(
        overrides=["meta.algorithm=imaml", "meta.imaml.lam=0.5", "meta.imaml.cg_steps=3"]
    )
    assert config.meta.imaml == IMAMLConfig(lam=0.5, cg_steps=3)
    teacher, _ = _teacher("mlp")
    with pytest.raises(ConfigError, match=r"inner\.proximal.*meta\.imaml\.lam"):
        _imaml(teacher, InnerConfig(proximal=0.2), lam=0.5, cg_steps=3, shots=0)
    assert _imaml(teacher, InnerConfig(proximal=0.5), lam=0.5, cg_steps=3, shots=0)
