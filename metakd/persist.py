"""Reading and writing teachers and adapted detectors (plain tensors and data; never code).

``teacher.pt`` (written by ``metakd meta-train``) loads into a :class:`TeacherBundle`; the
detectors ``metakd adapt`` writes (``teacher.pt``, ``student.pt``) load into a
:class:`~metakd.models.deploy.DeployedScorer` with :func:`load_scorer`. Their exports
(TorchScript, ONNX) and the contract those carry are :mod:`metakd.exports`'.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from metakd import configio
from metakd.checkpoint import (
    Fields,
    load_checkpoint,
    one_line,
    save_checkpoint,
)
from metakd.data.readers import ReadOptions
from metakd.data.transforms import AlignmentConfig, ScalingConfig
from metakd.data.windows import WindowConfig
from metakd.errors import DataError, MetakdError
from metakd.meta.learners import Algorithm, InnerConfig
from metakd.models.deploy import (
    DeployedScorer,
    Preprocessor,
    ScoreHead,
    StudentConfig,
    build_student,
)
from metakd.models.experts import PARTS, PoolGaussianMix
from metakd.models.profile import EVIDENCES, LEGACY_EVIDENCES, NeighbourProfile
from metakd.models.teachers import LogitScorer, ModelConfig, Teacher, build_teacher

TeacherWeights = tuple[dict[str, Tensor], list[Tensor]]
"""A teacher's weights (its ``state_dict``) and Meta-SGD's inner rates (empty otherwise)."""


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
    window: dict[str, Any] | None = None
    """How raw rows became the meta-train tasks' rows (``{"config": WindowConfig as a dict,
    "raw_widths": [...]}``), or ``None``; see :func:`windowing`."""
    pool_share: float = 0.0
    """The share of the pool's Gaussian in an adapted score, fitted after meta-training
    (:class:`~metakd.models.experts.PoolGaussianMix`); 0 for teachers saved before it."""
    pool_share_anomalies: float | None = None
    """The share where the support holds labelled anomalies, fitted on episodes that do;
    ``None`` (teachers saved before it, or trained without anomaly shots): ``pool_share``."""
    pool_knn: float = 0.0
    """The pool kNN expert's share of the scorer's part, fitted with ``pool_share``; 0 for
    teachers saved before it."""
    pool_knn_anomalies: float | None = None
    """The same, fitted with ``pool_share_anomalies``; ``None``: ``pool_knn``."""

    def with_weights(self, weights: TeacherWeights) -> TeacherBundle:
        """This bundle (its settings, alignment and share) with another teacher's weights and
        Meta-SGD rates: those the run started meta-training from, say."""
        state_dict, rates = weights
        teacher = copy.deepcopy(self.teacher)
        teacher.load_weights(dict(state_dict))
        return replace(self, teacher=teacher.eval(), rates=list(rates))

    @staticmethod
    def load(path: str | Path) -> TeacherBundle:
        """Load ``teacher.pt`` written by ``metakd meta-train`` (never runs code)."""
        data = load_checkpoint(path, "teacher")
        # Every field type-checked first: a wrong one is an error naming it, not a crash.
        fields = Fields(data, str(path))
        try:
            model = _stored_model_config(fields.mapping("model"))
            teacher = build_teacher(fields.integer("input_dim", low=1), model)
            teacher.load_weights(fields.tensors("state_dict"))
            if "episode" in data:  # read by evaluate's pooled baseline
                fields.mapping("episode")
            alignment = configio.from_dict(
                AlignmentConfig,
                _ALIGNMENT_BEFORE_OPTIONS | fields.mapping("alignment"),
                prefix="alignment.",
            )
            aligned = teacher.input_dim - teacher.profile_width
            if alignment.kind != "none" and alignment.width != aligned:
                raise fields.bad(
                    "alignment",
                    f"has width {alignment.width}, but the teacher takes {aligned} aligned "
                    "features",
                )
            rates = fields.tensor_list("rates")
            if rates:  # Meta-SGD's: one per weight and bias of the stack, alike in shape
                shapes = [
                    tuple(p.shape)
                    for layer in teacher.linear_layers()
                    for p in (layer.weight, layer.bias)
                    if p is not None
                ]
                if [tuple(r.shape) for r in rates] != shapes:
                    raise fields.bad(
                        "rates", f"must be {len(shapes)} tensors shaped as the teacher's layers"
                    )
            return TeacherBundle(
                teacher=teacher.eval(),
                model=model,
                inner=configio.from_dict(InnerConfig, fields.mapping("inner"), prefix="inner."),
                algorithm=fields.string("algorithm"),
                rates=rates,
                scaling=configio.from_dict(
                    ScalingConfig, fields.mapping("scaling"), prefix="scaling."
                ),
                alignment=alignment,
                info=dict(fields.mapping("info")),
                path=str(path),
                # Teachers saved before windows were kept have none.
                window=stored_window(fields, "window"),
                pool_share=_share(fields, "pool_share"),
                pool_share_anomalies=(
                    _share(fields, "pool_share_anomalies")
                    if fields.has("pool_share_anomalies")
                    else None
                ),
                pool_knn=_share(fields, "pool_knn"),
                pool_knn_anomalies=(
                    _share(fields, "pool_knn_anomalies")
                    if fields.has("pool_knn_anomalies")
                    else None
                ),
            )
        except DataError:
            raise
        except (KeyError, RuntimeError, ValueError, MetakdError) as err:
            raise DataError(
                str(path), f"teacher checkpoint is incomplete or inconsistent ({one_line(err)})"
            ) from None


def _share(fields: Fields, key: str) -> float:
    """A teacher's share ``key``, in [0, 1] (0 where it has none)."""
    if not fields.has(key):
        return 0.0
    share = fields.number(key)
    if not 0 <= share <= 1:
        raise fields.bad(key, f"must be in [0, 1], got {share!r}")
    return share


def _stored_mix(fields: Fields) -> PoolGaussianMix | None:
    """A detector's pool-Gaussian mix (``None``: saved without one)."""
    if not fields.has("mix"):
        return None
    state = fields.tensors("mix")
    terms = state["terms"]
    reference = state.get("reference")
    knn = terms.shape == (9,)
    if (
        terms.shape not in ((5,), (9,))
        or not bool(torch.isfinite(terms).all())
        or not (bool(terms[2] > 0) and bool(terms[4] > 0) and 0 <= float(terms[0]) <= 1)
        or (
            knn
            and not (
                0 < float(terms[5]) <= 1
                and bool(terms[7] > 0)
                and reference is not None
                and 1 <= int(terms[8]) <= len(reference)
                and int(terms[8]) == float(terms[8])
            )
        )
    ):
        raise fields.bad(
            "mix",
            "terms must be [share in [0, 1], centre, spread > 0, centre, spread > 0], then "
            "optionally [kNN share in (0, 1], centre, spread > 0, k in 1..reference rows]",
        )
    return PoolGaussianMix(
        [state[name] for name in PARTS], terms, reference=reference if knn else None
    )


def windowing(window: dict[str, Any] | None, n_features: int) -> WindowConfig | None:
    """The windows to apply to raw rows of ``n_features`` columns before a model sees them:
    those of its meta-train tasks when the rows have a raw width of those tasks, else ``None``
    (the rows are already windowed, or the model was trained on plain rows)."""
    if window is None or n_features not in window.get("raw_widths", []):
        return None
    return configio.from_dict(WindowConfig, window["config"], prefix="window.")


def stored_window(fields: Fields, key: str) -> dict[str, Any] | None:
    """The window record in field ``key`` of a loaded checkpoint (``None`` when absent or
    null), checked: ``config`` a valid :class:`WindowConfig`, ``raw_widths`` positive integers;
    else a :class:`DataError` naming the field."""
    if not fields.has(key):
        return None
    record = fields.section(key)
    widths = record.integers("raw_widths", low=1)
    try:
        configio.from_dict(WindowConfig, record.mapping("config"), prefix="window.")
    except MetakdError as err:
        raise record.bad("config", f"is not a window config ({err})") from None
    return {**record.data, "raw_widths": widths}


@dataclass(frozen=True)
class InputSchema:
    """How a detector reads raw files: the columns of the support file it was adapted on."""

    columns: list[str] | None
    """Feature columns in order, matched by name in new files; ``None`` when the support had no
    column names (an ``.npz`` archive without ``feature_names``): columns are taken in order."""
    label_column: str = "label"
    """The label column, never a feature."""
    ignore_columns: list[str] = field(default_factory=list)
    """Columns that were not features (ids, timestamps); ignored in new files when present."""

    def read_options(
        self, *, label_column: str | None = None, ignore_columns: Sequence[str] = ()
    ) -> ReadOptions:
        """Options reading a file to score: labels ignored, the stored columns matched by name,
        ``label_column`` (default: the stored one), ``ignore_columns`` (each must be in the
        file) and the stored ignored columns (ignored where present)."""
        label = self.label_column if label_column is None else label_column
        columns = self.columns
        clash = [c for c in [label, *ignore_columns] if columns is not None and c in columns]
        if clash:
            raise MetakdError(
                f"column '{clash[0]}' is one of the model's features; it cannot be the label "
                "column or ignored"
            )
        return ReadOptions(
            label_column=label,
            ignore_columns=[c for c in ignore_columns if c != label],
            ignore_labels=True,
            columns=None if columns is None else list(columns),
            ignore_if_present=[c for c in self.ignore_columns if c != label],
        )


def load_input_schema(path: str | Path) -> InputSchema:
    """The :class:`InputSchema` stored with a detector written by ``metakd adapt`` (detectors
    written before schemas were kept: unnamed columns)."""
    info = _detector_info(path)
    if not info.has("input"):
        return InputSchema(columns=None)
    stored = info.section("input")
    return InputSchema(
        columns=stored.strings("columns") if stored.has("columns") else None,
        label_column=stored.string("label_column"),
        ignore_columns=stored.strings("ignore_columns"),
    )


def load_detector_window(path: str | Path) -> dict[str, Any] | None:
    """The window record stored with a detector written by ``metakd adapt`` (or ``None``)."""
    return stored_window(_detector_info(path), "window")


def _detector_info(path: str | Path) -> Fields:
    """The ``info`` section of a detector checkpoint, as :class:`Fields`."""
    return Fields(load_checkpoint(path, "detector"), str(path)).section("info")


# Checkpoints written before an option existed behaved as with the option off: a key missing from
# a stored config means that, whatever today's default is.
_MODEL_BEFORE_OPTIONS = {"input_skip": False, "pool_neighbours": False, "pool_rows": None}
_STUDENT_BEFORE_OPTIONS = {"head": "linear", "input_skip": False}
_ALIGNMENT_BEFORE_OPTIONS = {"orthonormal": False}
_PROFILE_BEFORE_OPTIONS = {"evidences": LEGACY_EVIDENCES}


def _stored_model_config(data: dict[str, Any]) -> ModelConfig:
    stored = _MODEL_BEFORE_OPTIONS | data
    if isinstance(stored.get("profile"), dict):
        stored["profile"] = _PROFILE_BEFORE_OPTIONS | stored["profile"]
    return configio.from_dict(ModelConfig, stored)


def _stored_student_config(data: dict[str, Any]) -> StudentConfig:
    return configio.from_dict(StudentConfig, _STUDENT_BEFORE_OPTIONS | data)


def save_scorer(
    path: Path,
    scorer: DeployedScorer,
    *,
    net: Literal["teacher", "student"],
    spec: dict[str, Any],
    state: dict[str, Tensor],
    info: dict[str, Any],
) -> None:
    """Atomically write a detector checkpoint: the net's spec and weights, the fitted
    preprocessing (scaling, projection, neighbourhood profile) and the threshold."""
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
                        "evidences": list(p.profile.evidences),
                        "state": {k: v.detach().cpu() for k, v in p.profile.state_dict().items()},
                    }
                    if p.use_profile
                    else None
                ),
            },
            "threshold": scorer.threshold,
            "mix": (
                {k: v.detach().cpu() for k, v in scorer.mix.state_dict().items()}
                if scorer.mix.terms.numel()
                else None
            ),
            "info": info,
        },
    )


def load_scorer(path: str | Path) -> DeployedScorer:
    """Load a detector written by ``metakd adapt`` (``teacher.pt`` or ``student.pt``)."""
    data = load_checkpoint(path, "detector")
    # Every field type-checked first: a wrong one is an error naming it, not a crash.
    fields = Fields(data, str(path))
    try:
        fields.mapping("info")
        spec, pre = fields.section("spec"), fields.section("preprocess")
        input_dim = spec.integer("input_dim", low=1)
        if fields.string("net", choices=("teacher", "student")) == "teacher":
            teacher = build_teacher(input_dim, _stored_model_config(spec.mapping("model")))
            teacher.load_weights(fields.tensors("state_dict"))
            net: torch.nn.Module = LogitScorer(teacher)
        else:
            student = build_student(input_dim, _stored_student_config(spec.mapping("student")))
            student.load_state_dict(fields.tensors("state_dict"))
            net = ScoreHead(student)
        center = pre.tensor("center", ndim=1, finite=True)
        scale = pre.tensor("scale", ndim=1, finite=True, positive=True)
        if scale.shape != center.shape or center.numel() == 0:
            raise pre.bad("scale", f"must match center's shape {tuple(center.shape)}")
        projection = None
        if pre.has("projection"):
            projection = pre.tensor("projection", ndim=2, finite=True)
            if projection.shape[0] != center.shape[0]:
                raise pre.bad("projection", f"must have {center.shape[0]} rows (center's width)")
        profile = None
        if pre.has("profile"):
            stored = pre.section("profile")
            # Detectors saved before evidences existed hold the three original ones.
            evidences = stored.strings("evidences") if stored.has("evidences") else None
            if evidences is not None and not set(evidences) <= set(EVIDENCES):
                raise stored.bad("evidences", f"must name evidences of {', '.join(EVIDENCES)}")
            profile = NeighbourProfile.empty(
                neighbours=stored.integer("neighbours", low=1),
                clip=stored.number("clip", finite=False, positive=True),
                n_features=int(center.shape[0]),
                evidences=evidences,
            )
            profile.load_references(stored.tensors("state"))
        preprocess = Preprocessor(
            center, scale, pre.number("clip", finite=False, positive=True), projection, profile
        )
        # A NaN threshold flags nothing (no score is above NaN): every row would pass as normal.
        scorer = DeployedScorer(
            preprocess, net, fields.number("threshold"), _stored_mix(fields)
        ).eval()
        _check_scores_a_row(scorer, fields)
        return scorer
    except DataError:
        raise
    except (KeyError, RuntimeError, ValueError, MetakdError) as err:
        raise DataError(
            str(path), f"detector checkpoint is incomplete or inconsistent ({one_line(err)})"
        ) from None


def _check_scores_a_row(scorer: DeployedScorer, fields: Fields) -> None:
    """Score the fitted centre: stored parts that do not fit together (a network's width, a
    projection, the profile's references) fail here, at load, with the file named."""
    try:
        with torch.no_grad():
            scorer(scorer.preprocess.center[None])
    except (RuntimeError, IndexError, ValueError) as err:
        raise DataError(
            fields.where,
            f"the stored networks and preprocessing do not fit together ({one_line(err)})",
        ) from None
