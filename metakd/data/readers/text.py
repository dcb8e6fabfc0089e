"""Delimited text: ``.csv``/``.txt`` (delimiter detected among ``, ; tab |``) and ``.tsv``."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pandas as pd

from metakd.data.readers.base import FrameFormat, chunk_rows
from metakd.data.readers.columns import check_unique
from metakd.data.readers.options import ReadOptions, ignore_hint
from metakd.data.readers.registry import register_format
from metakd.errors import DataError, first_line

# Candidate delimiters for .csv/.txt, in order of preference when two fit equally well.
_DELIMITERS = (",", ";", "\t", "|")
_SNIFF_LINES = 100


@register_format(".csv", ".tsv", ".txt")
class DelimitedText(FrameFormat):
    """UTF-8 text (a BOM is skipped) with a header line; ``.tsv`` is always tab-separated."""

    def frame(self, path: Path, where: str, options: ReadOptions) -> pd.DataFrame:
        """The whole file."""
        sep, dtype, _ = _text_format(path, where, options)
        try:
            frame = pd.read_csv(path, sep=sep, dtype=dtype, encoding="utf-8-sig", low_memory=False)
        except pd.errors.EmptyDataError:
            raise DataError(where, "file is empty") from None
        except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as err:
            raise DataError(where, f"cannot parse as delimited text ({first_line(err)})") from None
        return frame

    def frames(
        self, path: Path, where: str, options: ReadOptions, rows: int | None
    ) -> Iterator[pd.DataFrame]:
        """The file in chunks of at most ``rows`` lines."""
        sep, dtype, header = _text_format(path, where, options)
        rows = rows or chunk_rows(len(header))
        try:
            with pd.read_csv(
                path, sep=sep, dtype=dtype, encoding="utf-8-sig", chunksize=rows, low_memory=False
            ) as reader:
                yield from reader
        except pd.errors.EmptyDataError:
            raise DataError(where, "file is empty") from None
        except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as err:
            raise DataError(where, f"cannot parse as delimited text ({first_line(err)})") from None


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
                f"give it a name and, if it is not a feature, {ignore_hint(['NAME'])}",
            )
    check_unique(header, where)
    # The label column is read as text so label_map sees labels exactly as written.
    dtype: dict[str, Any] | None = (
        {options.label_column: str} if options.label_column in header else None
    )
    return sep, dtype, header


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
