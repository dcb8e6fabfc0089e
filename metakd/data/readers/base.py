"""What a file format implements: :class:`TaskFormat`, or :class:`FrameFormat` for formats read
as pandas tables with named columns (those can also be streamed in batches of rows).

A format only turns a file into a table (features, raw labels, feature names); the rules every
task obeys (labels, finiteness, the column checks of :mod:`~metakd.data.readers.columns`) are
applied by :func:`~metakd.data.readers.read.read_task`, the same for every format.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from metakd.data.readers.columns import split_frame
from metakd.data.readers.options import ReadOptions
from metakd.errors import DataError

#: Values (rows x columns) per streamed chunk: a chunk's few float64/float32 copies stay near
#: 100 MB whatever the width (about 130,000 rows of 32 columns, 4,000 of 1,000).
CHUNK_VALUES = 1 << 22


class Table(NamedTuple):
    """A whole file, before labels are mapped and features checked.

    Attributes:
        X: Numeric features ``[n, d]``, in the order of ``feature_names``.
        labels: Raw labels ``[n]`` (any dtype), or ``None`` when the file has none.
        feature_names: ``d`` column names (made up as ``x0, x1, ...`` when the file has none).
        named: Whether ``feature_names`` came from the file.
    """

    X: np.ndarray
    labels: np.ndarray | None
    feature_names: list[str]
    named: bool


class TaskFormat(ABC):
    """A task file format, registered for its suffixes with
    :func:`~metakd.data.readers.registry.register_format`.

    Formats that are not :class:`FrameFormat` are not chunked on disk: ``read_row_chunks`` reads
    such a file whole, then slices it.
    """

    @abstractmethod
    def read(self, path: Path, where: str, options: ReadOptions) -> Table:
        """The whole file as a table.

        Args:
            path: An existing, non-empty file with one of the format's suffixes.
            where: The file as messages name it.
            options: The columns to use (``options.columns`` orders named features).

        Raises:
            DataError: The file cannot be read or does not hold a table of numbers.
        """

    def label_source(self, options: ReadOptions) -> str:
        """Where labels come from, as messages name it (``"label column 'label'"``)."""
        return f"label column '{options.label_column}'"

    def check_id_column(self, id_column: str, where: str) -> None:
        """Raise :class:`DataError` when rows cannot carry column ``id_column`` through (files
        without named columns)."""
        raise DataError(where, f"this file type has no column '{id_column}' to carry through")


class FrameFormat(TaskFormat):
    """A format read as a pandas table whose named columns are features, labels or ignored."""

    @abstractmethod
    def frame(self, path: Path, where: str, options: ReadOptions) -> pd.DataFrame:
        """The whole file as a table with unique string column names (arguments as
        :meth:`TaskFormat.read`'s)."""

    @abstractmethod
    def frames(
        self, path: Path, where: str, options: ReadOptions, rows: int | None
    ) -> Iterator[pd.DataFrame]:
        """The file in consecutive batches of at most ``rows`` rows (``None``: as many as
        :func:`chunk_rows` allows for its width), each with the same columns as :meth:`frame`.
        """

    def read(self, path: Path, where: str, options: ReadOptions) -> Table:
        """The whole file, its columns split by the shared rules (see :class:`TaskFormat`)."""
        X, labels, feature_names = split_frame(self.frame(path, where, options), where, options)
        return Table(X, labels, feature_names, named=True)

    def check_id_column(self, id_column: str, where: str) -> None:
        """Any named column can be carried through (it is checked when the file is read)."""


def chunk_rows(columns: int) -> int:
    """Rows per streamed chunk of a table ``columns`` wide (see :data:`CHUNK_VALUES`)."""
    return max(1, CHUNK_VALUES // max(1, columns))
