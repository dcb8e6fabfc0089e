"""The pool's Gaussian mixed into adapted scores: :class:`PoolGaussianMix`, ``adapt.pool_share``,
the share fitted on the meta-train and meta-val domains (:func:`fit_pool_share`, :func:`combine`)
and stored in ``teacher.pt``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN, TrainedRun, tiny_bundle, write_teacher_file
from sklearn.metrics import roc_auc_score

from metakd.checkpoint import fitted_shares, load_checkpoint
from metakd.config import load_train_config
from metakd.data.collection import load_collection
from metakd.data.task import Task
from metakd.detect.pool_share import (
    KNN_SHARES,
    SHARES,
    PoolShareFit,
    ShareGroups,
    combine,
    fit_pool_share,
    pool_share_fitter,
)
from metakd.detector import AdaptConfig, FewShotDetector
from metakd.errors import ConfigError, DataError
from metakd.models.evidence import pool_gaussian_distance, pool_gaussians, sorted_distances
from metakd.models.experts import PoolGaussianMix
from metakd.models.profile_config import ProfileConfig
from metakd.models.subsample import seeded_order
from metakd.persist import TeacherBundle, TeacherWeights, load_scorer
from metakd.train import init_learner, meta_train

D = 12


def _narrow(seed: int, normals: int = 400, anomalies: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose anomalies lie 3 σ off the normals along their narrowest directions (well
    inside the wide ones' spread): a Gaussian of the pool sees them, neighbours barely do."""
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.normal(size=(D, D)))[0]
    spread = np.logspace(0.5, -0.5, D)
    normal = rng.normal(size=(normals, D)) * spread
    odd = rng.normal(size=(anomalies, D)) * spread
    odd[:, -4:] += rng.choice([-3.0, 3.0], size=(anomalies, 4)) * spread[-4:]
    x = np.r_[normal, odd] @ rotation
    return x.astype(np.float32), np.r_[np.zeros(normals), np.ones(anomalies)]


def _clusters(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Normals in four tight clusters, anomalies between them near the grand mean: a Gaussian of
    the pool reads them as its most typical rows, neighbours as far from every cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, D)) * 4
    normal = centres[rng.integers(0, 4, 400)] + rng.normal(size=(400, D)) * 0.3
    odd = centres.mean(0) + rng.normal(size=(30, D)) * 0.3
    return np.r_[normal, odd].astype(np.float32), np.r_[np.zeros(400), np.ones(30)]


def _bundle(share: float = 0.0) -> TeacherBundle:
    bundle = tiny_bundle(D, kind="profile", hidden=[16], inner_steps=2)
    return dataclasses.replace(bundle, pool_share=share)


def _fit(bundle: TeacherBundle, x: np.ndarray, share: float | None, **cfg: bool) -> FewShotDetector:
    config = AdaptConfig(pool_share=share, **cfg)
    return FewShotDetector(bundle, config=config).fit(x[:10], np.zeros(10), unlabeled=x[10:])


#: PoolGaussianMix.fit's sizes as a tiny profile's would be.
SIZES = {"sizes": ProfileConfig(max_gaussian=64, pool_trim=0.25, max_pool=1024)}


def _mix(
    seed: int = 0, knn_share: float = 0.0
) -> tuple[PoolGaussianMix, torch.Tensor, torch.Tensor]:
    x, _ = _narrow(seed)
    rows = torch.as_tensor(x, dtype=torch.float64)
    scores = rows.sum(1)
    mix = PoolGaussianMix.fit(
        rows[10:], scores[10:], share=0.5, knn_share=knn_share, seed=3, **SIZES
    )
    assert mix is not None
    return mix, rows, scores


def _over_the_pool(v: torch.Tensor) -> torch.Tensor:
    """``v`` standardised by its values on the pool rows (``v[10:]``, all: fewer than ``max_pool``)."""
    return (v - v[10:].quantile(0.5)) / v[10:].std(correction=0)


def _small_clusters(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Normals in four tight clusters, anomalies in three tighter clusters of eight rows between
    them: a pool Gaussian reads them as typical, a density of the five nearest rows as dense
    (each has seven near neighbours); only neighbours beyond their clusters' size see them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, D)) * 4
    normal = centres[rng.integers(0, 4, 400)] + rng.normal(size=(400, D)) * 0.3
    # In the span of the clusters' centres, near their mean: where the pool's Gaussian is dense.
    odd = centres.mean(0) + rng.normal(size=(3, 4)) * 0.3 @ (centres - centres.mean(0))
    odd = np.repeat(odd, 8, axis=0) + rng.normal(size=(24, D)) * 0.05
    return np.r_[normal, odd].astype(np.float32), np.r_[np.zeros(400), np.ones(24)]


def test_an_empty_mix_leaves_scores_bitwise_as_they_are() -> None:
    scores = torch.randn(20)
    assert torch.equal(PoolGaussianMix()(torch.randn(20, 3), scores), scores)


def test_mix_is_each_expert_standardised_over_the_pool() -> None:
    mix, rows, scores = _mix()
    parts = pool_gaussians(
        rows[10:],
        seeded_order(len(rows) - 10, 3),
        torch.tensor(float(D), dtype=torch.float64),
        cap=64,
        trim=0.25,
    )
    distances = pool_gaussian_distance(rows, *parts)
    z = _over_the_pool
    torch.testing.assert_close(mix(rows, scores), 0.5 * z(scores) + 0.5 * z(distances))
    student = mix.for_scores(2 * scores[10:] + 1, seed=3, **SIZES)
    assert student is not None and student.share == 0.5
    torch.testing.assert_close(student(rows, 2 * scores + 1), mix(rows, scores))


def test_a_large_pool_is_standardised_over_its_seeded_sample() -> None:
    x, _ = _narrow(1)
    rows = torch.as_tensor(x, dtype=torch.float64)
    scores = rows.sum(1)
    sizes = ProfileConfig(max_gaussian=64, pool_trim=0.25, max_pool=100)
    mix = PoolGaussianMix.fit(rows, scores, share=0.5, knn_share=0.5, seed=4, sizes=sizes)
    assert mix is not None
    sample = PoolGaussianMix.sample(len(rows), seed=4, sizes=sizes)
    assert len(sample) == 100 and torch.equal(mix.reference, rows[sample])
    for values, (centre, spread) in [
        (scores[sample], mix.terms[1:3]),
        (mix.distance(rows[sample]), mix.terms[3:5]),
        (sorted_distances(rows[sample], rows[sample], mix.k)[:, -1], mix.terms[6:8]),
    ]:
        torch.testing.assert_close(centre, values.quantile(0.5))
        torch.testing.assert_close(spread, values.std(correction=0))


def test_the_knn_expert_shares_the_scorers_part_standardised_the_same_way() -> None:
    mix, rows, scores = _mix(knn_share=0.5)
    pool = rows[10:].numpy()
    k = max(5, round(0.05 * len(pool)))
    assert mix.knn_share == 0.5 and mix.k == k
    distances = np.sqrt(((rows.numpy()[:, None] - pool[None]) ** 2).sum(-1))
    distances[np.arange(10, len(rows)), np.arange(len(pool))] = np.inf  # a pool row's own match
    kth = torch.as_tensor(np.sort(distances, 1)[:, k - 1])
    gaussian, _, _ = _mix()
    z = _over_the_pool
    own, knn, g = mix.standardised(rows, scores)
    torch.testing.assert_close(knn, z(kth))
    torch.testing.assert_close(own, z(scores))
    torch.testing.assert_close(mix(rows, scores), 0.5 * (0.5 * z(scores) + 0.5 * z(kth)) + 0.5 * g)
    assert gaussian.standardised(rows, scores)[1].numel() == 0 and gaussian.knn_share == 0.0
    student = mix.for_scores(2 * scores[10:] + 1, seed=3, **SIZES)
    assert student is not None and (student.share, student.knn_share) == (0.5, 0.5)
    torch.testing.assert_close(student(rows, 2 * scores + 1), mix(rows, scores))
    scripted = torch.jit.script(mix)
    torch.testing.assert_close(scripted(rows, scores), mix(rows, scores))


def test_the_knn_expert_sees_small_clusters_of_anomalies_a_close_density_misses() -> None:
    x, y = _small_clusters(0)
    rows = torch.as_tensor(x, dtype=torch.float64)
    mix = PoolGaussianMix.fit(
        rows[10:], torch.randn(len(rows) - 10), share=0.0, knn_share=0.5, seed=0, **SIZES
    )
    assert mix is not None
    kth = mix.standardised(rows[10:], torch.zeros(len(rows) - 10))[1]
    near = sorted_distances(rows[10:], rows[10:], 5).mean(-1)
    far, close = roc_auc_score(y[10:], kth.numpy()), roc_auc_score(y[10:], near.numpy())
    assert far > 0.95 and close < 0.8, (far, close)


def test_no_mix_without_enough_pool_rows_or_any_spread() -> None:
    rows = torch.randn(30, 4, dtype=torch.float64)
    fit = dict(share=1.0, knn_share=0.5, seed=0, **SIZES)
    assert PoolGaussianMix.fit(rows[:5], torch.randn(5), **fit) is None
    assert PoolGaussianMix.fit(rows, torch.ones(30), **fit) is None


def test_the_gaussian_share_ranks_narrow_anomalies_and_every_scorer_reads_the_mix(
    tmp_path: Path,
) -> None:
    x, y = _narrow(0)
    bundle = _bundle()
    alone, mixed = _fit(bundle, x, 0.0), _fit(bundle, x, 1.0)
    assert alone.report_["pool_share"] == 0.0 and mixed.report_["pool_share"] == 1.0
    before = roc_auc_score(y[10:], alone.decision_function(x[10:]))
    after = roc_auc_score(y[10:], mixed.decision_function(x[10:]))
    assert after > 0.95 and after > before + 0.1, (before, after)
    # The threshold reads the mixed scores: it flags the pool's anomalies, not all of it.
    assert 0 < mixed.predict(x[10:]).mean() < 0.3
    # The teacher's share comes from the bundle unless the config names one.
    from_bundle = _fit(_bundle(1.0), x, None)
    np.testing.assert_array_equal(
        from_bundle.decision_function(x[10:]), mixed.decision_function(x[10:])
    )
    files = mixed.save(tmp_path / "det")
    for name in ("student", "teacher"):
        scorer = load_scorer(files[name])
        rows = torch.as_tensor(x[10:])
        expected = getattr(mixed, f"{name}_scorer_")(rows)
        torch.testing.assert_close(scorer(rows), expected)
    # The student is what exports for deployment (TorchScript, ONNX): with the mix in it.
    exported = torch.jit.load(str(files["torchscript"]))
    torch.testing.assert_close(exported(torch.as_tensor(x[10:])), mixed.student_scorer_(rows))


def test_a_knn_share_reaches_the_saved_detectors_and_their_exports(tmp_path: Path) -> None:
    x, y = _small_clusters(0)
    bundle = dataclasses.replace(_bundle(), pool_knn=0.5)
    detector = _fit(bundle, x, None)
    assert (detector.report_["pool_share"], detector.report_["pool_knn"]) == (0.0, 0.5)
    plain = roc_auc_score(y[10:], _fit(_bundle(), x, None).decision_function(x[10:]))
    assert roc_auc_score(y[10:], detector.decision_function(x[10:])) > plain + 0.1
    files = detector.save(tmp_path / "det")
    rows = torch.as_tensor(x[10:])
    for name in ("student", "teacher"):
        expected = getattr(detector, f"{name}_scorer_")(rows)
        torch.testing.assert_close(load_scorer(files[name])(rows), expected)
    exported = torch.jit.load(str(files["torchscript"]))
    torch.testing.assert_close(exported(rows), detector.student_scorer_(rows))
    # A stored mix whose k exceeds its reference rows is refused, naming the mix.
    data = torch.load(files["student"], weights_only=True)
    data["mix"]["terms"][8] = len(data["mix"]["reference"]) + 1
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="mix"):
        load_scorer(tmp_path / "bad.pt")


def test_share_zero_leaves_the_detector_as_before() -> None:
    x, _ = _narrow(1)
    bundle = _bundle()
    zero, unset = _fit(bundle, x, 0.0, student=False), _fit(bundle, x, None, student=False)
    assert unset.report_["pool_share"] == 0.0
    assert unset.teacher_scorer_.mix.terms.numel() == 0
    np.testing.assert_array_equal(zero.decision_function(x), unset.decision_function(x))


def _task(name: str, rows: tuple[np.ndarray, np.ndarray]) -> Task:
    x, y = rows
    return Task(name, x, y.astype(np.int64), tuple(f"x{j}" for j in range(D)), f"test:{name}")


def test_fit_pool_share_follows_the_domains_where_the_gaussian_wins() -> None:
    bundle = _bundle()
    narrow = [_task(f"narrow{i}", _narrow(i)) for i in range(2)]
    clusters = [_task(f"clusters{i}", _clusters(i)) for i in range(2)]
    won = fit_pool_share(bundle, narrow, episodes=4, shots=10, seed=0)
    lost = fit_pool_share(bundle, clusters, episodes=4, shots=10, seed=0)
    assert won.episodes == lost.episodes == 4
    assert set(won.auroc) == set(SHARES)
    assert won.share >= 0.5 and lost.share <= 0.2, (won, lost)
    assert won.auroc[won.share] > won.auroc[0.0] + 0.05
    assert fit_pool_share(bundle, narrow, episodes=4, shots=10, seed=0) == won
    assert set(won.auroc_knn) == set(SHARES) and won.knn_share in KNN_SHARES
    small = [_task(f"small{i}", _small_clusters(i)) for i in range(2)]
    close = fit_pool_share(bundle, small, episodes=4, shots=10, seed=0)
    assert close.knn_share == KNN_SHARES[1], close
    assert close.auroc_knn[close.share] > close.auroc[close.share]


def test_fit_pool_share_with_anomaly_shots_holds_them_in_every_support() -> None:
    """Episodes with ``anomaly_shots`` labelled anomalies in the support: a task serves only
    with an anomaly left for the pool, and the fit reads the pool's anomalies alone."""
    bundle = _bundle()
    narrow = [_task(f"narrow{i}", _narrow(i)) for i in range(2)]
    fit = fit_pool_share(bundle, narrow, episodes=4, shots=10, seed=0, anomaly_shots=5)
    assert fit.episodes == 4 and set(fit.auroc) == set(SHARES)
    assert fit != fit_pool_share(bundle, narrow, episodes=4, shots=10, seed=0)
    few = [_task("few", _narrow(0, anomalies=5))]  # all five would sit in the support
    assert fit_pool_share(bundle, few, episodes=4, shots=10, seed=0, anomaly_shots=5).episodes == 0
    assert fit_pool_share(bundle, few, episodes=4, shots=10, seed=0).episodes == 4


def test_adapt_uses_the_share_fitted_for_supports_like_its_own() -> None:
    """With labelled anomalies in the support, ``pool_share_anomalies``; without, ``pool_share``;
    a teacher saved without the former uses ``pool_share`` for both; ``adapt.pool_share``
    overrides either."""
    x, y = _narrow(0)
    labelled = np.r_[x[:10], x[y == 1][:5]]
    labels = np.r_[np.zeros(10), np.ones(5)]
    pool = np.r_[x[10:400], x[y == 1][5:]]

    def share(bundle: TeacherBundle, support: np.ndarray, label: np.ndarray, **cfg: float) -> float:
        config = AdaptConfig(student=False, **cfg)
        detector = FewShotDetector(bundle, config=config).fit(support, label, unlabeled=pool)
        return detector.report_["pool_share"]

    both = dataclasses.replace(_bundle(0.2), pool_share_anomalies=0.9)
    assert share(both, x[:10], np.zeros(10)) == 0.2
    assert share(both, labelled, labels) == 0.9
    assert share(_bundle(0.2), labelled, labels) == 0.2  # saved before: one share for both
    assert share(both, labelled, labels, pool_share=0.5) == 0.5

    def knn(bundle: TeacherBundle, support: np.ndarray, label: np.ndarray, **cfg: float) -> float:
        config = AdaptConfig(student=False, **cfg)
        detector = FewShotDetector(bundle, config=config).fit(support, label, unlabeled=pool)
        return detector.report_["pool_knn"]

    # The kNN expert's share goes with its Gaussian share; a share the config sets is the
    # Gaussian's alone.
    shares = dataclasses.replace(both, pool_knn=0.5, pool_knn_anomalies=0.0)
    assert knn(shares, x[:10], np.zeros(10)) == 0.5 and knn(shares, labelled, labels) == 0.0
    assert knn(dataclasses.replace(shares, pool_share=0.0), x[:10], np.zeros(10)) == 0.5
    assert knn(shares, x[:10], np.zeros(10), pool_share=0.5) == 0.0


def test_a_share_with_anomalies_without_episodes_is_not_stored(tmp_path: Path) -> None:
    """Where no domain had anomalies to spare for the pool, no ``pool_share_anomalies``: adapt
    reads ``pool_share`` whatever the support holds (not a share of 0 that was never fitted)."""
    unfitted = {"share": 0.0, "episodes": 0, "auroc": {}, "groups": {}, "anomaly_shots": 5}
    fit = {"share": 1.0, "episodes": 16, "auroc": {}, "groups": {}, "with_anomalies": unfitted}
    path = write_teacher_file(_bundle(), tmp_path / "teacher.pt", pool_share=fit)
    data = load_checkpoint(path, "teacher")
    assert data["pool_share"] == 1.0 and "pool_share_anomalies" not in data
    assert TeacherBundle.load(path).pool_share_anomalies is None
    assert fitted_shares(fit) == {"pool_share": 1.0, "pool_knn": 0.0}
    fitted = fit | {
        "knn_share": 0.5,
        "with_anomalies": unfitted | {"share": 0.7, "episodes": 16, "knn_share": 0.0},
    }
    path = write_teacher_file(_bundle(), tmp_path / "fitted.pt", pool_share=fitted)
    loaded = TeacherBundle.load(path)
    assert (loaded.pool_share_anomalies, loaded.pool_knn, loaded.pool_knn_anomalies) == (
        0.7,
        0.5,
        0,
    )
    assert fitted_shares(fitted) == {
        "pool_share": 1.0,
        "pool_knn": 0.5,
        "pool_share_anomalies": 0.7,
        "pool_knn_anomalies": 0.0,
    }


def test_fit_pool_share_without_labelled_anomalies_is_zero() -> None:
    x, y = _narrow(0)
    unlabelled = _task("normals", (x[y == 0], y[y == 0]))
    fit = fit_pool_share(_bundle(), [unlabelled], episodes=4, shots=10, seed=0)
    assert fit.share == 0.0 and fit.episodes == 0


def _curve(curve: list[float], episodes: int = 16) -> PoolShareFit:
    return PoolShareFit(
        share=SHARES[int(np.argmax(curve))],
        episodes=episodes,
        auroc=dict(zip(SHARES, curve, strict=True)),
    )


def test_combine_picks_the_knn_share_where_its_curve_wins_and_the_smaller_on_a_tie() -> None:
    without = [0.80 + 0.001 * i for i in range(11)]
    better = dataclasses.replace(
        _curve(without),
        auroc_knn=dict(zip(SHARES, [0.85 - 0.002 * i for i in range(11)], strict=True)),
    )
    picked = combine({"meta-train": better, "meta-val": better})
    assert (picked.knn_share, picked.share) == (KNN_SHARES[1], 0.0)
    assert picked.auroc_knn == pytest.approx(better.auroc_knn)
    tied = dataclasses.replace(_curve(without), auroc_knn=dict(zip(SHARES, without, strict=True)))
    chosen = combine({"meta-train": tied})
    assert (chosen.knn_share, chosen.share) == (0.0, 1.0)
    # A group's fit without a kNN curve (stored before it) never picks it.
    assert combine({"meta-train": _curve(without)}).knn_share == 0.0


def test_combine_averages_the_groups_curves_each_group_weighing_the_same() -> None:
    # Trained-on domains rank almost perfectly on the teacher alone; the unseen ones want the
    # Gaussian: neither alone, the mean of the two curves picks.
    own = _curve([0.999 - 0.004 * i for i in range(11)], episodes=16)
    unseen = _curve([0.80 + 0.012 * i for i in range(11)], episodes=4)
    both = combine({"meta-train": own, "meta-val": unseen})
    means = [(own.auroc[s] + unseen.auroc[s]) / 2 for s in SHARES]
    assert both.share == SHARES[int(np.argmax(means))] == 1.0
    assert both.episodes == 20 and both.auroc == pytest.approx(
        dict(zip(SHARES, means, strict=True))
    )
    # Where the averaged curve ties, the smaller share; a group without episodes has no say.
    flat = _curve([0.9] * 11)
    assert combine({"meta-train": flat, "meta-val": _curve([0.9] * 11)}).share == 0.0
    empty = PoolShareFit(share=0.0, episodes=0, auroc={})
    assert combine({"meta-train": unseen, "meta-val": empty}) == dataclasses.replace(
        unseen, share=1.0
    )
    assert combine({"meta-train": empty, "meta-val": empty}) == empty


def test_with_weights_swaps_the_teacher_and_rates_and_leaves_the_bundle_alone() -> None:
    bundle = _bundle()
    before = {k: v.clone() for k, v in bundle.teacher.state_dict().items()}
    other = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in before.items()}
    swapped = bundle.with_weights((other, []))
    for key, value in swapped.teacher.state_dict().items():
        assert torch.equal(value, other[key]), key
        assert torch.equal(bundle.teacher.state_dict()[key], before[key]), key
    assert swapped.model == bundle.model and swapped.pool_share == bundle.pool_share
    assert not swapped.teacher.training


def test_pool_share_is_validated_and_stored_in_the_teacher(
    tmp_path: Path, write_teacher: object
) -> None:
    with pytest.raises(ConfigError, match="pool_share"):
        AdaptConfig(pool_share=1.5)
    path = tmp_path / "teacher.pt"
    write_teacher(_bundle(), path)  # type: ignore[operator]
    assert TeacherBundle.load(path).pool_share == 0.0  # a teacher saved without one
    data = load_checkpoint(path, "teacher")
    torch.save(data | {"pool_share": 2.0}, path)
    with pytest.raises(DataError, match="pool_share"):
        TeacherBundle.load(path)
    torch.save(data | {"pool_share": 0.3}, path)
    assert TeacherBundle.load(path).pool_share == 0.3
    assert TeacherBundle.load(path).pool_share_anomalies is None  # saved before it existed
    torch.save(data | {"pool_share": 0.3, "pool_share_anomalies": -0.1}, path)
    with pytest.raises(DataError, match="pool_share_anomalies"):
        TeacherBundle.load(path)
    torch.save(data | {"pool_share": 0.3, "pool_share_anomalies": 0.7}, path)
    assert TeacherBundle.load(path).pool_share_anomalies == 0.7


def test_meta_train_fits_the_share_and_stores_it_in_teacher_pt(tiny_teacher: TrainedRun) -> None:
    data = load_checkpoint(tiny_teacher.run / "teacher.pt", "teacher")
    fit = data["pool_share_fit"]
    assert data["pool_share"] == fit["share"] in SHARES and fit["episodes"] > 0
    assert set(fit["auroc"]) == set(fit["auroc_knn"]) == {f"{s:g}" for s in SHARES}
    assert data["pool_knn"] == fit["knn_share"] in KNN_SHARES
    # Fitted on each group of domains and combined; each group's own fit is kept beside it.
    groups = fit["groups"]
    assert set(groups) == {"meta-train", "meta-val"} and all(g["episodes"] for g in groups.values())
    assert fit["episodes"] == sum(g["episodes"] for g in groups.values())
    for share in fit["auroc"]:
        mean = (groups["meta-train"]["auroc"][share] + groups["meta-val"]["auroc"][share]) / 2
        assert fit["auroc"][share] == pytest.approx(mean)
    # The meta-train domains are adapted from the initialisation (the trained teacher knows
    # them), the meta-val ones from the trained teacher.
    assert groups["meta-train"]["adapted_from"] == "initialisation"
    assert groups["meta-val"]["adapted_from"] == "teacher"
    assert (
        "episodes of the meta-train (adapted from the initialisation) and meta-val domains"
        in tiny_teacher.output
    )
    assert TeacherBundle.load(tiny_teacher.run / "teacher.pt").pool_share == data["pool_share"]
    assert f"pool Gaussian share {fit['share']:g} in adapted scores" in tiny_teacher.output
    # And with the most anomaly shots an episode holds in each support, the same groups.
    anomalies = fit["with_anomalies"]
    assert anomalies["anomaly_shots"] == 5 and anomalies["episodes"] > 0
    assert set(anomalies["groups"]) == set(groups) and anomalies["auroc"] != fit["auroc"]
    assert data["pool_share_anomalies"] == anomalies["share"] in SHARES
    bundle = TeacherBundle.load(tiny_teacher.run / "teacher.pt")
    assert bundle.pool_share_anomalies == anomalies["share"]
    assert (
        f"pool Gaussian share {anomalies['share']:g} where the support holds labelled anomalies"
        in tiny_teacher.output
    )
    # Fitted inside the run, so its summary (and W&B's) records it beside the held-out AUROC.
    lines = (tiny_teacher.run / "metrics.jsonl").read_text().splitlines()
    summary = json.loads(lines[-1])["summary"]
    assert summary["pool_share"] == fit["share"] and "test_auroc/metakd" in summary
    assert summary["pool_share_anomalies"] == anomalies["share"]


def test_meta_train_without_a_fitter_stores_no_share(tmp_path: Path) -> None:
    """The Python entry point stores a share only when given a fitter; the teacher it saves is
    the one ``metakd meta-train`` saves, less the share."""
    config = load_train_config(None, [*TINY_TRAIN, "iterations=2", "pool_share_episodes=4"])
    result = meta_train(config, out_dir=tmp_path / "plain", progress=False)
    data = load_checkpoint(tmp_path / "plain" / "teacher.pt", "teacher")
    assert result.pool_share is None and "pool_share" not in data and "pool_share_fit" not in data
    fitter = pool_share_fitter(config, progress=False)
    assert fitter is not None
    fitted = meta_train(config, out_dir=tmp_path / "fitted", progress=False, fit_pool_share=fitter)
    # Episodes without anomaly shots: no share is fitted with them, none stored.
    none = dataclasses.replace(
        config, episode=dataclasses.replace(config.episode, anomaly_shots_max=None)
    )
    no_shots = pool_share_fitter(none, progress=False)
    assert no_shots is not None
    stored_none = no_shots(tmp_path / "fitted" / "teacher.pt", {})
    assert stored_none["with_anomalies"] is None
    stored = load_checkpoint(tmp_path / "fitted" / "teacher.pt", "teacher")
    assert (
        fitted.pool_share == stored["pool_share_fit"]
        and stored["pool_share"] == fitted.pool_share["share"]
    )
    for key, value in data["state_dict"].items():  # the same teacher either way
        assert torch.equal(value, stored["state_dict"][key]), key
    assert (
        pool_share_fitter(dataclasses.replace(config, pool_share_episodes=0), progress=False)
        is None
    )


def test_meta_train_gives_the_fitter_each_group_with_its_weights(tmp_path: Path) -> None:
    """The meta-train domains with the weights the run started from, the meta-val ones with
    ``None`` (the saved teacher's)."""
    config = load_train_config(None, [*TINY_TRAIN, "iterations=2"])
    seen: dict[str, tuple[list[str], TeacherWeights | None]] = {}

    def record(path: Path, groups: ShareGroups) -> dict[str, Any]:
        seen.update({name: ([t.name for t in tasks], w) for name, (tasks, w) in groups.items()})
        return {"share": 0.0, "episodes": 0, "auroc": {}}

    meta_train(config, out_dir=tmp_path / "run", progress=False, fit_pool_share=record)
    collection = load_collection(config.tasks, split=config.split, alignment=config.alignment)
    assert seen.keys() == {"meta-train", "meta-val"}
    assert seen["meta-train"][0] == [t.name for t in collection.split("train")]
    assert seen["meta-val"] == ([t.name for t in collection.split("val")], None)
    stored = load_checkpoint(tmp_path / "run" / "teacher.pt", "teacher")
    learner = init_learner(config, stored["input_dim"], seed=config.seed)
    started = seen["meta-train"][1]
    assert started is not None
    assert started[0].keys() == stored["state_dict"].keys() and started[1] == []
    for key, value in learner.teacher.state_dict().items():
        assert torch.equal(started[0][key], value), key


def test_the_fitter_adapts_each_group_from_its_own_weights(tmp_path: Path) -> None:
    config = load_train_config(None, [*TINY_TRAIN, "pool_share_episodes=4"])
    path = write_teacher_file(_bundle(), tmp_path / "teacher.pt")
    bundle = TeacherBundle.load(path)
    tasks = [_task(f"narrow-{i}", _narrow(i)) for i in range(2)]
    moved = {
        k: v + 0.5 * torch.randn_like(v) if v.is_floating_point() and v.dim() == 2 else v
        for k, v in bundle.teacher.state_dict().items()
    }
    fitter = pool_share_fitter(config, progress=False)
    assert fitter is not None
    fit = fitter(path, {"meta-train": (tasks, (moved, [])), "meta-val": (tasks, None)})
    kw = {"episodes": 4, "shots": config.episode.shots, "seed": config.seed}
    for name, weights in (("meta-train", bundle.with_weights((moved, []))), ("meta-val", bundle)):
        for a, record in ((0, fit), (5, fit["with_anomalies"])):
            alone = fit_pool_share(weights, tasks, **kw, anomaly_shots=a)
            curve = {f"{s:g}": v for s, v in alone.auroc.items()}
            assert record["groups"][name]["auroc"] == curve, (name, a)
    assert fit["groups"]["meta-train"]["adapted_from"] == "initialisation"
    assert fit["groups"]["meta-val"]["adapted_from"] == "teacher"
    assert fit["groups"]["meta-train"]["auroc"] != fit["groups"]["meta-val"]["auroc"]
