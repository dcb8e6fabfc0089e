"""What the baselines share: their checked inputs, a fitted per-feature scaling, and the rows an
unsupervised baseline is fitted and scaled on."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from metakd.data.transforms import Scaler, ScalingConfig
from metakd.detect.validation import as_rows, support_arrays
from metakd.errors import InputError

Source = Literal["support", "pool"]
"""What an unsupervised baseline is fitted on: the support normals or the unlabelled pool."""


def checked_inputs(
    X: Any, y: Any, unlabeled: Any | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(support rows [n, d], labels [n], pool [m, d] or None)`` of a baseline's ``fit``,
    checked as :class:`~metakd.detector.FewShotDetector` checks its own.

    Raises:
        InputError: bad rows or labels (the message names the argument).
    """
    rows, labels = support_arrays(X, y)
    pool = None if unlabeled is None else as_rows("unlabeled", unlabeled).numpy()
    return rows, labels, pool


def checked_rows(X: Any) -> np.ndarray:
    """Rows ``[N, d]`` to score, checked as the detector checks its own."""
    return as_rows("data", X).numpy()


def require_anomalies(name: str, y: np.ndarray) -> None:
    """Refuse a support without labelled anomalies, which the supervised baseline ``name`` needs.

    Raises:
        InputError: no label 1 in ``y``.
    """
    if not (y == 1).any():
        raise InputError(f"{name} needs labelled anomalies (label 1) in the support")


class FittedScaling:
    """Per-feature scaling fitted once on some rows and applied to numpy arrays."""

    def __init__(self, rows: np.ndarray, config: ScalingConfig) -> None:
        self.scaler = Scaler.fit(torch.from_numpy(rows), config)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.scaler(torch.from_numpy(x)).numpy()


def fit_rows(
    name: str, source: Source, X: np.ndarray, y: np.ndarray, unlabeled: np.ndarray | None
) -> np.ndarray:
    """The rows an unsupervised detector is fitted on: the support normals or the pool.

    Raises:
        InputError: ``source`` is the pool and there is none.
    """
    if source == "support":
        return X[y == 0]
    if unlabeled is None:
        raise InputError(f"{name}: fitting on the pool needs unlabelled rows (unlabeled=None)")
    return unlabeled


def scaling_rows(X: np.ndarray, unlabeled: np.ndarray | None, source: Source) -> np.ndarray:
    """The rows a scaling is fitted on: support + pool, or the pool alone for a pool-fitted
    detector (as a user without labels would)."""
    if source == "pool":
        assert unlabeled is not None  # checked by fit_rows
        return unlabeled
    return X if unlabeled is None else np.concatenate([X, unlabeled])


__all__ = [
    "FittedScaling",
    "Source",
    "checked_inputs",
    "checked_rows",
    "fit_rows",
    "require_anomalies",
    "scaling_rows",
]
