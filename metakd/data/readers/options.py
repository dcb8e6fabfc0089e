"""How a task file is turned into features and labels: :class:`ReadOptions`; and what a user
types to change that, as the readers' messages say it: :class:`ColumnFlags`."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

from metakd.errors import ConfigError


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


@dataclass(frozen=True)
class ColumnFlags:
    """What the running command's user types to leave a column out of the features or to name
    the label column: the readers' messages say it (:func:`ignore_hint`, :func:`label_hint`).

    The default names the config keys (a manifest's ``read:`` section, the Python API); a
    command sets its own with :func:`column_flags` for the duration of a run.

    Attributes:
        ignore_flag: the flag that leaves a column out (``--ignore-column``), if any.
        id_flag: the flag that carries a column to the output instead (``--id-column``).
        label_flag: the flag that names the label column (``--label-column``).
        ignore_key: the config key of the ignored columns.
        label_key: the config key of the label column.
        set_flag: the command takes ``--set KEY=VALUE`` for those keys.
    """

    ignore_flag: str | None = None
    id_flag: str | None = None
    label_flag: str | None = None
    ignore_key: str = "read.ignore_columns"
    label_key: str = "read.label_column"
    set_flag: bool = False

    def ignore(self, columns: Sequence[str]) -> str:
        """How to leave ``columns`` out of the features, e.g. ``pass --ignore-column id``."""
        if self.ignore_flag is not None:
            flags = " ".join(f"{self.ignore_flag} {shlex.quote(c)}" for c in columns)
            notes = [f"config key {self.ignore_key}"]
            if self.id_flag is not None and len(columns) == 1:
                carry = f"or {self.id_flag} {shlex.quote(columns[0])} to copy it to the output"
                notes.insert(0, carry)
            return f"pass {flags} ({'; '.join(notes)})"
        what = "it" if len(columns) == 1 else "them"
        if self.set_flag:
            value = shlex.quote(f"{self.ignore_key}={json.dumps(list(columns))}")
            return f"list {what} in {self.ignore_key} (--set {value})"
        return f"list {what} in {self.ignore_key}"

    def label(self, column: str) -> str:
        """How to make ``column`` the label column, e.g. ``pass --label-column y``."""
        if self.label_flag is not None:
            return f"pass {self.label_flag} {shlex.quote(column)} (config key {self.label_key})"
        if self.set_flag:
            return f"set {self.label_key} to it (--set {shlex.quote(f'{self.label_key}={column}')})"
        return f"set {self.label_key} to it"


#: What the readers' messages name outside any command's block: the config keys.
CONFIG_KEYS = ColumnFlags()
_COLUMN_FLAGS: ContextVar[ColumnFlags] = ContextVar("metakd_column_flags", default=CONFIG_KEYS)


@contextmanager
def column_flags(flags: ColumnFlags) -> Iterator[None]:
    """Within the block, the readers' messages name ``flags`` (a command's own)."""
    token = _COLUMN_FLAGS.set(flags)
    try:
        yield
    finally:
        _COLUMN_FLAGS.reset(token)


def ignore_hint(columns: Sequence[str]) -> str:
    """How the running command leaves ``columns`` out of the features (:class:`ColumnFlags`)."""
    return _COLUMN_FLAGS.get().ignore(columns)


def label_hint(column: str) -> str:
    """How the running command makes ``column`` the label column (:class:`ColumnFlags`)."""
    return _COLUMN_FLAGS.get().label(column)
