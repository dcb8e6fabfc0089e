"""Neighbourhood profiles, the synthetic prior and the universal ``profile`` teacher (#11)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import knn_distances
from sklearn.metrics import roc_auc_score

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
    # Six evidences of k sorted distances, three of one value, the statistics (+ anomaly shots,
    # + the linear evidence's separation).
    assert out.shape == (120, config.width) == (120, 6 * 4 + 3 + N_TASK_STATS + 2)
    assert torch.isfinite(out).all()
    # Task statistics are the same for every row.
    stats = out[:, -config.n_stats :]
    assert torch.equal(stats, stats[:1].expand(120, -1))
    legacy = ProfileConfig(neighbours=4, evidences=["support_b", "support_a", "pool"])
    assert legacy.width == 3 * 4 + N_TASK_STATS


def test_profile_scores_reference_rows_leave_one_out_like_sklearn() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)
    support, pool = x[:10], x[10:]
    k = 5
    profile, scaler = _fit(support, pool, ProfileConfig(neighbours=k))
    z_pool = scaler(torch.tensor(pool)).double().numpy()
    out = profile(torch.tensor(pool), scaler(torch.tensor(pool))).double().numpy()
    # Independent oracle: scikit-learn's exact neighbours among the pool, the row itself dropped.
    distances = knn_distances(z_pool, z_pool, k, leave_one_out=True)
    sigma = float(profile.scales[2])
    expected = np.log(distances / sigma + 0.01)
    np.testing.assert_allclose(out[:, 2 * k : 3 * k], expected, rtol=1e-5, atol=1e-5)
    # A new row (not in the pool) keeps its nearest neighbour.
    new = pool[:5] + 1e-2
    z_new = scaler(torch.tensor(new)).double().numpy()
    d_new = knn_distances(z_new, z_pool, k)
    got = profile(torch.tensor(new), scaler(torch.tensor(new))).double().numpy()
    np.testing.assert_allclose(got[:, 2 * k : 3 * k], np.log(d_new / sigma + 0.01), rtol=1e-4)


def test_added_evidences_match_independent_references() -> None:
    """Cosine kNN and raw pool density against scikit-learn's exact neighbours (the row itself
    left out), the Gaussian evidence against scikit-learn's Ledoit–Wolf covariance inverted in
    full, the anomaly evidence against its definition."""
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(3)
    x = (rng.normal(size=(150, 7)) * np.arange(1, 8)).astype(np.float32) + 5.0
    support, anomalies, pool = x[:12], x[12:14] + 8.0, x[14:]
    k = 3
    config = ProfileConfig(neighbours=k)
    s, a, p = (torch.tensor(v) for v in (support, anomalies, pool))
    scaler = Scaler.fit(torch.cat([s, a, p]), ScalingConfig())
    rows = torch.cat([s, a])
    profile = NeighbourProfile.fit_task(
        rows, torch.arange(14) < 12, p, scale=scaler, config=config, seed=0
    )
    out = profile(p, scaler(p)).double().numpy()
    start = {name: 0 for name, _ in config.columns()}
    offset = 0
    for name, count in config.columns():
        start[name] = offset
        offset += count
    scales = dict(
        zip(
            [n for n, _ in config.columns() if n not in ("anomalies", "linear")],
            profile.scales,
            strict=True,
        )
    )

    def block(name: str, count: int = k) -> np.ndarray:
        return out[:, start[name] : start[name] + count]

    pool64 = pool.astype(np.float64)
    d_raw = knn_distances(pool64, pool64, k, leave_one_out=True)
    np.testing.assert_allclose(
        block("raw_pool"), np.log(d_raw / float(scales["raw_pool"]) + 0.01), atol=1e-4
    )
    d_cos = knn_distances(pool64, pool64, k, leave_one_out=True, metric="cosine")
    expected = np.log(d_cos / float(scales["cosine_pool"]) + 0.01)
    np.testing.assert_allclose(block("cosine_pool"), expected, atol=1e-4)
    d_cs = knn_distances(pool64, support, k, metric="cosine")
    expected = np.log(d_cs / float(scales["cosine_support"]) + 0.01)
    np.testing.assert_allclose(block("cosine_support"), expected, atol=1e-4)
    z_s, z_p = scaler(s).double().numpy(), scaler(p).double().numpy()
    lw = LedoitWolf().fit(z_s)
    v = z_p - z_s.mean(0)
    maha = np.sqrt(np.einsum("ij,jk,ik->i", v, np.linalg.inv(lw.covariance_), v))
    expected = np.log(maha / float(scales["gaussian_support"]) + 0.01)
    np.testing.assert_allclose(block("gaussian_support", 1)[:, 0], expected, rtol=1e-4)
    z_a = scaler(a).double().numpy()
    to_normal = np.linalg.norm(z_p[:, None] - z_s[None], axis=-1).min(1)
    to_anomaly = np.linalg.norm(z_p[:, None] - z_a[None], axis=-1).min(1)
    np.testing.assert_allclose(
        block("anomalies", 1)[:, 0], np.log(to_normal / to_anomaly), rtol=1e-5, atol=1e-6
    )
    # Without labelled anomalies the evidence is neutral, and the statistic says so.
    plain = NeighbourProfile.fit_task(
        s, torch.ones(12, dtype=torch.bool), p, scale=scaler, config=config, seed=0
    )
    none = plain(p, scaler(p))
    assert torch.all(none[:, start["anomalies"]] == 0)
    assert none[0, -2] == 0 and out[0, -2] == pytest.approx(np.log(3) / 5)
    assert torch.all(none[:, start["linear"]] == 0) and none[0, -1] == 0


def test_gaussian_evidence_scores_support_rows_leave_one_out() -> None:
    """A support normal is scored against the Gaussian of the other normals, as kNN leaves a
    row out of its own reference: its typical value is that of a new normal, not far below."""
    from metakd.models.evidence import ShrunkGaussian

    rng = np.random.default_rng(4)
    x = torch.tensor(rng.normal(size=(10, 30)))
    loo = ShrunkGaussian.leave_one_out(x, torch.tensor(30.0))
    for i in range(10):
        others = torch.cat([x[:i], x[i + 1 :]])
        alone = ShrunkGaussian(others, torch.tensor(30.0)).distance(x[i : i + 1])
        torch.testing.assert_close(loo[i : i + 1], alone)


def _linear_block(config: ProfileConfig) -> int:
    return config.spans()[config.evidences.index("linear")][0]


def test_linear_evidence_is_ridge_regression_scored_leave_one_out() -> None:
    """The ``linear`` evidence against scikit-learn's ridge regression of the labels on the
    labelled rows (centred on the class means' midpoint), each labelled row scored by the ridge
    refitted without it; its separation statistic against scikit-learn's AUROC of those."""
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(7)
    d = 30
    x = rng.normal(size=(120, d)).astype(np.float32)
    x[100:110, 0] += 2.5  # ten anomalies along one direction; the first five are labelled
    normals, anomalies, pool = x[:10], x[100:105], np.concatenate([x[10:100], x[105:]])
    s, a, p = (torch.tensor(v) for v in (normals, anomalies, pool))
    config = ProfileConfig(neighbours=3)
    scaler = Scaler.fit(torch.cat([s, a, p]), ScalingConfig())
    profile = NeighbourProfile.fit_task(
        torch.cat([s, a]), torch.arange(15) < 10, p, scale=scaler, config=config, seed=0
    )
    rows = scaler(torch.cat([s, a])).double().numpy()
    y = np.r_[-np.ones(10), np.ones(5)]
    centre = (rows[:10].mean(0) + rows[10:].mean(0)) / 2
    centred = rows - centre
    alpha = config.ridge * (centred**2).sum(1).mean()
    ridge = Ridge(alpha=alpha, fit_intercept=False).fit(centred, y)
    loo = np.array(
        [
            centred[i]
            @ Ridge(alpha=alpha, fit_intercept=False)
            .fit(np.delete(centred, i, 0), np.delete(y, i))
            .coef_
            for i in range(15)
        ]
    )
    offset, scale = loo[:10].mean(), max(loo[:10].std(), abs(loo[10:].mean() - loo[:10].mean()) / 4)
    column = _linear_block(config)
    # Labelled rows: their leave-one-out prediction; new rows: the ridge fitted on all fifteen.
    got = profile(torch.cat([s, a]), scaler(torch.cat([s, a])))[:, column].double().numpy()
    np.testing.assert_allclose(got, np.arcsinh((loo - offset) / scale), rtol=1e-4, atol=1e-5)
    z_p = scaler(p).double().numpy()
    got = profile(p, scaler(p))[:, column].double().numpy()
    expected = np.arcsinh(((z_p - centre) @ ridge.coef_ - offset) / scale)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    separation = float(profile.stats[-1])
    assert separation == pytest.approx(2 * roc_auc_score(y > 0, loo) - 1, abs=1e-12)
    # It finds the direction: the held-out anomalies score above the pool's normals.
    labels = np.r_[np.zeros(90), np.ones(5), np.zeros(10)]
    assert roc_auc_score(labels, got) > 0.9


def test_profiles_saved_without_the_linear_evidence_still_load() -> None:
    """A teacher saved before ``linear`` existed names its evidences without it, and holds none
    of its buffers: it loads, and scores as it did."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    evidences = [e for e in ProfileConfig().evidences if e != "linear"]
    config = ProfileConfig(neighbours=3, evidences=evidences)
    profile, scaler = _fit(x[:10], x[10:], config)
    state = {
        name: value for name, value in profile.state_dict().items() if not name.startswith("l_")
    }
    loaded = NeighbourProfile.empty(neighbours=3, clip=10.0, n_features=5, evidences=evidences)
    loaded.load_references(state)
    xt = torch.tensor(x)
    torch.testing.assert_close(loaded(xt, scaler(xt)), profile(xt, scaler(xt)))
    assert loaded(xt, scaler(xt)).shape[-1] == config.width


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
    """Widths it never met: above 0.85 AUROC, and above the weaker of its two simple evidences
    (measured for this 60-iteration teacher: 0.89 / 0.98 / 0.99; kNN to the support normals
    0.78 / 0.995 / 1.0, pool density 0.93 / 0.81 / 0.94: which one is strong depends on the
    task)."""
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
        auroc = roc_auc_score(y_pool, scores)
        assert auroc > 0.85
        mu, sd = normal[:10].mean(0), normal[:10].std(0) + 1e-6
        support_knn = knn_distances((pool - mu) / sd, (normal[:10] - mu) / sd, 1)[:, 0]
        z = (pool - pool.mean(0)) / (pool.std(0) + 1e-6)
        density = knn_distances(z, z, 5, leave_one_out=True).mean(1)
        weaker = min(roc_auc_score(y_pool, support_knn), roc_auc_score(y_pool, density))
        assert auroc > weaker
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
