"""A domain's rows as the detector takes them: support, labels, pool, and columns by name."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from metakd.data.readers import match_columns
from metakd.detect.config import MIN_NORMALS_WITHOUT_POOL
from metakd.detect.validation import as_labels, as_rows
from metakd.errors import InputError
from metakd.threshold import MIN_THRESHOLD_ROWS


def _samples(n: int) -> str:
    return f"{n} sample" if n == 1 else f"{n} samples"


def _column_names(X: Any) -> list[str] | None:
    """A DataFrame's column names when they are all strings (scikit-learn's rule), else None."""
    columns = getattr(X, "columns", None)
    if columns is None:
        return None
    names = list(columns)
    return names if all(isinstance(n, str) for n in names) else None


def _by_name(X: Any, names: list[str], what: str) -> Any:
    """``X``'s columns in the order ``names`` when ``X`` is a DataFrame (else ``X``)."""
    found = _column_names(X)
    if found is None:
        return X
    return X[match_columns(found, names, what)]


def _check_inputs(
    X: np.ndarray | Tensor, y: np.ndarray | Tensor | None, unlabeled: np.ndarray | Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, np.ndarray]:
    """``(support [n, d], labels [n], pool [m, d] or None, in_support)`` as float32 copies,
    checked; rows of ``X`` labelled -1 or NaN are the first rows of the pool, ``in_support``
    (``[len(X)]`` bool) marks the others."""
    rows = as_rows("support", X)
    labels = torch.zeros(rows.shape[0]) if y is None else as_labels(y)
    if labels.shape != (rows.shape[0],):
        raise InputError(
            f"support labels: expected {rows.shape[0]} labels, got shape {tuple(labels.shape)}"
        )
    unlabelled = torch.isnan(labels) | (labels == -1)
    in_support = (~unlabelled).numpy()
    support, labels = rows[~unlabelled], labels[~unlabelled]
    if bool(unlabelled.any()):
        extra = rows[unlabelled]
        if unlabeled is not None:
            given = as_rows("unlabeled", unlabeled)
            if given.shape[1] != extra.shape[1]:
                raise InputError(
                    f"unlabeled rows have {given.shape[1]} features but the support has "
                    f"{extra.shape[1]}"
                )
            extra = torch.cat([extra, given])
        unlabeled = extra
    bad = sorted(set(labels.unique().tolist()) - {0.0, 1.0})
    if bad:
        raise InputError(f"support labels must be 0 (normal) or 1 (anomaly); found {bad[0]:g}")
    if not (labels == 0).any():
        raise InputError(
            f"support: at least one normal row (label 0) is needed; got {_samples(len(labels))}, "
            "none labelled 0"
        )
    pool = as_rows("unlabeled", unlabeled) if unlabeled is not None else None
    if pool is None and int((labels == 0).sum()) < MIN_NORMALS_WITHOUT_POOL:
        raise InputError(
            f"support: {_samples(int((labels == 0).sum()))} labelled normal and no unlabelled rows; "
            f"calibrating a threshold needs at least {MIN_NORMALS_WITHOUT_POOL} normal rows "
            f"({MIN_THRESHOLD_ROWS} or more recommended) or an unlabelled pool (--unlabeled)"
        )
    if pool is not None and pool.shape[1] != support.shape[1]:
        raise InputError(
            f"unlabeled rows have {pool.shape[1]} features but the support has {support.shape[1]}"
        )
    return support, labels, pool, in_support
