"""``.npz`` archives: array ``X`` ``[n, d]``, optional ``y`` ``[n]`` and ``feature_names`` ``[d]``."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from metakd.data.readers.base import Table, TaskFormat
from metakd.data.readers.columns import check_unique, match_columns
from metakd.data.readers.options import ReadOptions
from metakd.data.readers.registry import register_format
from metakd.errors import DataError


@register_format(".npz")
class Npz(TaskFormat):
    """A NumPy archive; its labels are always the array ``y`` (``read.label_column`` is not
    used) and, without ``feature_names``, its columns are taken in order as ``x0, x1, ...``."""

    def read(self, path: Path, where: str, options: ReadOptions) -> Table:
        """The archive's arrays, features put in ``options.columns`` order when it names them."""
        X, labels, names = _read_npz(path, where)
        feature_names = names if names is not None else [f"x{j}" for j in range(X.shape[1])]
        if names is not None and options.columns is not None:
            order = match_columns(names, options.columns, where)
            X, feature_names = X[:, [names.index(c) for c in order]], order
        return Table(X, labels, feature_names, named=names is not None)

    def label_source(self, options: ReadOptions) -> str:
        """Labels are the array ``y``."""
        return "array 'y'"

    def check_id_column(self, id_column: str, where: str) -> None:
        """An archive has no named columns to carry through."""
        raise DataError(where, f"an .npz archive has no column '{id_column}' to carry through")


def _read_npz(path: Path, where: str) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """``(X, raw labels or None, feature names or None when the archive has none)``."""
    try:
        # allow_pickle=False: a task file must never be able to run code on load.
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (
        OSError,
        ValueError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
        NotImplementedError,
    ) as err:
        # A damaged archive: bad zip structure, corrupt compressed data, an unsupported zip
        # feature (encryption, compression method) or a truncated member.
        raise DataError(where, f"cannot read .npz archive ({err})") from None
    if "X" not in arrays:
        found = ", ".join(sorted(arrays)) or "none"
        raise DataError(where, f"no array 'X' in the archive (arrays: {found})")
    for key in ("X", "y", "feature_names"):
        # A member that is not a .npy array (raw bytes under that name) loads as bytes.
        if key in arrays and not isinstance(arrays[key], np.ndarray):
            raise DataError(
                where,
                f"'{key}' in the archive is not a NumPy array (its member holds raw "
                f"{type(arrays[key]).__name__}, not the .npy format)",
            )
    X = arrays["X"]
    if X.ndim != 2:
        raise DataError(where, f"array 'X' must be 2-D [rows, features], got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise DataError(where, f"array 'X' must be numeric, got dtype {X.dtype}")
    if X.shape[0] == 0:
        raise DataError(where, "no rows (array 'X' is empty)")
    if X.shape[1] == 0:
        raise DataError(where, "no feature columns (array 'X' has 0 columns)")

    if "feature_names" in arrays:
        names_array = arrays["feature_names"]
        if names_array.shape != (X.shape[1],) or names_array.dtype.kind != "U":
            raise DataError(
                where,
                f"array 'feature_names' must hold {X.shape[1]} strings, got "
                f"{names_array.dtype} array of shape {names_array.shape}",
            )
        named = [str(n) for n in names_array]
        check_unique(named, where)
        feature_names: list[str] | None = named
    else:
        feature_names = None

    labels = arrays.get("y")
    if labels is not None:
        if labels.ndim != 1 or labels.shape[0] != X.shape[0]:
            raise DataError(
                where, f"array 'y' must have shape ({X.shape[0]},) to match 'X', got {labels.shape}"
            )
        if labels.dtype.kind not in "biufUO":
            raise DataError(where, f"array 'y' has unsupported dtype {labels.dtype}")
    return X, labels, feature_names
