"""Sliding windows: turn a time-ordered task (one row per time step) into one row per window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from metakd.data.task import ANOMALY, UNLABELLED, Task
from metakd.errors import ConfigError, DataError

#: Per-column summaries of the ``"stats"`` features, in output order.
WINDOW_STATS: tuple[str, ...] = ("mean", "std", "min", "max", "delta")


@dataclass
class WindowConfig:
    """Sliding-window settings.

    Attributes:
        size: Rows (time steps) per window.
        stride: Rows between the starts of consecutive windows. With ``stride < size`` windows
            overlap, so neighbouring windows share rows; an episode can then put overlapping
            windows in its support and query.
        label: How a window's label follows from its labelled rows: ``"any"`` anomalous if any
            row is, ``"majority"`` if strictly more than half are, ``"last"`` the label of its
            last labelled row. A window is unlabelled (-1) only if all of its rows are.
        features: ``"stats"`` gives per column ``mean, std, min, max, delta`` (delta = last minus
            first row), ``5 d`` features; ``"flatten"`` concatenates the rows, ``size * d``
            features ordered time step by time step.
    """

    size: int
    stride: int
    label: Literal["any", "majority", "last"] = "any"
    features: Literal["flatten", "stats"] = "stats"

    def __post_init__(self) -> None:
        for key in ("size", "stride"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"window.{key} must be a positive integer, got {value!r}")
        if self.label not in ("any", "majority", "last"):
            raise ConfigError(f"window.label must be any, majority or last, got {self.label!r}")
        if self.features not in ("flatten", "stats"):
            raise ConfigError(f"window.features must be flatten or stats, got {self.features!r}")


def window_starts(n_rows: int, config: WindowConfig) -> np.ndarray:
    """Start row of every window over ``n_rows`` time steps, in time order.

    Windows start at ``0, stride, 2 * stride, ...``. When the stride does not tile the series
    exactly a final window ending at the last row is added, so the tail (often where a failure
    shows) is never cut off.

    Returns:
        int64 ``[m]`` start indices.
    """
    last = n_rows - config.size
    if last < 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(0, last + 1, config.stride, dtype=np.int64)
    if starts[-1] != last:
        starts = np.append(starts, last)
    return starts


def window_task(task: Task, config: WindowConfig) -> Task:
    """Window a time-ordered task.

    Args:
        task: Rows in time order, ``X [n, d]``.
        config: Window size, stride, label rule and feature kind.

    Returns:
        A task with one row per window (in time order), ``X [m, 5 d]`` for ``"stats"`` or
        ``[m, size * d]`` for ``"flatten"``, with names like ``"Pressure.mean"`` or
        ``"Pressure.t3"``; same name and source.

    Raises:
        DataError: The task has fewer rows than ``config.size``.
    """
    if task.n_rows < config.size:
        raise DataError(
            task.source, f"{task.n_rows} rows, fewer than the window size {config.size}"
        )
    starts = window_starts(task.n_rows, config)
    # [n - size + 1, d, size] view -> [m, size, d] windows, copied once by the fancy index.
    windows = sliding_window_view(task.X, config.size, axis=0)[starts].transpose(0, 2, 1)
    labels = sliding_window_view(task.y, config.size)[starts]

    if config.features == "stats":
        w = windows.astype(np.float64)
        X = np.concatenate(
            [w.mean(axis=1), w.std(axis=1), w.min(axis=1), w.max(axis=1), w[:, -1] - w[:, 0]],
            axis=1,
        )
        names = [f"{col}.{stat}" for stat in WINDOW_STATS for col in task.feature_names]
    else:
        X = windows.reshape(len(starts), -1)
        names = [f"{col}.t{t}" for t in range(config.size) for col in task.feature_names]

    return Task(
        name=task.name,
        X=X.astype(np.float32),
        y=_window_labels(labels, config.label),
        feature_names=tuple(names),
        source=task.source,
        named=task.named,
    )


def _window_labels(labels: np.ndarray, rule: str) -> np.ndarray:
    """Window labels ``[m]`` from per-row labels ``[m, size]``, ignoring unlabelled rows."""
    labelled = labels != UNLABELLED
    n_labelled = labelled.sum(axis=1)
    n_anomalous = (labels == ANOMALY).sum(axis=1)
    if rule == "any":
        out = (n_anomalous > 0).astype(np.int64)
    elif rule == "majority":
        out = (2 * n_anomalous > n_labelled).astype(np.int64)
    else:
        # Index of the last labelled row: argmax over the reversed mask finds it first.
        last = labels.shape[1] - 1 - np.argmax(labelled[:, ::-1], axis=1)
        out = (labels[np.arange(len(labels)), last] == ANOMALY).astype(np.int64)
    out[n_labelled == 0] = UNLABELLED
    return out
