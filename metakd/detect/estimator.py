"""``FewShotDetector``: adapt a meta-trained teacher to one domain, with PyOD's detector contract (module :mod:`metakd.detect`)."""

from __future__ import annotations

import dataclasses
import time
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
from metakd.detect.adaptation import (
    _InnerSetup,
    _Prepared,
    cross_fitted,
    fit_preprocess,
    mixed,
    pool_mix,
    pool_reference,
    restandardised,
    student_preprocess,
)
from metakd.detect.config import SCORE_BLOCK_ROWS, AdaptConfig
from metakd.detect.files import write_detector
from metakd.detect.inputs import _by_name, _check_inputs, _column_names, unsupervised_rows
from metakd.detect.scoring import decision_scores
from metakd.distill import distill
from metakd.errors import InputError, MetakdError
from metakd.models.deploy import DeployedScorer, ScoreHead
from metakd.models.stack import StackParams
from metakd.models.teachers import LogitScorer, count_parameters
from metakd.persist import (
    InputSchema,
    TeacherBundle,
    load_detector_window,
    load_input_schema,
    load_scorer,
)
from metakd.threads import torch_threads
from metakd.threshold import calibrate_threshold
from metakd.tracking import progress_bar


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

        ``fit(X)`` alone is PyOD's call: ``X`` is unlabelled, a share ``contamination`` of it
        anomalous; every row is a pool row (``labels_`` flags that share) and the support is the
        ``config.unlabeled_support`` rows most typical of ``X`` (:func:`.inputs.typical_rows`).

        Otherwise ``X`` is the labelled support: ``y`` labels its rows, 0 normal, 1 anomaly, and
        -1 or NaN unlabelled (``y`` omitted with ``unlabeled`` given: all normal). Rows labelled
        -1 / NaN join the unlabelled pool, ahead of ``unlabeled``: ``fit(X, y)`` with such rows
        is ``fit(X[lab], y[lab], unlabeled=X[~lab])``, so a PyOD user can pass labelled and
        unlabelled rows together. The rows labelled 0 / 1 are the support (at least one normal;
        exact duplicates count once; above ``config.max_support`` normals a seeded subsample is
        adapted on and the others scored after).

        ``decision_scores_`` holds, for every row of ``X`` in order: with a student (the
        deployed scorer) its scores of the rows, equal to ``decision_function(X)``; without one,
        the adapted teacher's scores the threshold was calibrated on, leave-one-out (a row in its
        reference is not compared with itself; without a pool, cross-fitted: ``threshold.folds``)
        and so not always equal to ``decision_function(X)``.
        """
        with torch_threads(self._resolved_config().threads):
            prepared = self._prepare(X, y, unlabeled)
            with progress_bar(enabled=self.verbose) as bar:
                job = bar.add_task(
                    "adapt teacher", total=1, info=f"{len(prepared.xs)} support rows"
                )
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
        domain = (
            unsupervised_rows(X, unlabeled, support_rows=cfg.unlabeled_support, seed=cfg.seed)
            if y is None and unlabeled is None
            else _check_inputs(
                X,
                np.zeros(len(X)) if y is None else y,
                unlabeled,
                max_support=cfg.max_support,
                seed=cfg.seed,
            )
        )
        support, labels, pool = domain.support, domain.labels, domain.pool
        self.n_features_in_ = int(support.shape[1])
        device = torch.device(resolve_device(cfg.device))
        support, labels = support.to(device), labels.to(device)
        pool = None if pool is None else pool.to(device)
        tick = time.perf_counter()
        reference_pool, kept = pool_reference(bundle, pool, cfg.seed)
        preprocess = fit_preprocess(bundle, support, labels, reference_pool, seed=cfg.seed)
        xs = preprocess(support)
        xp = preprocess(pool) if pool is not None else None
        if kept is None or (
            pool is not None and len(kept) == len(pool) and bundle.model.pool_rows is None
        ):
            xr = xp
        else:
            assert pool is not None  # kept is set only with a pool
            xr = preprocess(pool[kept])
        return _Prepared(
            bundle, cfg, preprocess, support, labels, pool, domain, xs, xp, xr, kept, tick
        )

    def _finish(
        self, prepared: _Prepared, setup: _InnerSetup, params: StackParams
    ) -> FewShotDetector:
        """From the adapted parameters: the teacher's reference and threshold, then the student."""
        p = prepared
        bundle, cfg, preprocess = p.bundle, p.cfg, p.preprocess
        support, labels, pool = p.support, p.labels, p.pool
        xs, xp, device = p.xs, p.xp, p.support.device
        adapted = cross_fitted(p, setup, setup.complete(params, xs, labels, xp, p.xr, p.kept))
        timings: dict[str, float] = {"adapt_seconds": time.perf_counter() - p.started}
        teacher_net = LogitScorer(adapted.teacher)
        fitted_support = adapted.threshold_scores.cpu().numpy()
        fitted_pool = None if adapted.pool_scores is None else adapted.pool_scores.cpu().numpy()
        t_threshold, method = calibrate_threshold(
            fitted_support, labels.cpu().numpy(), fitted_pool, cfg.threshold
        )
        own_threshold = adapted.hard_label_threshold(t_threshold)  # the student's, unmixed
        mix = pool_mix(p, adapted.pool_scores)
        if mix is not None:  # the threshold and the saved teacher read the mixed score
            fitted_support, fitted_pool = mixed(mix, p, fitted_support, fitted_pool)
            t_threshold = calibrate_threshold(
                fitted_support, labels.cpu().numpy(), fitted_pool, cfg.threshold
            )[0]
        self.teacher_scorer_ = DeployedScorer(preprocess, teacher_net, t_threshold, mix).eval()
        self.student_scorer_: DeployedScorer | None = None
        report: dict[str, Any] = {
            "support_rows": int(support.shape[0]),
            "support_anomalies": int((labels == 1).sum()),
            "unlabeled_rows": 0 if pool is None else int(pool.shape[0]),
            "features": int(support.shape[1]),
            "teacher_parameters": count_parameters(adapted.teacher),
            "teacher_threshold": t_threshold,
            "threshold_method": method,
            "threshold_cross_fitted": adapted.calibration_scores is not None,
            "linear_mix": adapted.linear_mix,
            "anomaly_mix": adapted.anomaly_mix,
            "pool_share": 0.0 if mix is None else mix.share,
            "pool_knn": 0.0 if mix is None else mix.knn_share,
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
                    teacher_threshold=own_threshold,
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
            s_mix = restandardised(mix, p, s_pool)  # the same mix for the student's scores
            s_support, s_pool = mixed(s_mix, p, s_support, s_pool)
            if adapted.calibration_scores is not None and mix is None:  # its own run low too
                s_threshold = (t_threshold - result.offset) / result.scale
            else:
                fitted = (s_support, labels.cpu().numpy(), s_pool)
                s_threshold = calibrate_threshold(*fitted, cfg.threshold)[0]
            fitted_support, fitted_pool = s_support, s_pool
            # Clipped as the teacher's scaling, or at the reach of the distillation data where
            # the teacher's scaling has no clip (a student extrapolates beyond it).
            rows = [support] if pool is None else [support, pool]
            s_preprocess = student_preprocess(preprocess, rows, cfg.distill)
            self.student_scorer_ = DeployedScorer(
                s_preprocess, student_net, s_threshold, s_mix
            ).eval()
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
        # The scores the threshold was fitted on, fresh ones for normals beyond max_support.
        after = p.domain.after
        self.decision_scores_ = p.domain.scores_of_x(
            fitted_support,
            fitted_pool,
            None if after is None else decision_scores(self.scorer_, after),
        )
        report["support_duplicates"] = p.domain.duplicates
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int64)
        return self

    def fit_predict(
        self,
        X: np.ndarray | Tensor,
        y: np.ndarray | Tensor | None = None,
        unlabeled: np.ndarray | Tensor | None = None,
    ) -> np.ndarray:
        """``fit(X, y, unlabeled)`` then ``labels_``, the 0/1 labels of the training rows."""
        return np.asarray(self.fit(X, y, unlabeled).labels_)

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
        write); see :func:`~metakd.detect.files.write_detector`."""
        if not hasattr(self, "_teacher"):
            raise MetakdError("save needs a detector fitted with fit (not one from load)")
        read = self._resolved_config().read
        return write_detector(
            Path(out_dir),
            bundle=self._bundle,
            teacher=self._teacher,
            teacher_scorer=self.teacher_scorer_,
            student=self._student if self.student_scorer_ is not None else None,
            student_scorer=self.student_scorer_,
            student_config=self._student_config if self.student_scorer_ is not None else None,
            schema=InputSchema(
                columns=self.input_columns_,
                label_column=read.label_column,
                ignore_columns=list(read.ignore_columns),
            ),
        )

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
