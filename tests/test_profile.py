"""Neighbourhood profiles, the synthetic prior and the universal ``profile`` teacher (#11)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from metakd import configio
from metakd.config import TrainConfig
from metakd.data.builtin import synthetic_collection
from metakd.data.prior import PriorConfig, prior_task
from metakd.data.transforms import AlignmentConfig, Scaler, ScalingConfig
from metakd.detector import FewShotDetector
from metakd.episodes import EpisodeConfig, EpisodeSampler
from metakd.models.profile import N_TASK_STATS, NeighbourProfile, ProfileConfig
from metakd.models.teachers import _masked_knn
from metakd.persist import load_scorer
from metakd.train import meta_train


def _fit(support: np.ndarray, pool: np.ndarray, config: ProfileConfig) -> tuple:
    s, p = torch.tensor(support), torch.tensor(pool)
    scaler = Scaler.fit(torch.cat([s, p]), ScalingConfig())
    return NeighbourProfile.fit(s, scaler(s), scaler(p), config=config), scaler


@pytest.mark.parametrize("features", [3, 40, 700])
def test_profile_width_does_not_depend_on_the_feature_count(features: int) -> None:
    rng = np.random.default_rng(features)
    x = rng.normal(size=(120, features)).astype(np.float32)
    config = ProfileConfig(neighbours=4)
    profile, scaler = _fit(x[:10], x[10:], config)
    out = profile(torch.tensor(x), scaler(torch.tensor(x)))
    assert out.shape == (120, config.width) == (120, 3 * 4 + N_TASK_STATS)
    assert torch.isfinite(out).all()
    # Task statistics are the same for every row.
    assert torch.equal(out[:, 12:], out[:1, 12:].expand(120, -1))


def test_profile_scores_reference_rows_leave_one_out_like_sklearn() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)
    support, pool = x[:10], x[10:]
    k = 5
    profile, scaler = _fit(support, pool, ProfileConfig(neighbours=k))
    z_pool = scaler(torch.tensor(pool)).double().numpy()
    out = profile(torch.tensor(pool), scaler(torch.tensor(pool))).double().numpy()
    # Independent oracle: scikit-learn's exact neighbours among the pool, the row itself dropped.
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(z_pool).kneighbors(z_pool)
    sigma = float(profile.scales[2])
    expected = np.log(distances[:, 1:] / sigma + 0.01)
    np.testing.assert_allclose(out[:, 2 * k : 3 * k], expected, rtol=1e-5, atol=1e-5)
    # A new row (not in the pool) keeps its nearest neighbour.
    new = pool[:5] + 1e-2
    z_new = scaler(torch.tensor(new)).double().numpy()
    d_new, _ = NearestNeighbors(n_neighbors=k).fit(z_pool).kneighbors(z_new)
    got = profile(torch.tensor(new), scaler(torch.tensor(new))).double().numpy()
    np.testing.assert_allclose(got[:, 2 * k : 3 * k], np.log(d_new / sigma + 0.01), rtol=1e-4)


def test_profile_subsamples_large_pools_to_a_bounded_reference() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 4)).astype(np.float32)
    profile, _ = _fit(x[:10], x[10:], ProfileConfig(max_pool=256))
    assert profile.pool_a.shape == (256, 4)


def test_prior_tasks_are_seeded_and_vary() -> None:
    config = PriorConfig()
    draw = [prior_task(np.random.default_rng(7), config, normals=40, anomalies=8, pool=100)]
    draw.append(prior_task(np.random.default_rng(7), config, normals=40, anomalies=8, pool=100))
    assert np.array_equal(draw[0].X, draw[1].X) and np.array_equal(draw[0].y, draw[1].y)
    rng = np.random.default_rng(0)
    tasks = [prior_task(rng, config, normals=40, anomalies=8, pool=100) for _ in range(40)]
    widths = {t.n_features for t in tasks}
    assert len(widths) > 10 and min(widths) >= 2 and max(widths) <= 128
    assert {t.name.split("-")[1] for t in tasks} == {"local", "global", "dependency", "clustered"}
    for task in tasks:
        pool_anomalies = task.n_anomalies - 8
        assert 0.01 * 100 - 0.5 <= pool_anomalies <= 0.15 * 100 + 0.5
        assert task.n_rows == 40 + 8 + 100


def test_sampler_mixes_the_prior_reproducibly() -> None:
    tasks = synthetic_collection(n_tasks=4, n_features=8, n_rows=200)
    episode = EpisodeConfig(shots=5, query_size=16, query_anomaly_fraction=0.25, pool_size=20)

    def sampler() -> EpisodeSampler:
        return EpisodeSampler(
            tasks,
            episode,
            scaling=ScalingConfig(),
            alignment=AlignmentConfig(kind="project", width=16),
            seed=3,
            profile=ProfileConfig(),
            prior=PriorConfig(weight=0.5),
        )

    a, b = sampler().sample(12), sampler().sample(12)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert a.task_names == b.task_names
    assert any(n.startswith("prior-") for n in a.task_names)
    assert any(n.startswith("synthetic-") for n in a.task_names)
    assert a.support_x.shape[-1] == 16 + ProfileConfig().width


def test_prior_tasks_take_the_width_of_unprojected_collections() -> None:
    """Without projection (tasks/skab.yaml: one shared width) prior tasks have that width."""
    tasks = synthetic_collection(n_tasks=3, n_features=7, n_rows=200)
    episode = EpisodeConfig(shots=5, query_size=16, query_anomaly_fraction=0.25, pool_size=20)
    sampler = EpisodeSampler(
        tasks,
        episode,
        scaling=ScalingConfig(),
        alignment=AlignmentConfig(kind="none"),
        seed=0,
        prior=PriorConfig(weight=1.0),
    )
    batch = sampler.sample(6)
    assert all(n.startswith("prior-") for n in batch.task_names)
    assert batch.support_x.shape[-1] == 7 and torch.isfinite(batch.query_x).all()


@pytest.fixture(scope="module")
def universal_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ``profile`` teacher meta-trained on the built-in collection and the prior."""
    out = tmp_path_factory.mktemp("universal")
    config = configio.load(
        TrainConfig,
        None,
        [
            "iterations=60",
            "val_every=20",
            "model.hidden=[64]",
            "episode.meta_batch=8",
            "meta.meta_lr=0.003",
            "tracking.mode=disabled",
        ],
    )
    result = meta_train(config, out_dir=out, progress=False)
    assert config.model.kind == "profile"
    # The learning test: on held-out synthetic tasks, better than both simple detectors.
    auroc = result.test_auroc
    assert auroc["metakd"] > max(auroc["knn_support"], auroc["knn_pool"]) + 0.01, auroc
    return out / "teacher.pt"


@pytest.mark.parametrize("features", [3, 40, 700])
def test_universal_teacher_adapts_to_any_width(universal_teacher: Path, features: int) -> None:
    rng = np.random.default_rng(features)
    normal = rng.normal(size=(250, features)).astype(np.float32)
    shift = np.zeros(features, dtype=np.float32)
    shift[: max(1, features // 10)] = 4.0
    anomalous = (rng.normal(size=(25, features)) + shift).astype(np.float32)
    pool = np.concatenate([normal[10:], anomalous])
    y_pool = np.r_[np.zeros(240), np.ones(25)]
    det = FewShotDetector(universal_teacher).fit(normal[:10], unlabeled=pool)
    for scorer in (det.teacher_scorer_, det.student_scorer_):
        assert scorer is not None
        with torch.no_grad():
            scores = scorer(torch.tensor(pool)).numpy()
        assert np.isfinite(scores).all()
        assert roc_auc_score(y_pool, scores) > 0.9
    # The saved detector carries its profile and scores the pool's own rows leave-one-out.
    paths = det.save(universal_teacher.parent / f"adapted-{features}")
    loaded = load_scorer(paths["student"])
    with torch.no_grad():
        np.testing.assert_allclose(
            loaded(torch.tensor(pool)).numpy(), det.decision_function(pool), rtol=1e-6, atol=1e-6
        )
    scripted = torch.jit.load(str(paths["torchscript"]))
    with torch.no_grad():
        np.testing.assert_allclose(
            scripted(torch.tensor(pool)).numpy(), det.decision_function(pool), rtol=1e-5, atol=1e-5
        )


def test_rows_repeated_within_rounding_have_bounded_distance_gradients() -> None:
    """Copies of a row that embed a float32 rounding error apart (as blocked matmuls on another
    thread count do) are duplicates: their distance carries no gradient. The square root's slope
    near 0 once drove the inner loop on ADBench mammography, a table of repeated rows, to
    weights of 1e18 and NaN scores, on some thread counts and not others."""
    generator = torch.Generator().manual_seed(0)
    base = 3.0 * torch.randn(12, 8, generator=generator)
    e = torch.cat([base, base[:1].expand(6, -1)])  # row 0 seven times: more copies than k
    e = e * (1.0 + 1e-7 * torch.randn(e.shape, generator=generator))
    weight = torch.ones(len(e))

    def log_scale(rows: torch.Tensor) -> torch.Tensor:
        return torch.log(_masked_knn(rows, rows, weight, 5) + 1e-12).sum()

    gradient = torch.func.grad(log_scale)(e)
    assert torch.isfinite(gradient).all()
    # Distinct rows' gradients are O(1 / distance); the copies' were 3e6 before the floor.
    assert gradient.abs().max() < 10.0
    # The floor changes no distance between distinct rows.
    distinct = _masked_knn(base, base, torch.ones(12), 5)
    exact = torch.cdist(base, base).fill_diagonal_(float("inf")).topk(5, largest=False).values
    torch.testing.assert_close(distinct, exact.mean(-1), rtol=1e-5, atol=1e-5)
