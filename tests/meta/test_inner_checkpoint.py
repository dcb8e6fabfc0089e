"""``inner.checkpoint``: the recomputed inner loop gives the same meta-gradients (float64)."""

from __future__ import annotations

import pytest
import torch
from helpers import episode_batch, tanh_teacher
from torch import Tensor

from metakd.config import load_train_config
from metakd.errors import ConfigError
from metakd.meta import inner, recompute
from metakd.meta.learners import AdaptationPlan, InnerConfig, MetaConfig, build_learner
from metakd.models.profile import ProfileConfig
from metakd.models.teachers import ModelConfig, build_teacher

B, N, Q, P, STEPS, LR = 3, 6, 8, 5, 3, 0.3

pytestmark = pytest.mark.usefixtures("float64")


@pytest.fixture
def recomputed(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts checkpointed inner steps and their backward passes, so a test sees what ran."""
    calls = {"steps": 0, "backward": 0}
    checkpointed, backward = inner.checkpointed_step, recompute.Recompute.backward

    def counted_step(*args):
        calls["steps"] += 1
        return checkpointed(*args)

    def counted_backward(ctx, *grads: Tensor):
        calls["backward"] += 1
        return backward(ctx, *grads)

    monkeypatch.setattr(inner, "checkpointed_step", counted_step)
    monkeypatch.setattr(recompute.Recompute, "backward", staticmethod(counted_backward))
    return calls


def _meta_gradients(
    kind: str, algorithm: str, *, checkpoint: bool, pool_weight: float
) -> tuple[Tensor, list[Tensor]]:
    """``(meta-loss, its gradient w.r.t. every meta-parameter)`` of a small learner."""
    d = 4 + ProfileConfig().width if kind == "profile" else 5  # + the profile teacher's columns
    teacher = tanh_teacher(kind, d)
    with torch.no_grad():
        for p in teacher.parameters():  # off the initialisation: no gradient is zero by symmetry
            p.add_(0.1 * torch.randn_like(p))
    learner = build_learner(
        teacher,
        inner=InnerConfig(steps=STEPS, lr=LR, checkpoint=checkpoint, pool_weight=pool_weight),
        meta=MetaConfig(algorithm=algorithm),
        anomaly_shots=1,
    )
    with torch.no_grad():
        for r in learner.rates:
            r.mul_(torch.rand_like(r) + 0.5)  # distinct per-element rates (Meta-SGD)
    loss, _ = learner.meta_loss(*episode_batch(d, tasks=B, support=N, query=Q, pool=P))
    return loss, list(torch.autograd.grad(loss, list(learner.parameters())))


@pytest.mark.parametrize(
    ("kind", "algorithm", "pool_weight"),
    [
        ("mlp", "maml", 0.0),
        ("mlp", "metasgd", 0.0),
        ("knn", "maml", 0.5),  # head parameters (skip, pool factor) and the pool term
        ("knn", "metasgd", 0.0),
        ("profile", "maml", 0.0),  # the default teacher: gate, base and residual in the head
        ("svdd", "anil", 0.0),
    ],
)
def test_checkpointed_meta_gradients_equal_stored(
    kind: str, algorithm: str, pool_weight: float, recomputed: dict[str, int]
) -> None:
    stored_loss, stored = _meta_gradients(
        kind, algorithm, checkpoint=False, pool_weight=pool_weight
    )
    assert recomputed == {"steps": 0, "backward": 0}
    loss, grads = _meta_gradients(kind, algorithm, checkpoint=True, pool_weight=pool_weight)
    # One vmap-ed checkpointed step, and one recomputation, per inner step.
    assert recomputed == {"steps": STEPS, "backward": STEPS}
    torch.testing.assert_close(loss, stored_loss, rtol=0, atol=0)
    assert all(g.abs().sum() > 0 for g in stored), "every meta-parameter gets a gradient"
    for got, expected in zip(grads, stored, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_first_order_and_no_grad_adaptation_do_not_recompute(recomputed: dict[str, int]) -> None:
    # FOMAML's steps are constants of the meta-graph; adapted_scores keeps no graph at all.
    _meta_gradients("mlp", "fomaml", checkpoint=True, pool_weight=0.0)
    teacher = build_teacher(5, ModelConfig(kind="mlp", hidden=[4]))
    learner = build_learner(
        teacher, inner=InnerConfig(checkpoint=True), meta=MetaConfig(), anomaly_shots=0
    )
    learner.adapted_scores(torch.randn(B, N, 5), torch.zeros(B, N), torch.randn(B, Q, 5))
    assert recomputed == {"steps": 0, "backward": 0}


def test_plan_carries_the_option() -> None:
    teacher = build_teacher(5, ModelConfig(kind="mlp", hidden=[4]))
    assert AdaptationPlan.of(teacher, InnerConfig()).checkpoint is False
    assert AdaptationPlan.of(teacher, InnerConfig(checkpoint=True)).checkpoint is True
    learner = build_learner(
        teacher, inner=InnerConfig(checkpoint=True), meta=MetaConfig(), anomaly_shots=0
    )
    assert learner.plan().checkpoint is True


@pytest.mark.parametrize("value", ["maybe", "1", "[true]"])
def test_bad_value_names_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match=r"inner\.checkpoint"):
        load_train_config(overrides=[f"inner.checkpoint={value}"])
    assert load_train_config(overrides=["inner.checkpoint=true"]).inner.checkpoint is True


def test_bad_value_in_code_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"inner\.checkpoint"):
        InnerConfig(checkpoint=1)  # type: ignore[arg-type]
