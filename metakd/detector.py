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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import Tensor

from metakd import configio
from metakd.checkpoint import load_checkpoint
from metakd.data.readers import ReadOptions
from metakd.data.transforms import Scaler, align_features
from metakd.distill import DistillConfig, distill
from metakd.errors import MetakdError
from metakd.meta.inner import adapt, reference_scores
from metakd.meta.learners import AdaptationPlan, InnerConfig
from metakd.meta.losses import inner_loss_fn
from metakd.models.deploy import DeployedScorer, Preprocessor, ScoreHead
from metakd.models.profile import NeighbourProfile, bounded_reference
from metakd.models.stack import StackParams
from metakd.models.teachers import LogitScorer, Teacher, count_parameters, score_logits
from metakd.persist import TeacherBundle, export_torchscript, load_scorer, save_scorer
from metakd.threshold import MIN_THRESHOLD_ROWS, ThresholdConfig, calibrate_threshold
from metakd.tracking import TrackingConfig

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
    read: ReadOptions = field(default_factory=ReadOptions)
    """How the support, unlabelled and eval files are read (label column, ignored columns, ...)."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Run tracking."""


def _as_rows(name: str, x: np.ndarray | Tensor) -> Tensor:
    t = torch.tensor(np.asarray(x, dtype=np.float32))  # a copy: callers' arrays may be read-only
    if t.ndim != 2 or t.shape[0] == 0:
        raise MetakdError(
            f"{name}: expected a non-empty 2-d array of rows, got shape {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all():
        raise MetakdError(f"{name}: contains NaN or infinite values")
    return t


def _as_labels(y: np.ndarray | Tensor) -> Tensor:
    try:
        values = np.asarray(y, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise MetakdError(f"support labels must be 0 (normal) or 1 (anomaly): {err}") from None
    return torch.tensor(values)  # a copy, as in _as_rows


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

    Attributes (after ``fit``):
        threshold_: decision threshold of the scorer in use.
        decision_scores_: ``[n]`` scores of the training rows ``X``, the ones the threshold was
            fitted on (see :meth:`fit`).
        labels_: ``[n]`` ``decision_scores_ > threshold_`` as 0/1.
        scorer_: the :class:`DeployedScorer` used by ``decision_function`` (student if distilled).
        teacher_scorer_, student_scorer_: both detectors (``student_scorer_`` may be ``None``).
        report_: sizes, parameter counts, timings, fidelity and thresholds.
    """

    def __init__(
        self,
        teacher: TeacherBundle | str | Path,
        *,
        config: AdaptConfig | None = None,
        contamination: float | None = None,
    ) -> None:
        self.teacher = teacher
        self.config = config
        self.contamination = contamination

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
        bundle = (
            self.teacher
            if isinstance(self.teacher, TeacherBundle)
            else TeacherBundle.load(self.teacher)
        )
        cfg = self._resolved_config()
        support, labels, pool, in_support = _check_inputs(X, y, unlabeled)
        timings: dict[str, float] = {}
        tick = time.perf_counter()
        # A bounded, seeded subsample of a large pool is the teacher's reference (its profile's
        # density reference and its embedding's pool neighbours): adapting and scoring then cost
        # memory and time linear in the rows, not quadratic. Every pool row is still scored and
        # distilled on.
        reference_pool, kept = pool, None
        if pool is not None and bundle.teacher.uses_reference:
            kept = bounded_reference(len(pool), bundle.model.profile.max_pool, cfg.seed)
            if len(kept) < len(pool):
                reference_pool = pool[kept]
        preprocess = self._fit_preprocess(bundle, support, labels, reference_pool, seed=cfg.seed)
        xs = preprocess(support)
        xp = preprocess(pool) if pool is not None else None
        xr = xp if reference_pool is pool else preprocess(reference_pool)
        adapted = _adapt_teacher(bundle, cfg, xs, labels, xp, xr, kept)
        timings["adapt_seconds"] = time.perf_counter() - tick

        teacher_net = LogitScorer(adapted.teacher)
        fitted_support = adapted.support_scores.numpy()
        fitted_pool = None if adapted.pool_scores is None else adapted.pool_scores.numpy()
        t_threshold, method = calibrate_threshold(
            adapted.support_scores.numpy(),
            labels.numpy(),
            None if adapted.pool_scores is None else adapted.pool_scores.numpy(),
            cfg.threshold,
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
            )
            timings["distill_seconds"] = time.perf_counter() - tick
            student_net = ScoreHead(result.student)
            with torch.no_grad():
                s_support = student_net(xs).numpy()
                s_pool = student_net(xp).numpy() if xp is not None else None
            s_threshold, _ = calibrate_threshold(s_support, labels.numpy(), s_pool, cfg.threshold)
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
            raise MetakdError(f"the data has {d} features but the teacher takes {expected}")
        if kind == "pad" and d > expected:
            raise MetakdError(
                f"the data has {d} features, more than the teacher's padded width {expected}"
            )
        rows = support if pool is None else torch.cat([support, pool])
        scaler = Scaler.fit(rows, bundle.scaling)
        projection = align_features(torch.eye(d), bundle.alignment) if kind != "none" else None
        clip = bundle.scaling.clip if bundle.scaling.clip is not None else float("inf")
        profile = None
        profile_config = bundle.model.input_profile()
        if profile_config is not None:
            profile = NeighbourProfile.fit_task(
                support, labels == 0, pool, scale=scaler, config=profile_config, seed=seed
            )
        return Preprocessor(
            scaler.center.reshape(d), scaler.scale.reshape(d), clip, projection, profile
        )

    def decision_function(self, X: np.ndarray | Tensor) -> np.ndarray:
        """Anomaly scores ``[N]`` (higher = more anomalous) from the student (or teacher)."""
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
            raise MetakdError(f"predict_proba: method must be 'linear' or 'unify', got {method!r}")
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
            info={"teacher_checkpoint": self._bundle.path, "window": self._bundle.window},
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
                info={"teacher_checkpoint": self._bundle.path, "window": self._bundle.window},
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
        return detector


def _check_inputs(
    X: np.ndarray | Tensor, y: np.ndarray | Tensor | None, unlabeled: np.ndarray | Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, np.ndarray]:
    """``(support [n, d], labels [n], pool [m, d] or None, in_support)`` as float32 copies,
    checked; rows of ``X`` labelled -1 or NaN are the first rows of the pool, ``in_support``
    (``[len(X)]`` bool) marks the others."""
    rows = _as_rows("support", X)
    labels = torch.zeros(rows.shape[0]) if y is None else _as_labels(y)
    if labels.shape != (rows.shape[0],):
        raise MetakdError(
            f"support labels: expected {rows.shape[0]} labels, got shape {tuple(labels.shape)}"
        )
    unlabelled = torch.isnan(labels) | (labels == -1)
    in_support = (~unlabelled).numpy()
    support, labels = rows[~unlabelled], labels[~unlabelled]
    if bool(unlabelled.any()):
        extra = rows[unlabelled]
        if unlabeled is not None:
            given = _as_rows("unlabeled", unlabeled)
            if given.shape[1] != extra.shape[1]:
                raise MetakdError(
                    f"unlabeled rows have {given.shape[1]} features but the support has "
                    f"{extra.shape[1]}"
                )
            extra = torch.cat([extra, given])
        unlabeled = extra
    bad = sorted(set(labels.unique().tolist()) - {0.0, 1.0})
    if bad:
        raise MetakdError(f"support labels must be 0 (normal) or 1 (anomaly); found {bad[0]:g}")
    if not (labels == 0).any():
        raise MetakdError("support: at least one normal row (label 0) is needed")
    pool = _as_rows("unlabeled", unlabeled) if unlabeled is not None else None
    if pool is None and int((labels == 0).sum()) < MIN_NORMALS_WITHOUT_POOL:
        raise MetakdError(
            f"support: {int((labels == 0).sum())} normal row and no unlabelled rows; "
            f"calibrating a threshold needs at least {MIN_NORMALS_WITHOUT_POOL} normal rows "
            f"({MIN_THRESHOLD_ROWS} or more recommended) or an unlabelled pool (--unlabeled)"
        )
    if pool is not None and pool.shape[1] != support.shape[1]:
        raise MetakdError(
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


def _adapt_teacher(
    bundle: TeacherBundle,
    cfg: AdaptConfig,
    xs: Tensor,
    labels: Tensor,
    xp: Tensor | None,
    xr: Tensor | None,
    kept: Tensor | None,
) -> _Adapted:
    """Adapt a copy of the bundle's teacher to preprocessed support rows ``xs`` with the one
    inner loop; ``xp``: every pool row, ``xr``: the reference rows among them (``kept``)."""
    inner = configio.from_dict(InnerConfig, configio.to_dict(bundle.inner) | cfg.inner)
    teacher = copy.deepcopy(bundle.teacher)
    loss = inner_loss_fn(
        inner.loss,
        has_anomalies=bool((labels == 1).any()),
        score_is_logit=teacher.score_is_logit,
    )
    # Clones: the teacher's weights are overwritten below, and the adapted parameters refer
    # to these tensors.
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
    adapted, _ = adapt(
        params,
        xs,
        labels,
        teacher=teacher,
        loss=loss,
        steps=inner.steps,
        lr=plan.lr,
        first_order=True,  # no meta-gradient is needed here
        layers=plan.layers,
        pool_x=xr,
        pool=inner.pool_term(),
    )
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
            inner=inner,
            support_scores=score_logits(teacher, support_raw),
            pool_scores=None if pool_raw is None else score_logits(teacher, pool_raw),
        )


def decision_scores(scorer: DeployedScorer, X: np.ndarray | Tensor) -> np.ndarray:
    """Scores ``[N]`` of rows ``X [N, d]`` under a scorer (higher = more anomalous); a NaN or
    infinite score is an error, never a row called normal."""
    x = _as_rows("data", X)
    if x.shape[1] != scorer.preprocess.input_dim:
        raise MetakdError(
            f"the data has {x.shape[1]} features but the model takes {scorer.preprocess.input_dim}"
        )
    with torch.no_grad():
        # Row blocks: a reference head's distance matrix is block x reference, never N x reference.
        scores = torch.cat([scorer(block) for block in x.split(SCORE_BLOCK_ROWS)]).numpy()
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
