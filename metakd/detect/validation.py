"""Input checks shared by the detector and every baseline, with scikit-learn's conventions
(``check_array``'s wording where its estimator checks look for it) and one error type,
:class:`~metakd.errors.InputError`, naming the argument at fault."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse
import torch
from torch import Tensor

from metakd.errors import InputError


def as_rows(name: str, x: np.ndarray | Tensor) -> Tensor:
    if scipy.sparse.issparse(x):
        raise InputError(f"{name}: sparse input is not supported; pass a dense array")
    raw = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if raw.dtype.kind == "c":
        raise InputError(f"{name}: Complex data not supported (complex values)")
    try:
        values = raw.astype(np.float32)  # a copy: callers' arrays may be read-only
    except TypeError as err:  # an object that is no number at all (a dict, say)
        raise TypeError(f"{name}: rows must be numeric ({err})") from None
    except ValueError as err:  # text that is no number
        raise InputError(f"{name}: rows must be numeric ({err})") from None
    if values.ndim == 2 and values.shape[1] == 0:
        # scikit-learn's wording, which its estimator checks look for.
        raise InputError(
            f"{name}: 0 feature(s) (shape={values.shape}) while a minimum of 1 is required."
        )
    if values.ndim == 1:
        raise InputError(
            f"{name}: expected a 2-d array of rows [n, d], got shape {values.shape}. Reshape your "
            "data either using array.reshape(-1, 1) if your data has a single feature or "
            "array.reshape(1, -1) if it contains a single sample."
        )
    if values.ndim != 2 or values.shape[0] == 0:
        raise InputError(
            f"{name}: expected a non-empty 2-d array of rows [n, d], got shape {values.shape}"
        )
    t = torch.from_numpy(values)
    if not torch.isfinite(t).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    return t


def as_labels(y: np.ndarray | Tensor) -> Tensor:
    try:
        values = np.asarray(y, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise InputError(f"support labels must be 0 (normal) or 1 (anomaly): {err}") from None
    return torch.tensor(values)  # a copy, as in as_rows


def check_support_labels(labels: np.ndarray) -> np.ndarray:
    """Support labels ``[n]`` as int64, each 0 (normal) or 1 (anomaly), at least one normal."""
    bad = sorted(set(np.unique(labels).tolist()) - {0, 1})
    if bad:
        raise InputError(f"support labels must be 0 (normal) or 1 (anomaly); found {bad[0]}")
    if not (labels == 0).any():
        raise InputError("support: at least one normal row (label 0) is needed")
    return labels.astype(np.int64)


def support_arrays(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(rows [n, d] float32, labels [n] int64)`` of a support as NumPy arrays (a baseline's
    input), checked as the detector checks its own."""
    rows = as_rows("support", X).numpy()
    labels = as_labels(y).numpy()
    if labels.shape != (rows.shape[0],):
        raise InputError(
            f"support labels: expected {rows.shape[0]} labels, got shape {labels.shape}"
        )
    return rows, check_support_labels(labels)


__all__ = ["as_labels", "as_rows", "check_support_labels", "support_arrays"]
