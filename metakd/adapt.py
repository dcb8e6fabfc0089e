"""Few-shot adaptation to a new domain: a PyOD-style detector built from a meta-trained teacher.

``FewShotDetector.fit`` scales the domain's rows with statistics of its support and unlabelled
pool, adapts the teacher with the same inner loop as meta-training (:func:`metakd.meta.inner.adapt`),
distils it into a small student on the support and pool, and calibrates a threshold.
``decision_function`` returns scores (higher = more anomalous), ``predict`` 0/1 labels.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from metakd import configio
from metakd.checkpoint import load_checkpoint, save_checkpoint
from metakd.data.readers import ReadOptions, read_task
from metakd.data.transforms import AlignmentConfig, Scaler, ScalingConfig, align_features
from metakd.distill import DistillConfig, distill
from metakd.errors import DataError, MetakdError
from metakd.meta.inner import adapt, reference_scores
from metakd.meta.learners import Algorithm, InnerConfig
from metakd.meta.losses import inner_loss_fn
from metakd.models.deploy import (
    DeployedScorer,
    Preprocessor,
    ScoreHead,
    StudentConfig,
    build_student,
)
from metakd.models.profile import NeighbourProfile, bounded_reference
from metakd.models.stack import StackParams
from metakd.models.teachers import (
    LogitScorer,
    ModelConfig,
    Teacher,
    build_teacher,
    count_parameters,
    score_logits,
)
from metakd.threshold import MIN_THRESHOLD_ROWS, ThresholdConfig, calibrate_threshold
from metakd.tracking import TrackingConfig

#: Without an unlabelled pool a support needs this many normals: each is scored leave-one-out
#: against the others, and one normal alone has no other to be compared with.
MIN_NORMALS_WITHOUT_POOL = 2


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


@dataclass
class TeacherBundle:
    """A meta-trained teacher and the settings it must be adapted with."""

    teacher: Teacher
    model: ModelConfig
    inner: InnerConfig
    algorithm: Algorithm
    rates: list[Tensor]
    scaling: ScalingConfig
    alignment: AlignmentConfig
    info: dict[str, Any]
    path: str = ""

    @staticmethod
    def load(path: str | Path) -> TeacherBundle:
        """Load ``teacher.pt`` written by ``metakd meta-train`` (never runs code)."""
        data = load_checkpoint(path, "teacher")
        try:
            model = _stored_model_config(data["model"])
            teacher = build_teacher(int(data["input_dim"]), model)
            teacher.load_weights(data["state_dict"])
            return TeacherBundle(
                teacher=teacher.eval(),
                model=model,
                inner=configio.from_dict(InnerConfig, data["inner"]),
                algorithm=data["algorithm"],
                rates=list(data["rates"]),
                scaling=configio.from_dict(ScalingConfig, data["scaling"]),
                alignment=configio.from_dict(AlignmentConfig, data["alignment"]),
                info=dict(data["info"]),
                path=str(path),
            )
        except (KeyError, RuntimeError, MetakdError) as err:
            raise DataError(
                str(path), f"teacher checkpoint is incomplete or inconsistent ({err})"
            ) from None

    def layer_rates(self) -> float | tuple[tuple[Tensor, Tensor | None], ...]:
        """The inner step size(s) to adapt with (Meta-SGD's learned rates when present)."""
        if not self.rates:
            return self.inner.lr
        rates = iter(self.rates)
        return tuple(
            (next(rates), next(rates) if layer.bias is not None else None)
            for layer in self.teacher.layers
        )


# Checkpoints written before an option existed behaved as with the option off: a key missing from
# a stored config means that, whatever today's default is.
_MODEL_BEFORE_OPTIONS = {"input_skip": False, "pool_neighbours": False}
_STUDENT_BEFORE_OPTIONS = {"head": "linear", "input_skip": False}


def _stored_model_config(data: dict[str, Any]) -> ModelConfig:
    return configio.from_dict(ModelConfig, _MODEL_BEFORE_OPTIONS | data)


def _stored_student_config(data: dict[str, Any]) -> StudentConfig:
    return configio.from_dict(StudentConfig, _STUDENT_BEFORE_OPTIONS | data)


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


class FewShotDetector:
    """Adapt a meta-trained teacher to one domain, with PyOD's detector contract.

    Args:
        teacher: a :class:`TeacherBundle` or the path of a meta-trained ``teacher.pt``.
        config: adaptation, distillation and threshold settings.

    Attributes (after ``fit``):
        threshold_: decision threshold of the scorer in use.
        scorer_: the :class:`DeployedScorer` used by ``decision_function`` (student if distilled).
        teacher_scorer_, student_scorer_: both detectors (``student_scorer_`` may be ``None``).
        report_: sizes, parameter counts, timings, fidelity and thresholds.
    """

    def __init__(
        self, teacher: TeacherBundle | str | Path, *, config: AdaptConfig | None = None
    ) -> None:
        self.teacher = teacher
        self.config = config if config is not None else AdaptConfig()

    def fit(
        self,
        X: np.ndarray | Tensor,
        y: np.ndarray | Tensor | None = None,
        unlabeled: np.ndarray | Tensor | None = None,
    ) -> FewShotDetector:
        """Adapt to labelled support rows ``X [n, d]`` (``y``: 0 normal, 1 anomaly; default all
        normal) and optional unlabelled rows ``unlabeled [m, d]`` of the same domain."""
        bundle = (
            self.teacher
            if isinstance(self.teacher, TeacherBundle)
            else TeacherBundle.load(self.teacher)
        )
        cfg = self.config
        support = _as_rows("support", X)
        labels = torch.zeros(support.shape[0]) if y is None else _as_labels(y)
        if labels.shape != (support.shape[0],):
            raise MetakdError(
                f"support labels: expected {support.shape[0]} labels, got shape {tuple(labels.shape)}"
            )
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
        timings: dict[str, float] = {}
        tick = time.perf_counter()

        # A bounded, seeded subsample of a large pool is the teacher's reference (its profile's
        # density reference and its embedding's pool neighbours): adapting and scoring then cost
        # memory and time linear in the rows, not quadratic. Every pool row is still scored and
        # distilled on.
        reference_pool = pool
        profile_config = bundle.model.input_profile()
        if pool is not None and profile_config is not None:
            reference_pool = pool[bounded_reference(len(pool), profile_config.max_pool, cfg.seed)]
        preprocess = self._fit_preprocess(bundle, support, labels, reference_pool, seed=cfg.seed)
        xs = preprocess(support)
        xp = preprocess(pool) if pool is not None else None
        xr = xp if reference_pool is pool else preprocess(reference_pool)
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
                for layer in teacher.layers
            ]
        )
        adapted, _ = adapt(
            params,
            xs,
            labels,
            teacher=teacher,
            loss=loss,
            steps=inner.steps,
            lr=inner.lr if "lr" in cfg.inner else bundle.layer_rates(),
            first_order=True,  # no meta-gradient is needed here
            layers=(len(teacher.layers) - 1,) if inner.layers == "head" else None,
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
            if xr is not xp:
                # Rows outside the reference are new to it; rows inside it match themselves
                # exactly and are scored leave-one-out (ProfileNet's rule), as above.
                pool_raw = torch.cat([teacher(chunk) for chunk in xp.split(4096)])
            t_support = score_logits(teacher, support_raw)
            t_pool = None if pool_raw is None else score_logits(teacher, pool_raw)
        timings["adapt_seconds"] = time.perf_counter() - tick

        teacher_net = LogitScorer(teacher)
        t_threshold, method = calibrate_threshold(
            t_support.numpy(),
            labels.numpy(),
            None if t_pool is None else t_pool.numpy(),
            cfg.threshold,
        )
        self.teacher_scorer_ = DeployedScorer(preprocess, teacher_net, t_threshold).eval()
        self.student_scorer_: DeployedScorer | None = None
        report: dict[str, Any] = {
            "support_rows": int(support.shape[0]),
            "support_anomalies": int((labels == 1).sum()),
            "unlabeled_rows": 0 if pool is None else int(pool.shape[0]),
            "features": int(support.shape[1]),
            "teacher_parameters": count_parameters(teacher),
            "teacher_threshold": t_threshold,
            "threshold_method": method,
            "inner": configio.to_dict(inner),
        }
        if cfg.student:
            tick = time.perf_counter()
            student_config = cfg.distill.student.resolved(
                teacher_is_logit=teacher.score_is_logit,
                teacher_skip=teacher.input_skip,
            )
            result = distill(
                lambda x: teacher_net(x),
                xs,
                labels,
                xp,
                teacher_threshold=t_threshold,
                config=dataclasses.replace(cfg.distill, student=student_config),
                seed=cfg.seed,
                support_scores=t_support,
                pool_scores=t_pool,
            )
            timings["distill_seconds"] = time.perf_counter() - tick
            student_net = ScoreHead(result.student)
            with torch.no_grad():
                s_support = student_net(xs).numpy()
                s_pool = student_net(xp).numpy() if xp is not None else None
            s_threshold, _ = calibrate_threshold(s_support, labels.numpy(), s_pool, cfg.threshold)
            self.student_scorer_ = DeployedScorer(preprocess, student_net, s_threshold).eval()
            self._student_config = student_config
            report |= {
                "student_parameters": count_parameters(result.student),
                "student_threshold": s_threshold,
                "fidelity_spearman": result.fidelity,
                "distill_steps": result.steps,
                "distill_history": result.history,
            }
        report["timings"] = timings
        self._bundle = bundle
        self.scorer_ = self.student_scorer_ or self.teacher_scorer_
        self.threshold_ = self.scorer_.threshold
        self.report_ = report
        return self

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
        return _scores(self.scorer_, X)

    def predict(self, X: np.ndarray | Tensor) -> np.ndarray:
        """``[N]`` labels: 1 where the score exceeds ``threshold_``."""
        return (self.decision_function(X) > self.threshold_).astype(np.int64)

    # -- persistence -------------------------------------------------------------------------

    def save(self, out_dir: Path) -> dict[str, Path]:
        """Write ``teacher.pt``, and with a student ``student.pt`` and ``student.torchscript.pt``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"teacher": out_dir / "teacher.pt"}
        teacher = self.teacher_scorer_.net.teacher
        _save_scorer(
            paths["teacher"],
            self.teacher_scorer_,
            net="teacher",
            spec={"model": configio.to_dict(self._bundle.model), "input_dim": teacher.input_dim},
            state=teacher.state_dict(),
            info={"teacher_checkpoint": self._bundle.path},
        )
        if self.student_scorer_ is not None:
            student = self.student_scorer_.net.net
            paths["student"] = out_dir / "student.pt"
            _save_scorer(
                paths["student"],
                self.student_scorer_,
                net="student",
                spec={
                    "student": configio.to_dict(self._student_config),
                    "input_dim": teacher.input_dim,
                },
                state=student.state_dict(),
                info={"teacher_checkpoint": self._bundle.path},
            )
            paths["torchscript"] = out_dir / "student.torchscript.pt"
            export_torchscript(self.student_scorer_, paths["torchscript"])
        return paths


def _scores(scorer: DeployedScorer, X: np.ndarray | Tensor) -> np.ndarray:
    x = _as_rows("data", X)
    if x.shape[1] != scorer.preprocess.input_dim:
        raise MetakdError(
            f"the data has {x.shape[1]} features but the model takes {scorer.preprocess.input_dim}"
        )
    with torch.no_grad():
        scores = scorer(x).numpy()
    bad = ~np.isfinite(scores)
    if bad.any():
        # A NaN compares as "not above the threshold": it would silently pass as normal.
        raise MetakdError(
            f"{int(bad.sum())} rows score NaN or infinite (first: row {int(np.argmax(bad))}); "
            "their values are beyond what the model's scaling handles (was it meta-trained with "
            "scaling.clip: null?)"
        )
    return scores


def _save_scorer(
    path: Path,
    scorer: DeployedScorer,
    *,
    net: Literal["teacher", "student"],
    spec: dict[str, Any],
    state: dict[str, Tensor],
    info: dict[str, Any],
) -> None:
    p = scorer.preprocess
    save_checkpoint(
        path,
        "detector",
        {
            "net": net,
            "spec": spec,
            "state_dict": {k: v.detach().cpu() for k, v in state.items()},
            "preprocess": {
                "center": p.center,
                "scale": p.scale,
                "clip": p.clip,
                "projection": p.projection if p.use_projection else None,
                "profile": (
                    {
                        "neighbours": p.profile.neighbours,
                        "clip": p.profile.clip,
                        "state": {k: v.detach().cpu() for k, v in p.profile.state_dict().items()},
                    }
                    if p.use_profile
                    else None
                ),
            },
            "threshold": scorer.threshold,
            "info": info,
        },
    )


def load_scorer(path: str | Path) -> DeployedScorer:
    """Load a detector written by ``metakd adapt`` (``teacher.pt`` or ``student.pt``)."""
    data = load_checkpoint(path, "detector")
    try:
        spec, pre = data["spec"], data["preprocess"]
        if data["net"] == "teacher":
            teacher = build_teacher(int(spec["input_dim"]), _stored_model_config(spec["model"]))
            teacher.load_weights(data["state_dict"])
            net: torch.nn.Module = LogitScorer(teacher)
        else:
            student = build_student(int(spec["input_dim"]), _stored_student_config(spec["student"]))
            student.load_state_dict(data["state_dict"])
            net = ScoreHead(student)
        profile = None
        if pre.get("profile") is not None:
            stored = pre["profile"]
            profile = NeighbourProfile.empty(
                neighbours=int(stored["neighbours"]),
                clip=float(stored["clip"]),
                n_features=int(pre["center"].shape[0]),
            )
            profile.load_references(stored["state"])
        preprocess = Preprocessor(
            pre["center"], pre["scale"], float(pre["clip"]), pre["projection"], profile
        )
        return DeployedScorer(preprocess, net, float(data["threshold"])).eval()
    except (KeyError, RuntimeError, MetakdError) as err:
        raise DataError(
            str(path), f"detector checkpoint is incomplete or inconsistent ({err})"
        ) from None


def score_rows(scorer: DeployedScorer, X: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [N], is_anomaly [N])`` of rows under a loaded scorer."""
    scores = _scores(scorer, X)
    return scores, (scores > scorer.threshold).astype(np.int64)


def export_torchscript(scorer: DeployedScorer, path: Path) -> None:
    """Atomically save ``scorer`` as TorchScript (loads with plain ``torch.jit.load``)."""
    from metakd.checkpoint import atomic_write_bytes

    with warnings.catch_warnings():
        # TorchScript is deprecated upstream but remains the format that runs without Python deps.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(scorer)
        atomic_write_bytes(path, lambda f: torch.jit.save(scripted, f))


def _metrics(scores: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    predicted = (scores > threshold).astype(np.int64)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, predicted, average="binary", zero_division=0
    )
    return {
        "auroc": float(roc_auc_score(y, scores)),
        "auprc": float(average_precision_score(y, scores)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }


def run_adapt(
    config: AdaptConfig,
    *,
    teacher_path: Path,
    support_path: Path,
    unlabeled_path: Path | None,
    eval_path: Path | None,
    out_dir: Path,
) -> dict[str, Any]:
    """``metakd adapt``: read the files, fit a :class:`FewShotDetector`, save it and its report.

    Returns the report written to ``out_dir/report.json``.
    """
    import json

    from metakd.checkpoint import atomic_write_text
    from metakd.tracking import Run

    bundle = TeacherBundle.load(teacher_path)
    support = read_task(support_path, config.read)
    if (support.y == -1).any():
        first = int(np.flatnonzero(support.y == -1)[0])
        raise DataError(
            str(support_path),
            f"{int((support.y == -1).sum())} unlabelled rows (first: row {first}); every support "
            f"row needs a label (0 normal, 1 anomaly) in column '{config.read.label_column}'",
        )
    pool = None
    if unlabeled_path is not None:
        pool = read_task(unlabeled_path, dataclasses.replace(config.read, require_labels=False))
    evaluation = None
    if eval_path is not None:
        evaluation = read_task(eval_path, dataclasses.replace(config.read, require_labels=True))
        if (evaluation.y == -1).any() or len(np.unique(evaluation.y)) < 2:
            raise DataError(
                str(eval_path), "evaluation rows need both labels (0 and 1) and no unlabelled rows"
            )
    for _name, task in (("unlabeled", pool), ("eval", evaluation)):
        if task is not None and task.n_features != support.n_features:
            raise DataError(
                task.source,
                f"has {task.n_features} features but the support has {support.n_features}",
            )

    with Run(
        out_dir, config=configio.to_dict(config), tracking=config.tracking, job_type="adapt"
    ) as run:
        detector = FewShotDetector(bundle, config=config).fit(
            support.X, support.y, unlabeled=None if pool is None else pool.X
        )
        paths = detector.save(out_dir)
        report = dict(detector.report_)
        report["files"] = {k: str(v) for k, v in paths.items()}
        report["teacher_checkpoint"] = str(teacher_path)
        if evaluation is not None:
            report["eval"] = {}
            for net, scorer in (
                ("teacher", detector.teacher_scorer_),
                ("student", detector.student_scorer_),
            ):
                if scorer is not None:
                    report["eval"][net] = _metrics(
                        _scores(scorer, evaluation.X), evaluation.y, scorer.threshold
                    )
            report["eval_rows"] = evaluation.n_rows
        for point in report.get("distill_history", []):
            run.log(
                {"distill/loss": point["loss"], "distill/fidelity": point["fidelity"]},
                step=int(point["step"]),
            )
        flat = {
            k: v
            for k, v in report.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        flat |= {f"timings/{k}": v for k, v in report["timings"].items()}
        for net, values in report.get("eval", {}).items():
            flat |= {f"eval/{net}/{k}": v for k, v in values.items()}
        run.summary(flat)
        atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
        if "student" in paths:
            run.log_artifact(
                paths["student"],
                name="student",
                type="model",
                aliases=["latest"],
                metadata={
                    "teacher_checkpoint": str(teacher_path),
                    "fidelity": report.get("fidelity_spearman"),
                },
                uses=[("teacher", teacher_path)],
            )
        run.log_artifact(
            paths["teacher"],
            name="adapted-teacher",
            type="model",
            aliases=["latest"],
            metadata={"teacher_checkpoint": str(teacher_path)},
        )
    return report
