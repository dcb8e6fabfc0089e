"""The episode shape: how many support, query and pool rows an episode holds
(:class:`EpisodeConfig`, with the one default shape), whether a task has rows enough to serve
it (:func:`episode_shortfall`), and the half-up rounding of stratified counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from metakd.data.task import Task
from metakd.errors import ConfigError, check_number


def round_half_up(x: float) -> int:
    """``x`` rounded to the nearest integer, halves up: the one rule for the anomalous count of
    a stratified sample (an episode's query here, an evaluation split's pool and query in
    :mod:`metakd.evaluate.splits`)."""
    return int(math.floor(x + 0.5))


@dataclass
class EpisodeConfig:
    """Episode shape. The defaults are the one default shape: meta-training's (``TrainConfig``),
    which ``metakd tasks show`` checks tasks against.

    Attributes:
        shots: ``K`` normal support rows.
        anomaly_shots: ``A`` labelled anomalous support rows (may be 0).
        query_size: ``Q`` labelled query rows.
        query_anomaly_fraction: Fraction of anomalies in the query; ``round(Q * f)`` of them.
            Far above natural contamination (often 1-5 %), at which most queries would hold
            zero or one anomaly and the outer loss would be very noisy; a quarter rather than a
            half keeps small tasks usable (digits tasks hold ~20 anomalies).
        pool_size: ``P`` unlabelled rows (any label, hidden), disjoint from support and query.
            A pool in every episode by default: scaling is fitted on support and pool, exactly
            as ``metakd adapt`` does with the domain's unlabelled rows, so the teacher meets the
            same statistics in meta-training as in deployment. With ``pool_size_max``, the
            smallest pool.
        pool_size_max: Draw each meta-batch's ``P`` log-uniformly from ``pool_size`` to this
            (as far as its tasks' rows allow), so the pool evidence and the task statistics
            are learned over the pool sizes ``metakd adapt`` meets (up to
            ``model.profile.max_pool``); ``None``: always ``pool_size`` (and no pool at all
            when ``pool_size`` is 0).
        anomaly_shots_max: Draw each meta-batch's ``A`` uniformly from ``anomaly_shots`` to
            this (as far as its tasks' anomalies allow), so one teacher learns to adapt with and
            without labelled anomalies; ``None``: always ``anomaly_shots``. Validation and the
            held-out report use ``anomaly_shots``.
        meta_batch: ``B`` tasks per meta-batch.
    """

    shots: int = 10
    anomaly_shots: int = 0
    query_size: int = 32
    query_anomaly_fraction: float = 0.25
    pool_size: int = 32
    meta_batch: int = 16
    pool_size_max: int | None = 1024
    anomaly_shots_max: int | None = 5

    def __post_init__(self) -> None:
        minimum = {
            "shots": 1,
            "anomaly_shots": 0,
            "query_size": 1,
            "pool_size": 0,
            "meta_batch": 1,
        }
        for key, low in minimum.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"episode.{key} must be an integer >= {low}, got {value!r}")
        check_number("episode.query_anomaly_fraction", self.query_anomaly_fraction, low=0, high=1)
        if self.query_anomalies < 1 or self.query_normals < 1:
            # The outer loss and the meta-val AUROC rank anomalous query rows above normal ones:
            # a query of one class gives them nothing to rank (AUROC 0, no meta-gradient).
            raise ConfigError(
                f"episode.query_size={self.query_size} with episode.query_anomaly_fraction="
                f"{self.query_anomaly_fraction} gives {self.query_normals} normal and "
                f"{self.query_anomalies} anomalous query rows; each episode needs at least one "
                "of each"
            )
        ranges = (
            ("pool_size", self.pool_size, self.pool_size_max),
            ("anomaly_shots", self.anomaly_shots, self.anomaly_shots_max),
        )
        for key, least, most in ranges:
            if most is not None and (
                isinstance(most, bool) or not isinstance(most, int) or most < least
            ):
                raise ConfigError(
                    f"episode.{key}_max must be null or an integer >= episode.{key} ({least}), "
                    f"got {most!r}"
                )

    @property
    def query_anomalies(self) -> int:
        """Anomalies per query, ``round(Q * f)`` with halves rounded up."""
        return round_half_up(self.query_size * self.query_anomaly_fraction)

    @property
    def query_normals(self) -> int:
        """Normal rows per query."""
        return self.query_size - self.query_anomalies


def episode_shortfall(task: Task, config: EpisodeConfig) -> str | None:
    """Why ``task`` cannot serve episodes of this shape, or ``None`` if it can.

    A task needs ``K + Q_normal`` normal rows, ``A + Q_anomaly`` anomalous rows and ``P``
    further rows (of any label, unlabelled included) for the pool.
    """
    need_normals = config.shots + config.query_normals
    need_anomalies = config.anomaly_shots + config.query_anomalies
    need_rows = config.shots + config.anomaly_shots + config.query_size + config.pool_size
    problems = []
    if task.n_normals < need_normals:
        problems.append(
            f"{task.n_normals} normal rows, needs {need_normals} "
            f"({config.shots} support + {config.query_normals} query)"
        )
    if task.n_anomalies < need_anomalies:
        problems.append(
            f"{task.n_anomalies} anomalous rows, needs {need_anomalies} "
            f"({config.anomaly_shots} support + {config.query_anomalies} query)"
        )
    if task.n_rows < need_rows:
        problems.append(f"{task.n_rows} rows, needs {need_rows} with a pool of {config.pool_size}")
    return "; ".join(problems) or None
