"""How a task file is turned into features and labels: :class:`ReadOptions`."""

from __future__ import annotations

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
