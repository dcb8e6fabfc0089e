"""Raw labels of any dtype to int64 1 (anomaly), 0 (normal) or -1 (unlabelled), the same for
every format."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from metakd.data.readers.options import ReadOptions
from metakd.errors import DataError


def map_labels(raw: np.ndarray, where: str, column: str, options: ReadOptions) -> np.ndarray:
    """Map raw labels ``[n]`` (any dtype) to int64 ``{1, 0, -1}``.

    Each distinct value is resolved once; missing values (NaN, None, empty or blank text) are
    unlabelled.

    Args:
        raw: The labels as read.
        where: The file, for messages.
        column: Where the labels come from, for messages (``"label column 'label'"``).
        options: The label map to apply.

    Raises:
        DataError: A value is neither 0/1/-1/empty nor in the label map (named with its row).
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
