"""Threshold calibration with and without anomaly labels."""

from __future__ import annotations

import numpy as np
import pytest

from metakd.errors import ConfigError, MetakdError
from metakd.threshold import ThresholdConfig, calibrate_threshold, resolve_method


def test_normals_only_threshold_is_high_not_the_lowest_score() -> None:
    rng = np.random.default_rng(0)
    normals = rng.normal(size=10)
    threshold, method = calibrate_threshold(normals, np.zeros(10), None, ThresholdConfig())
    assert method == "normal_quantile"
    # The anomalib failure mode would put it at the lowest normal score.
    assert threshold > np.sort(normals)[-3]
    fresh = rng.normal(size=10_000)
    assert (fresh > threshold).mean() < 0.15


def test_pool_contamination_quantile() -> None:
    pool = np.arange(1000, dtype=float)
    threshold, method = calibrate_threshold(
        np.zeros(5), np.zeros(5), pool, ThresholdConfig(contamination=0.05)
    )
    assert method == "contamination"
    assert (pool > threshold).mean() == pytest.approx(0.05, abs=0.002)


def test_with_anomaly_shots_f1_threshold_separates_support() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.35, 2.0, 3.0])
    y = np.array([0, 0, 0, 0, 1, 1])
    threshold, method = calibrate_threshold(scores, y, np.linspace(0, 3, 50), ThresholdConfig())
    assert method == "f1"
    assert 0.35 < threshold < 2.0
    assert threshold == pytest.approx((0.35 + 2.0) / 2)


def test_f1_threshold_with_overlap_and_ties() -> None:
    scores = np.array([1.0, 1.0, 2.0, 2.0, 3.0])
    y = np.array([0, 1, 0, 1, 1])
    # The best F1 here flags every row, both normals included: said, not silent.
    with pytest.warns(UserWarning, match="flags every one of the 2 support normals"):
        threshold, _ = calibrate_threshold(scores, y, None, ThresholdConfig(method="f1"))
    predicted = scores > threshold
    tp = (predicted & (y == 1)).sum()
    f1 = 2 * tp / (predicted.sum() + (y == 1).sum())
    assert f1 == pytest.approx(max(2 * 3 / (5 + 3), 2 * 2 / (3 + 3), 2 * 1 / (1 + 3)))


def test_explicit_methods_need_their_inputs() -> None:
    # User errors (MetakdError): the CLI prints them as one line and exits 2.
    with pytest.raises(MetakdError, match="labelled anomalies"):
        calibrate_threshold(np.zeros(3), np.zeros(3), None, ThresholdConfig(method="f1"))
    with pytest.raises(MetakdError, match="unlabelled pool"):
        calibrate_threshold(np.zeros(3), np.zeros(3), None, ThresholdConfig(method="contamination"))
    with pytest.raises(ValueError, match="contamination"):
        ThresholdConfig(contamination=0.7)


def test_threshold_warns_when_fitted_on_few_rows_or_flagging_every_normal() -> None:
    import warnings

    scores = np.array([1.0, 2.0, 3.0])
    y = np.zeros(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibrate_threshold(scores, y, None, ThresholdConfig())
    assert any("fitted on only 3 rows" in str(w.message) for w in caught)
    # A pool that scores far below the support: its quantile would flag every support normal.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threshold, method = calibrate_threshold(
            scores, y, np.linspace(-10, -5, 50), ThresholdConfig()
        )
    assert method == "contamination" and threshold < 1.0
    assert any("flags every one of the 3 support normals" in str(w.message) for w in caught)
    with pytest.raises(MetakdError, match="not finite"):
        calibrate_threshold(np.array([1.0, np.nan, 2.0]), y, None, ThresholdConfig())


@pytest.mark.parametrize(
    ("method", "anomalies", "pool", "expected"),
    [
        ("auto", True, True, "f1"),
        ("auto", False, True, "contamination"),
        ("auto", False, False, "normal_quantile"),
        ("normal_quantile", False, True, "normal_quantile"),
    ],
)
def test_resolve_method(method: str, anomalies: bool, pool: bool, expected: str) -> None:
    config = ThresholdConfig(method=method)  # type: ignore[arg-type]
    assert resolve_method(config, has_anomalies=anomalies, has_pool=pool) == expected


@pytest.mark.parametrize("folds", [1, -1, True, 2.5])
def test_bad_folds_are_refused(folds: object) -> None:
    with pytest.raises(ConfigError, match="threshold.folds"):
        ThresholdConfig(folds=folds)  # type: ignore[arg-type]
