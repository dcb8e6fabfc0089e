"""The ``gaussian_pool`` evidence: shrunk Gaussians of the unlabelled pool, cross-fitted on its
halves and trimmed, against scikit-learn's Ledoit–Wolf covariance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from metakd.config import load_train_config
from metakd.data.transforms import Scaler, ScalingConfig
from metakd.detector import FewShotDetector
from metakd.errors import ConfigError
from metakd.models.evidence import pool_gaussian_distance, pool_gaussians
from metakd.models.profile import EVIDENCES, NeighbourProfile, ProfileConfig
from metakd.models.subsample import seeded_order
from metakd.persist import load_scorer
from metakd.train import meta_train

#: Every evidence: ``gaussian_pool`` is opt-in.
ALL = list(EVIDENCES)


def test_pool_gaussian_is_opt_in() -> None:
    assert "gaussian_pool" in EVIDENCES and "gaussian_pool" not in ProfileConfig().evidences


def _column(config: ProfileConfig, name: str) -> int:
    return config.spans()[config.evidences.index(name)][0]


def _fit(normals: np.ndarray, pool: np.ndarray, config: ProfileConfig, seed: int = 0) -> tuple:
    s, p = torch.tensor(normals), torch.tensor(pool)
    scaler = Scaler.fit(torch.cat([s, p]), ScalingConfig())
    profile = NeighbourProfile.fit_task(
        s, torch.ones(len(s), dtype=torch.bool), p, scale=scaler, config=config, seed=seed
    )
    return profile, scaler


def _distance(fit: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.sqrt(LedoitWolf().fit(fit).mahalanobis(rows))


def _reference(pool: np.ndarray, rows: np.ndarray, order: np.ndarray, trim: float) -> np.ndarray:
    """The evidence's distance by its definition, with scikit-learn's covariance inverted in full:
    each half's trimmed Gaussian; a row of a half's fit read by the other half alone."""
    half = len(order) // 2
    halves = [order[:half], order[half : 2 * half]]
    if trim > 0:
        kept = half - int(trim * half)
        halves = [
            h[np.sort(np.argsort(_distance(pool[o], pool[h]), kind="stable")[:kept])]
            for h, o in zip(halves, halves[::-1], strict=True)
        ]
    first, second = (_distance(pool[h], rows) for h in halves)
    out = (first + second) / 2
    for h, other in ((halves[0], second), (halves[1], first)):
        fitted = (np.abs(rows[:, None] - pool[h][None]).sum(-1) == 0).any(1)
        out[fitted] = other[fitted]
    return out


@pytest.mark.parametrize("trim", [0.0, 0.25])
def test_pool_gaussian_matches_ledoit_wolf_on_cross_fitted_halves(trim: float) -> None:
    """Pool rows are read by the Gaussian of the half that did not fit them, new rows by both;
    the typical value is the pool rows' own median."""
    rng = np.random.default_rng(11)
    mixing = rng.normal(size=(6, 6))
    x = (rng.normal(size=(91, 6)) @ mixing).astype(np.float32) + 3.0
    normals, pool, new = x[:10], x[10:81], x[81:]
    config = ProfileConfig(neighbours=3, pool_trim=trim, evidences=ALL)
    profile, scaler = _fit(normals, pool, config, seed=5)
    order = seeded_order(len(pool), 5).numpy()
    pool64, column = pool.astype(np.float64), _column(config, "gaussian_pool")
    own = _reference(pool64, pool64, order, trim)
    sigma = np.sort(own)[(len(own) - 1) // 2]  # the lower middle value
    scale = float(profile.scales[[e for e, _ in config.columns()].index("gaussian_pool")])
    assert scale == pytest.approx(sigma, rel=1e-9)
    for rows, expected in (
        (pool, own),
        (new, _reference(pool64, new.astype(np.float64), order, trim)),
    ):
        got = profile(torch.tensor(rows), scaler(torch.tensor(rows)))[:, column].double().numpy()
        np.testing.assert_allclose(got, np.log(expected / sigma + 0.01), rtol=1e-5, atol=1e-6)


def test_pool_gaussian_finds_anomalies_along_the_pools_narrow_directions() -> None:
    """Anomalies off the normals' narrow directions, by far less than the wide ones spread: a
    Gaussian of the pool sees them, kNN in the same units barely does."""
    config = ProfileConfig(neighbours=5, evidences=ALL)
    column, raw_pool = _column(config, "gaussian_pool"), _column(config, "raw_pool")
    for seed in range(3):
        rng = np.random.default_rng(seed)
        rotation = np.linalg.qr(rng.normal(size=(40, 40)))[0]
        spread = np.logspace(0.5, -0.5, 40)
        normal = (rng.normal(size=(600, 40)) * spread) @ rotation
        shift = rng.normal(size=(30, 10)) * spread[-10:] * 3  # 3 σ along the narrowest ten
        anomalies = (
            rng.normal(size=(30, 40)) * spread + np.c_[np.zeros((30, 30)), shift]
        ) @ rotation
        x = np.r_[normal, anomalies].astype(np.float32)
        labels = np.r_[np.zeros(590), np.ones(30)]
        profile, scaler = _fit(x[:10], x[10:], config, seed=seed)
        pool = torch.tensor(x[10:])
        out = profile(pool, scaler(pool))
        gaussian = roc_auc_score(labels, out[:, column])
        knn = roc_auc_score(labels, out[:, raw_pool : raw_pool + 5].mean(1))
        assert gaussian > 0.95 and gaussian > knn + 0.1, (seed, gaussian, knn)


def test_pool_gaussians_of_a_batch_equal_each_task_alone() -> None:
    """Meta-training fits a batch of episodes at once; adapt fits one task: the same distances."""
    rng = np.random.default_rng(2)
    rows = torch.tensor(rng.normal(size=(2, 300, 12)))
    orders = torch.stack([seeded_order(300, 0), seeded_order(300, 1)])
    counts = torch.tensor([12.0, 12.0], dtype=torch.float64)
    together = pool_gaussian_distance(
        rows, *pool_gaussians(rows, orders, counts, cap=64, trim=0.25)
    )
    for task in range(2):
        parts = pool_gaussians(rows[task], orders[task], counts[task], cap=64, trim=0.25)
        assert parts[1].shape == (2, 48, 12)  # two halves of 64 rows, a quarter trimmed
        torch.testing.assert_close(pool_gaussian_distance(rows[task], *parts), together[task])


def test_pool_gaussian_is_neutral_without_enough_pool_rows() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(15, 4)).astype(np.float32)
    config = ProfileConfig(neighbours=3, evidences=ALL)
    profile, scaler = _fit(x[:10], x[10:], config)
    xt = torch.tensor(x)
    column = profile(xt, scaler(xt))[:, _column(config, "gaussian_pool")]
    torch.testing.assert_close(column, torch.full_like(column, float(np.log(1.01))))


def test_profiles_saved_without_the_pool_gaussian_still_load() -> None:
    """A teacher saved before ``gaussian_pool`` existed names its evidences without it and holds
    none of its buffers: it loads, and scores as it did."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    evidences = [e for e in ALL if e != "gaussian_pool"]
    profile, scaler = _fit(x[:10], x[10:], ProfileConfig(neighbours=3, evidences=evidences))
    state = {k: v for k, v in profile.state_dict().items() if not k.startswith("gp_")}
    loaded = NeighbourProfile.empty(neighbours=3, clip=10.0, n_features=5, evidences=evidences)
    loaded.load_references(state)
    xt = torch.tensor(x)
    torch.testing.assert_close(loaded(xt, scaler(xt)), profile(xt, scaler(xt)))


@pytest.mark.parametrize("trim", [-0.1, 1.0, float("nan")])
def test_pool_trim_outside_zero_to_one_is_refused(trim: float) -> None:
    with pytest.raises(ConfigError, match="profile.pool_trim"):
        ProfileConfig(pool_trim=trim)


def test_a_teacher_meta_trained_with_the_pool_gaussian_adapts_saves_and_loads(
    tmp_path: Path,
) -> None:
    """Opted in, the evidence runs through meta-training's batched episodes, ``fit`` and the
    saved detector, which scores as the fitted one did."""
    evidences = "[" + ",".join(ALL) + "]"
    config = load_train_config(
        None, ["tasks=synthetic", *TINY_TRAIN, f"model.profile.evidences={evidences}"]
    )
    meta_train(config, out_dir=tmp_path / "run", progress=False)
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(200, 6)).astype(np.float32)
    normal[:, 3:] = normal[:, :3] @ rng.normal(size=(3, 3)).astype(np.float32)
    anomalous = rng.normal(size=(20, 6)).astype(np.float32) * normal.std(0)
    pool = np.concatenate([normal[10:], anomalous])
    det = FewShotDetector(tmp_path / "run" / "teacher.pt").fit(normal[:10], unlabeled=pool)
    assert det.teacher_scorer_ is not None
    profile = det.teacher_scorer_.preprocess.profile
    assert profile.evidences == ALL
    assert profile.gp_u.shape == (2, 79, 6)  # two halves of 105 pool rows, a quarter trimmed
    with torch.no_grad():
        fitted = det.teacher_scorer_(torch.tensor(pool))
    assert torch.isfinite(fitted).all()
    paths = det.save(tmp_path / "adapted")
    with torch.no_grad():
        loaded = load_scorer(paths["teacher"])(torch.tensor(pool))
    torch.testing.assert_close(loaded, fitted)
    scripted = torch.jit.load(str(paths["torchscript"]))  # the student, its profile with it
    with torch.no_grad():
        exported = scripted(torch.tensor(pool)).numpy()
    np.testing.assert_allclose(exported, det.decision_function(pool), rtol=1e-5, atol=1e-5)
