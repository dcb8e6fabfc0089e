"""Meta-gradients of the batched (vmap, low-rank) path against a per-task loop and `higher`."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    Batch,
    assert_gradients_close,
    episode_batch,
    higher_meta_gradient,
    learner_meta_gradient,
    loop_meta_gradient,
    tanh_teacher,
)
from torch.func import functional_call

from metakd.meta.inner import PoolTerm
from metakd.meta.learners import InnerConfig, MetaConfig, Reptile, build_learner
from metakd.models.teachers import Teacher

B, N, Q, P, D, STEPS, LR = 4, 6, 8, 5, 5, 2, 0.3

pytestmark = pytest.mark.usefixtures("float64")


def _batch(anomaly_shots: int = 1) -> Batch:
    """``(support_x, support_y, query_x, query_y, pool_x)``; the pool serves heads with pool
    neighbours (the kNN teacher's) and is ignored by the others."""
    return episode_batch(D, tasks=B, support=N, query=Q, pool=P, anomaly_shots=anomaly_shots)


def _teacher(kind: str) -> Teacher:
    """A small teacher; the kNN one with the input skip and pool neighbours, so the meta-gradient
    tests also cover those meta-parameters and the pool rows' part in the inner loop."""
    return tanh_teacher(kind, D, input_skip=kind == "knn", pool_neighbours=kind == "knn")


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
    ours = learner_meta_gradient(learner, batch)
    head_only = algorithm == "anil"
    higher = higher_meta_gradient(learner, batch, steps=STEPS, lr=LR, head_only=head_only)
    assert_gradients_close(ours, higher)
    assert_gradients_close(ours, loop_meta_gradient(learner, batch, steps=STEPS, lr=LR))
    assert all(g.abs().sum() > 0 for g in ours), "every meta-parameter gets a gradient"


def test_one_class_support_matches_higher() -> None:
    learner = build_learner(
        _teacher("mlp"), inner=InnerConfig(steps=3, lr=LR), meta=MetaConfig(), anomaly_shots=0
    )
    batch = _batch(anomaly_shots=0)
    assert_gradients_close(
        learner_meta_gradient(learner, batch),
        higher_meta_gradient(learner, batch, steps=3, lr=LR, head_only=False),
    )


def test_fomaml_is_maml_without_second_order_terms() -> None:
    teacher = _teacher("mlp")
    fomaml = build_learner(
        teacher,
        inner=InnerConfig(steps=STEPS, lr=LR),
        meta=MetaConfig(algorithm="fomaml"),
        anomaly_shots=1,
    )
    batch = _batch()
    ours = learner_meta_gradient(fomaml, batch)
    assert_gradients_close(
        ours, loop_meta_gradient(fomaml, batch, steps=STEPS, lr=LR, first_order=True)
    )
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
    assert_gradients_close(ours, expected)
    maml = build_learner(
        teacher,
        inner=InnerConfig(steps=STEPS, lr=LR),
        meta=MetaConfig(algorithm="maml"),
        anomaly_shots=1,
    )
    assert (
        max(
            (a - b).abs().max()
            for a, b in zip(learner_meta_gradient(maml, batch), ours, strict=True)
        )
        > 1e-6
    )


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
    assert_gradients_close(list(grads), list(torch.autograd.grad(total, params)))


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
    teacher = _teacher("svdd")
    inner = InnerConfig(steps=STEPS, lr=LR, pool_weight=0.5, pool_trim=0.25)
    learner = build_learner(teacher, inner=inner, meta=MetaConfig(), anomaly_shots=1)
    sx, sy, qx, qy, _ = _batch()
    px = torch.randn(B, 8, D, generator=torch.Generator().manual_seed(3))
    loss, _ = learner.meta_loss(sx, sy, qx, qy, px)
    ours = torch.autograd.grad(loss, list(teacher.parameters()))
    oracle = loop_meta_gradient(
        learner, (sx, sy, qx, qy, px), steps=STEPS, lr=LR, pool=PoolTerm(0.5, 0.25)
    )
    assert_gradients_close(list(ours), oracle)
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
