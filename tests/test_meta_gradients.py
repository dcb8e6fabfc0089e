"""Meta-gradients of the batched (vmap, low-rank) path against a per-task loop and `higher`."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from metakd.meta.inner import adapt, task_scores
from metakd.meta.learners import InnerConfig, MetaConfig, MetaLearner, Reptile, build_learner
from metakd.models.teachers import ModelConfig, Teacher, build_teacher, score_logits

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import higher

B, N, Q, P, D, STEPS, LR = 4, 6, 8, 5, 5, 2, 0.3


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _batch(anomaly_shots: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(support_x, support_y, query_x, query_y, pool_x)``; the pool serves heads with pool
    neighbours (the kNN teacher's) and is ignored by the others."""
    g = torch.Generator().manual_seed(1)
    sx = torch.randn(B, N, D, generator=g)
    sy = torch.zeros(B, N)
    if anomaly_shots:
        sy[:, -anomaly_shots:] = 1
    qx = torch.randn(B, Q, D, generator=g)
    qy = (torch.arange(Q) % 2).to(torch.float64).expand(B, Q).contiguous()
    px = torch.randn(B, P, D, generator=g)
    return sx, sy, qx, qy, px


def _teacher(kind: str) -> Teacher:
    """A small teacher; the kNN one with the input skip and pool neighbours, so the meta-gradient
    tests also cover those meta-parameters and the pool rows' part in the inner loop."""
    torch.manual_seed(0)
    config = ModelConfig(
        kind=kind,  # type: ignore[arg-type]
        hidden=[7, 6],
        embedding_dim=3,
        activation="tanh",
        input_skip=kind == "knn",
        pool_neighbours=kind == "knn",
    )
    return build_teacher(D, config)


def _higher_reference(learner: MetaLearner, batch, *, head_only: bool) -> list[Tensor]:
    """Meta-gradient from `higher`'s differentiable SGD, one task at a time."""
    teacher = learner.teacher
    sx, sy, qx, qy, px = batch
    params = list(teacher.parameters())
    adapted = [teacher.layers[-1].weight, teacher.layers[-1].bias] if head_only else params
    adapted = [p for p in adapted if p is not None]
    total = [torch.zeros_like(p) for p in params]

    def scores(fm, x: Tensor, b: int, *, support: bool) -> Tensor:
        def stack(h: Tensor) -> Tensor:
            for i, layer in enumerate(fm.layers):
                h = F.linear(h, layer.weight, layer.bias)
                h = torch.tanh(h) if i < len(fm.layers) - 1 else h
            return h

        reference = ()
        if teacher.uses_reference:
            pool = (stack(px[b]), px[b]) if teacher.uses_pool else (None, None)
            reference = teacher.reference(stack(sx[b]), sx[b], 1 - sy[b], *pool)
        return teacher.head(stack(x), x, reference, leave_one_out=support)

    for b in range(B):
        opt = torch.optim.SGD(adapted, lr=LR)
        with higher.innerloop_ctx(teacher, opt, copy_initial_weights=False) as (fm, diffopt):
            for _ in range(STEPS):
                diffopt.step(learner.inner_loss(scores(fm, sx[b], b, support=True), sy[b]))
            q = scores(fm, qx[b], b, support=False)
            loss = learner.outer_loss(score_logits(teacher, q), qy[b]) / B
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        total = [t + (g if g is not None else 0) for t, g in zip(total, grads, strict=True)]
    return total


def _loop_reference(learner: MetaLearner, batch, *, first_order: bool) -> list[Tensor]:
    """Meta-gradient with the same pure `adapt`, but one task at a time (no vmap)."""
    teacher = learner.teacher
    sx, sy, qx, qy, px = batch
    total = sx.new_zeros(())
    for b in range(B):
        adapted, _ = adapt(
            teacher.stack_params(),
            sx[b],
            sy[b],
            teacher=teacher,
            loss=learner.inner_loss,
            steps=STEPS,
            lr=LR,
            first_order=first_order,
            layers=learner.plan().layers,
            pool_x=px[b],
        )
        q, _ = task_scores(
            adapted, qx[b], teacher=teacher, support_x=sx[b], support_y=sy[b], pool_x=px[b]
        )
        total = total + learner.outer_loss(score_logits(teacher, q), qy[b]) / B
    return list(torch.autograd.grad(total, list(teacher.parameters())))


def _ours(learner: MetaLearner, batch) -> list[Tensor]:
    loss, _ = learner.meta_loss(*batch)
    return list(torch.autograd.grad(loss, list(learner.teacher.parameters())))


def _assert_close(a: list[Tensor], b: list[Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("kind", ["knn", "mlp", "svdd", "autoencoder"])
@pytest.mark.parametrize("algorithm", ["maml", "anil"])
def test_second_order_matches_higher_and_loop(kind: str, algorithm: str) -> None:
    learner = build_learner(
        _teacher(kind),
        inner=InnerConfig(steps=STEPS, lr=LR),
        meta=MetaConfig(algorithm=algorithm),
        anomaly_shots=1,
    )
    batch = _batch()
    ours = _ours(learner, batch)
    _assert_close(ours, _higher_reference(learner, batch, head_only=algorithm == "anil"))
    _assert_close(ours, _loop_reference(learner, batch, first_order=False))
    assert all(g.abs().sum() > 0 for g in ours), "every meta-parameter gets a gradient"


def test_one_class_support_matches_higher() -> None:
    learner = build_learner(
        _teacher("mlp"), inner=InnerConfig(steps=3, lr=LR), meta=MetaConfig(), anomaly_shots=0
    )
    batch = _batch(anomaly_shots=0)
    global STEPS
    steps, STEPS = STEPS, 3
    try:
        _assert_close(_ours(learner, batch), _higher_reference(learner, batch, head_only=False))
    finally:
        STEPS = steps


def test_fomaml_is_maml_without_second_order_terms() -> None:
    teacher = _teacher("mlp")
    fomaml = build_learner(
        teacher,
        inner=InnerConfig(steps=STEPS, lr=LR),
        meta=MetaConfig(algorithm="fomaml"),
        anomaly_shots=1,
    )
    batch = _batch()
    ours = _ours(fomaml, batch)
    _assert_close(ours, _loop_reference(fomaml, batch, first_order=True))
    # FOMAML's gradient is the query gradient at the adapted weights (Finn et al. 2017, §5.2).
    sx, sy, qx, qy, _ = batch
    expected = [torch.zeros_like(p) for p in teacher.parameters()]
    for b in range(B):
        params = {k: v.detach().clone() for k, v in teacher.named_parameters()}
        for _ in range(STEPS):
            leaves = {k: v.requires_grad_() for k, v in params.items()}
            loss = fomaml.inner_loss(functional_call(teacher, leaves, (sx[b],)), sy[b])
            grads = torch.autograd.grad(loss, list(leaves.values()))
            params = {
                k: (v - LR * g).detach() for (k, v), g in zip(leaves.items(), grads, strict=True)
            }
        leaves = {k: v.requires_grad_() for k, v in params.items()}
        q = functional_call(teacher, leaves, (qx[b],))
        grads = torch.autograd.grad(fomaml.outer_loss(q, qy[b]) / B, list(leaves.values()))
        expected = [e + g for e, g in zip(expected, grads, strict=True)]
    _assert_close(ours, expected)
    maml = build_learner(
        teacher,
        inner=InnerConfig(steps=STEPS, lr=LR),
        meta=MetaConfig(algorithm="maml"),
        anomaly_shots=1,
    )
    assert max((a - b).abs().max() for a, b in zip(_ours(maml, batch), ours, strict=True)) > 1e-6


def test_reptile_update_equals_formula() -> None:
    teacher = _teacher("mlp")
    learner = build_learner(
        teacher,
        inner=InnerConfig(steps=STEPS, lr=LR),
        meta=MetaConfig(algorithm="reptile"),
        anomaly_shots=1,
    )
    assert isinstance(learner, Reptile)
    sx, sy, qx, qy, _ = _batch()
    learner.meta_gradients(sx, sy, qx, qy)  # what the trainer calls: fills .grad
    grads = [p.grad for p in teacher.layers.parameters()]
    x, y = torch.cat([sx, qx], 1), torch.cat([sy, qy], 1)
    theta = {k: v.detach() for k, v in teacher.named_parameters()}
    phis = []
    for b in range(B):
        params = dict(theta)
        for _ in range(STEPS):
            leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
            loss = learner.inner_loss(functional_call(teacher, leaves, (x[b],)), y[b])
            g = torch.autograd.grad(loss, list(leaves.values()))
            params = {
                k: (v - LR * gk).detach() for (k, v), gk in zip(leaves.items(), g, strict=True)
            }
        phis.append(params)
    for got, name in zip(grads, theta, strict=True):
        expected = theta[name] - torch.stack([phi[name] for phi in phis]).mean(0)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_metasgd_rates_get_gradients_and_match_loop() -> None:
    teacher = _teacher("mlp")
    learner = build_learner(
        teacher,
        inner=InnerConfig(steps=STEPS, lr=LR),
        meta=MetaConfig(algorithm="metasgd"),
        anomaly_shots=1,
    )
    with torch.no_grad():
        for r in learner.rates:
            r.mul_(torch.rand_like(r) + 0.5)  # distinct per-element rates
    batch = _batch()
    loss, _ = learner.meta_loss(*batch)
    params = list(learner.parameters())
    grads = torch.autograd.grad(loss, params)
    assert all(g.abs().sum() > 0 for g in grads)
    # The same objective computed with dense per-element SGD steps, one task at a time.
    sx, sy, qx, qy, _ = batch
    rates = dict(zip([k for k, _ in teacher.named_parameters()], learner.rates, strict=True))
    total = sx.new_zeros(())
    for b in range(B):
        fast = dict(teacher.named_parameters())
        for _ in range(STEPS):
            inner = learner.inner_loss(functional_call(teacher, fast, (sx[b],)), sy[b])
            g = torch.autograd.grad(inner, list(fast.values()), create_graph=True)
            fast = {k: v - rates[k] * gk for (k, v), gk in zip(fast.items(), g, strict=True)}
        q = functional_call(teacher, fast, (qx[b],))
        total = total + learner.outer_loss(q, qy[b]) / B
    _assert_close(list(grads), list(torch.autograd.grad(total, params)))


def test_adaptation_never_changes_meta_parameters_in_place() -> None:
    teacher = _teacher("svdd")
    before = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    learner = build_learner(
        teacher, inner=InnerConfig(steps=3, lr=LR), meta=MetaConfig(), anomaly_shots=1
    )
    learner.meta_loss(*_batch())
    learner.adapted_scores(*_batch()[:3])
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kind", ["knn", "mlp", "svdd", "autoencoder"])
def test_inner_step_lowers_support_loss(kind: str) -> None:
    teacher = _teacher(kind)
    learner = build_learner(
        teacher, inner=InnerConfig(steps=1, lr=1e-3), meta=MetaConfig(), anomaly_shots=1
    )
    _, stats = learner.meta_loss(*_batch())
    assert (stats.support_loss_after < stats.support_loss_before).all()


def test_transductive_pool_term_matches_loop_and_changes_adaptation() -> None:
    from metakd.meta.inner import PoolTerm

    teacher = _teacher("svdd")
    inner = InnerConfig(steps=STEPS, lr=LR, pool_weight=0.5, pool_trim=0.25)
    learner = build_learner(teacher, inner=inner, meta=MetaConfig(), anomaly_shots=1)
    sx, sy, qx, qy, _ = _batch()
    px = torch.randn(B, 8, D, generator=torch.Generator().manual_seed(3))
    loss, _ = learner.meta_loss(sx, sy, qx, qy, px)
    ours = torch.autograd.grad(loss, list(teacher.parameters()))
    total = sx.new_zeros(())
    for b in range(B):
        adapted, _ = adapt(
            teacher.stack_params(),
            sx[b],
            sy[b],
            teacher=teacher,
            loss=learner.inner_loss,
            steps=STEPS,
            lr=LR,
            first_order=False,
            pool_x=px[b],
            pool=PoolTerm(0.5, 0.25),
        )
        q, _ = task_scores(adapted, qx[b], teacher=teacher, support_x=sx[b], support_y=sy[b])
        total = total + learner.outer_loss(score_logits(teacher, q), qy[b]) / B
    _assert_close(list(ours), list(torch.autograd.grad(total, list(teacher.parameters()))))
    without, _ = learner.meta_loss(sx, sy, qx, qy, None)
    assert not torch.isclose(loss, without)


def test_reptile_on_a_stack_without_biases() -> None:
    teacher = _teacher("svdd")  # Deep SVDD's layers have no bias (a bias would collapse it)
    assert all(layer.bias is None for layer in teacher.linear_layers())
    learner = build_learner(
        teacher,
        inner=InnerConfig(steps=STEPS, lr=LR),
        meta=MetaConfig(algorithm="reptile"),
        anomaly_shots=1,
    )
    sx, sy, qx, qy, _ = _batch()
    learner.meta_gradients(sx, sy, qx, qy)
    grads = [p.grad for p in teacher.layers.parameters()]
    assert len(grads) == len(teacher.linear_layers())
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)
