"""Few-shot baselines for the evaluation benchmark, behind one PyOD-like interface.

Every baseline is a :class:`Detector`: ``fit(X, y, unlabeled)`` on a task's labelled support
rows ``X [n, d]`` (``y``: 0 normal, 1 anomaly) and optional unlabelled pool ``[m, d]``, then
``decision_function(X) -> [N]`` with higher = more anomalous. They see exactly what
:class:`~metakd.detector.FewShotDetector` sees and never the rows they are evaluated on; all
scaling is fitted on the support and pool (or on the pool alone for the unsupervised ones).

* :class:`PyODDetector`: PyOD's kNN, Isolation Forest, LOF, ECOD and COPOD, each fitted on the
  support normals (``<name>-support``: what a user with only the few labelled normals would
  run) or on the unlabelled pool (``<name>-pool``: a user with no labels at all).
* :class:`LogRegDetector` and :class:`DevNetDetector` need labelled anomalies in the support
  (PyOD's DevNet is not used: see :class:`DevNetDetector`).
* :class:`TeacherDetector` adapts a teacher network with metakd's inner loop; it is the engine of
  the ``scratch`` (random initialisation, :func:`scratch_bundle`) and ``pooled-finetune``
  (non-meta multi-task pretraining, :func:`pretrain_pooled`) ablations.

Each baseline registers in :data:`metakd.evaluate.methods.REGISTRY` right below the code that
builds it, which is all ``metakd evaluate`` needs to run and report it. Their hyper-parameters
(:class:`BaselineConfig`, :class:`PretrainConfig`) live in :mod:`metakd.evaluate.config`, so
that the config loads without this module; they are re-exported here.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from metakd import configio
from metakd.checkpoint import load_checkpoint, save_teacher
from metakd.data.task import Task
from metakd.data.transforms import Scaler, ScalingConfig
from metakd.detector import AdaptConfig, FewShotDetector
from metakd.episodes import EpisodeConfig, EpisodeSampler
from metakd.errors import DataError, MetakdError
from metakd.evaluate.config import BaselineConfig, PretrainConfig
from metakd.evaluate.methods import MethodContext, Setup, register_method
from metakd.evaluate.tasks import meta_train_tasks
from metakd.meta.learners import MAML, InnerConfig, MetaConfig
from metakd.meta.losses import deviation_loss
from metakd.models.teachers import Teacher, build_teacher
from metakd.persist import TeacherBundle

Source = Literal["support", "pool"]


# -- the interface -------------------------------------------------------------------------------


def _rows(name: str, X: Any) -> np.ndarray:
    x = np.asarray(X, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise MetakdError(f"{name}: expected a non-empty 2-d array of rows, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise MetakdError(f"{name}: contains NaN or infinite values")
    return x


def _labels(y: Any, n: int) -> np.ndarray:
    labels = np.asarray(y)
    if labels.shape != (n,):
        raise MetakdError(f"support labels: expected {n} labels, got shape {labels.shape}")
    bad = sorted(set(np.unique(labels).tolist()) - {0, 1})
    if bad:
        raise MetakdError(f"support labels must be 0 (normal) or 1 (anomaly); found {bad[0]}")
    if not (labels == 0).any():
        raise MetakdError("support: at least one normal row (label 0) is needed")
    return labels.astype(np.int64)


class Detector(ABC):
    """A few-shot detector: ``fit`` on support (+ pool), then score rows (higher = anomalous)."""

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray, unlabeled: np.ndarray | None = None) -> Detector:
        """Fit on support rows ``X [n, d]`` with labels ``y [n]`` (0/1) and optional unlabelled
        rows ``unlabeled [m, d]`` of the same task. Returns ``self``."""

    @abstractmethod
    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Anomaly scores ``[N]`` of rows ``X [N, d]`` (higher = more anomalous)."""


class _FittedScaling:
    """Per-feature scaling fitted once on some rows and applied to numpy arrays."""

    def __init__(self, rows: np.ndarray, config: ScalingConfig) -> None:
        self.scaler = Scaler.fit(torch.from_numpy(rows), config)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.scaler(torch.from_numpy(x)).numpy()


def _fit_rows(
    name: str, source: Source, X: np.ndarray, y: np.ndarray, unlabeled: np.ndarray | None
) -> np.ndarray:
    """The rows an unsupervised detector is fitted on: the support normals or the pool."""
    if source == "support":
        return X[y == 0]
    if unlabeled is None:
        raise MetakdError(f"{name}: fitting on the pool needs unlabelled rows (unlabeled=None)")
    return unlabeled


def _scaling_rows(X: np.ndarray, unlabeled: np.ndarray | None, source: Source) -> np.ndarray:
    if source == "pool":
        assert unlabeled is not None  # checked by _fit_rows
        return unlabeled
    return X if unlabeled is None else np.concatenate([X, unlabeled])


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


def _neighbours(wanted: int, rows: int) -> int:
    """``n_neighbors`` for ``rows`` fitted rows: at most ``rows - 1`` (PyOD's leave-one-out)."""
    return max(1, min(wanted, rows - 1))


def _pyod_model(kind: PyODName, *, rows: int, config: BaselineConfig, seed: int) -> Any:
    """The unfitted PyOD detector for ``rows`` fitted rows (PyOD's defaults, see PyODDetector)."""
    # Imported here, not at module level: PyOD's import (numba, sklearn.datasets) takes seconds,
    # which the CLI would otherwise pay whenever it loads the method registry.
    if kind == "knn":
        from pyod.models.knn import KNN

        return KNN(n_neighbors=_neighbours(config.knn_k, rows))
    if kind == "lof":
        from pyod.models.lof import LOF

        return LOF(n_neighbors=_neighbours(config.lof_k, rows))
    if kind == "iforest":
        from pyod.models.iforest import IForest

        return IForest(n_estimators=config.iforest_trees, random_state=seed)
    if kind == "ecod":
        from pyod.models.ecod import ECOD

        return ECOD()
    if kind == "copod":
        from pyod.models.copod import COPOD

        return COPOD()
    raise MetakdError(f"unknown PyOD detector {kind!r} (known: {', '.join(get_args(PyODName))})")


class PyODDetector(Detector):
    """A PyOD detector fitted on the support normals or on the unlabelled pool.

    PyOD's hyper-parameters are its defaults except where a few-shot fit forces a change:

    * ``knn`` (``KNN``: distance to the ``n_neighbors``-th nearest fitted row) and ``lof``
      (``LOF``): ``n_neighbors = min(knn_k, n - 1)`` and ``min(lof_k, n - 1)`` for ``n``
      fitted rows (defaults ``knn_k = 5`` and ``lof_k = 20``, PyOD's), since PyOD scores its
      training rows leave-one-out when fitting: 5 support normals get 4 neighbours. A single
      fitted row (``K = 1``) is given twice with one neighbour, so that PyOD can fit; a row's
      score then only depends on its distance to that row. Both run on the scaled rows.
    * ``iforest`` (``IForest``): ``n_estimators = iforest_trees`` (default 100, PyOD's) and
      ``random_state = seed``; raw rows.
    * ``ecod`` (``ECOD``) and ``copod`` (``COPOD``): raw rows, scored one row at a time (PyOD
      would refit its empirical CDFs on the whole batch scored, i.e. on the query). A single
      fitted row (``K = 1``) leaves them nothing to rank by (an empirical CDF of two rows).

    Args:
        kind: the PyOD detector.
        source: fitted on the support normals (scaling fitted on support + pool) or on the
            unlabelled pool (scaling fitted on the pool alone, as a user without labels would).
        config: ``knn_k``, ``lof_k`` and ``iforest_trees``.
        scaling: the per-feature scaling of ``knn`` and ``lof`` (usually the teacher's, so every
            method sees the same preprocessing).
        seed: ``random_state`` of ``iforest`` (the others are deterministic).
    """

    def __init__(
        self,
        kind: PyODName,
        *,
        source: Source,
        config: BaselineConfig,
        scaling: ScalingConfig,
        seed: int,
    ) -> None:
        self.kind = kind
        self.source = source
        self.config = config
        self.scaling = scaling
        self.seed = seed

    @property
    def name(self) -> str:
        """The method's name, e.g. ``knn-support``."""
        return f"{self.kind}-{self.source}"

    def fit(
        self, X: np.ndarray, y: np.ndarray, unlabeled: np.ndarray | None = None
    ) -> PyODDetector:
        X = _rows("support", X)
        y = _labels(y, X.shape[0])
        pool = None if unlabeled is None else _rows("unlabeled", unlabeled)
        rows = _fit_rows(self.name, self.source, X, y, pool)
        self.scale_: _FittedScaling | None = None
        if self.kind in _NEIGHBOUR_BASED:
            self.scale_ = _FittedScaling(_scaling_rows(X, pool, self.source), self.scaling)
            rows = self.scale_(rows)
            if rows.shape[0] == 1:
                rows = np.repeat(rows, 2, axis=0)
        model = _pyod_model(self.kind, rows=rows.shape[0], config=self.config, seed=self.seed)
        with _quiet_skewness():
            self.model_ = model.fit(rows)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        x = _rows("data", X)
        if self.scale_ is not None:
            x = self.scale_(x)
        if self.kind in _BATCH_DEPENDENT:
            with _quiet_skewness():
                return np.concatenate([self.model_.decision_function(row[None]) for row in x])
        return np.asarray(self.model_.decision_function(x))


def _pyod_method(kind: PyODName, source: Source) -> None:
    register_method(
        f"{kind}-{source}",
        group=source,
        needs_pool=source == "pool",
        build=lambda c: PyODDetector(
            kind, source=source, config=c.config.baselines, scaling=c.bundle.scaling, seed=c.seed
        ),
    )


# Unconditional: PyOD is a core dependency, so the default method list never depends on extras.
# Report order within a group: the two baselines of earlier reports first.
for _kind in get_args(PyODName):
    for _source in get_args(Source):
        _pyod_method(_kind, _source)


class LogRegDetector(Detector):
    """Class-balanced logistic regression on the scaled support (needs labelled anomalies).

    Args:
        c: inverse L2 regularisation strength.
        scaling: per-feature scaling fitted on support + pool.
        seed: solver seed (for reproducibility; lbfgs is deterministic).
    """

    def __init__(self, *, c: float, scaling: ScalingConfig, seed: int) -> None:
        self.c = c
        self.scaling = scaling
        self.seed = seed

    def fit(
        self, X: np.ndarray, y: np.ndarray, unlabeled: np.ndarray | None = None
    ) -> LogRegDetector:
        X = _rows("support", X)
        y = _labels(y, X.shape[0])
        if not (y == 1).any():
            raise MetakdError("logreg-support needs labelled anomalies (label 1) in the support")
        pool = None if unlabeled is None else _rows("unlabeled", unlabeled)
        self.scale_ = _FittedScaling(_scaling_rows(X, pool, "support"), self.scaling)
        self.model_ = LogisticRegression(
            C=self.c, class_weight="balanced", max_iter=1000, random_state=self.seed
        ).fit(self.scale_(X), y)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.model_.decision_function(self.scale_(_rows("data", X)))


register_method(
    "logreg-support",
    group="labelled",
    needs_anomalies=True,
    build=lambda c: LogRegDetector(
        c=c.config.baselines.logreg_c, scaling=c.bundle.scaling, seed=c.seed
    ),
)


class DevNetDetector(Detector):
    """Deviation network (Pang et al. 2019, "Deep Anomaly Detection with Deviation Networks").

    A one-hidden-layer MLP trained with the deviation loss against an N(0, 1) reference score
    prior; as in DevNet, unlabelled rows (the pool) are treated as normal next to the labelled
    normals, and every batch is half labelled anomalies. Needs labelled anomalies.

    Not PyOD's ``DevNet`` (PyOD 3.6): its deviation loss multiplies labels ``[B]`` with scores
    ``[B, 1]``, which broadcasts to ``[B, B]``, so loss and gradients depend only on the share of
    anomalies in a batch, not on which rows they are (same loss and gradients with the labels
    permuted; AUROC 0.0 where ours gets 1.0 on 4 features with shifted anomalies); its ``random_seed`` is unused (two fits
    with the same seed differ), its batches are not balanced, and it prints every epoch.

    Args:
        config: DevNet hyper-parameters (``devnet_*`` fields).
        scaling: per-feature scaling fitted on support + pool.
        seed: seeds initialisation and batches.
    """

    def __init__(self, *, config: BaselineConfig, scaling: ScalingConfig, seed: int) -> None:
        self.config = config
        self.scaling = scaling
        self.seed = seed

    def fit(
        self, X: np.ndarray, y: np.ndarray, unlabeled: np.ndarray | None = None
    ) -> DevNetDetector:
        cfg = self.config
        X = _rows("support", X)
        y = _labels(y, X.shape[0])
        if not (y == 1).any():
            raise MetakdError("devnet needs labelled anomalies (label 1) in the support")
        pool = None if unlabeled is None else _rows("unlabeled", unlabeled)
        self.scale_ = _FittedScaling(_scaling_rows(X, pool, "support"), self.scaling)
        normal = self.scale_(X[y == 0] if pool is None else np.concatenate([X[y == 0], pool]))
        anomalous = self.scale_(X[y == 1])
        normal_t, anomalous_t = torch.from_numpy(normal), torch.from_numpy(anomalous)
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(self.seed)
            net = nn.Sequential(
                nn.Linear(X.shape[1], cfg.devnet_hidden), nn.ReLU(), nn.Linear(cfg.devnet_hidden, 1)
            )
        # DevNet's L2 penalty (0.01) expressed as weight decay of its RMSprop optimiser.
        optimiser = torch.optim.RMSprop(net.parameters(), lr=cfg.devnet_lr, weight_decay=0.01)
        n_anom = cfg.devnet_batch_size // 2
        n_norm = cfg.devnet_batch_size - n_anom
        labels = torch.cat([torch.zeros(n_norm), torch.ones(n_anom)])
        for _ in range(cfg.devnet_steps):
            # Sampling with replacement: a few-shot support has far fewer anomalies than n_anom.
            batch = torch.cat(
                [
                    normal_t[torch.randint(normal_t.shape[0], (n_norm,), generator=gen)],
                    anomalous_t[torch.randint(anomalous_t.shape[0], (n_anom,), generator=gen)],
                ]
            )
            loss = deviation_loss(net(batch).squeeze(-1), labels, margin=cfg.devnet_margin)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        self.net_ = net.eval()
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.net_(torch.from_numpy(self.scale_(_rows("data", X)))).squeeze(-1).numpy()


register_method(
    "devnet",
    group="labelled",
    needs_anomalies=True,
    build=lambda c: DevNetDetector(
        config=c.config.baselines, scaling=c.bundle.scaling, seed=c.seed
    ),
)


class TeacherDetector(Detector):
    """A teacher adapted with metakd's inner loop (no student); scores are the adapted teacher's.

    Args:
        bundle: the teacher to start from and its adaptation settings.
        config: adaptation settings (``student`` is forced off).
    """

    def __init__(self, bundle: TeacherBundle, *, config: AdaptConfig) -> None:
        self.bundle = bundle
        self.config = dataclasses.replace(config, student=False)

    def fit(
        self, X: np.ndarray, y: np.ndarray, unlabeled: np.ndarray | None = None
    ) -> TeacherDetector:
        self.detector_ = FewShotDetector(self.bundle, config=self.config).fit(
            X, y, unlabeled=unlabeled
        )
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.detector_.decision_function(X)


# -- teachers that were not meta-trained ---------------------------------------------------------


def _fresh_teacher(bundle: TeacherBundle, seed: int) -> Teacher:
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(seed)
        return build_teacher(bundle.teacher.input_dim, bundle.model)


def scratch_bundle(bundle: TeacherBundle, *, seed: int) -> TeacherBundle:
    """The meta-trained bundle's architecture and adaptation settings on a random init.

    Meta-SGD's learned per-parameter rates are meta-knowledge, so they are dropped: the scratch
    teacher adapts with the scalar ``inner.lr``.
    """
    return dataclasses.replace(
        bundle,
        teacher=_fresh_teacher(bundle, seed).eval(),
        rates=[],
        info={"init": "random", "seed": seed},
        path="",
    )


def pretrain_pooled(
    bundle: TeacherBundle,
    tasks: Sequence[Task],
    *,
    episode: EpisodeConfig,
    config: PretrainConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> Teacher:
    """Pooled multi-task pretraining of the bundle's architecture: the transfer-learning ablation.

    The same episodes as meta-training (same shapes, per-episode scaling on support + pool,
    alignment), but the network is trained directly on the labelled query rows of every task
    at once, without an inner loop: a meta-learner with zero inner steps, whose "meta-loss" is
    then plain supervised multi-task training.

    Args:
        bundle: supplies architecture, scaling, alignment and inner loss.
        tasks: the meta-train tasks.
        episode: episode shapes (the teacher's meta-training ones).
        config: steps, step size, loss, seed.
        on_step: called with ``(iteration, loss)`` after every step (progress display).

    Returns:
        The pretrained teacher (eval mode).
    """
    with warnings.catch_warnings():
        # Tasks too small for these episodes were already reported when meta-training.
        warnings.simplefilter("ignore")
        sampler = EpisodeSampler(
            tasks,
            episode,
            scaling=bundle.scaling,
            alignment=bundle.alignment,
            seed=config.seed,
            profile=bundle.model.input_profile(),
        )
    teacher = _fresh_teacher(bundle, config.seed)
    learner = MAML(
        teacher,
        inner=InnerConfig(steps=0, lr=bundle.inner.lr, loss=bundle.inner.loss),
        meta=MetaConfig(algorithm="maml", meta_lr=config.lr, outer_loss=config.loss),
        anomaly_shots=episode.anomaly_shots,
    )
    optimiser = torch.optim.Adam(teacher.parameters(), lr=config.lr)
    for iteration in range(1, config.iterations + 1):
        batch = sampler.sample()
        loss, _ = learner.meta_loss(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(teacher.parameters(), learner.meta.grad_clip)
        optimiser.step()
        if on_step is not None:
            on_step(iteration, float(loss.detach()))
    return teacher.eval()


def load_or_pretrain_pooled(
    path: Path,
    bundle: TeacherBundle,
    tasks: Sequence[Task],
    *,
    episode: EpisodeConfig,
    config: PretrainConfig,
    provenance: dict[str, Any],
    on_step: Callable[[int, float], None] | None = None,
) -> TeacherBundle:
    """The pooled-pretrained teacher, reused from ``path`` when it was made the same way.

    The checkpoint records a fingerprint (pretraining settings, architecture, scaling, alignment,
    episode shapes and ``provenance``, e.g. the collection and its meta-train task names); a file
    whose fingerprint differs is retrained and overwritten.

    Returns:
        A bundle with the pretrained teacher and ``bundle``'s adaptation settings (scalar rate).
    """
    fingerprint = {
        "pretrain": configio.to_dict(config),
        "model": configio.to_dict(bundle.model),
        "input_dim": bundle.teacher.input_dim,
        "scaling": configio.to_dict(bundle.scaling),
        "alignment": configio.to_dict(bundle.alignment),
        "episode": configio.to_dict(episode),
        "provenance": copy.deepcopy(provenance),
    }
    if path.is_file():
        try:
            cached = TeacherBundle.load(path)
        except DataError:
            cached = None  # unreadable or stale format: retrain below
        if cached is not None and cached.info.get("fingerprint") == fingerprint:
            return dataclasses.replace(cached, inner=bundle.inner, rates=[])
    teacher = pretrain_pooled(bundle, tasks, episode=episode, config=config, on_step=on_step)
    save_teacher(
        path,
        teacher=teacher,
        model=configio.to_dict(bundle.model),
        inner=configio.to_dict(bundle.inner),
        # Only selects adaptation settings, which are the meta-trained teacher's (see info).
        algorithm=bundle.algorithm,
        rates=[],
        scaling=configio.to_dict(bundle.scaling),
        alignment=configio.to_dict(bundle.alignment),
        episode=configio.to_dict(episode),
        info={"pretraining": "pooled multi-task, no inner loop", "fingerprint": fingerprint},
    )
    return dataclasses.replace(
        bundle, teacher=teacher, rates=[], info={"pretraining": "pooled"}, path=str(path)
    )


#: The pooled pre-training cached in an evaluation's output folder (reused by a re-run into it).
POOLED_CACHE = "pooled_pretrain.pt"


def _prepare_pooled(setup: Setup) -> TeacherBundle:
    """Pretrain (or reuse) the pooled teacher on the meta-trained teacher's meta-train tasks,
    with its meta-training episode shapes; cached as ``pooled_pretrain.pt`` in the output."""
    train = meta_train_tasks(setup.bundle, setup.collection, needed_by=setup.method)
    episode = configio.from_dict(
        EpisodeConfig, load_checkpoint(setup.teacher_path, "teacher")["episode"]
    )
    iterations = setup.config.pretrain.iterations
    job = setup.progress.add_task("pooled pretraining", total=iterations, info="")
    pooled = load_or_pretrain_pooled(
        setup.out_dir / POOLED_CACHE,
        setup.bundle,
        train.tasks,
        episode=episode,
        config=setup.config.pretrain,
        provenance={"tasks": train.collection.source, "train_tasks": train.names},
        on_step=lambda i, loss: setup.progress.update(job, completed=i, info=f"loss {loss:.3f}"),
    )
    setup.progress.update(job, completed=iterations)
    return pooled


def _pooled(context: MethodContext) -> TeacherDetector:
    pooled: TeacherBundle = context.prepared  # from _prepare_pooled
    return TeacherDetector(pooled, config=context.config.adapt)


register_method(
    "scratch",
    group="transfer",
    build=lambda c: TeacherDetector(scratch_bundle(c.bundle, seed=c.seed), config=c.config.adapt),
)
register_method("pooled-finetune", group="transfer", prepare=_prepare_pooled, build=_pooled)


__all__ = [
    "BaselineConfig",
    "Detector",
    "DevNetDetector",
    "LogRegDetector",
    "PretrainConfig",
    "PyODDetector",
    "PyODName",
    "TeacherDetector",
    "load_or_pretrain_pooled",
    "pretrain_pooled",
    "scratch_bundle",
]
