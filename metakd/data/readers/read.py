"""The two ways to read a task file, whatever its format: whole (:func:`read_task`) or as
streamed rows (:func:`read_row_chunks`)."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from metakd.data.readers.base import FrameFormat, TaskFormat, chunk_rows
from metakd.data.readers.columns import check_finite, split_frame
from metakd.data.readers.labels import map_labels
from metakd.data.readers.options import ReadOptions
from metakd.data.readers.registry import FORMATS, format_for
from metakd.data.task import Task
from metakd.errors import ConfigError, DataError


class RowChunk(NamedTuple):
    """Consecutive rows of a file: features ``X [r, d]`` and, when asked for, ``ids [r]`` (text)."""

    X: np.ndarray
    ids: np.ndarray | None


def read_task(
    path: str | Path, options: ReadOptions | None = None, *, name: str | None = None
) -> Task:
    """Read one task file.

    Args:
        path: A ``.npz`` (arrays ``X`` [n, d] and optional ``y`` [n]), ``.csv``, ``.tsv``,
            ``.txt`` (delimiter detected among ``, ; tab |``) or ``.parquet`` file (or any other
            registered suffix).
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
    reader = check_path(path, where)
    table = reader.read(path, where, options)

    label_source = reader.label_source(options)
    if table.labels is not None and not options.ignore_labels:
        y = map_labels(table.labels, where, label_source, options)
    elif options.require_labels:
        raise DataError(where, f"no {label_source} (read.require_labels is set)")
    else:
        y = np.full(table.X.shape[0], -1, dtype=np.int64)

    X32, keep = check_finite(table.X, table.feature_names, where, options.nonfinite)
    if keep is not None:
        X32, y = X32[keep], y[keep]
    return Task(
        name=path.stem if name is None else name,
        X=X32,
        y=y,
        feature_names=tuple(table.feature_names),
        source=where,
        named=table.named,
    )


def read_row_chunks(
    path: str | Path,
    options: ReadOptions | None = None,
    *,
    rows: int | None = None,
    id_column: str | None = None,
) -> Iterator[RowChunk]:
    """Stream the feature rows of a task file in chunks of at most ``rows`` rows (default: as
    many as keep a chunk at :data:`~metakd.data.readers.base.CHUNK_VALUES` values).

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
    # Looked up before the path is checked: a bad id column is reported first, even for a
    # missing file; an unknown suffix is reported by check_path below.
    reader = FORMATS.get(path.suffix.lower())
    if id_column is not None:
        if reader is not None:
            reader.check_id_column(id_column, where)
        if id_column == options.label_column:
            raise ConfigError(f"the id column '{id_column}' is also the label column")
        options = dataclasses.replace(options, ignore_columns=[*options.ignore_columns, id_column])
    if reader is not None and not isinstance(reader, FrameFormat):
        task = read_task(path, dataclasses.replace(options, ignore_labels=True))
        step = rows or chunk_rows(task.n_features)
        for start in range(0, task.n_rows, step):
            yield RowChunk(task.X[start : start + step], None)
        return
    checked = check_path(path, where)
    assert isinstance(checked, FrameFormat)  # the other formats were read whole above
    yield from _frame_chunks(checked.frames(path, where, options, rows), where, options, id_column)


def check_path(path: Path, where: str) -> TaskFormat:
    """The format of a task file that exists, has a supported suffix and is not empty."""
    if not path.is_file():
        raise DataError(where, "file not found" if not path.exists() else "not a file")
    reader = format_for(path.suffix, where=where)
    if path.stat().st_size == 0:
        raise DataError(where, "file is empty")
    return reader


def _frame_chunks(
    frames: Iterator[pd.DataFrame], where: str, options: ReadOptions, id_column: str | None
) -> Iterator[RowChunk]:
    """Row chunks of consecutive tables, checked as one file (row numbers count from the first
    table; every table must have the first one's feature columns)."""
    offset = 0
    names: list[str] | None = None
    for frame in frames:
        if len(frame) == 0:
            continue
        frame.index = pd.RangeIndex(offset, offset + len(frame))
        with warnings.catch_warnings():
            if names is not None:
                warnings.simplefilter("ignore")  # e.g. the timestamp note: said once per file
            X, _, features = split_frame(frame, where, options, row_offset=offset)
        if names is None:
            names = features
        elif features != names:
            raise DataError(
                where,
                f"rows {offset}-{offset + len(frame) - 1} have feature columns {features}, "
                f"unlike the rows before ({names})",
            )
        X32, _ = check_finite(X, features, where, "error", row_offset=offset)
        ids = None if id_column is None else frame[id_column].astype(str).to_numpy()
        offset += len(frame)
        yield RowChunk(X32, ids)
    if names is None:
        raise DataError(where, "no data rows")
