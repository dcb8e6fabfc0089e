"""Read one task file (``.npz``, ``.csv``/``.tsv``/``.txt`` or ``.parquet``) into a :class:`Task`.

All readers share one set of rules, so a task means the same thing whatever its format:

* every column that is neither the label column nor ignored is a feature and must be numeric;
* labels are 0 (normal), 1 (anomaly) or -1/empty (unlabelled); other values need a label map;
* features must be finite, unless ``nonfinite="drop"``, which drops the rows and warns.

Each problem raises :class:`~metakd.errors.DataError` naming the file and the column, row or
value at fault; nothing is silently dropped, coerced or truncated.

One module per role:

* :mod:`~metakd.data.readers.read`: :func:`read_task` and :func:`read_row_chunks`;
* :mod:`~metakd.data.readers.options`: :class:`ReadOptions`;
* :mod:`~metakd.data.readers.columns` and :mod:`~metakd.data.readers.labels`: the shared rules;
* :mod:`~metakd.data.readers.base`: what a format implements (:class:`TaskFormat`,
  :class:`FrameFormat`); :mod:`~metakd.data.readers.registry`: suffix -> format;
* one module per format: :mod:`~metakd.data.readers.npz`, :mod:`~metakd.data.readers.text`
  (csv/tsv/txt), :mod:`~metakd.data.readers.parquet`.

A new file type is one module here holding a :class:`TaskFormat` (or :class:`FrameFormat`)
subclass decorated ``@register_format(".suffix")``; this package imports every module in it, so
:func:`read_task`, ``read_row_chunks``, collections and ``metakd adapt --support-dir`` accept the
suffix with no other change.
"""

from __future__ import annotations

import importlib
import pkgutil

from metakd.data.readers.base import CHUNK_VALUES, FrameFormat, Table, TaskFormat
from metakd.data.readers.columns import match_columns
from metakd.data.readers.options import ReadOptions
from metakd.data.readers.read import RowChunk, read_row_chunks, read_task
from metakd.data.readers.registry import (
    FORMATS,
    format_for,
    register_format,
    supported_suffixes,
)

# The modules here register their formats when imported: importing them all fills FORMATS, so a
# new format's module needs no line in this file. The built-ins come first, in the order messages
# and SUPPORTED_SUFFIXES have always listed their suffixes.
for _name in ("npz", "text", "parquet", *(m.name for m in pkgutil.iter_modules(__path__))):
    importlib.import_module(f"{__name__}.{_name}")

#: File suffixes :func:`read_task` understands (lower case): every format of this package.
#: A format registered later from elsewhere is listed by :func:`supported_suffixes`.
SUPPORTED_SUFFIXES: tuple[str, ...] = supported_suffixes()

__all__ = [
    "CHUNK_VALUES",
    "FORMATS",
    "SUPPORTED_SUFFIXES",
    "FrameFormat",
    "ReadOptions",
    "RowChunk",
    "Table",
    "TaskFormat",
    "format_for",
    "match_columns",
    "read_row_chunks",
    "read_task",
    "register_format",
    "supported_suffixes",
]
