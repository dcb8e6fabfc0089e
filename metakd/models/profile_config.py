"""``model.profile``: which evidences a neighbourhood profile holds, its neighbours and bounds
(:mod:`metakd.models.profile` computes the profiles)."""

from __future__ import annotations

from dataclasses import dataclass, field

from metakd.errors import ConfigError

#: Task statistics of the three original evidences (``anomalies`` and ``linear`` add one each).
N_TASK_STATS = 6
#: Every evidence, in profile column order; the first three are the original profile's.
EVIDENCES = (
    "support_b",
    "support_a",
    "pool",
    "raw_pool",
    "cosine_support",
    "cosine_pool",
    "gaussian_support",
    "gaussian_pool",
    "anomalies",
    "linear",
)
#: The evidences a profile holds by default: all but ``gaussian_pool``, which ranks best on its
#: own on image embeddings but, meta-trained beside the others, lost on tables (RESULTS §11).
DEFAULT_EVIDENCES = tuple(e for e in EVIDENCES if e != "gaussian_pool")
#: The evidences of profiles saved before ``profile.evidences`` existed.
LEGACY_EVIDENCES = ["support_b", "support_a", "pool"]
#: Evidences given as one value per row (the others as ``k`` sorted distances).
_SCALAR = ("gaussian_support", "gaussian_pool", "anomalies", "linear")
#: Evidences read as they are, with no typical value ``σ`` in a profile's ``scales``.
UNSCALED = ("anomalies", "linear")


@dataclass
class ProfileConfig:
    """Neighbourhood profile read by the ``profile`` teacher."""

    neighbours: int = 5
    """k: sorted distances kept per reference set."""
    max_pool: int = 1024
    """Most pool rows kept as the density reference (a seeded subsample above it), so scoring
    costs at most ``max_pool + K`` distances per row whatever the pool size. ``metakd adapt``
    bounds the stored reference of every teacher that keeps one (``knn``, ``svdd``) the same
    way; every pool row is still scored and distilled on."""
    max_gaussian: int = 256
    """Most support normals the ``gaussian_support`` evidence's Gaussian is fitted on, most pool
    rows each half of the ``gaussian_pool`` evidence's is, and most labelled rows of each kind
    the ``linear`` evidence's ridge regression is (a seeded subsample above it): each fit costs
    ``O(n³)``, so adapt's time and memory stay bounded whatever the support or pool size."""
    pool_trim: float = 0.25
    """The fraction of each pool half the ``gaussian_pool`` evidence drops before its final fit:
    those farthest from the other half's Gaussian, the pool's likely anomalies."""
    pool_knn_fraction: float = 0.05
    """The pool kNN expert's ``k`` as a fraction of its reference rows (at least
    ``neighbours``): the distance to the ``k``-th nearest pool row, with ``k`` above the size of
    the small clusters anomalies form, which a density of the few nearest rows calls normal
    (:class:`~metakd.models.experts.PoolGaussianMix`)."""
    ridge: float = 1.0
    """The ``linear`` evidence's ridge penalty, relative to the labelled rows' mean squared
    norm about their centre (:class:`~metakd.models.evidence.RidgeDiscriminant`)."""
    clip: float = 10.0
    """Support-standardised values are clipped to ``±clip`` (as ``scaling.clip``)."""
    evidences: list[str] = field(default_factory=lambda: list(DEFAULT_EVIDENCES))
    """The evidences a profile holds (module docstring), in this order; the first
    three must be ``support_b, support_a, pool``. By default every one but ``gaussian_pool``
    (opt in by listing it). Teachers saved before this option hold those three."""

    def __post_init__(self) -> None:
        if isinstance(self.neighbours, bool) or self.neighbours < 1:
            raise ConfigError(f"profile.neighbours must be >= 1, got {self.neighbours!r}")
        if isinstance(self.max_pool, bool) or self.max_pool < 1:
            raise ConfigError(f"profile.max_pool must be >= 1, got {self.max_pool!r}")
        if isinstance(self.max_gaussian, bool) or self.max_gaussian < 3:
            raise ConfigError(f"profile.max_gaussian must be >= 3, got {self.max_gaussian!r}")
        if not 0 <= self.pool_trim < 1:
            raise ConfigError(f"profile.pool_trim must be in [0, 1), got {self.pool_trim!r}")
        if not 0 < self.pool_knn_fraction <= 1:
            raise ConfigError(
                f"profile.pool_knn_fraction must be in (0, 1], got {self.pool_knn_fraction!r}"
            )
        if not 0 < self.ridge < float("inf"):
            raise ConfigError(f"profile.ridge must be positive, got {self.ridge!r}")
        if not self.clip > 0:
            raise ConfigError(f"profile.clip must be positive, got {self.clip!r}")
        unknown = [e for e in self.evidences if e not in EVIDENCES]
        if unknown or len(set(self.evidences)) < len(self.evidences):
            raise ConfigError(
                f"profile.evidences: {unknown or 'repeated'} (each at most once, of "
                f"{', '.join(EVIDENCES)})"
            )
        if list(self.evidences[:3]) != LEGACY_EVIDENCES:
            raise ConfigError(
                f"profile.evidences must start with {', '.join(LEGACY_EVIDENCES)}, got "
                f"{self.evidences}"
            )

    def columns(self) -> list[tuple[str, int]]:
        """Each evidence with its number of columns (``k`` sorted distances, or one value)."""
        return [(e, 1 if e in _SCALAR else self.neighbours) for e in self.evidences]

    def spans(self) -> list[tuple[int, int]]:
        """Each evidence's columns ``[start, stop)`` in a profile row, in :meth:`columns`'
        order; the task statistics follow the last."""
        spans, start = [], 0
        for _, count in self.columns():
            spans.append((start, start + count))
            start += count
        return spans

    @property
    def n_stats(self) -> int:
        """Task statistics after the evidence columns."""
        return N_TASK_STATS + ("anomalies" in self.evidences) + ("linear" in self.evidences)

    @property
    def width(self) -> int:
        """Columns of a profile row: every evidence's, then the task statistics."""
        return sum(count for _, count in self.columns()) + self.n_stats


__all__ = [
    "DEFAULT_EVIDENCES",
    "EVIDENCES",
    "LEGACY_EVIDENCES",
    "N_TASK_STATS",
    "UNSCALED",
    "ProfileConfig",
]
