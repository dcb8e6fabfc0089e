"""Decision thresholds for a task's scores, calibrated without touching evaluation labels.

Without anomaly labels we follow PyOD's contract: the threshold is the ``1 - contamination``
quantile of the scores of the unlabelled pool. Without a pool it is the conformal order statistic
of the support normals' scores, which the detector cross-fits (``folds``): each normal scored by a
detector fitted without it, as an unseen normal is. With labelled anomalies in the support, the
threshold maximises F1 on the support.

A threshold fitted on normal rows alone must never be the *lowest* normal score (the failure
anomalib users hit when the adaptive F1 threshold sees only normals): then every unseen normal
above it is an alarm. Quantiles of normal scores sit high in their range instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from metakd.errors import ConfigError, MetakdError, check_int


@dataclass
class ThresholdConfig:
    """How the decision threshold is calibrated."""

    method: Literal["auto", "contamination", "normal_quantile", "f1"] = "auto"
    """``auto``: ``f1`` when the support has anomalies, else ``contamination`` when an unlabelled
    pool is given, else ``normal_quantile``."""
    contamination: float = 0.1
    """Expected anomaly fraction of the unlabelled pool (PyOD's default)."""
    normal_quantile: float = 0.95
    """Without pool and anomaly labels: the level of the support normals' scores the threshold
    bounds (their conformal ``⌈(n + 1) q⌉``-th smallest; the highest below ``q / (1 − q)`` rows)."""
    folds: int = 10
    """``normal_quantile`` reads cross-fitted support scores: the normals are split into this
    many folds (leave-one-out when there are fewer rows) and each fold is scored by a detector
    fitted without it (scaling, profile and inner loop), as an unseen normal is. ``0``: the
    rows' own scores, which run low after adapting on them (RESULTS.md §12)."""
    fold_rows: int | None = 256
    """Cross-fit only a support of at most this many normals (``null``: any): each fold refits
    the detector, so beyond it the folds cost many times the fit, while the rows' own scores
    come close to an unseen normal's as rows are added."""

    def __post_init__(self) -> None:
        if not 0.0 < self.contamination < 0.5:
            raise ConfigError(f"contamination must be in (0, 0.5), got {self.contamination}")
        if not 0.5 <= self.normal_quantile <= 1.0:
            raise ConfigError(f"normal_quantile must be in [0.5, 1], got {self.normal_quantile}")
        check_int("threshold.folds", self.folds, low=0)
        if self.fold_rows is not None:
            check_int("threshold.fold_rows", self.fold_rows, low=1)
        if self.folds == 1:
            raise ConfigError("threshold.folds must be 0 (off) or at least 2, got 1")


def resolve_method(config: ThresholdConfig, *, has_anomalies: bool, has_pool: bool) -> str:
    """The calibration ``config.method`` means for a support with or without labelled anomalies
    and an unlabelled pool (``auto``: ``f1``, else ``contamination``, else ``normal_quantile``)."""
    if config.method != "auto":
        return config.method
    if has_anomalies:
        return "f1"
    return "contamination" if has_pool else "normal_quantile"


def calibrate_threshold(
    support_scores: np.ndarray,
    support_y: np.ndarray,
    pool_scores: np.ndarray | None,
    config: ThresholdConfig,
) -> tuple[float, str]:
    """Threshold for one task's scores.

    Args:
        support_scores: ``[n]`` scores of the labelled support.
        support_y: ``[n]`` labels (0 normal, 1 anomaly).
        pool_scores: ``[m]`` scores of the unlabelled pool, or ``None``.
        config: calibration settings.

    Returns:
        ``(threshold, method used)``; a row is anomalous when its score exceeds the threshold.

    Raises:
        MetakdError: the scores are not finite.

    Warns when the threshold is fitted on fewer than :data:`MIN_THRESHOLD_ROWS` rows or flags
    every support normal.
    """
    threshold, method, rows = _calibrate(support_scores, support_y, pool_scores, config)
    normals = support_scores[support_y == 0]
    if not np.isfinite(threshold) or not np.isfinite(support_scores).all():
        raise MetakdError("the detector's scores on the support are not finite; check the input")
    if rows < MIN_THRESHOLD_ROWS:
        warnings.warn(
            f"the threshold ({method}) is fitted on only {rows} rows; give at least "
            f"{MIN_THRESHOLD_ROWS} normal support rows or an unlabelled pool (--unlabeled)",
            stacklevel=3,
        )
    if len(normals) and threshold < normals.min():
        warnings.warn(
            f"the calibrated threshold ({method}, {threshold:.4g}) flags every one of the "
            f"{len(normals)} support normals as anomalous; give more normal support rows or an "
            "unlabelled pool (--unlabeled)",
            stacklevel=3,
        )
    return threshold, method


#: Fewest rows a threshold should be fitted on (the pool's for ``contamination``, the support
#: normals' for ``normal_quantile``, the support's for ``f1``); fewer give a warning.
MIN_THRESHOLD_ROWS = 5


def _calibrate(
    support_scores: np.ndarray,
    support_y: np.ndarray,
    pool_scores: np.ndarray | None,
    config: ThresholdConfig,
) -> tuple[float, str, int]:
    """``(threshold, method, rows it was fitted on)`` before the safety checks."""
    has_anomalies = bool((support_y == 1).any())
    method = resolve_method(
        config,
        has_anomalies=has_anomalies,
        has_pool=pool_scores is not None and len(pool_scores) > 0,
    )
    if method == "f1":
        if not has_anomalies:
            raise ConfigError(
                "threshold.method=f1 needs labelled anomalies (label 1) in the support"
            )
        return _best_f1_threshold(support_scores, support_y), method, len(support_scores)
    if method == "contamination":
        if pool_scores is None or len(pool_scores) == 0:
            raise ConfigError(
                "threshold.method=contamination needs an unlabelled pool (--unlabeled)"
            )
        threshold = float(np.quantile(pool_scores, 1.0 - config.contamination))
        return threshold, method, len(pool_scores)
    normals = np.sort(support_scores[support_y == 0])
    # The conformal order statistic (Vovk et al. 2005): the ⌈(n + 1) q⌉-th smallest of n normal
    # scores bounds an unseen normal's score with probability ≥ q; fewer than q / (1 − q) rows
    # give the highest. np.quantile's interpolation would sit below it and flag more than 1 − q.
    rank = min(int(np.ceil((len(normals) + 1) * config.normal_quantile)), len(normals))
    return float(normals[rank - 1]), method, len(normals)


def _best_f1_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """The cut maximising F1, placed midway between neighbouring scores (ties: the higher cut)."""
    order = np.argsort(-scores, kind="stable")
    s, labels = scores[order], y[order]
    tp = np.cumsum(labels == 1)
    fp = np.cumsum(labels == 0)
    positives = tp[-1]
    f1 = 2 * tp / (tp + fp + positives)
    # Only cut between distinct scores; flagging rows 0..k means threshold in (s[k+1], s[k]).
    valid = np.append(s[:-1] > s[1:], True)
    best = int(np.flatnonzero(valid)[np.argmax(f1[valid])])
    if best == len(s) - 1:
        return float(s[-1] - 1e-6 * max(1.0, abs(float(s[-1]))))
    return float((s[best] + s[best + 1]) / 2)
