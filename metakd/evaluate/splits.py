"""Disjoint support / pool / query splits of one task for one shot setting and seed.

A task's rows are split into three disjoint parts (:func:`draw_split`):

* **support**: ``K`` normals and ``A`` anomalies, labelled;
* **pool**: up to ``pool_size`` unlabelled rows, a stratified sample of the remaining rows with
  the task's natural contamination (unlabelled rows first), never more than half of them;
* **query**: every remaining labelled row, capped at ``query_max`` by a stratified subsample.

For a given task and seed the three parts are prefixes of one permutation per label, so the
support of ``K = 5`` is contained in that of ``K = 10`` and the query changes as little as the
shot setting allows: comparisons across shot settings are (nearly) paired.

This is deliberately not :class:`~metakd.episodes.EpisodeSampler`'s rule: meta-training wants
fixed-shape episodes with a query of a set anomaly fraction (a low-noise outer loss), while an
evaluation scores every remaining row at the task's own class ratio (honest AUROC and AUPRC).
Both round stratified counts with :func:`~metakd.episodes.round_half_up`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from metakd.data.task import ANOMALY, NORMAL, UNLABELLED, Task
from metakd.episodes import round_half_up
from metakd.errors import DataError


@dataclass(frozen=True)
class Split:
    """Row indices into one task (int64, pairwise disjoint).

    Attributes:
        support: ``[K + A]``: ``K`` normals, then ``A`` anomalies.
        pool: ``[P]`` unlabelled rows (their labels are never used).
        query: ``[Q]`` labelled rows, shuffled.
    """

    support: np.ndarray
    pool: np.ndarray
    query: np.ndarray


@dataclass(frozen=True)
class SplitCounts:
    """Part sizes of a split beyond the support (see :func:`split_counts`).

    Attributes:
        pool_normal: labelled normal rows in the pool.
        pool_anomaly: labelled anomalous rows in the pool.
        pool_unlabelled: unlabelled rows in the pool.
        query_normal: normal rows in the query.
        query_anomaly: anomalous rows in the query.
    """

    pool_normal: int
    pool_anomaly: int
    pool_unlabelled: int
    query_normal: int
    query_anomaly: int


def split_counts(
    task: Task,
    *,
    shots: int,
    anomaly_shots: int,
    pool_size: int,
    query_max: int,
    min_query_per_class: int,
) -> SplitCounts | str:
    """Part sizes of a split, or why the task cannot serve this setting.

    Depends on the label counts only, so whether a setting is served never depends on the seed.

    Args:
        task: the task.
        shots: ``K`` normal support rows.
        anomaly_shots: ``A`` anomalous support rows.
        pool_size: unlabelled rows wanted (fewer when the task is small).
        query_max: largest query (stratified subsample beyond).
        min_query_per_class: least normal and least anomalous query rows.

    Returns:
        The counts, or a sentence saying why the task cannot serve the setting.
    """
    n_normal, n_anomaly, n_unlabelled = task.n_normals, task.n_anomalies, task.n_unlabelled
    rest_normal, rest_anomaly = n_normal - shots, n_anomaly - anomaly_shots
    if rest_normal < min_query_per_class or rest_anomaly < min_query_per_class:
        return (
            f"{n_normal} normal and {n_anomaly} anomalous rows; needs {shots} + "
            f"{min_query_per_class} normal and {anomaly_shots} + {min_query_per_class} anomalous "
            "(support + query)"
        )
    labelled = rest_normal + rest_anomaly
    # At most half of the remaining labelled rows go to the pool, so the query stays sizeable.
    pool = min(pool_size, n_unlabelled + labelled // 2)
    pool_unlabelled = min(n_unlabelled, pool)
    pool_anomaly = round_half_up((pool - pool_unlabelled) * rest_anomaly / labelled)
    pool_normal = pool - pool_unlabelled - pool_anomaly
    query_normal, query_anomaly = rest_normal - pool_normal, rest_anomaly - pool_anomaly
    if query_normal < min_query_per_class or query_anomaly < min_query_per_class:
        return (
            f"after a pool of {pool} rows ({pool_anomaly} anomalous) the query would hold "
            f"{query_normal} normal and {query_anomaly} anomalous rows, fewer than "
            f"min_query_per_class = {min_query_per_class}"
        )
    if query_normal + query_anomaly > query_max:
        ratio = query_anomaly / (query_normal + query_anomaly)
        query_anomaly = max(min_query_per_class, round_half_up(query_max * ratio))
        query_normal = query_max - query_anomaly
    return SplitCounts(
        pool_normal=pool_normal,
        pool_anomaly=pool_anomaly,
        pool_unlabelled=pool_unlabelled,
        query_normal=query_normal,
        query_anomaly=query_anomaly,
    )


def split_seed(task_name: str, *, base_seed: int, repetition: int) -> np.random.SeedSequence:
    """The seed sequence of one task and repetition (stable across runs and processes)."""
    return np.random.SeedSequence([base_seed, zlib.crc32(task_name.encode()), repetition])


def draw_split(
    task: Task,
    *,
    shots: int,
    anomaly_shots: int,
    pool_size: int,
    query_max: int,
    min_query_per_class: int,
    seed: np.random.SeedSequence | int,
) -> Split:
    """Draw disjoint support, pool and query rows of ``task`` (see the module docstring).

    Args:
        task: the task.
        shots: ``K`` normal support rows.
        anomaly_shots: ``A`` anomalous support rows.
        pool_size: unlabelled rows wanted (fewer when the task is small).
        query_max: largest query (stratified subsample beyond).
        min_query_per_class: least normal and least anomalous query rows.
        seed: seed of the permutations; the same seed gives nested supports across ``K``/``A``.

    Raises:
        DataError: the task cannot serve the setting (the message says why).
    """
    counts = split_counts(
        task,
        shots=shots,
        anomaly_shots=anomaly_shots,
        pool_size=pool_size,
        query_max=query_max,
        min_query_per_class=min_query_per_class,
    )
    if isinstance(counts, str):
        raise DataError(
            task.name, f"cannot serve shots={shots}, anomaly_shots={anomaly_shots}: {counts}"
        )
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(task.y == NORMAL))
    anomaly = rng.permutation(np.flatnonzero(task.y == ANOMALY))
    unlabelled = rng.permutation(np.flatnonzero(task.y == UNLABELLED))
    k, a = shots, anomaly_shots
    pn, pa = k + counts.pool_normal, a + counts.pool_anomaly
    support = np.concatenate([normal[:k], anomaly[:a]])
    pool = rng.permutation(
        np.concatenate([normal[k:pn], anomaly[a:pa], unlabelled[: counts.pool_unlabelled]])
    )
    query = rng.permutation(
        np.concatenate(
            [normal[pn : pn + counts.query_normal], anomaly[pa : pa + counts.query_anomaly]]
        )
    )
    return Split(support.astype(np.int64), pool.astype(np.int64), query.astype(np.int64))


__all__ = ["Split", "SplitCounts", "draw_split", "split_counts", "split_seed"]
