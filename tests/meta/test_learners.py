"""The meta-learner registry, the one adaptation plan, and the trainer's algorithm-free step."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch
from torch import Tensor

import metakd.train
from metakd.config import load_train_config
from metakd.errors import ConfigError
from metakd.meta.learners import (
    ANIL,
    FOMAML,
    LEARNERS,
    MAML,
    AdaptationPlan,
    Algorithm,
    InnerConfig,
    MetaConfig,
    MetaLearner,
    MetaSGD,
    MetaStats,
    Reptile,
    build_learner,
    learner_class,
    register,
    resolve_inner,
)
from metakd.models.teachers import ModelConfig, Teacher, build_teacher


def _teacher() -> Teacher:
    torch.manual_seed(0)
    return build_teacher(4, ModelConfig(kind="mlp", hidden=[5]))


def test_registry_contains_the_built_in_algorithms() -> None:
    with pytest.raises(ConfigError, match=r"unknown meta-learning algorithm 'maml2'.*'reptile'"):
        learner_class("maml2")
    with pytest.raises(ConfigError, match=r"config 'meta': unknown meta-learning algorithm"):
        load_train_config(None, ["meta.algorithm=maml2"])
    built_in = {
        "maml": MAML,
        "fomaml": FOMAML,
        "anil": ANIL,
        "metasgd": MetaSGD,
        "reptile": Reptile,
    }
    assert built_in.items() <= LEARNERS.items()
    assert all(cls.algorithm == name for name, cls in LEARNERS.items())


def test_unknown_algorithm_is_a_config_error_naming_it_and_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="'maml2'") as err:
        learner_class("maml2")
    assert all(repr(name) in str(err.value) for name in LEARNERS)
    with pytest.raises(ConfigError, match="'maml2'"):
        resolve_inner(InnerConfig(), "maml2")  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", sorted(LEARNERS))
def test_build_learner_picks_the_registered_class(algorithm: Algorithm) -> None:
    learner = build_learner(
        _teacher(), inner=InnerConfig(), meta=MetaConfig(algorithm=algorithm), anomaly_shots=0
    )
    assert type(learner) is LEARNERS[algorithm]


@pytest.mark.parametrize("algorithm", sorted(LEARNERS))
def test_meta_gradients_fill_grads_and_return_detached_per_task_stats(
    algorithm: Algorithm,
) -> None:
    """Stats are diagnostics: callers read them as numbers (the trainer's metrics, the pooled
    baseline's progress), which torch warns about while they still require grad."""
    teacher = _teacher()
    learner = build_learner(
        teacher, inner=InnerConfig(), meta=MetaConfig(algorithm=algorithm), anomaly_shots=0
    )
    g = torch.Generator().manual_seed(0)
    sx, qx = torch.randn(2, 5, 4, generator=g), torch.randn(2, 6, 4, generator=g)
    sy, qy = torch.zeros(2, 5), torch.tensor([[0.0, 0, 0, 1, 1, 0]] * 2)
    stats = learner.meta_gradients(sx, sy, qx, qy)
    assert isinstance(stats, MetaStats)
    for name, value in stats._asdict().items():
        assert not value.requires_grad, name
        assert value.shape[0] == 2, name
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in teacher.parameters())


def test_a_class_refuses_another_algorithms_config() -> None:
    with pytest.raises(ValueError, match="'anil'"):
        MAML(_teacher(), inner=InnerConfig(), meta=MetaConfig(algorithm="anil"), anomaly_shots=0)
    with pytest.raises(TypeError):
        MetaLearner(_teacher(), inner=InnerConfig(), meta=MetaConfig(), anomaly_shots=0)  # type: ignore[abstract]


def test_what_each_algorithm_implies_for_adaptation() -> None:
    inner = InnerConfig(first_order=False, layers="all")
    assert resolve_inner(inner, "maml") == inner
    assert resolve_inner(inner, "fomaml").first_order
    assert resolve_inner(inner, "reptile").first_order
    assert resolve_inner(inner, "anil").layers == "head"
    assert resolve_inner(inner, "metasgd") == inner


def test_a_new_learner_is_one_decorated_class() -> None:
    @register("zero")
    class Zero(MetaLearner):
        def meta_gradients(
            self,
            support_x: Tensor,
            support_y: Tensor,
            query_x: Tensor,
            query_y: Tensor,
            pool_x: Tensor | None = None,
        ) -> MetaStats:
            zeros = support_x.new_zeros(support_x.shape[0])
            return MetaStats(zeros, zeros, zeros, query_x.new_zeros(query_x.shape[:2]))

    try:
        assert learner_class("zero") is Zero and Zero.algorithm == "zero"
        with pytest.raises(ValueError, match="twice"):
            register("zero")(Zero)
    finally:
        del LEARNERS["zero"]


def test_one_plan_for_training_and_for_stored_rates() -> None:
    """Meta-SGD's learned rates give the same plan in the learner and from a checkpoint's list."""
    teacher = _teacher()
    learner = build_learner(
        teacher, inner=InnerConfig(), meta=MetaConfig(algorithm="metasgd"), anomaly_shots=0
    )
    stored = [r.detach().clone() for r in learner.rates]
    ours, loaded = learner.plan(), AdaptationPlan.of(teacher, learner.inner, stored)
    assert isinstance(ours.lr, tuple) and isinstance(loaded.lr, tuple)
    for (w, b), (w2, b2) in zip(ours.lr, loaded.lr, strict=True):
        assert torch.equal(w, w2) and b is not None and b2 is not None and torch.equal(b, b2)
    head = AdaptationPlan.of(teacher, resolve_inner(InnerConfig(lr=0.2), "anil"))
    assert head == AdaptationPlan(0.2, (len(teacher.layers) - 1,))
    with pytest.raises(ValueError, match="inner rates"):
        AdaptationPlan.of(teacher, learner.inner, stored[:-1])


def test_trainer_has_no_algorithm_branches() -> None:
    for info in pkgutil.iter_modules(metakd.train.__path__):
        source = inspect.getsource(importlib.import_module(f"metakd.train.{info.name}"))
        assert "algorithm ==" not in source and "reptile" not in source.lower(), info.name
