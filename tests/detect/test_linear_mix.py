"""``adapt.linear_mix``: with labelled anomalies, the adapted profile teacher's score mixed with
its ``linear`` evidence (the labelled rows' ridge discriminant), each standardised by the
support normals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_bundle
from sklearn.metrics import roc_auc_score

from metakd.detector import AdaptConfig, FewShotDetector
from metakd.errors import ConfigError
from metakd.models.profile_config import ProfileConfig
from metakd.models.teachers.profile import ProfileNet
from metakd.persist import TeacherBundle

D = 6


def _bundle() -> TeacherBundle:
    return tiny_bundle(D, kind="profile", hidden=[16], inner_steps=2)


def _rows(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normals spread widely in every column but the first; anomalies shifted along the first
    alone: a direction five labelled anomalies show and no distance to a nearest row does."""
    rng = np.random.default_rng(seed)

    def normals(n: int) -> np.ndarray:
        return rng.normal(size=(n, D)) * np.r_[0.5, np.full(D - 1, 3.0)]

    def anomalies(n: int) -> np.ndarray:
        return normals(n) + np.r_[1.0, np.zeros(D - 1)]

    x = np.concatenate([normals(10), anomalies(5)]).astype(np.float32)
    y = np.r_[np.zeros(10), np.ones(5)]
    pool_y = np.r_[np.zeros(300), np.ones(30)]
    pool = np.concatenate([normals(300), anomalies(30)]).astype(np.float32)
    return x, y, pool, pool_y


def _fit(mix: float, x: np.ndarray, y: np.ndarray | None, pool: np.ndarray) -> FewShotDetector:
    config = AdaptConfig(student=False, linear_mix=mix)
    return FewShotDetector(_bundle(), config=config).fit(x, y, unlabeled=pool)


def _teacher(det: FewShotDetector) -> ProfileNet:
    teacher = det.teacher_scorer_.net.teacher
    assert isinstance(teacher, ProfileNet)
    return teacher


def test_mix_is_the_teacher_and_linear_evidence_standardised_by_the_normals() -> None:
    x, y, pool, _ = _rows(0)
    alone, mixed = _fit(0.0, x, y, pool), _fit(1.0, x, y, pool)
    assert alone.report_["linear_mix"] == 0.0 and mixed.report_["linear_mix"] == 1.0
    scorer = alone.teacher_scorer_
    with torch.no_grad():
        score = scorer(torch.from_numpy(pool)).numpy()
        rows = scorer.preprocess(torch.from_numpy(np.concatenate([x, pool])))
    linear = rows[:, _teacher(alone).linear_column].numpy()
    # The normals' own (leave-one-out) scores and linear evidence set each expert's scale.
    own, own_linear = alone.decision_scores_[:10], linear[:10]

    def mix(score: np.ndarray, linear: np.ndarray) -> np.ndarray:
        return (score - np.median(own)) / own.std() + (
            linear - np.median(own_linear)
        ) / own_linear.std()

    with torch.no_grad():
        got = mixed.teacher_scorer_(torch.from_numpy(pool)).numpy()
    np.testing.assert_allclose(got, mix(score, linear[len(x) :]), rtol=1e-4, atol=1e-4)
    # The support's own scores, which the threshold is fitted on, are mixed alike.
    expected = mix(alone.decision_scores_, linear[: len(x)])
    np.testing.assert_allclose(mixed.decision_scores_, expected, rtol=1e-4, atol=1e-4)


def test_mix_ranks_by_the_direction_the_labelled_anomalies_show() -> None:
    """Where the anomalies differ along one narrow column, the mix ranks the pool better than
    the (untrained) teacher's neighbourhood evidence alone, on every draw."""
    for seed in range(3):
        x, y, pool, pool_y = _rows(seed)
        alone = roc_auc_score(pool_y, _fit(0.0, x, y, pool).decision_function(pool))
        mixed = roc_auc_score(pool_y, _fit(1.0, x, y, pool).decision_function(pool))
        assert mixed > alone + 0.05, (seed, alone, mixed)


def test_without_labelled_anomalies_the_mix_changes_nothing() -> None:
    x, _, pool, _ = _rows(1)
    normals = x[:10]
    alone, mixed = _fit(0.0, normals, None, pool), _fit(1.0, normals, None, pool)
    assert mixed.report_["linear_mix"] == 0.0
    assert np.array_equal(alone.decision_function(pool), mixed.decision_function(pool))


def test_unset_mix_leaves_scores_bitwise() -> None:
    """The buffer's defaults are an exact identity, so meta-training and every teacher adapted
    without labelled anomalies score as before the mix existed."""
    teacher = _bundle().teacher
    assert isinstance(teacher, ProfileNet)
    x = torch.randn(7, teacher.input_dim)
    scores = torch.randn(7) * 1e3
    assert torch.equal(teacher.mixed(x, scores), scores)


def test_mixed_teacher_saves_loads_and_old_files_score_unmixed(tmp_path: Path) -> None:
    x, y, pool, _ = _rows(2)
    det = _fit(1.0, x, y, pool)
    det.save(tmp_path / "model")
    loaded = FewShotDetector.load(tmp_path / "model" / "teacher.pt")
    np.testing.assert_array_equal(loaded.decision_function(pool), det.decision_function(pool))
    # A teacher saved before the mix existed holds no `linear_mix`: it loads unmixed.
    teacher = _bundle().teacher
    state = {k: v for k, v in _teacher(det).state_dict().items() if k != "linear_mix"}
    teacher.load_weights(state)
    assert torch.equal(teacher.linear_mix, torch.tensor([0.0, 1.0, 0.0, 0.0]))


def test_no_spread_no_mix() -> None:
    """Normals whose scores are all equal give no scale to standardise by: nothing is set."""
    teacher = _bundle().teacher
    assert isinstance(teacher, ProfileNet)
    before = teacher.linear_mix.clone()
    assert not teacher.fit_linear_mix(torch.randn(5, teacher.input_dim), torch.ones(5), 1.0)
    assert torch.equal(teacher.linear_mix, before)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_linear_mix_must_be_a_finite_non_negative_weight(bad: float) -> None:
    with pytest.raises(ConfigError, match="linear_mix"):
        AdaptConfig(linear_mix=bad)


def test_profiles_without_the_linear_evidence_are_not_mixed() -> None:
    profile = ProfileConfig(evidences=["support_b", "support_a", "pool"])
    bundle = tiny_bundle(D, kind="profile", hidden=[16], profile=profile)
    x, y, pool, _ = _rows(3)
    det = FewShotDetector(bundle, config=AdaptConfig(student=False)).fit(x, y, unlabeled=pool)
    assert det.report_["linear_mix"] == 0.0
