"""Read one task file (``.npz``, ``.csv``/``.tsv``/``.txt`` or ``.parquet``) into a :class:`Task`.

All readers share one set of rules, so a task means the same thing whatever its format:

* every column that is neither the label column nor ignored is a feature and must be numeric;
* labels are 0 (normal), 1 (anomaly) or -1/empty (unlabelled); other values need a label map;
* features must be finite, unless ``nonfinite="drop"``, which drops the rows and warns.

Each problem raises :class:`~metakd.errors.DataError` naming the file and the column, row or
value at fault; nothing is silently dropped, coerced or truncated.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

from metakd.data.task import Task
from metakd.errors import ConfigError, DataError

#: File suffixes :func:`read_task` understands (lower case).
SUPPORTED_SUFFIXES: tuple[str, ...] = (".npz", ".csv", ".tsv", ".txt", ".parquet")

# Candidate delimiters for .csv/.txt, in order of preference when two fit equally well.
_DELIMITERS = (",", ";", "\t", "|")
_SNIFF_LINES = 100


@dataclass
class ReadOptions:
    """How to turn a task file into features and labels.

    Attributes:
        label_column: Column holding the labels in csv/tsv/txt/parquet files (``.npz`` files
            always use the array ``y``). When the file has no such column every row is
            unlabelled (-1), unless ``require_labels`` is set.
        ignore_columns: Columns that are neither features nor labels (timestamps, ids, other
            annotations). Each must exist in the file, so a typo cannot turn a column meant to
            be ignored into a feature.
        ignore_if_present: Columns ignored when the file has them (``metakd score`` passes the
            columns a model was adapted with as ignored: a new file need not have them).
        label_map: Raw label -> 0, 1 or -1. Keys are the label as text (``"2"``, ``"attack"``); a
            numeric key also matches numerically equal values (``"2"`` matches ``2.0``). Values
            not in the map must be 0/1/-1 or empty, as without a map.
        nonfinite: ``"error"`` rejects NaN/inf/missing feature values naming the column and the
            first bad row; ``"drop"`` drops those rows and warns with the count.
        require_labels: Raise if the file has no label column (or ``.npz`` array ``y``).
        ignore_labels: Rows are unlabelled whatever the label column holds: it is left out of
            the features and not validated (``--unlabeled`` files and ``metakd score`` input).
        columns: The feature columns expected, in order (those a fitted model was adapted on).
            A file's named columns are matched by name and put in this order; a missing
            column, or a feature column not in the list, is an error naming it (list columns
            that are not features in ``ignore_columns``). An ``.npz`` archive without
            ``feature_names`` is taken in order. ``None``: the file's own columns, in order.
    """

    label_column: str = "label"
    ignore_columns: list[str] = field(default_factory=list)
    label_map: dict[str, int] | None = None
    nonfinite: Literal["error", "drop"] = "error"
    require_labels: bool = False
    ignore_labels: bool = False
    columns: list[str] | None = None
    ignore_if_present: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.columns is not None:
            if not self.columns:
                raise ConfigError("read.columns must list at least one column (or be null)")
            clash = [c for c in self.columns if c == self.label_column or c in self.ignore_columns]
            if clash:
                raise ConfigError(
                    f"read.columns lists '{clash[0]}', which is also the label column or an "
                    "ignored column"
                )
        if not self.label_column:
            raise ConfigError("read.label_column must be a non-empty string")
        if self.label_column in self.ignore_columns:
            raise ConfigError(
                f"read.ignore_columns contains the label column '{self.label_column}'"
            )
        if self.require_labels and self.ignore_labels:
            raise ConfigError("read.require_labels and read.ignore_labels exclude each other")
        if self.nonfinite not in ("error", "drop"):
            raise ConfigError(f"read.nonfinite must be 'error' or 'drop', got {self.nonfinite!r}")
        for key, value in (self.label_map or {}).items():
            if isinstance(value, bool) or value not in (-1, 0, 1):
                raise ConfigError(
                    f"read.label_map['{key}'] must be 0 (normal), 1 (anomaly) or -1 "
                    f"(unlabelled), got {value!r}"
                )


def _check_path(path: Path, where: str) -> None:
    """A task file exists, is a file of a supported type and is not empty."""
    if not path.is_file():
        raise DataError(where, "file not found" if not path.exists() else "not a file")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise DataError(
            where,
            f"unsupported file type '{path.suffix}' (supported: {', '.join(SUPPORTED_SUFFIXES)})",
        )
    if path.stat().st_size == 0:
        raise DataError(where, "file is empty")


def read_task(
    path: str | Path, options: ReadOptions | None = None, *, name: str | None = None
) -> Task:
    """Read one task file.

    Args:
        path: A ``.npz`` (arrays ``X`` [n, d] and optional ``y`` [n]), ``.csv``, ``.tsv``,
            ``.txt`` (delimiter detected among ``, ; tab |``) or ``.parquet`` file.
        options: Label, ignored-column and non-finite handling; defaults to ``ReadOptions()``.
        name: Task name; defaults to the file name without its suffix.

    Returns:
        The task, with ``X`` float32 ``[n, d]`` and ``y`` int64 ``[n]``.

    Raises:
        DataError: The file is missing, empty, unreadable or has bad values; the message names
            the file and the column, row or value at fault.
    """
    options = ReadOptions() if options is None else options
    path = Path(path)
    where = str(path)
    suffix = path.suffix.lower()
    _check_path(path, where)

    named = True
    if suffix == ".npz":
        X, labels, names = _read_npz(path, where)
        named = names is not None
        feature_names = names if names is not None else [f"x{j}" for j in range(X.shape[1])]
        if names is not None and options.columns is not None:
            order = match_columns(names, options.columns, where)
            X, feature_names = X[:, [names.index(c) for c in order]], order
    else:
        frame = (
            _read_parquet(path, where) if suffix == ".parquet" else _read_text(path, where, options)
        )
        X, labels, feature_names = _split_frame(frame, where, options)

    label_source = "array 'y'" if suffix == ".npz" else f"label column '{options.label_column}'"
    if labels is not None and not options.ignore_labels:
        y = _map_labels(labels, where, label_source, options)
    elif options.require_labels:
        raise DataError(where, f"no {label_source} (read.require_labels is set)")
    else:
        y = np.full(X.shape[0], -1, dtype=np.int64)

    X32, keep = _check_finite(X, feature_names, where, options.nonfinite)
    if keep is not None:
        X32, y = X32[keep], y[keep]
    return Task(
        name=path.stem if name is None else name,
        X=X32,
        y=y,
        feature_names=tuple(feature_names),
        source=where,
        named=named,
    )


# --------------------------------------------------------------------------------------- npz


def _read_npz(path: Path, where: str) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """``(X, raw labels or None, feature names or None when the archive has none)``."""
    try:
        # allow_pickle=False: a task file must never be able to run code on load.
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(where, f"cannot read .npz archive ({err})") from None
    if "X" not in arrays:
        found = ", ".join(sorted(arrays)) or "none"
        raise DataError(where, f"no array 'X' in the archive (arrays: {found})")
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
        _check_unique(named, where)
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


# --------------------------------------------------------------------------- delimited text


def _text_format(
    path: Path, where: str, options: ReadOptions
) -> tuple[str, dict[str, Any] | None, list[str]]:
    """The delimiter, the column dtypes and the header of a delimited text file."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            head = list(islice(handle, _SNIFF_LINES + 1))
    except UnicodeDecodeError as err:
        raise DataError(where, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    truncated = len(head) > _SNIFF_LINES
    sample = "".join(head[:_SNIFF_LINES])
    if not sample.strip():
        raise DataError(where, "file is empty")

    sep = "\t" if path.suffix.lower() == ".tsv" else _detect_delimiter(sample, truncated, where)
    header = next(csv.reader(io.StringIO(sample), delimiter=sep))
    for position, column in enumerate(header, start=1):
        if not column.strip():
            raise DataError(
                where,
                f"column {position} has no name in the header (an index written by pandas?); "
                "name it and list it in read.ignore_columns if it is not a feature",
            )
    _check_unique(header, where)
    # The label column is read as text so label_map sees labels exactly as written.
    dtype: dict[str, Any] | None = (
        {options.label_column: str} if options.label_column in header else None
    )
    return sep, dtype, header


def _read_text(path: Path, where: str, options: ReadOptions) -> pd.DataFrame:
    sep, dtype, _ = _text_format(path, where, options)
    try:
        frame = pd.read_csv(path, sep=sep, dtype=dtype, encoding="utf-8-sig", low_memory=False)
    except pd.errors.EmptyDataError:
        raise DataError(where, "file is empty") from None
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as err:
        raise DataError(where, f"cannot parse as delimited text ({_first_line(err)})") from None
    return frame


def _text_chunks(
    path: Path, where: str, options: ReadOptions, rows: int | None
) -> Iterator[pd.DataFrame]:
    sep, dtype, header = _text_format(path, where, options)
    rows = rows or _chunk_rows(len(header))
    try:
        with pd.read_csv(
            path, sep=sep, dtype=dtype, encoding="utf-8-sig", chunksize=rows, low_memory=False
        ) as reader:
            yield from reader
    except pd.errors.EmptyDataError:
        raise DataError(where, "file is empty") from None
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as err:
        raise DataError(where, f"cannot parse as delimited text ({_first_line(err)})") from None


def _parquet_chunks(path: Path, where: str, rows: int | None) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        columns = [str(c) for c in parquet.schema_arrow.names]
        _check_unique(columns, where)
        rows = rows or _chunk_rows(len(columns))
        for batch in parquet.iter_batches(batch_size=rows):
            frame = batch.to_pandas()
            frame.columns = columns
            yield frame
    except DataError:
        raise
    except Exception as err:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(where, f"cannot read parquet file ({_first_line(err)})") from None


#: Values (rows x columns) per streamed chunk: a chunk's few float64/float32 copies stay near
#: 100 MB whatever the width (about 130,000 rows of 32 columns, 4,000 of 1,000).
CHUNK_VALUES = 1 << 22


def _chunk_rows(columns: int) -> int:
    return max(1, CHUNK_VALUES // max(1, columns))


class RowChunk(NamedTuple):
    """Consecutive rows of a file: features ``X [r, d]`` and, when asked for, ``ids [r]`` (text)."""

    X: np.ndarray
    ids: np.ndarray | None


def read_row_chunks(
    path: str | Path,
    options: ReadOptions | None = None,
    *,
    rows: int | None = None,
    id_column: str | None = None,
) -> Iterator[RowChunk]:
    """Stream the feature rows of a task file in chunks of at most ``rows`` rows (default: as
    many as keep a chunk at :data:`CHUNK_VALUES` values).

    The same rules as :func:`read_task` apply to every chunk (and error messages give row numbers
    in the whole file), so peak memory is one chunk, not the file: csv/tsv/txt and parquet are
    read in batches; an ``.npz`` archive is loaded once (it is not chunked on disk). Labels are
    never validated here (rows are scored, not learned from); ``options.nonfinite`` must be
    ``"error"`` so that output rows stay aligned with input rows.

    ``id_column`` names a column that is carried through as text (not a feature), e.g. to label
    the output rows; ``.npz`` archives have no named columns.

    Yields:
        Chunks of at most ``rows`` rows, in file order (float32 features, the same columns in
        every chunk).
    """
    options = ReadOptions() if options is None else options
    if options.nonfinite != "error":
        raise ConfigError("streamed rows keep their order: read.nonfinite must be 'error'")
    path = Path(path)
    where = str(path)
    suffix = path.suffix.lower()
    if id_column is not None:
        if suffix == ".npz":
            raise DataError(where, f"an .npz archive has no column '{id_column}' to carry through")
        if id_column == options.label_column:
            raise ConfigError(f"the id column '{id_column}' is also the label column")
        options = dataclasses.replace(options, ignore_columns=[*options.ignore_columns, id_column])
    if suffix == ".npz":
        task = read_task(path, dataclasses.replace(options, ignore_labels=True))
        step = rows or _chunk_rows(task.n_features)
        for start in range(0, task.n_rows, step):
            yield RowChunk(task.X[start : start + step], None)
        return
    _check_path(path, where)
    frames = (
        _parquet_chunks(path, where, rows)
        if suffix == ".parquet"
        else _text_chunks(path, where, options, rows)
    )
    offset = 0
    names: list[str] | None = None
    for frame in frames:
        if len(frame) == 0:
            continue
        frame.index = pd.RangeIndex(offset, offset + len(frame))
        with warnings.catch_warnings():
            if names is not None:
                warnings.simplefilter("ignore")  # e.g. the timestamp note: said once per file
            X, _, features = _split_frame(frame, where, options, row_offset=offset)
        if names is None:
            names = features
        elif features != names:
            raise DataError(
                where,
                f"rows {offset}-{offset + len(frame) - 1} have feature columns {features}, "
                f"unlike the rows before ({names})",
            )
        X32, _ = _check_finite(X, features, where, "error", row_offset=offset)
        ids = None if id_column is None else frame[id_column].astype(str).to_numpy()
        offset += len(frame)
        yield RowChunk(X32, ids)
    if names is None:
        raise DataError(where, "no data rows")


def _detect_delimiter(sample: str, truncated: bool, where: str) -> str:
    """The delimiter that splits every sampled line into the same number (> 1) of fields.

    Parsing with :mod:`csv` (not counting characters) keeps quoted delimiters, such as a
    decimal comma inside ``"1,5"``, from counting. Among consistent candidates the one giving the
    most fields wins. With no consistent candidate the one with the widest header is returned so
    that the parser reports the first malformed line.
    """
    counts: dict[str, list[int]] = {}
    for sep in _DELIMITERS:
        rows = [len(row) for row in csv.reader(io.StringIO(sample), delimiter=sep) if row]
        # A sample cut after _SNIFF_LINES lines may end inside a quoted multi-line field.
        counts[sep] = rows[:-1] if truncated and len(rows) > 1 else rows
    consistent = [s for s in _DELIMITERS if counts[s][0] > 1 and len(set(counts[s])) == 1]
    if consistent:
        return max(consistent, key=lambda s: counts[s][0])  # max keeps the first on ties
    widest = max(_DELIMITERS, key=lambda s: counts[s][0])
    if counts[widest][0] > 1:
        return widest
    if all(len(set(c)) == 1 for c in counts.values()):
        return ","  # a single column: any delimiter parses it
    raise DataError(where, "cannot detect the delimiter (tried , ; tab |)")


def _read_parquet(path: Path, where: str) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(where, f"cannot read parquet file ({_first_line(err)})") from None
    columns = [str(c) for c in frame.columns]
    _check_unique(columns, where)
    frame.columns = columns
    return frame


def _split_frame(
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
            f"column '{column}' is not numeric{detail}; list it in read.ignore_columns or set "
            "read.label_column to it",
        )
    if timestamps:
        # A time stamp orders rows; it is not a measurement. Said once per file, never silent.
        warnings.warn(
            f"{where}: column(s) {', '.join(repr(c) for c in timestamps)} hold timestamps and are "
            "not used as features (list them in read.ignore_columns to silence this)",
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
            "list it in read.ignore_columns (score: --ignore-column) if it is not a feature",
        )
    return list(expected)


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


# ---------------------------------------------------------------------------------- labels


def _map_labels(raw: np.ndarray, where: str, column: str, options: ReadOptions) -> np.ndarray:
    """Map raw labels ``[n]`` (any dtype) to int64 ``{1, 0, -1}``.

    Each distinct value is resolved once; missing values (NaN, None, empty or blank text) are
    unlabelled.
    """
    if raw.dtype.kind in "biu" and not options.label_map:
        uniques, codes = np.unique(raw, return_inverse=True)
    else:
        codes, uniques = pd.factorize(raw, use_na_sentinel=True)
    lookup = _LabelLookup(options.label_map)
    # The extra last entry serves factorize's missing-value code -1.
    table = np.full(len(uniques) + 1, -1, dtype=np.int64)
    for i, value in enumerate(uniques):
        label = lookup(value)
        if label is None:
            row = int(np.argmax(codes == i))
            hint = "add it to read.label_map" if options.label_map else "map it with read.label_map"
            raise DataError(
                where,
                f"{column} has value {_show(value)} at row {row}; labels must be 0 (normal), "
                f"1 (anomaly) or -1/empty (unlabelled): {hint}",
            )
        table[i] = label
    return table[np.asarray(codes, dtype=np.int64)]


class _LabelLookup:
    """Resolve one raw label value to 1/0/-1, or None when it is not a valid label."""

    def __init__(self, label_map: dict[str, int] | None) -> None:
        self.by_text: dict[str, int] = {}
        self.by_number: dict[float, int] = {}
        for key, value in (label_map or {}).items():
            text = str(key).strip()
            self.by_text[text] = value
            number = _as_number(text)
            if number is not None:
                self.by_number[number] = value

    def __call__(self, value: Any) -> int | None:
        text = value.strip() if isinstance(value, str) else None
        if text == "":
            return -1
        number = _as_number(text if text is not None else value)
        if text is not None and text in self.by_text:
            return self.by_text[text]
        if number is not None and number in self.by_number:
            return self.by_number[number]
        if text is None and str(value) in self.by_text:
            return self.by_text[str(value)]
        if number is not None and number in (0.0, 1.0, -1.0):
            return int(number)
        return None


def _as_number(value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _show(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    return repr(value if not isinstance(value, np.generic) else value.item())


# ------------------------------------------------------------------------------- features


def _check_finite(
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
    warnings.warn(
        f"{where}: dropped {dropped} of {len(keep)} rows with non-finite feature values",
        stacklevel=3,
    )
    return X32, keep


def _check_unique(columns: Sequence[str], where: str) -> None:
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            raise DataError(where, f"duplicate column name '{column}'")
        seen.add(column)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
