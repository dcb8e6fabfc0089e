"""Shared column rules: which columns of a table are features, their names and their values.

Every format applies these, so a task means the same thing whatever its file type: every column
that is neither the label column nor ignored is a feature and must be numeric (timestamp columns
are left out with a warning), and features must be finite unless ``nonfinite="drop"``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from metakd.data.readers.options import ReadOptions, ignore_hint, label_hint
from metakd.errors import DataError


def split_frame(
    frame: pd.DataFrame, where: str, options: ReadOptions, *, row_offset: int = 0
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Separate a table into features ``[n, d]`` (float64), raw labels ``[n]`` and names
    (``row_offset``: the file row of the table's first row, for messages)."""
    columns = list(frame.columns)
    missing = [c for c in options.ignore_columns if c not in columns]
    if missing:
        raise DataError(
            where,
            f"ignored column '{missing[0]}' is not in the file (columns: {', '.join(columns)})",
        )
    if len(frame) == 0:
        raise DataError(where, "no data rows")
    labels = None
    if options.label_column in columns:
        labels = frame[options.label_column].to_numpy(dtype=object)
    ignored = {*options.ignore_columns, *options.ignore_if_present}
    features = [c for c in columns if c != options.label_column and c not in ignored]
    if not features:
        raise DataError(
            where,
            f"no feature columns (columns: {', '.join(columns)}; label column "
            f"'{options.label_column}', ignored: {', '.join(options.ignore_columns) or 'none'})",
        )
    timestamps = []
    for column in features:
        series = frame[column]
        if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_complex_dtype(
            series.dtype
        ):
            continue
        if _is_timestamp(series):
            timestamps.append(column)
            continue
        coerced = pd.to_numeric(series, errors="coerce")
        bad = coerced.isna() & series.notna()
        detail = ""
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            detail = f" (row {row_offset + row}: {series.iloc[row]!r})"
        raise DataError(
            where,
            f"column '{column}' is not numeric{detail}; if it is not a feature, "
            f"{ignore_hint([column])}; if it holds the labels, {label_hint(column)}",
        )
    if timestamps:
        # A time stamp orders rows; it is not a measurement. Said once per file, never silent.
        warnings.warn(
            f"{where}: column(s) {', '.join(repr(c) for c in timestamps)} hold timestamps and are "
            f"not used as features (to silence this, {ignore_hint(timestamps)})",
            stacklevel=2,
        )
        features = [c for c in features if c not in timestamps]
        if not features:
            raise DataError(where, "no feature columns besides the timestamp column(s)")
    if options.columns is not None:
        features = match_columns(features, options.columns, where)
    X = frame[features].to_numpy(dtype=np.float64, na_value=np.nan)
    return X, labels, features


def match_columns(found: Sequence[str], expected: Sequence[str], where: str) -> list[str]:
    """``expected`` when the file's feature columns ``found`` are the same names (in any
    order); else an error naming the first missing (and any unknown) column."""
    missing = [c for c in expected if c not in found]
    unknown = [c for c in found if c not in expected]
    if missing:
        instead = f"; the file has {_names(unknown)} instead (renamed?)" if unknown else ""
        raise DataError(
            where,
            f"column '{missing[0]}' of the model's features is missing{instead} (the model reads "
            f"{_names(expected)})",
        )
    if unknown:
        raise DataError(
            where,
            f"column '{unknown[0]}' is not one of the model's features ({_names(expected)}); "
            f"if it is not a feature, {ignore_hint([unknown[0]])}",
        )
    return list(expected)


def check_unique(columns: Sequence[str], where: str) -> None:
    """Raise :class:`DataError` naming the first column name that repeats."""
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            raise DataError(where, f"duplicate column name '{column}'")
        seen.add(column)


def check_finite(
    X: np.ndarray,
    names: Sequence[str],
    where: str,
    policy: Literal["error", "drop"],
    *,
    row_offset: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Cast ``X [n, d]`` to float32 and apply the non-finite policy.

    Returns:
        The float32 features and, under ``"drop"`` with bad rows, a boolean keep-mask ``[n]``.
    """
    with np.errstate(over="ignore"):
        X32 = X.astype(np.float32)
    finite = np.isfinite(X32)
    if finite.all():
        return X32, None
    if policy == "error":
        bad_col = int(np.argmax(~finite.all(axis=0)))
        row = int(np.argmax(~finite[:, bad_col]))
        raw = X[row, bad_col]
        count = int(np.count_nonzero(~finite[:, bad_col]))
        if np.isnan(raw):
            what = "missing/NaN value"
        elif np.isinf(raw):
            what = f"value {raw}"
        else:
            what = f"value {raw:g} (overflows float32)"
        raise DataError(
            where,
            f"column '{names[bad_col]}' has {count} non-finite value(s): first {what} at row "
            f"{row_offset + row}; set read.nonfinite: drop to drop such rows",
        )
    keep: np.ndarray = np.asarray(finite.all(axis=1))
    dropped = int(np.count_nonzero(~keep))
    if dropped == len(keep):
        raise DataError(where, f"all {dropped} rows have non-finite feature values")
    # stacklevel 3: the warning points at whoever called read_task, not at the reader.
    warnings.warn(
        f"{where}: dropped {dropped} of {len(keep)} rows with non-finite feature values",
        stacklevel=3,
    )
    return X32, keep


def _names(columns: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(f"'{c}'" for c in columns[:limit])
    return shown + (f" and {len(columns) - limit} more" if len(columns) > limit else "")


def _is_timestamp(series: pd.Series) -> bool:
    """Whether every value of a text column parses as a date/time (ISO-like formats)."""
    values = series.dropna()
    if values.empty or pd.api.types.is_numeric_dtype(values.dtype):
        return False
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return True
    text = values.astype(str)
    # A date needs digits and a separator; plain words like "a" must not count as timestamps.
    if not text.str.contains(r"\d{1,4}[-/.:]\d{1,2}", regex=True).all():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas warns when it infers the format per element
        parsed = pd.to_datetime(text, errors="coerce", format="mixed")
    return bool(parsed.notna().all())
