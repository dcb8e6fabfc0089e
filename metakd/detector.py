"""Few-shot adaptation to a new domain: a PyOD-style detector built from a meta-trained teacher.

``FewShotDetector.fit`` runs three steps on one domain's rows, each fitted only on the support
and the unlabelled pool: scale them (and build the neighbourhood profile), adapt the teacher
with the same inner loop as meta-training (:func:`metakd.meta.inner.adapt`) and calibrate its
threshold, then distil it into a small student and calibrate the student's.
``decision_function`` returns scores (higher = more anomalous), ``predict`` 0/1 labels.
The detector is a scikit-learn estimator (``get_params``, ``set_params``, ``clone``) with PyOD's
fitted attributes (``decision_scores_``, ``labels_``, ``threshold_``) and methods
(``fit_predict``, ``predict_proba``). Files are read and written by :mod:`metakd.persist`
(:meth:`FewShotDetector.save`, :meth:`FewShotDetector.load`) and :mod:`metakd.adapt`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import ClassifierTags, Tags
from sklearn.utils.validation import check_is_fitted
from torch import Tensor

from metakd import configio
from metakd.checkpoint import load_checkpoint
from metakd.config import resolve_device
from metakd.data.readers import ReadOptions, match_columns
from metakd.data.transforms import Scaler, align_features
from metakd.detect.validation import as_labels, as_rows
from metakd.distill import DistillConfig, distill
from metakd.errors import InputError, MetakdError
from metakd.meta.inner import PoolTerm, adapt, reference_scores
from metakd.meta.learners import AdaptationPlan, InnerConfig
from metakd.meta.losses import LossFn, inner_loss_fn
from metakd.models.deploy import DeployedScorer, Preprocessor, ScoreHead
from metakd.models.profile import NeighbourProfile, bounded_reference, seeded_order
from metakd.models.stack import StackParams
from metakd.models.teachers import LogitScorer, Teacher, count_parameters, score_logits
from metakd.persist import (
    InputSchema,
    TeacherBundle,
    export_torchscript,
    load_detector_window,
    load_input_schema,
    load_scorer,
    save_scorer,
)
from metakd.threshold import MIN_THRESHOLD_ROWS, ThresholdConfig, calibrate_threshold
from metakd.tracking import TrackingConfig, progress_bar

#: Without an unlabelled pool a support needs this many normals: each is scored leave-one-out
#: against the others, and one normal alone has no other to be compared with.
MIN_NORMALS_WITHOUT_POOL = 2
#: Rows scored per forward pass (bounds the working memory of heads with a reference).
SCORE_BLOCK_ROWS = 4096


@dataclass
class AdaptConfig:
    """Settings of ``metakd adapt``."""

    inner: dict[str, Any] = field(default_factory=dict)
    """Overrides of the teacher's stored adaptation settings (e.g. ``{steps: 5}``)."""
    student: bool = True
    """Distil a student (else the adapted teacher is the detector)."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Student architecture and distillation."""
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    """Threshold calibration."""
    seed: int = 0
    """Seeds the student's initialisation and distillation batches."""
    device: str = "cpu"
    """Torch device adapting and distilling: ``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (CUDA
    when the machine has it). The fitted detector is returned and saved on the CPU."""
    read: ReadOptions = field(default_factory=ReadOptions)
    """How the support, unlabelled and eval files are read (label column, ignored columns, ...)."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Run tracking."""

    def __post_init__(self) -> None:
        resolve_device(self.device)  # a machine without CUDA refuses `cuda` here, in one line


@dataclass
class ScoreConfig:
    """Settings of ``metakd score`` (its flags override them)."""

    label_column: str | None = None
    """Column ignored as labels (``None``: the one the model was adapted with)."""
    ignore_columns: list[str] = field(default_factory=list)
    """Columns that are not features, besides those the model was adapted with (ids, ...)."""
    id_column: str | None = None
    """A column copied to the output as its first column (not a feature), e.g. a row id."""
    device: str = "cpu"
    """Torch device scoring: ``cpu``, ``cuda`` (``cuda:N``) or ``auto``."""

    def __post_init__(self) -> None:
        resolve_device(self.device)


class FewShotDetector(BaseEstimator):
    """Adapt a meta-trained teacher to one domain, with PyOD's detector contract.

    A scikit-learn estimator: ``__init__`` only stores its arguments, so ``get_params``,
    ``set_params`` and ``sklearn.base.clone`` work (``clone`` deep-copies a
    :class:`TeacherBundle`; a path is copied as it is). It is not an ``OutlierMixin``: like
    PyOD's detectors, ``predict`` returns 1 for anomalies and 0 for normal rows, not
    scikit-learn's -1 / +1.

    Args:
        teacher: a :class:`TeacherBundle` or the path of a meta-trained ``teacher.pt``.
        config: adaptation, distillation and threshold settings (``None``: the defaults).
        contamination: PyOD's parameter: when given, it replaces ``config.threshold``'s
            ``contamination`` (the expected anomaly fraction of the unlabelled rows). The
            threshold method stays ``config.threshold.method``: with ``auto`` it is used when
            unlabelled rows are given and the support has no anomaly labels. ``None``: as in
            ``config``.
        verbose: show progress while fitting (adaptation; distillation steps and fidelity).

    Attributes (after ``fit``):
        threshold_: decision threshold of the scorer in use.
        decision_scores_: ``[n]`` scores of the training rows ``X``, the ones the threshold was
            fitted on (see :meth:`fit`).
        labels_: ``[n]`` ``decision_scores_ > threshold_`` as 0/1.
        scorer_: the :class:`DeployedScorer` used by ``decision_function`` (student if distilled).
        teacher_scorer_, student_scorer_: both detectors (``student_scorer_`` may be ``None``).
        report_: sizes, parameter counts, timings, fidelity and thresholds.
        n_features_in_: the number of feature columns.
        feature_names_in_: the column names, when ``X`` was a DataFrame with string column
            names (scikit-learn's convention); ``decision_function`` then matches a
            DataFrame's columns by name.
        input_columns_: the named columns of the raw files this detector reads, saved with it
            for ``metakd score`` (``feature_names_in_``'s names, or ``None``; ``metakd adapt``
            sets the raw series' columns for a teacher of windowed series).
    """

    def __init__(
        self,
        teacher: TeacherBundle | str | Path,
        *,
        config: AdaptConfig | None = None,
        contamination: float | None = None,
        verbose: bool = False,
    ) -> None:
        self.teacher = teacher
        self.config = config
        self.contamination = contamination
        self.verbose = verbose

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False  # y is optional: all rows normal by default
        # Labels are binary (0 normal, 1 anomaly; -1 unlabelled), never multi-class: scikit-learn's
        # estimator checks then pass two classes. It is not a classifier (no classifier checks).
        tags.classifier_tags = ClassifierTags(multi_class=False)
        return tags

    def _resolved_config(self) -> AdaptConfig:
        """``config`` (or the defaults) with ``contamination`` applied."""
        cfg = self.config if self.config is not None else AdaptConfig()
        if self.contamination is None:
            return cfg
        threshold = dataclasses.replace(cfg.threshold, contamination=float(self.contamination))
        return dataclasses.replace(cfg, threshold=threshold)

    def fit(
        self,
        X: np.ndarray | Tensor,
        y: np.ndarray | Tensor | None = None,
        unlabeled: np.ndarray | Tensor | None = None,
    ) -> FewShotDetector:
        """Adapt to the rows ``X [n, d]`` of one domain and optional unlabelled rows
        ``unlabeled [m, d]`` of the same domain.

        ``y`` labels the rows of ``X``: 0 normal, 1 anomaly, and -1 or NaN unlabelled (default:
        all normal). Rows labelled -1 / NaN join the unlabelled pool, ahead of ``unlabeled``:
        ``fit(X, y)`` with such rows is ``fit(X[lab], y[lab], unlabeled=X[~lab])``, so a PyOD
        user can pass labelled and unlabelled rows together. The rows labelled 0 / 1 are the
        support (at least one normal).

        ``decision_scores_`` holds, for every row of ``X`` in order, the score the threshold
        was calibrated on: with a student (the deployed scorer) the student's scores of the
        rows, equal to ``decision_function(X)``; without one, the adapted teacher's
        leave-one-out scores (a row in the teacher's reference is not compared with itself),
        which can differ from ``decision_function(X)`` for teachers with a reference.
        """
        prepared = self._prepare(X, y, unlabeled)
        with progress_bar(enabled=self.verbose) as bar:
            job = bar.add_task("adapt teacher", total=1, info=f"{len(prepared.xs)} support rows")
            setup = _InnerSetup.of(prepared.bundle, prepared.cfg, prepared.labels)
            params = setup.run(prepared.xs, prepared.labels, prepared.xr)
            bar.update(job, completed=1, info=f"{setup.inner.steps} inner steps")
        return self._finish(prepared, setup, params)

    def _prepare(
        self,
        X: np.ndarray | Tensor,
        y: np.ndarray | Tensor | None,
        unlabeled: np.ndarray | Tensor | None,
    ) -> _Prepared:
        """Check the inputs and fit the preprocessing: one domain, ready for the inner loop."""
        bundle = (
            self.teacher
            if isinstance(self.teacher, TeacherBundle)
            else TeacherBundle.load(self.teacher)
        )
        cfg = self._resolved_config()
        names = _column_names(X)
        if names is not None:
            # scikit-learn's convention: a DataFrame's columns are remembered, and checked by name
            # in decision_function; saved with the detector, so `metakd score` matches them too.
            self.feature_names_in_ = np.asarray(names, dtype=object)
            unlabeled = _by_name(unlabeled, names, "unlabeled")
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_  # a refit on plain arrays: names of an earlier fit
        self.input_columns_ = names
        support, labels, pool, in_support = _check_inputs(X, y, unlabeled)
        self.n_features_in_ = int(support.shape[1])
        device = torch.device(resolve_device(cfg.device))
        support, labels = support.to(device), labels.to(device)
        pool = None if pool is None else pool.to(device)
        tick = time.perf_counter()
        # A bounded, seeded subsample of a large pool is the teacher's reference (its profile's
        # density reference and its embedding's pool neighbours): adapting and scoring then cost
        # memory and time linear in the rows, not quadratic. Every pool row is still scored and
        # distilled on.
        reference_pool, kept = pool, None
        pool_rows = bundle.model.pool_rows
        if pool is not None and bundle.teacher.uses_reference and pool_rows is not None:
            # The pool in a seeded random order: the profile's reference is its first max_pool
            # rows, and the teacher's embedding reads its first pool_rows, as in meta-training.
            order = seeded_order(len(pool), cfg.seed)
            reference_pool = pool[order[: bundle.model.profile.max_pool]]
            kept = order[:pool_rows]
        elif pool is not None and bundle.teacher.uses_reference:
            kept = bounded_reference(len(pool), bundle.model.profile.max_pool, cfg.seed)
            if len(kept) < len(pool):
                reference_pool = pool[kept]
        preprocess = self._fit_preprocess(bundle, support, labels, reference_pool, seed=cfg.seed)
        xs = preprocess(support)
        xp = preprocess(pool) if pool is not None else None
        if kept is None or (pool is not None and len(kept) == len(pool) and pool_rows is None):
            xr = xp
        else:
            assert pool is not None  # kept is set only with a pool
            xr = preprocess(pool[kept])
        return _Prepared(
            bundle, cfg, preprocess, support, labels, pool, in_support, xs, xp, xr, kept, tick
        )

    def _finish(
        self, prepared: _Prepared, setup: _InnerSetup, params: StackParams
    ) -> FewShotDetector:
        """From the adapted parameters: the teacher's reference and threshold, then the student."""
        p = prepared
        bundle, cfg, preprocess = p.bundle, p.cfg, p.preprocess
        support, labels, pool, in_support = p.support, p.labels, p.pool, p.in_support
        xs, xp, device = p.xs, p.xp, p.support.device
        adapted = setup.complete(params, xs, labels, xp, p.xr, p.kept)
        timings: dict[str, float] = {"adapt_seconds": time.perf_counter() - p.started}

        teacher_net = LogitScorer(adapted.teacher)
        fitted_support = adapted.support_scores.cpu().numpy()
        fitted_pool = None if adapted.pool_scores is None else adapted.pool_scores.cpu().numpy()
        t_threshold, method = calibrate_threshold(
            fitted_support, labels.cpu().numpy(), fitted_pool, cfg.threshold
        )
        self.teacher_scorer_ = DeployedScorer(preprocess, teacher_net, t_threshold).eval()
        self.student_scorer_: DeployedScorer | None = None
        report: dict[str, Any] = {
            "support_rows": int(support.shape[0]),
            "support_anomalies": int((labels == 1).sum()),
            "unlabeled_rows": 0 if pool is None else int(pool.shape[0]),
            "features": int(support.shape[1]),
            "teacher_parameters": count_parameters(adapted.teacher),
            "teacher_threshold": t_threshold,
            "threshold_method": method,
            "inner": configio.to_dict(adapted.inner),
        }
        if cfg.student:
            tick = time.perf_counter()
            student_config = cfg.distill.student.resolved(
                teacher_is_logit=adapted.teacher.score_is_logit,
                teacher_skip=adapted.teacher.input_skip,
            )
            with progress_bar(enabled=self.verbose) as bar:
                job = bar.add_task("distil student", total=cfg.distill.steps, info="")
                result = distill(
                    # Row blocks: distillation labels tens of thousands of rows at once.
                    lambda x: torch.cat([teacher_net(b) for b in x.split(SCORE_BLOCK_ROWS)]),
                    xs,
                    labels,
                    xp,
                    teacher_threshold=t_threshold,
                    config=dataclasses.replace(cfg.distill, student=student_config),
                    seed=cfg.seed,
                    support_scores=adapted.support_scores,
                    pool_scores=adapted.pool_scores,
                    on_eval=lambda step, _loss, fidelity: bar.update(
                        job, completed=step, info=f"fidelity {fidelity:.3f}"
                    ),
                )
                # Early stopping ends before the budget: the bar shows the steps taken.
                bar.update(job, total=result.steps, completed=result.steps)
            timings["distill_seconds"] = time.perf_counter() - tick
            student_net = ScoreHead(result.student)
            with torch.no_grad():
                s_support = student_net(xs).cpu().numpy()
                s_pool = student_net(xp).cpu().numpy() if xp is not None else None
            s_threshold, _ = calibrate_threshold(
                s_support, labels.cpu().numpy(), s_pool, cfg.threshold
            )
            fitted_support, fitted_pool = s_support, s_pool
            self.student_scorer_ = DeployedScorer(preprocess, student_net, s_threshold).eval()
            self._student_config = student_config
            self._student = result.student
            report |= {
                "student_parameters": count_parameters(result.student),
                "student_threshold": s_threshold,
                "fidelity_spearman": result.fidelity,
                "distill_steps": result.steps,
                "distill_history": result.history,
            }
        report["timings"] = timings
        report["device"] = str(device)
        # Fitted detectors live on the CPU whatever device fitted them: saved files and
        # decision_function then behave alike everywhere (`metakd score --device` moves one).
        self.teacher_scorer_ = self.teacher_scorer_.cpu()
        if self.student_scorer_ is not None:
            self.student_scorer_ = self.student_scorer_.cpu()
            self._student = self._student.cpu()
        adapted.teacher.cpu()
        self._bundle = bundle
        self._teacher = adapted.teacher
        self.scorer_ = self.student_scorer_ or self.teacher_scorer_
        self.threshold_ = self.scorer_.threshold
        self.report_ = report
        # The scores the threshold was fitted on, in the order of X: rows of X labelled -1 are
        # the first rows of the pool.
        train_scores = np.empty(len(in_support), dtype=fitted_support.dtype)
        train_scores[in_support] = fitted_support
        if not in_support.all():
            assert fitted_pool is not None
            train_scores[~in_support] = fitted_pool[: int((~in_support).sum())]
        self.decision_scores_ = train_scores
        self.labels_ = (train_scores > self.threshold_).astype(np.int64)
        return self

    def fit_predict(
        self,
        X: np.ndarray | Tensor,
        y: np.ndarray | Tensor | None = None,
        unlabeled: np.ndarray | Tensor | None = None,
    ) -> np.ndarray:
        """``fit(X, y, unlabeled)`` then ``labels_``, the 0/1 labels of the training rows."""
        labels: np.ndarray = self.fit(X, y, unlabeled).labels_
        return labels

    @staticmethod
    def _fit_preprocess(
        bundle: TeacherBundle, support: Tensor, labels: Tensor, pool: Tensor | None, *, seed: int
    ) -> Preprocessor:
        """Scaling (and the neighbourhood profile) fitted on the support and the pool, never on
        rows to be evaluated."""
        d = support.shape[1]
        expected = bundle.teacher.input_dim - bundle.teacher.profile_width
        kind = bundle.alignment.kind
        if kind == "none" and d != expected:
            raise InputError(f"the data has {d} features but the teacher takes {expected}")
        if kind == "pad" and d > expected:
            raise InputError(
                f"the data has {d} features, more than the teacher's padded width {expected}"
            )
        rows = support if pool is None else torch.cat([support, pool])
        scaler = Scaler.fit(rows, bundle.scaling)
        eye = torch.eye(d, device=support.device)
        projection = align_features(eye, bundle.alignment) if kind != "none" else None
        clip = bundle.scaling.clip if bundle.scaling.clip is not None else float("inf")
        profile = None
        profile_config = bundle.model.input_profile()
        if profile_config is not None:
            profile = NeighbourProfile.fit_task(
                support,
                labels == 0,
                pool,
                scale=scaler,
                config=profile_config,
                seed=seed,
                scale_rows=bundle.model.pool_rows,
            )
        return Preprocessor(
            scaler.center.reshape(d), scaler.scale.reshape(d), clip, projection, profile
        )

    def decision_function(self, X: np.ndarray | Tensor) -> np.ndarray:
        """Anomaly scores ``[N]`` (higher = more anomalous) from the student (or teacher).

        A DataFrame's columns are matched by name to those the detector was fitted on (when it
        was fitted on a DataFrame): reordered, or an error naming a missing or unknown column.
        """
        check_is_fitted(self, "scorer_")  # scikit-learn's NotFittedError before fit
        names = getattr(self, "feature_names_in_", None)
        if names is not None:
            X = _by_name(X, [str(n) for n in names], "data")
        shape = np.shape(X)
        if len(shape) == 2 and shape[1] != self.n_features_in_:
            # scikit-learn's wording for a width other than the fitted one.
            raise InputError(
                f"X has {shape[1]} features, but FewShotDetector is expecting "
                f"{self.n_features_in_} features as input"
            )
        return decision_scores(self.scorer_, X)

    def predict(self, X: np.ndarray | Tensor) -> np.ndarray:
        """``[N]`` labels: 1 where the score exceeds ``threshold_``."""
        return (self.decision_function(X) > self.threshold_).astype(np.int64)

    def predict_proba(
        self, X: np.ndarray | Tensor, method: Literal["linear", "unify"] = "linear"
    ) -> np.ndarray:
        """``[N, 2]`` probabilities of normal (column 0) and anomaly (column 1), as PyOD:
        ``linear`` min-max scales the scores by ``decision_scores_``'s range, ``unify``
        applies the Gaussian CDF of their standardised values (Kriegel et al. 2011); both
        clipped to ``[0, 1]``. Needs ``decision_scores_`` (not restored by :meth:`load`)."""
        check_is_fitted(self, "scorer_")
        train = getattr(self, "decision_scores_", None)
        if train is None:
            raise MetakdError(
                "predict_proba needs the training scores (decision_scores_), which are set by "
                "fit and not restored by FewShotDetector.load"
            )
        scores = self.decision_function(X).astype(np.float64)
        train = np.asarray(train, dtype=np.float64)
        if method == "linear":
            low, span = float(train.min()), float(train.max() - train.min())
            anomaly = (scores - low) / (span if span > 0 else 1.0)  # as MinMaxScaler
        elif method == "unify":
            std = float(train.std())
            z = (scores - float(train.mean())) / ((std if std > 0 else 1.0) * np.sqrt(2.0))
            anomaly = torch.erf(torch.from_numpy(z)).numpy()
        else:
            raise InputError(f"predict_proba: method must be 'linear' or 'unify', got {method!r}")
        anomaly = anomaly.clip(0.0, 1.0)
        return np.stack([1.0 - anomaly, anomaly], axis=1)

    # -- persistence -------------------------------------------------------------------------

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``teacher.pt``, and with a student ``student.pt``, ``student.torchscript.pt``
        and ``student.onnx`` (a fitted detector only: one from :meth:`load` has no weights to
        write). ``student.onnx`` needs ``pip install metakd[onnx]``: without it the rest is
        written and a warning says so."""
        from metakd.persist import export_onnx, onnx_available, warn_onnx_unavailable

        if not hasattr(self, "_teacher"):
            raise MetakdError("save needs a detector fitted with fit (not one from load)")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"teacher": out_dir / "teacher.pt"}
        teacher = self._teacher
        save_scorer(
            paths["teacher"],
            self.teacher_scorer_,
            net="teacher",
            spec={"model": configio.to_dict(self._bundle.model), "input_dim": teacher.input_dim},
            state=teacher.state_dict(),
            info=self._info(),
        )
        if self.student_scorer_ is not None:
            student = self._student
            paths["student"] = out_dir / "student.pt"
            save_scorer(
                paths["student"],
                self.student_scorer_,
                net="student",
                spec={
                    "student": configio.to_dict(self._student_config),
                    "input_dim": teacher.input_dim,
                },
                state=student.state_dict(),
                info=self._info(),
            )
            paths["torchscript"] = out_dir / "student.torchscript.pt"
            export_torchscript(self.student_scorer_, paths["torchscript"])
            onnx_path = out_dir / "student.onnx"
            if onnx_available():
                paths["onnx"] = onnx_path
                try:
                    export_onnx(self.student_scorer_, onnx_path)
                except MetakdError:
                    onnx_path.unlink(missing_ok=True)  # never an earlier student's beside this one
                    raise
            else:
                onnx_path.unlink(missing_ok=True)  # an earlier student's, not this one's
                warn_onnx_unavailable()
        return paths

    def _info(self) -> dict[str, Any]:
        """What a saved detector carries besides its weights: where it came from, and how raw
        files become its input rows (columns, windows), so `metakd score` reads them alike."""
        read = self._resolved_config().read
        schema = InputSchema(
            columns=self.input_columns_,
            label_column=read.label_column,
            ignore_columns=list(read.ignore_columns),
        )
        return {
            "teacher_checkpoint": self._bundle.path,
            "window": self._bundle.window,
            "input": dataclasses.asdict(schema),
        }

    @classmethod
    def load(cls, path: str | Path) -> FewShotDetector:
        """A fitted detector from a folder written by :meth:`save` (or ``metakd adapt``), or
        from one of its ``teacher.pt`` / ``student.pt``: it scores with ``student.pt`` when
        present, else ``teacher.pt``; ``decision_function``, ``predict`` and ``threshold_``
        work as before saving.

        Not restored: ``report_``, ``decision_scores_`` and ``labels_`` (so ``predict_proba``
        needs a refit), and the adapted networks' specs (so ``save`` does not work). Its
        ``teacher`` parameter is the path of the meta-trained teacher the detector was adapted
        from, as stored (empty when it was adapted from an in-memory bundle), so ``clone`` and
        refitting work when that file exists."""
        path = Path(path)
        if path.is_dir():
            folder = path
            main = path / "student.pt" if (path / "student.pt").is_file() else path / "teacher.pt"
        else:
            folder, main = path.parent, path
        scorer = load_scorer(main)
        data = load_checkpoint(main, "detector")
        detector = cls(str(data.get("info", {}).get("teacher_checkpoint", "")))
        detector.student_scorer_ = None
        if data.get("net") == "student":
            detector.student_scorer_ = scorer
            if (folder / "teacher.pt").is_file():
                detector.teacher_scorer_ = load_scorer(folder / "teacher.pt")
        else:
            detector.teacher_scorer_ = scorer
        detector.scorer_ = scorer
        detector.threshold_ = scorer.threshold
        detector.n_features_in_ = scorer.preprocess.input_dim
        detector.input_columns_ = load_input_schema(main).columns
        if detector.input_columns_ is not None and load_detector_window(main) is None:
            detector.feature_names_in_ = np.asarray(detector.input_columns_, dtype=object)
        return detector


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


@dataclass
class _Adapted:
    """The adapted teacher (its reference stored) and its logit-scale scores of the support and
    pool rows themselves, leave-one-out where a row is in the reference."""

    teacher: Teacher
    inner: InnerConfig
    support_scores: Tensor
    pool_scores: Tensor | None


@dataclass
class _Prepared:
    """One domain's checked inputs and fitted preprocessing, ready for the inner loop: the raw
    ``support``, ``labels`` and ``pool`` rows (on the fitting device), ``in_support`` (which rows
    of ``X`` are support rows), and the preprocessed support ``xs``, pool ``xp`` and reference
    rows ``xr`` (the pool rows ``kept`` as the teacher's reference)."""

    bundle: TeacherBundle
    cfg: AdaptConfig
    preprocess: Preprocessor
    support: Tensor
    labels: Tensor
    pool: Tensor | None
    in_support: np.ndarray
    xs: Tensor
    xp: Tensor | None
    xr: Tensor | None
    kept: Tensor | None
    started: float

    def batch_key(self) -> tuple[Any, ...]:
        """Domains with equal keys adapt in one batched call (:func:`fit_many`)."""
        return (
            tuple(self.xs.shape),
            None if self.xr is None else tuple(self.xr.shape),
            bool((self.labels == 1).any()),  # which inner loss applies
            str(self.xs.device),
        )


@dataclass
class _InnerSetup:
    """The inner loop's settings for a teacher: its (adapt-overridden) inner config, a copy of
    the teacher on the fitting device, the loss, the starting parameters and the plan."""

    inner: InnerConfig
    teacher: Teacher
    loss: LossFn
    params: StackParams
    plan: AdaptationPlan
    pool: PoolTerm | None

    @staticmethod
    def of(bundle: TeacherBundle, cfg: AdaptConfig, labels: Tensor) -> _InnerSetup:
        inner = configio.from_dict(InnerConfig, configio.to_dict(bundle.inner) | cfg.inner)
        teacher = copy.deepcopy(bundle.teacher).to(labels.device)
        loss = inner_loss_fn(
            inner.loss,
            has_anomalies=bool((labels == 1).any()),
            score_is_logit=teacher.score_is_logit,
        )
        # Clones: the adapted parameters refer to these tensors, and each domain's teacher
        # copy is overwritten with its own adapted weights.
        params = StackParams.from_layers(
            [
                (
                    layer.weight.detach().clone(),
                    None if layer.bias is None else layer.bias.detach().clone(),
                )
                for layer in teacher.linear_layers()
            ]
        )
        # Meta-SGD's learned rates, unless the step size is overridden.
        plan = AdaptationPlan.of(teacher, inner, [] if "lr" in cfg.inner else bundle.rates)
        return _InnerSetup(inner, teacher, loss, params, plan, inner.pool_term())

    def run(self, xs: Tensor, labels: Tensor, xr: Tensor | None) -> StackParams:
        """The one inner loop on one domain's preprocessed support ``xs [n, D]`` (and reference
        pool rows ``xr [m, D]``); under ``torch.func.vmap`` on a batch of domains."""
        adapted, _ = adapt(
            self.params,
            xs,
            labels,
            teacher=self.teacher,
            loss=self.loss,
            steps=self.inner.steps,
            lr=self.plan.lr,
            first_order=True,  # no meta-gradient is needed here
            layers=self.plan.layers,
            pool_x=xr,
            pool=self.pool,
        )
        return adapted

    def run_batch(self, domains: list[_Prepared]) -> list[StackParams]:
        """:meth:`run` on domains of one :meth:`_Prepared.batch_key`, batched with
        ``torch.func.vmap`` as meta-training batches tasks (the weights unbatched)."""
        if len(domains) == 1:
            return [self.run(domains[0].xs, domains[0].labels, domains[0].xr)]
        xs = torch.stack([d.xs for d in domains])
        ys = torch.stack([d.labels for d in domains])
        xr = (
            None
            if domains[0].xr is None
            else torch.stack([d.xr for d in domains if d.xr is not None])
        )
        batched = torch.func.vmap(self.run, in_dims=(0, 0, None if xr is None else 0))(xs, ys, xr)
        return [_unbatch(batched, i) for i in range(len(domains))]

    def complete(
        self,
        adapted: StackParams,
        xs: Tensor,
        labels: Tensor,
        xp: Tensor | None,
        xr: Tensor | None,
        kept: Tensor | None,
    ) -> _Adapted:
        """A teacher holding one domain's adapted parameters and reference, with its
        leave-one-out scores of the support and pool rows ``xp`` (``xr``: those in the
        reference, ``kept``)."""
        teacher = copy.deepcopy(self.teacher)
        with torch.no_grad():
            # The reference to store, and the support's and pool's own scores, leave-one-out:
            # what the threshold and the student's targets are fitted on (a row in the reference
            # is not its own neighbour).
            reference, support_raw, pool_raw = reference_scores(
                adapted, teacher=teacher, support_x=xs, support_y=labels, pool_x=xr
            )
            teacher.load_stack(adapted)
            teacher.store_reference(reference)
            teacher.eval()
            if xr is not xp and xp is not None and pool_raw is not None:
                # Rows outside the reference are new to it and scored as new rows; rows inside
                # it keep their leave-one-out scores from above.
                in_reference = pool_raw
                pool_raw = torch.cat([teacher(chunk) for chunk in xp.split(SCORE_BLOCK_ROWS)])
                pool_raw[kept] = in_reference
            return _Adapted(
                teacher=teacher,
                inner=self.inner,
                support_scores=score_logits(teacher, support_raw),
                pool_scores=None if pool_raw is None else score_logits(teacher, pool_raw),
            )


def _unbatch(params: StackParams, i: int) -> StackParams:
    """Domain ``i``'s parameters from a batched :class:`StackParams` (unbatched leaves, the
    shared weights, come back from ``vmap`` expanded: all are indexed alike)."""
    return StackParams(
        weights=tuple(w[i] for w in params.weights),
        biases=tuple(None if b is None else b[i] for b in params.biases),
        factors=tuple(tuple((h[i], g[i]) for h, g in layer) for layer in params.factors),
    )


def fit_many(
    detectors: Sequence[FewShotDetector],
    data: Sequence[tuple[Any, Any, Any]],
    *,
    on_fitted: Callable[[int], None] | None = None,
) -> list[FewShotDetector | MetakdError]:
    """Fit each detector on its domain's ``(X, y, unlabeled)``, as :meth:`FewShotDetector.fit`
    does, adapting the teacher on domains of the same shapes (support rows, reference pool rows,
    with or without anomalies) in one batched inner loop (``torch.func.vmap``, the path of
    meta-training). Results equal separate fits to float rounding.

    Returns:
        Per domain, in order, the fitted detector or the :class:`MetakdError` that stopped it
        (bad rows, too few normals, ...): one domain's failure does not stop the others.
        ``on_fitted(i)`` is called as domain ``i`` finishes (progress).
    """
    results: list[FewShotDetector | MetakdError] = []
    prepared: dict[int, _Prepared] = {}
    for i, (detector, (X, y, unlabeled)) in enumerate(zip(detectors, data, strict=True)):
        try:
            prepared[i] = detector._prepare(X, y, unlabeled)
            results.append(detector)
        except MetakdError as err:
            results.append(err)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, p in prepared.items():
        # The same teacher, inner settings and shapes: one inner loop serves them all.
        key = (id(p.bundle), json.dumps(p.cfg.inner, sort_keys=True), *p.batch_key())
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        first = prepared[members[0]]
        setup = _InnerSetup.of(first.bundle, first.cfg, first.labels)
        params = setup.run_batch([prepared[i] for i in members])
        for i, adapted in zip(members, params, strict=True):
            try:
                detectors[i]._finish(prepared[i], setup, adapted)
            except MetakdError as err:
                results[i] = err
            if on_fitted is not None:
                on_fitted(i)
    return results


def decision_scores(scorer: DeployedScorer, X: np.ndarray | Tensor) -> np.ndarray:
    """Scores ``[N]`` of rows ``X [N, d]`` under a scorer (higher = more anomalous); a NaN or
    infinite score is an error, never a row called normal."""
    x = as_rows("data", X)
    if x.shape[1] != scorer.preprocess.input_dim:
        raise InputError(
            f"the data has {x.shape[1]} features but the model takes {scorer.preprocess.input_dim}"
        )
    with torch.no_grad():
        # Row blocks: a reference head's distance matrix is block x reference, never N x reference.
        device = scorer.preprocess.center.device  # where the scorer was moved (score --device)
        blocks = x.split(SCORE_BLOCK_ROWS)
        scores = torch.cat([scorer(block.to(device)).cpu() for block in blocks]).numpy()
    bad = ~np.isfinite(scores)
    if bad.any():
        # A NaN compares as "not above the threshold": it would silently pass as normal.
        raise MetakdError(
            f"{int(bad.sum())} rows score NaN or infinite (first: row {int(np.argmax(bad))}); "
            "their values are beyond what the model's scaling handles (was it meta-trained with "
            "scaling.clip: null?)"
        )
    return scores


def score_rows(scorer: DeployedScorer, X: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [N], is_anomaly [N])`` of rows under a loaded scorer."""
    scores = decision_scores(scorer, X)
    return scores, (scores > scorer.threshold).astype(np.int64)
