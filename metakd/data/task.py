"""The :class:`Task`: one small anomaly-detection dataset, the unit of meta-learning."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metakd.errors import DataError

#: Label values. Unlabelled rows may only ever be used where labels are hidden (the pool).
ANOMALY, NORMAL, UNLABELLED = 1, 0, -1


@dataclass(frozen=True, eq=False, repr=False)
class Task:
    """One anomaly-detection dataset.

    ``X`` and ``y`` are stored as read-only views of the given arrays (not copies), so a task
    can be shared between samplers without defensive copies; the caller must not modify the
    arrays it passed in.

    Attributes:
        name: Unique name within its collection (e.g. ``"14_glass"`` or ``"valve1/3"``).
        X: Features, float32 ``[n, d]``, all finite.
        y: Labels, int64 ``[n]``: 1 anomaly, 0 normal, -1 unlabelled.
        feature_names: ``d`` column names.
        source: Where the task came from: a file path, or e.g. ``"builtin:digits"``.
        named: Whether ``feature_names`` came from the data (a header, an archive's
            ``feature_names``) rather than being made up as ``x0, x1, ...``: only named columns
            are matched by name when a fitted model reads new files.
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    source: str
    named: bool = True

    def __post_init__(self) -> None:
        where = self.name or self.source or "task"
        if not isinstance(self.name, str) or not self.name:
            raise DataError(where, "task name must be a non-empty string")
        if not isinstance(self.X, np.ndarray) or self.X.dtype != np.float32 or self.X.ndim != 2:
            raise DataError(where, f"X must be a float32 array [n, d], got {_describe(self.X)}")
        if not isinstance(self.y, np.ndarray) or self.y.dtype != np.int64 or self.y.ndim != 1:
            raise DataError(where, f"y must be an int64 array [n], got {_describe(self.y)}")
        n, d = self.X.shape
        if self.y.shape[0] != n:
            raise DataError(where, f"X has {n} rows but y has {self.y.shape[0]}")
        if n == 0 or d == 0:
            raise DataError(where, f"X must have at least one row and one feature, got {n}x{d}")
        if len(self.feature_names) != d:
            raise DataError(
                where, f"{len(self.feature_names)} feature names for {d} feature columns"
            )
        bad = ~np.isin(self.y, (ANOMALY, NORMAL, UNLABELLED))
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(where, f"label {int(self.y[row])} at row {row} is not 1, 0 or -1")
        if not np.isfinite(self.X).all():
            row, col = (int(i[0]) for i in np.nonzero(~np.isfinite(self.X)))
            raise DataError(
                where, f"non-finite value in column '{self.feature_names[col]}' at row {row}"
            )
        # Read-only views: the caller's arrays stay writable, the task's cannot be mutated.
        for attr in ("X", "y"):
            view = getattr(self, attr).view()
            view.flags.writeable = False
            object.__setattr__(self, attr, view)
        object.__setattr__(self, "feature_names", tuple(self.feature_names))

    @property
    def n_rows(self) -> int:
        """Number of rows ``n``."""
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        """Number of feature columns ``d``."""
        return int(self.X.shape[1])

    @property
    def n_anomalies(self) -> int:
        """Rows labelled 1."""
        return int(np.count_nonzero(self.y == ANOMALY))

    @property
    def n_normals(self) -> int:
        """Rows labelled 0."""
        return int(np.count_nonzero(self.y == NORMAL))

    @property
    def n_unlabelled(self) -> int:
        """Rows labelled -1."""
        return int(np.count_nonzero(self.y == UNLABELLED))

    def subset(self, index: np.ndarray, name: str | None = None) -> Task:
        """The task restricted to some rows.

        Args:
            index: Integer row indices ``[m]`` or a boolean mask ``[n]``.
            name: Name of the new task; defaults to this task's name.

        Returns:
            A new task with rows ``X[index]``, ``y[index]`` (copies), same features and source.
        """
        index = np.asarray(index)
        if index.ndim != 1 or index.dtype.kind not in "biu":
            raise TypeError(f"index must be a 1-D integer or boolean array, got {_describe(index)}")
        if index.dtype == bool and index.shape[0] != self.n_rows:
            raise IndexError(f"boolean mask has {index.shape[0]} entries for {self.n_rows} rows")
        return Task(
            name=self.name if name is None else name,
            X=self.X[index],
            y=self.y[index],
            feature_names=self.feature_names,
            source=self.source,
            named=self.named,
        )

    def __repr__(self) -> str:
        return (
            f"Task(name={self.name!r}, rows={self.n_rows}, features={self.n_features}, "
            f"anomalies={self.n_anomalies}, unlabelled={self.n_unlabelled}, "
            f"source={self.source!r})"
        )


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
