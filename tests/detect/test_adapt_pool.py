"""A teacher that uses the unlabelled pool: kNN head with pool neighbours and the input skip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_bundle

from metakd.data.transforms import AlignmentConfig, ScalingConfig
from metakd.detector import AdaptConfig, FewShotDetector
from metakd.meta.inner import adapt, reference_scores, task_scores
from metakd.meta.learners import AdaptationPlan, InnerConfig
from metakd.meta.losses import inner_loss_fn
from metakd.models.teachers import ModelConfig, build_teacher, score_logits
from metakd.persist import TeacherBundle, load_scorer
from metakd.threshold import ThresholdConfig

D = 6


def _bundle(kind: str = "knn") -> TeacherBundle:
    bundle = tiny_bundle(
        D, kind=kind, hidden=[16], inner_steps=2, scaling=ScalingConfig(kind="none")
    )
    if kind == "knn":
        with torch.no_grad():  # a pool trust other than 1, so its use is visible
            bundle.teacher.log_pool_factor.fill_(0.3)
    return bundle


def _rows(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    support = rng.normal(size=(8, D)).astype(np.float32)
    pool = rng.normal(size=(20, D)).astype(np.float32)
    new = np.concatenate([rng.normal(size=(30, D)), 4 + rng.normal(size=(5, D))])
    return support, pool, new.astype(np.float32)


@pytest.mark.parametrize("kind", ["knn", "svdd"])
def test_standalone_teacher_scores_against_support_and_pool(tmp_path: Path, kind: str) -> None:
    """The adapted teacher saved by ``fit`` scores exactly as the functional path (adapt, then
    score against the task's reference) that meta-training validated."""
    bundle = _bundle(kind)
    support, pool, new = _rows(0)
    config = AdaptConfig(student=False, threshold=ThresholdConfig(method="contamination"))
    det = FewShotDetector(bundle, config=config).fit(support, unlabeled=pool)
    teacher = det.teacher_scorer_.net.teacher
    assert teacher.memory.shape[0] == (8 + 20 if kind == "knn" else 1)
    # The saved detector equals the functional path: adapt, then score against support + pool.
    xs, xp, xn = (torch.from_numpy(a) for a in (support, pool, new))
    y = torch.zeros(8)
    loss = inner_loss_fn("auto", has_anomalies=False, score_is_logit=False)
    params, _ = adapt(
        bundle.teacher.stack_params(),
        xs,
        y,
        teacher=bundle.teacher,
        loss=loss,
        steps=2,
        lr=0.05,
        first_order=True,
        pool_x=xp,
    )
    with torch.no_grad():
        expected, _ = task_scores(
            params, xn, teacher=bundle.teacher, support_x=xs, support_y=y, pool_x=xp
        )
        expected = score_logits(bundle.teacher, expected)
        np.testing.assert_allclose(
            det.decision_function(new), expected.numpy(), rtol=1e-5, atol=1e-6
        )
        det.save(tmp_path)
        np.testing.assert_allclose(
            load_scorer(tmp_path / "teacher.pt")(xn).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6
        )
        # The threshold is fitted on the pool's own scores left-one-out: scored standalone, a
        # pool row would be its own nearest neighbour and look more normal than it is.
        _, _, pool_loo = reference_scores(
            params, teacher=bundle.teacher, support_x=xs, support_y=y, pool_x=xp
        )
        pool_loo = score_logits(bundle.teacher, pool_loo).numpy()
        standalone = det.decision_function(pool)
    if kind == "knn":  # a pool row is in the kNN reference; the SVDD centre is the support's
        assert (standalone < pool_loo - 1e-6).all()
    assert det.threshold_ == np.quantile(pool_loo, 0.9)


def test_checkpoints_from_before_the_new_options_load_as_they_were(tmp_path: Path) -> None:
    """A teacher.pt written before ``input_skip`` / ``pool_neighbours`` existed has neither key
    in its model config nor their parameters: it loads with both off, as it was trained."""
    from metakd import configio
    from metakd.checkpoint import save_teacher

    old_model = ModelConfig(kind="knn", hidden=[8], embedding_dim=3, input_skip=False)
    old_model = dataclasses.replace(old_model, pool_neighbours=False)
    teacher = build_teacher(D, old_model)
    model = configio.to_dict(old_model)
    del model["input_skip"], model["pool_neighbours"]
    save_teacher(
        tmp_path / "teacher.pt",
        teacher=teacher,
        model=model,
        inner=configio.to_dict(InnerConfig()),
        algorithm="maml",
        rates=[],
        scaling=configio.to_dict(ScalingConfig()),
        alignment=configio.to_dict(AlignmentConfig()),
        episode={},
        info={},
    )
    bundle = TeacherBundle.load(tmp_path / "teacher.pt")
    assert not bundle.model.input_skip and not bundle.teacher.uses_pool


def test_knn_teacher_distils_without_a_pool() -> None:
    """No unlabelled rows: the student learns from the support alone (an empty pool is scored
    as zero rows, not an error)."""
    from metakd.distill import DistillConfig

    support, _, new = _rows(3)
    config = AdaptConfig(distill=DistillConfig(steps=20))
    det = FewShotDetector(_bundle("knn"), config=config).fit(support)
    assert det.student_scorer_ is not None
    assert np.isfinite(det.decision_function(new)).all()


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_adapt_runs_the_teachers_inner_optimizer(optimizer: str) -> None:
    """``metakd adapt`` adapts with the optimiser (and proximal weight) the teacher was
    meta-trained with: the detector equals the functional path with that plan."""
    bundle = _bundle("svdd")
    inner = dataclasses.replace(bundle.inner, optimizer=optimizer, proximal=0.5)  # type: ignore[arg-type]
    bundle = dataclasses.replace(bundle, inner=inner)
    support, _, new = _rows(2)
    det = FewShotDetector(bundle, config=AdaptConfig(student=False)).fit(
        support, np.zeros(len(support))
    )
    xs, xn, y = torch.from_numpy(support), torch.from_numpy(new), torch.zeros(len(support))
    plan = AdaptationPlan.of(bundle.teacher, inner)
    loss = inner_loss_fn("auto", has_anomalies=False, score_is_logit=False)
    params, _ = adapt(
        bundle.teacher.stack_params(),
        xs,
        y,
        teacher=bundle.teacher,
        loss=loss,
        steps=inner.steps,
        lr=plan.lr,
        first_order=True,
        optimizer=plan.optimizer,
        proximal=plan.proximal,
    )
    with torch.no_grad():
        expected, _ = task_scores(params, xn, teacher=bundle.teacher, support_x=xs, support_y=y)
    np.testing.assert_allclose(
        det.decision_function(new),
        score_logits(bundle.teacher, expected).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("threads", [1, None])
def test_fit_runs_on_the_configured_threads_and_restores_them(
    monkeypatch: pytest.MonkeyPatch, threads: int | None
) -> None:
    """``adapt.threads`` (default 1) holds while fitting, single and many domains; torch's own
    count is back afterwards."""
    from metakd.detect import estimator
    from metakd.detect.many import fit_many
    from metakd.distill import DistillConfig

    seen: list[int] = []
    real = estimator.distill

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(estimator, "distill", recording)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        support, pool, _ = _rows(3)
        config = AdaptConfig(distill=DistillConfig(steps=5), threads=threads)
        FewShotDetector(_bundle("knn"), config=config).fit(support, unlabeled=pool)
        fit_many([FewShotDetector(_bundle("knn"), config=config)], [(support, None, pool)])
        assert seen == [1 if threads == 1 else 2] * 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
