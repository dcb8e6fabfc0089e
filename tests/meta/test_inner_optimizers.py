"""``inner.optimizer``: SGD with momentum and Adam in the one inner loop (float64) against
`higher`'s differentiable optimisers and ``torch.optim``; Meta-SGD's rates on top; the settings'
checks; the default keeps the low-rank SGD path."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import (
    episode_batch,
    higher_optimizer_meta_gradient,
    learner_meta_gradient,
    tanh_teacher,
)
from torch.func import functional_call

from metakd.config import load_train_config
from metakd.errors import ConfigError
from metakd.meta import inner
from metakd.meta.inner import adapt
from metakd.meta.learners import AdaptationPlan, InnerConfig, MetaConfig, Reptile, build_learner
from metakd.meta.optim import SGD, InnerOptimizer, direction
from metakd.models.stack import StackParams
from metakd.models.teachers import Teacher

B, N, Q, P, D = 3, 6, 8, 5, 5
MOMENTUM, BETAS, EPS = 0.8, (0.8, 0.95), 1e-3  # a large eps: its convention must match too

pytestmark = pytest.mark.usefixtures("float64")


def _teacher(kind: str = "mlp") -> Teacher:
    teacher = tanh_teacher(kind, D)
    with torch.no_grad():
        for p in teacher.parameters():  # off the initialisation: no gradient is zero by symmetry
            p.add_(0.1 * torch.randn_like(p))
    return teacher


def _inner(optimizer: str, steps: int, lr: float, **more) -> InnerConfig:
    return InnerConfig(
        steps=steps,
        lr=lr,
        optimizer=optimizer,  # type: ignore[arg-type]
        momentum=MOMENTUM,
        betas=list(BETAS),
        eps=EPS,
        **more,
    )


def _torch_optimizer(
    optimizer: str, lr: float, params: list, eps: float = EPS
) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimiser ours mirrors (``params``: tensors or parameter groups)."""
    if optimizer == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)
    return torch.optim.Adam(params, lr=lr, betas=BETAS, eps=eps)


def _adam_eps(step: int) -> dict[str, list[float]]:
    """`higher`'s Adam adds ``eps`` to ``√v`` before the bias correction (the old torch.optim.Adam),
    torch's and ours to ``√v̂``: per step, ``eps · √(1 - β₂ᵗ)`` in higher is ours exactly."""
    return {"eps": [EPS * (1 - BETAS[1] ** step) ** 0.5]}


@pytest.mark.parametrize("steps", [1, 2, 5])
@pytest.mark.parametrize("kind", ["mlp", "svdd"])
@pytest.mark.parametrize(("optimizer", "lr"), [("momentum", 0.3), ("adam", 0.05)])
def test_second_order_meta_gradient_matches_higher(
    optimizer: str, lr: float, kind: str, steps: int
) -> None:
    learner = build_learner(
        _teacher(kind), inner=_inner(optimizer, steps, lr), meta=MetaConfig(), anomaly_shots=1
    )
    batch = episode_batch(D, tasks=B, support=N, query=Q, pool=P)
    ours = learner_meta_gradient(learner, batch)
    expected = higher_optimizer_meta_gradient(
        learner,
        batch,
        steps=steps,
        optimizer=lambda params: _torch_optimizer(optimizer, lr, params),
        override=_adam_eps if optimizer == "adam" else None,
    )
    assert all(g.abs().sum() > 0 for g in ours), "every meta-parameter gets a gradient"
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("optimizer", "lr"), [("momentum", 0.3), ("adam", 0.05)])
def test_anil_adapts_the_head_with_the_optimiser(optimizer: str, lr: float) -> None:
    learner = build_learner(
        _teacher("svdd"),
        inner=_inner(optimizer, 3, lr),
        meta=MetaConfig(algorithm="anil"),
        anomaly_shots=1,
    )
    batch = episode_batch(D, tasks=B, support=N, query=Q, pool=P)
    expected = higher_optimizer_meta_gradient(
        learner,
        batch,
        steps=3,
        optimizer=lambda params: _torch_optimizer(optimizer, lr, params[-1:]),  # no bias: SVDD
        override=_adam_eps if optimizer == "adam" else None,
    )
    for got, want in zip(learner_meta_gradient(learner, batch), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("optimizer", "lr"), [("momentum", 0.3), ("adam", 0.05)])
def test_metasgd_rates_multiply_the_optimisers_direction(optimizer: str, lr: float) -> None:
    """Meta-SGD's per-element rates as `higher`'s per-parameter-group learning rates (tensors it
    differentiates through): the same meta-gradient for the weights and for the rates."""
    learner = build_learner(
        _teacher(),
        inner=_inner(optimizer, 3, lr),
        meta=MetaConfig(algorithm="metasgd"),
        anomaly_shots=1,
    )
    with torch.no_grad():
        for r in learner.rates:
            r.mul_(torch.rand_like(r) + 0.5)  # distinct per-element rates
    batch = episode_batch(D, tasks=B, support=N, query=Q, pool=P)
    loss, _ = learner.meta_loss(*batch)
    params = list(learner.parameters())  # the teacher's, then the rates
    ours = torch.autograd.grad(loss, params)
    rates = list(learner.rates)

    def override(step: int) -> dict[str, list]:
        return {"lr": rates} | (_adam_eps(step) if optimizer == "adam" else {})

    expected = higher_optimizer_meta_gradient(
        learner,
        batch,
        steps=3,
        optimizer=lambda ps: _torch_optimizer(optimizer, lr, [{"params": [p]} for p in ps]),
        override=override,
        wrt=params,
    )
    assert all(g.abs().sum() > 0 for g in ours[-len(rates) :]), "the rates get a gradient"
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_adapted_weights_equal_torch_optim(optimizer: str) -> None:
    """The adapted weights are ``torch.optim``'s after the same steps (default ``eps``), one
    task at a time, and a batch of tasks adapts as each alone: no state crosses tasks."""
    teacher = _teacher()
    lr, steps = 0.05, 4
    learner = build_learner(
        teacher,
        inner=dataclasses.replace(_inner(optimizer, steps, lr), eps=1e-8),
        meta=MetaConfig(),
        anomaly_shots=1,
    )
    plan = learner.plan()
    sx, sy, *_ = episode_batch(D, tasks=B, support=N, query=Q, pool=P)
    batched = torch.func.vmap(
        lambda x, y: adapt(
            teacher.stack_params(),
            x,
            y,
            teacher=teacher,
            loss=learner.inner_loss,
            steps=steps,
            lr=lr,
            first_order=True,
            optimizer=plan.optimizer,
        )[0]
    )(sx, sy)
    for b in range(B):
        fast = {k: v.detach().clone().requires_grad_() for k, v in teacher.named_parameters()}
        stack = [fast[k] for k, _ in teacher.layers.named_parameters(prefix="layers")]
        opt = _torch_optimizer(optimizer, lr, stack, eps=1e-8)
        for _ in range(steps):
            opt.zero_grad()
            learner.inner_loss(functional_call(teacher, fast, (sx[b],)), sy[b]).backward()
            opt.step()
        alone, _ = adapt(
            teacher.stack_params(),
            sx[b],
            sy[b],
            teacher=teacher,
            loss=learner.inner_loss,
            steps=steps,
            lr=lr,
            first_order=True,
            optimizer=plan.optimizer,
        )
        for layer, (w, bias) in enumerate(alone.materialize()):
            torch.testing.assert_close(w, fast[f"layers.{layer}.weight"], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(bias, fast[f"layers.{layer}.bias"], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(batched.weights[layer][b], w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("proximal", [0.0, 0.7])
@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_first_order_is_the_query_gradient_after_torch_optim(
    optimizer: str, proximal: float
) -> None:
    """FOMAML's meta-gradient is the query gradient at the weights ``torch.optim`` reaches on
    the support loss plus the proximal term ``λ/2 ‖φ - θ‖²`` (written out as a loss here)."""
    teacher = _teacher()
    lr, steps = 0.05, 3
    learner = build_learner(
        teacher,
        inner=dataclasses.replace(_inner(optimizer, steps, lr, proximal=proximal), eps=1e-8),
        meta=MetaConfig(algorithm="fomaml"),
        anomaly_shots=1,
    )
    batch = episode_batch(D, tasks=B, support=N, query=Q, pool=P)
    ours = learner_meta_gradient(learner, batch)
    sx, sy, qx, qy, _ = batch
    expected = [torch.zeros_like(p) for p in teacher.parameters()]
    for b in range(B):
        theta = {k: v.detach().clone() for k, v in teacher.named_parameters()}
        fast = {k: v.clone().requires_grad_() for k, v in theta.items()}
        opt = _torch_optimizer(optimizer, lr, list(fast.values()), eps=1e-8)
        for _ in range(steps):
            opt.zero_grad()
            anchor = sum(((fast[k] - theta[k]) ** 2).sum() for k in fast)
            support = learner.inner_loss(functional_call(teacher, fast, (sx[b],)), sy[b])
            (support + proximal / 2 * anchor).backward()
            opt.step()
        q = functional_call(teacher, fast, (qx[b],))
        grads = torch.autograd.grad(learner.outer_loss(q, qy[b]) / B, list(fast.values()))
        expected = [e + g for e, g in zip(expected, grads, strict=True)]
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_adam_meta_gradient_is_finite_where_a_gradient_is_zero() -> None:
    """An input column that is zero in every row gives its weights no gradient, so Adam's
    ``√v`` is ``√0``: the second-order meta-gradient through it must not be NaN."""
    learner = build_learner(
        _teacher(), inner=_inner("adam", 3, 0.05), meta=MetaConfig(), anomaly_shots=1
    )
    sx, sy, qx, qy, px = episode_batch(D, tasks=B, support=N, query=Q, pool=P)
    sx[..., 0] = 0.0
    grads = learner_meta_gradient(learner, (sx, sy, qx, qy, px))
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
@pytest.mark.parametrize("algorithm", ["maml", "anil"])
def test_checkpointed_inner_loop_carries_the_state(
    optimizer: str, algorithm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    checkpointed = inner.checkpointed_step
    monkeypatch.setattr(inner, "checkpointed_step", lambda *a: calls.append(1) or checkpointed(*a))
    batch = episode_batch(D, tasks=B, support=N, query=Q, pool=P)
    grads = {}
    for checkpoint in (False, True):
        learner = build_learner(
            _teacher(),
            inner=_inner(optimizer, 3, 0.05, checkpoint=checkpoint),
            meta=MetaConfig(algorithm=algorithm),
            anomaly_shots=1,
        )
        grads[checkpoint] = learner_meta_gradient(learner, batch)
    assert len(calls) == 3
    for got, want in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_reptile_moves_towards_torch_optims_weights() -> None:
    teacher = _teacher()
    lr, steps = 0.3, 3
    learner = build_learner(
        teacher,
        inner=_inner("momentum", steps, lr),
        meta=MetaConfig(algorithm="reptile"),
        anomaly_shots=1,
    )
    assert isinstance(learner, Reptile)
    sx, sy, qx, qy, _ = episode_batch(D, tasks=B, support=N, query=Q, pool=P)
    learner.meta_gradients(sx, sy, qx, qy)
    x, y = torch.cat([sx, qx], 1), torch.cat([sy, qy], 1)
    theta = {k: v.detach() for k, v in teacher.layers.named_parameters(prefix="layers")}
    phis = []
    for b in range(B):
        fast = {k: v.detach().clone().requires_grad_() for k, v in teacher.named_parameters()}
        opt = _torch_optimizer("momentum", lr, [fast[k] for k in theta])
        for _ in range(steps):
            opt.zero_grad()
            learner.supervised_loss(functional_call(teacher, fast, (x[b],)), y[b]).backward()
            opt.step()
        phis.append({k: fast[k].detach() for k in theta})
    for (name, value), param in zip(theta.items(), teacher.layers.parameters(), strict=True):
        expected = value - torch.stack([phi[name] for phi in phis]).mean(0)
        torch.testing.assert_close(param.grad, expected, rtol=1e-9, atol=1e-12)


def test_default_is_the_low_rank_sgd_path() -> None:
    teacher = _teacher()
    assert InnerConfig().inner_optimizer() is SGD
    plan = AdaptationPlan.of(teacher, InnerConfig())
    assert plan.optimizer == SGD and plan.proximal == 0 and not plan.dense
    assert AdaptationPlan.of(teacher, InnerConfig(optimizer="adam")).dense
    assert AdaptationPlan.of(teacher, InnerConfig(proximal=0.5)).dense
    sx, sy, *_ = episode_batch(D, tasks=1, support=N)
    params = teacher.stack_params()

    def run(optimizer: InnerOptimizer) -> StackParams:
        return adapt(
            params,
            sx[0],
            sy[0],
            teacher=teacher,
            loss=lambda s, y: s.mean(),
            steps=2,
            lr=0.1,
            first_order=False,
            optimizer=optimizer,
        )[0]

    low_rank = run(SGD)
    # The shared weights stay, each step adds low-rank factors.
    assert all(w is w0 for w, w0 in zip(low_rank.weights, params.weights, strict=True))
    assert all(len(f) == 1 for f in low_rank.factors)
    dense = run(InnerOptimizer("momentum", 0.0))
    # With μ = 0 the momentum rule is SGD: the dense path agrees with the low-rank one.
    for (w, b), (w2, b2) in zip(low_rank.materialize(), dense.materialize(), strict=True):
        torch.testing.assert_close(w, w2, rtol=1e-12, atol=1e-14)
        assert b is not None and b2 is not None
        torch.testing.assert_close(b, b2, rtol=1e-12, atol=1e-14)


def test_directions_follow_torch_rules() -> None:
    g = torch.tensor([0.5, -2.0, 0.0])
    d1, state = direction(InnerOptimizer("adam", betas=(0.9, 0.999), eps=1e-8), (), g, 1)
    # Adam's first step is about ±1 per element (0 where the gradient is 0).
    torch.testing.assert_close(d1, torch.tensor([1.0, -1.0, 0.0]), rtol=1e-7, atol=0)
    assert len(state) == 2
    buf, (b,) = direction(InnerOptimizer("momentum", momentum=0.5), (), g, 1)
    assert torch.equal(buf, g) and torch.equal(b, g)
    buf2, _ = direction(InnerOptimizer("momentum", momentum=0.5), (b,), g, 2)
    assert torch.equal(buf2, 1.5 * g)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("inner.optimizer=rmsprop", r"inner\.optimizer"),
        ("inner.momentum=1.0", r"inner\.momentum"),
        ("inner.momentum=-0.1", r"inner\.momentum"),
        ("inner.betas=[0.9]", r"inner\.betas"),
        ("inner.betas=[0.9,1.0]", r"inner\.betas"),
        ("inner.eps=0", r"inner\.eps"),
        ("inner.proximal=-1", r"inner\.proximal"),
    ],
)
def test_bad_settings_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_train_config(overrides=[override])


def test_settings_reach_the_plan() -> None:
    config = load_train_config(
        overrides=["inner.optimizer=adam", "inner.betas=[0.5,0.6]", "inner.eps=0.001"]
    )
    assert config.inner.inner_optimizer() == InnerOptimizer("adam", 0.9, (0.5, 0.6), 0.001)
    with pytest.raises(ConfigError, match=r"inner\.optimizer"):
        InnerConfig(optimizer="lbfgs")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"inner\.momentum"):
        InnerConfig(momentum=True)  # type: ignore[arg-type]
