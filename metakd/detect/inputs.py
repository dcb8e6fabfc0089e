"""A domain's rows as the detector takes them: support, labels, pool, and columns by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metakd.data.readers import match_columns
from metakd.detect.config import MIN_NORMALS_WITHOUT_POOL
from metakd.detect.validation import as_labels, as_rows
from metakd.errors import InputError
from metakd.models.evidence import sorted_distances
from metakd.models.subsample import bounded_reference
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


#: Where a row of ``X`` takes its training score from (:attr:`DomainRows.source`): the pool
#: (its next row in order) or a fresh score by the fitted detector.
FROM_POOL, SCORED_AFTER = -1, -2


@dataclass
class DomainRows:
    """One domain's checked rows (float32 copies) as the detector adapts on them.

    Attributes:
        support: ``[n, d]`` the support: distinct rows (exact duplicates count once), at most
            ``max_support`` normals.
        labels: ``[n]`` 0 normal, 1 anomaly.
        pool: ``[m, d]`` the unlabelled rows, or ``None``.
        source: ``[len(X)]`` where each row of ``X`` takes its training score from: an index
            into ``support`` (a duplicate: its kept twin's), :data:`FROM_POOL` (the pool's next
            row: rows of ``X`` in the pool are its first rows, in order) or
            :data:`SCORED_AFTER` (normals beyond ``max_support``, scored once fitted).
        duplicates: support rows left out as exact duplicates of another.
    """

    support: Tensor
    labels: Tensor
    pool: Tensor | None
    source: np.ndarray
    duplicates: int = 0
    after: Tensor | None = None
    """The rows of ``X`` marked :data:`SCORED_AFTER`, in order (``None``: none)."""

    def scores_of_x(
        self, support: np.ndarray, pool: np.ndarray | None, after: np.ndarray | None
    ) -> np.ndarray:
        """``[len(X)]`` each row's training score in ``X``'s order, from the ``support``
        rows' scores (or a kept twin's), the ``pool``'s (its first rows) and the scores of
        :attr:`after` (``None`` when there are none)."""
        scores = np.empty(len(self.source), dtype=support.dtype)
        from_support, from_pool = self.source >= 0, self.source == FROM_POOL
        scores[from_support] = support[self.source[from_support]]
        if from_pool.any():
            assert pool is not None
            scores[from_pool] = pool[: int(from_pool.sum())]
        if after is not None:
            scores[self.source == SCORED_AFTER] = after
        return scores


def typical_rows(rows: Tensor, count: int, *, seed: int, neighbours: int = 5) -> Tensor:
    """Indices of the ``count`` rows of ``rows [N, d]`` most typical of them: the lowest mean
    distance to their ``neighbours`` nearest rows, in features centred on the median and scaled
    by the interquartile range (robust to the anomalies among them), against a seeded subsample
    of at most 1024 rows (a row is not its own neighbour): memory and time linear in ``N``."""
    x = rows.to(torch.float64)
    median = x.median(0).values
    spread = x.quantile(0.75, dim=0) - x.quantile(0.25, dim=0)
    z = (x - median) / torch.where(spread > 0, spread, torch.ones_like(spread))
    reference = z[bounded_reference(len(z), 1024, seed)]
    k = max(1, min(neighbours, len(reference) - 1))
    density = sorted_distances(z, reference, k).mean(-1)
    return torch.argsort(density, stable=True)[: min(count, len(rows))]


def unsupervised_rows(
    X: np.ndarray | Tensor, unlabeled: np.ndarray | Tensor | None, *, support_rows: int, seed: int
) -> DomainRows:
    """PyOD's ``fit(X)``: ``X`` is unlabelled and contaminated. Every row of ``X`` is a pool row
    (ahead of ``unlabeled``), scored and thresholded as the pool; the support is the
    ``support_rows`` rows of ``X`` most typical of it (:func:`typical_rows`), taken as normal."""
    rows = as_rows("X", X)
    pool = rows
    if unlabeled is not None:
        given = as_rows("unlabeled", unlabeled)
        if given.shape[1] != rows.shape[1]:
            raise InputError(
                f"unlabeled rows have {given.shape[1]} features but X has {rows.shape[1]}"
            )
        pool = torch.cat([rows, given])
    support = rows[typical_rows(rows, support_rows, seed=seed)]
    return DomainRows(
        support=support,
        labels=torch.zeros(len(support)),
        pool=pool,
        source=np.full(len(rows), FROM_POOL),
    )


def _check_inputs(
    X: np.ndarray | Tensor,
    y: np.ndarray | Tensor,
    unlabeled: np.ndarray | Tensor | None,
    *,
    max_support: int | None = None,
    seed: int = 0,
) -> DomainRows:
    """The support, its labels and the pool of labelled rows ``X``, checked; rows of ``X``
    labelled -1 or NaN are the first rows of the pool. Exact duplicates in the support (same
    row, same label) count once; above ``max_support`` normals a seeded subsample is kept.

    Raises:
        InputError: bad rows or labels, no normal row, or too few distinct normals without a
            pool to calibrate a threshold on.
    """
    rows = as_rows("support", X)
    labels = as_labels(y)
    if labels.shape != (rows.shape[0],):
        raise InputError(
            f"support labels: expected {rows.shape[0]} labels, got shape {tuple(labels.shape)}"
        )
    unlabelled = torch.isnan(labels) | (labels == -1)
    source = np.full(len(rows), FROM_POOL)
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
    # Exact duplicates (row and label) count once: a row given twice is no second observation,
    # and leave-one-out scores of a duplicated row would be 0, flagging every unseen normal.
    keyed = torch.cat([support, labels.unsqueeze(1)], dim=1).numpy()
    _, first, twin = np.unique(keyed, axis=0, return_index=True, return_inverse=True)
    kept = np.sort(first)
    position = np.empty(len(keyed), dtype=np.int64)
    position[kept] = np.arange(len(kept))
    index = position[first[twin.reshape(-1)]]  # each support row -> its kept twin
    duplicates = len(keyed) - len(kept)
    support, labels = support[kept], labels[kept]
    normals = np.flatnonzero(labels.numpy() == 0)
    if max_support is not None and len(normals) > max_support:
        # A seeded subsample of the normals is adapted on; the others are scored afterwards.
        chosen = normals[bounded_reference(len(normals), max_support, seed).numpy()]
        keep = np.sort(np.concatenate([chosen, np.flatnonzero(labels.numpy() == 1)]))
        remap = np.full(len(labels), SCORED_AFTER)
        remap[keep] = np.arange(len(keep))
        index = remap[index]
        support, labels = support[keep], labels[keep]
    source[(~unlabelled).numpy()] = index
    pool = as_rows("unlabeled", unlabeled) if unlabeled is not None else None
    distinct = int((labels == 0).sum())
    if pool is None and distinct < MIN_NORMALS_WITHOUT_POOL:
        repeated = f", {duplicates} of them exact duplicates" if duplicates else ""
        raise InputError(
            f"support: {_samples(distinct)} labelled normal ({_samples(len(rows))} given"
            f"{repeated}) and no unlabelled rows; calibrating a threshold needs at least "
            f"{MIN_NORMALS_WITHOUT_POOL} normal rows, distinct ({MIN_THRESHOLD_ROWS} or more "
            "recommended), or an unlabelled pool (--unlabeled)"
        )
    if pool is not None and pool.shape[1] != support.shape[1]:
        raise InputError(
            f"unlabeled rows have {pool.shape[1]} features but the support has {support.shape[1]}"
        )
    after = (
        rows[torch.from_numpy(source == SCORED_AFTER)] if (source == SCORED_AFTER).any() else None
    )
    return DomainRows(support, labels, pool, source, duplicates, after)
