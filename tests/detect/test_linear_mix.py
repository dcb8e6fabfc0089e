"""``adapt.linear_mix`` and ``adapt.anomaly_mix``: with labelled anomalies, the adapted profile
teacher's score mixed with its ``linear`` evidence (the labelled rows' ridge discriminant) and
its ``anomalies`` evidence (nearest normal against nearest labelled anomaly), each standardised
by the support normals."""

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


def _clustered(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Anomalies a tight cluster two normal spreads from the normals' centre: in the pool they
    are each other's nearest rows, which a pool density reads as normal (kNN's masking), and
    no one direction separates them from the normals around them; but each is near the
    labelled anomalies."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=D)
    centre *= 2.0 / np.linalg.norm(centre)

    def normals(n: int) -> np.ndarray:
        return rng.normal(size=(n, D))

    def anomalies(n: int) -> np.ndarray:
        return centre + rng.normal(size=(n, D)) * 0.3

    x = np.concatenate([normals(10), anomalies(5)]).astype(np.float32)
    y = np.r_[np.zeros(10), np.ones(5)]
    pool_y = np.r_[np.zeros(300), np.ones(15)]
    pool = np.concatenate([normals(300), anomalies(15)]).astype(np.float32)
    return x, y, pool, pool_y


def _fit(
    mix: float,
    x: np.ndarray,
    y: np.ndarray | None,
    pool: np.ndarray,
    *,
    anomaly_mix: float = 0.0,
    bundle: TeacherBundle | None = None,
) -> FewShotDetector:
    config = AdaptConfig(student=False, linear_mix=mix, anomaly_mix=anomaly_mix)
    return FewShotDetector(bundle or _bundle(), config=config).fit(x, y, unlabeled=pool)


def _teacher(det: FewShotDetector) -> ProfileNet:
    teacher = det.teacher_scorer_.net.teacher
    assert isinstance(teacher, ProfileNet)
    return teacher


@pytest.mark.parametrize("anomaly_mix", [0.0, 0.5])
def test_mix_is_the_teacher_and_evidences_standardised_by_the_normals(anomaly_mix: float) -> None:
    x, y, pool, _ = _rows(0)
    alone = _fit(0.0, x, y, pool)
    mixed = _fit(1.0, x, y, pool, anomaly_mix=anomaly_mix)
    assert alone.report_["linear_mix"] == 0.0 and alone.report_["anomaly_mix"] == 0.0
    assert mixed.report_["linear_mix"] == 1.0 and mixed.report_["anomaly_mix"] == anomaly_mix
    scorer = alone.teacher_scorer_
    with torch.no_grad():
        score = scorer(torch.from_numpy(pool)).numpy()
        rows = scorer.preprocess(torch.from_numpy(np.concatenate([x, pool])))
    teacher = _teacher(alone)
    assert teacher.linear_column is not None and teacher.anomaly_column is not None
    linear = rows[:, teacher.linear_column].numpy()
    nearest = rows[:, teacher.anomaly_column].numpy()
    # The normals' own (leave-one-out) scores and evidences set each expert's scale.
    own = alone.decision_scores_[:10]

    def z(values: np.ndarray, normals: np.ndarray) -> np.ndarray:
        return (values - np.median(normals)) / normals.std()

    def mix(score: np.ndarray, rows: slice) -> np.ndarray:
        return (
            z(score, own)
            + z(linear[rows], linear[:10])
            + anomaly_mix * z(nearest[rows], nearest[:10])
        )

    with torch.no_grad():
        got = mixed.teacher_scorer_(torch.from_numpy(pool)).numpy()
    np.testing.assert_allclose(got, mix(score, slice(len(x), None)), rtol=1e-4, atol=1e-4)
    # The support's own scores, which the threshold is fitted on, are mixed alike.
    expected = mix(alone.decision_scores_, slice(0, len(x)))
    np.testing.assert_allclose(mixed.decision_scores_, expected, rtol=1e-4, atol=1e-4)


def test_mix_ranks_by_the_direction_the_labelled_anomalies_show() -> None:
    """Where the anomalies differ along one narrow column, the mix ranks the pool better than
    the (untrained) teacher's neighbourhood evidence alone, on every draw."""
    for seed in range(3):
        x, y, pool, pool_y = _rows(seed)
        alone = roc_auc_score(pool_y, _fit(0.0, x, y, pool).decision_function(pool))
        mixed = roc_auc_score(pool_y, _fit(1.0, x, y, pool).decision_function(pool))
        assert mixed > alone + 0.05, (seed, alone, mixed)


def test_mix_ranks_anomalies_near_the_labelled_ones() -> None:
    """Where the anomalies are a tight cluster, the ``anomalies`` expert ranks the pool better
    than the (untrained) teacher with the ridge discriminant, on every draw."""
    for seed in range(3):
        x, y, pool, pool_y = _clustered(seed)
        linear = roc_auc_score(pool_y, _fit(1.0, x, y, pool).decision_function(pool))
        both = _fit(1.0, x, y, pool, anomaly_mix=1.0).decision_function(pool)
        assert roc_auc_score(pool_y, both) > linear + 0.1, (seed, linear)


def test_without_labelled_anomalies_the_mix_changes_nothing() -> None:
    x, _, pool, _ = _rows(1)
    normals = x[:10]
    alone = _fit(0.0, normals, None, pool)
    mixed = _fit(1.0, normals, None, pool, anomaly_mix=1.0)
    assert mixed.report_["linear_mix"] == 0.0 and mixed.report_["anomaly_mix"] == 0.0
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
    det = _fit(1.0, x, y, pool, anomaly_mix=1.0)
    det.save(tmp_path / "model")
    loaded = FewShotDetector.load(tmp_path / "model" / "teacher.pt")
    np.testing.assert_array_equal(loaded.decision_function(pool), det.decision_function(pool))
    state = _teacher(det).state_dict()
    assert bool(state["anomaly_mix"][1] != 0)
    # A teacher saved before the `anomalies` expert holds no `anomaly_mix`: the linear mix only.
    teacher = _bundle().teacher
    assert isinstance(teacher, ProfileNet)
    teacher.load_weights({k: v for k, v in state.items() if k != "anomaly_mix"})
    assert torch.equal(teacher.linear_mix, state["linear_mix"])
    assert torch.equal(teacher.anomaly_mix, torch.zeros(2))
    # One saved before either mix existed holds neither: it loads unmixed.
    teacher.load_weights({k: v for k, v in state.items() if not k.endswith("_mix")})
    assert torch.equal(teacher.linear_mix, torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert torch.equal(teacher.anomaly_mix, torch.zeros(2))


def test_no_spread_no_mix() -> None:
    """Normals whose scores are all equal give no scale to standardise by: nothing is set."""
    teacher = _bundle().teacher
    assert isinstance(teacher, ProfileNet)
    before = teacher.linear_mix.clone(), teacher.anomaly_mix.clone()
    rows = torch.randn(5, teacher.input_dim)
    assert teacher.fit_mix(rows, torch.ones(5), linear=1.0, anomalies=1.0) == (0.0, 0.0)
    assert torch.equal(teacher.linear_mix, before[0])
    assert torch.equal(teacher.anomaly_mix, before[1])


def test_an_evidence_without_spread_is_left_out() -> None:
    """Normals whose ``anomalies`` evidence is all equal give it no scale: the linear
    evidence alone is mixed."""
    teacher = _bundle().teacher
    assert isinstance(teacher, ProfileNet) and teacher.anomaly_column is not None
    rows = torch.randn(6, teacher.input_dim)
    rows[:, teacher.anomaly_column] = 0.3
    assert teacher.fit_mix(rows, torch.randn(6), linear=1.0, anomalies=1.0) == (1.0, 0.0)
    assert bool(teacher.linear_mix[3] != 0)
    assert torch.equal(teacher.anomaly_mix, torch.zeros(2))


@pytest.mark.parametrize("key", ["linear_mix", "anomaly_mix"])
@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_mix_weights_must_be_finite_and_non_negative(key: str, bad: float) -> None:
    with pytest.raises(ConfigError, match=key):
        AdaptConfig(**{key: bad})


def test_profiles_without_the_linear_evidence_are_not_mixed() -> None:
    profile = ProfileConfig(evidences=["support_b", "support_a", "pool"])
    bundle = tiny_bundle(D, kind="profile", hidden=[16], profile=profile)
    x, y, pool, _ = _rows(3)
    det = FewShotDetector(bundle, config=AdaptConfig(student=False)).fit(x, y, unlabeled=pool)
    assert det.report_["linear_mix"] == 0.0 and det.report_["anomaly_mix"] == 0.0


def test_profiles_with_only_the_anomalies_evidence_mix_it_alone() -> None:
    profile = ProfileConfig(evidences=["support_b", "support_a", "pool", "anomalies"])
    bundle = tiny_bundle(D, kind="profile", hidden=[16], profile=profile)
    x, y, pool, _ = _clustered(3)
    det = _fit(1.0, x, y, pool, anomaly_mix=1.0, bundle=bundle)
    assert det.report_["linear_mix"] == 0.0 and det.report_["anomaly_mix"] == 1.0
