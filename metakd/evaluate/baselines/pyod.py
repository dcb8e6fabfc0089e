"""PyOD's detectors as baselines: ``<name>-support`` (fitted on the support normals) and
``<name>-pool`` (fitted on the unlabelled pool) for kNN, Isolation Forest, LOF, ECOD and
COPOD."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from metakd.data.transforms import ScalingConfig
from metakd.errors import MetakdError, check_int
from metakd.evaluate.baselines.common import (
    FittedScaling,
    Source,
    checked_inputs,
    checked_rows,
    fit_rows,
    scaling_rows,
)
from metakd.evaluate.methods import Detector, Method, MethodContext
from metakd.evaluate.settings import baseline_settings
from metakd.extras import require

PyODName = Literal["knn", "iforest", "lof", "ecod", "copod"]
"""PyOD's detectors behind the ``<name>-support`` and ``<name>-pool`` baselines."""

#: Neighbour-based detectors. They measure distances, so they get the scaled rows; and PyOD
#: scores their training rows leave-one-out when fitting, which needs two rows and at most
#: ``rows - 1`` neighbours. Isolation Forest's axis-parallel splits and ECOD's and COPOD's
#: per-feature empirical CDFs are invariant to per-feature increasing affine maps: they get the
#: raw rows, as a PyOD user would give them (the scaling's clip would only add ties).
_NEIGHBOUR_BASED: frozenset[PyODName] = frozenset({"knn", "lof"})
#: Detectors whose PyOD ``decision_function`` refits its empirical CDFs on the training rows plus
#: every row scored in the same call: they score one row at a time, so that a query row's score
#: never depends on the other query rows (the run loop's contract), only on the fitted rows.
_BATCH_DEPENDENT: frozenset[PyODName] = frozenset({"ecod", "copod"})
#: PyOD's own ``n_neighbors`` of the neighbour-based detectors.
_PYOD_NEIGHBOURS: dict[PyODName, int] = {"knn": 5, "lof": 20}


@contextlib.contextmanager
def _quiet_skewness() -> Iterator[None]:
    """Silence scipy's warning on the skewness of (nearly) identical values.

    ECOD and COPOD take a skewness per feature of the fitted rows plus the scored row: with a
    support of one or two normals, or a constant feature, scipy warns on every row scored, and
    PyOD already maps the NaN it then returns to 0.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="Precision loss occurred in moment calculation",
            category=RuntimeWarning,
        )
        yield


def _neighbours(kind: PyODName, wanted: int | None, rows: int) -> int:
    """``n_neighbors`` for ``rows`` fitted rows: ``wanted`` (``None``: PyOD's default for
    ``kind``), at most ``rows - 1`` (PyOD's leave-one-out)."""
    return max(1, min(_PYOD_NEIGHBOURS[kind] if wanted is None else wanted, rows - 1))


def _pyod_model(
    kind: PyODName, *, rows: int, n_neighbors: int | None, n_estimators: int, seed: int
) -> Any:
    """The unfitted PyOD detector for ``rows`` fitted rows (PyOD's defaults, see PyODDetector)."""
    # Imported here, not at module level: PyOD's import (numba, sklearn.datasets) takes seconds,
    # which the CLI would otherwise pay whenever it loads the method registry; and PyOD is an
    # extra (`pip install "metakd[evaluate]"`).
    require("pyod", "the PyOD baselines")
    if kind == "knn":
        from pyod.models.knn import KNN

        return KNN(n_neighbors=_neighbours(kind, n_neighbors, rows))
    if kind == "lof":
        from pyod.models.lof import LOF

        return LOF(n_neighbors=_neighbours(kind, n_neighbors, rows))
    if kind == "iforest":
        from pyod.models.iforest import IForest

        return IForest(n_estimators=n_estimators, random_state=seed)
    if kind == "ecod":
        from pyod.models.ecod import ECOD

        return ECOD()
    if kind == "copod":
        from pyod.models.copod import COPOD

        return COPOD()
    raise MetakdError(f"unknown PyOD detector {kind!r} (known: {', '.join(get_args(PyODName))})")


@baseline_settings("pyod")
@dataclass
class PyODSettings:
    """``baselines.pyod``: the PyOD detectors' settings (PyOD's defaults)."""

    knn_k: int = 5
    """Neighbours of kNN; capped by the rows it is fitted on, ``min(k, n - 1)``, as PyOD
    scores its training rows leave-one-out."""
    lof_k: int = 20
    """Neighbours of LOF; capped as kNN's."""
    iforest_trees: int = 100
    """Trees of the Isolation Forest."""

    def __post_init__(self) -> None:
        for key in ("knn_k", "lof_k", "iforest_trees"):
            check_int(f"baselines.pyod.{key}", getattr(self, key), low=1)


class PyODDetector(Detector):
    """A PyOD detector fitted on the support normals or on the unlabelled pool.

    PyOD's hyper-parameters are its defaults except where a few-shot fit forces a change:

    * ``knn`` (``KNN``: distance to the ``n_neighbors``-th nearest fitted row) and ``lof``
      (``LOF``): ``min(n_neighbors, n - 1)`` neighbours for ``n`` fitted rows (defaults 5 for
      ``knn`` and 20 for ``lof``, PyOD's; the config's ``baselines.pyod.knn_k`` and ``lof_k``),
      since PyOD scores its training rows leave-one-out when fitting: 5 support normals get 4
      neighbours. A single fitted row (``K = 1``) is given twice with one neighbour, so that
      PyOD can fit; a row's score then only depends on its distance to that row. Both run on
      the scaled rows.
    * ``iforest`` (``IForest``): ``n_estimators`` trees (default 100, PyOD's; the config's
      ``baselines.pyod.iforest_trees``) and ``random_state = seed``; raw rows.
    * ``ecod`` (``ECOD``) and ``copod`` (``COPOD``): raw rows, scored one row at a time (PyOD
      would refit its empirical CDFs on the whole batch scored, i.e. on the query). A single
      fitted row (``K = 1``) leaves them nothing to rank by (an empirical CDF of two rows).

    Args:
        kind: the PyOD detector.
        source: fitted on the support normals (scaling fitted on support + pool) or on the
            unlabelled pool (scaling fitted on the pool alone, as a user without labels would).
        scaling: the per-feature scaling of ``knn`` and ``lof`` (usually the teacher's, so every
            method sees the same preprocessing).
        seed: ``random_state`` of ``iforest`` (the others are deterministic).
        n_neighbors: neighbours of ``knn`` and ``lof`` (``None``: PyOD's default for the kind);
            ignored by the others.
        n_estimators: trees of ``iforest``; ignored by the others.
    """

    def __init__(
        self,
        kind: PyODName,
        *,
        source: Source,
        scaling: ScalingConfig,
        seed: int,
        n_neighbors: int | None = None,
        n_estimators: int = 100,
    ) -> None:
        self.kind = kind
        self.source = source
        self.scaling = scaling
        self.seed = seed
        self.n_neighbors = n_neighbors
        self.n_estimators = n_estimators

    @property
    def name(self) -> str:
        """The method's name, e.g. ``knn-support``."""
        return f"{self.kind}-{self.source}"

    def fit(
        self, X: np.ndarray, y: np.ndarray, unlabeled: np.ndarray | None = None
    ) -> PyODDetector:
        X, y, pool = checked_inputs(X, y, unlabeled)
        rows = fit_rows(self.name, self.source, X, y, pool)
        self.scale_: FittedScaling | None = None
        if self.kind in _NEIGHBOUR_BASED:
            self.scale_ = FittedScaling(scaling_rows(X, pool, self.source), self.scaling)
            rows = self.scale_(rows)
            if rows.shape[0] == 1:
                rows = np.repeat(rows, 2, axis=0)
        model = _pyod_model(
            self.kind,
            rows=rows.shape[0],
            n_neighbors=self.n_neighbors,
            n_estimators=self.n_estimators,
            seed=self.seed,
        )
        with _quiet_skewness():
            self.model_ = model.fit(rows)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        x = checked_rows(X)
        if self.scale_ is not None:
            x = self.scale_(x)
        if self.kind in _BATCH_DEPENDENT:
            with _quiet_skewness():
                return np.concatenate([self.model_.decision_function(row[None]) for row in x])
        return np.asarray(self.model_.decision_function(x))


def _method(kind: PyODName, source: Source) -> Method:
    def build(c: MethodContext) -> PyODDetector:
        settings = c.baselines.section(PyODSettings)
        return PyODDetector(
            kind,
            source=source,
            scaling=c.bundle.scaling,
            seed=c.seed,
            n_neighbors={"knn": settings.knn_k, "lof": settings.lof_k}.get(kind),
            n_estimators=settings.iforest_trees,
        )

    return Method(
        f"{kind}-{source}",
        group=source,
        needs_pool=source == "pool",
        build=build,
        needs=("pyod",),
    )


#: Every PyOD detector on the support and on the pool. Unconditional: the default method list
#: never depends on what is installed. PyOD is the ``evaluate`` extra, imported only when one is
#: fitted; an evaluation that selects one checks for it before any work.
METHODS: tuple[Method, ...] = tuple(
    _method(kind, source) for kind in get_args(PyODName) for source in get_args(Source)
)


__all__ = ["METHODS", "PyODDetector", "PyODName", "PyODSettings"]
