"""Reading and writing teachers and adapted detectors (plain tensors and data; never code).

``teacher.pt`` (written by ``metakd meta-train``) loads into a :class:`TeacherBundle`; the
detectors ``metakd adapt`` writes (``teacher.pt``, ``student.pt``) load into a
:class:`~metakd.models.deploy.DeployedScorer` with :func:`load_scorer`; a scorer exports to
TorchScript with :func:`export_torchscript` and to ONNX with :func:`export_onnx` (needs the
``onnx`` extra: ``pip install "metakd[onnx]"``). Both exports carry their contract (input
columns, threshold, score direction, windows: :func:`export_contract`), read back with
:func:`read_export_contract`; :func:`load_onnx_scorer` runs an ONNX export by it.
"""

from __future__ import annotations

import inspect
import json
import math
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from metakd import __version__, configio
from metakd.checkpoint import (
    Fields,
    atomic_write_bytes,
    load_checkpoint,
    one_line,
    save_checkpoint,
)
from metakd.data.readers import ReadOptions
from metakd.data.transforms import AlignmentConfig, ScalingConfig
from metakd.data.windows import WindowConfig
from metakd.errors import DataError, MetakdError
from metakd.extras import install_hint
from metakd.meta.learners import Algorithm, InnerConfig
from metakd.models.deploy import (
    DeployedScorer,
    Preprocessor,
    ScoreHead,
    StudentConfig,
    build_student,
)
from metakd.models.profile import EVIDENCES, LEGACY_EVIDENCES, NeighbourProfile
from metakd.models.teachers import LogitScorer, ModelConfig, Teacher, build_teacher


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
            )
        except DataError:
            raise
        except (KeyError, RuntimeError, ValueError, MetakdError) as err:
            raise DataError(
                str(path), f"teacher checkpoint is incomplete or inconsistent ({one_line(err)})"
            ) from None


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
        scorer = DeployedScorer(preprocess, net, fields.number("threshold")).eval()
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


def export_torchscript(
    scorer: DeployedScorer,
    path: Path,
    *,
    schema: InputSchema | None = None,
    window: dict[str, Any] | None = None,
) -> None:
    """Atomically save ``scorer`` as TorchScript (loads with plain ``torch.jit.load``), with its
    :func:`export_contract` as extra files of the archive (``metakd.<key>``, one per key; read
    them back with :func:`read_export_contract`, which never loads the program).

    Args:
        schema: the columns the scorer reads (``None``: unnamed columns, taken in order).
        window: the scorer's window record (:func:`load_detector_window`), or ``None``.
    """
    contract = export_contract(scorer, schema=schema, window=window, target="torchscript")
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream (a DeprecationWarning, a FutureWarning from torch
        # 2.14) but remains the format that runs without Python deps; the user cannot act on it.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
        scripted = torch.jit.script(scorer)
        atomic_write_bytes(path, lambda f: torch.jit.save(scripted, f, _extra_files=dict(contract)))


#: ONNX opset of :func:`export_onnx` (ONNX Runtime 1.17 and later run it).
ONNX_OPSET = 17
ONNX_INSTALL_HINT = install_hint("onnx")
_ONNX_BOOLEAN_OPS = frozenset(
    {"Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "And", "Or", "Not", "Xor"}
    | {"IsInf", "IsNaN"}
)


def onnx_available() -> bool:
    """Whether ``onnx`` and ``onnxruntime`` import (the ``onnx`` extra is installed)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


_warned_onnx_unavailable = False


def warn_onnx_unavailable() -> None:
    """Warn, once per process, that ONNX files are not written and how to get them."""
    global _warned_onnx_unavailable
    if not _warned_onnx_unavailable:
        _warned_onnx_unavailable = True
        warnings.warn(
            f"onnx / onnxruntime are not installed, so student.onnx is not written; "
            f"install them with `{ONNX_INSTALL_HINT}`",
            stacklevel=3,
        )


def _cast_boolean_cumsums(graph: Any) -> None:
    """Insert a cast to int64 before every ``CumSum`` of a boolean, in ``graph`` and its
    subgraphs (loop bodies): ``torch.cumsum`` takes booleans, ONNX's ``CumSum`` does not, and
    the exporter passes them through as they are (the profile's leave-one-out match)."""
    from onnx import AttributeProto, TensorProto, helper

    produced_by = {out: node.op_type for node in graph.node for out in node.output}
    nodes = []
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                _cast_boolean_cumsums(attribute.g)
            elif attribute.type == AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    _cast_boolean_cumsums(subgraph)
        if node.op_type == "CumSum" and produced_by.get(node.input[0]) in _ONNX_BOOLEAN_OPS:
            as_int = f"{node.input[0]}_as_int64"
            nodes.append(
                helper.make_node(
                    "Cast",
                    [node.input[0]],
                    [as_int],
                    to=TensorProto.INT64,
                    name=f"{node.name}_cast",
                )
            )
            node.input[0] = as_int
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _check_rows(scorer: DeployedScorer) -> list[Tensor]:
    """Seeded rows around the fitted centre (two batch sizes: a batch size baked into the
    export shows), to compare an export with ``scorer`` on."""
    p = scorer.preprocess
    generator = torch.Generator().manual_seed(0)
    batches = []
    for n in (5, 7):
        z = torch.randn(n, p.input_dim, generator=generator, dtype=torch.float64)
        batches.append((p.center.double() + 2.0 * p.scale.double() * z).float())
    return batches


def export_onnx(
    scorer: DeployedScorer,
    path: Path,
    *,
    schema: InputSchema | None = None,
    window: dict[str, Any] | None = None,
) -> None:
    """Atomically save ``scorer`` as ONNX: input ``rows [N, d]`` (float32) to output
    ``score [N]``, any ``N``; the preprocessing (scaling, projection, neighbourhood profile) is in
    the graph, and the model's ``metadata_props`` hold its :func:`export_contract` (columns,
    threshold, score direction, ...; read it back with :func:`read_export_contract`). The export
    is run with ONNX Runtime on seeded rows and compared with ``scorer`` before it is written:
    scores that differ raise :class:`MetakdError` and write nothing.

    Args:
        schema: the columns the scorer reads (``None``: unnamed columns, taken in order).
        window: the scorer's window record (:func:`load_detector_window`), or ``None``.

    Needs ``onnx`` and ``onnxruntime`` (``pip install "metakd[onnx]"``)."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise MetakdError(f"ONNX export needs onnx and onnxruntime ({ONNX_INSTALL_HINT})") from err
    scorer = scorer.eval()
    batches = _check_rows(scorer)
    exporter_options: dict[str, Any] = (
        {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    )
    with tempfile.TemporaryDirectory(prefix="metakd-onnx-") as tmp, warnings.catch_warnings():
        # Scripted, not traced: tracing bakes the profile's row blocks (2048 rows) into the graph,
        # so a larger batch fails; scripting keeps them a loop. The TorchScript-based exporter is
        # deprecated upstream, but the torch.export-based one needs onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
        try:
            torch.onnx.export(
                torch.jit.script(scorer),
                (batches[0],),
                Path(tmp) / "scorer.onnx",
                input_names=["rows"],
                output_names=["score"],
                dynamic_axes={"rows": {0: "N"}, "score": {0: "N"}},
                opset_version=ONNX_OPSET,
                # torch < 2.5 has no ``dynamo`` argument (and only this exporter).
                **exporter_options,
            )
        except Exception as err:  # the exporter raises many kinds
            raise MetakdError(f"could not export the scorer to ONNX: {err}") from err
        model = onnx.load(Path(tmp) / "scorer.onnx")
    _cast_boolean_cumsums(model.graph)
    contract = export_contract(scorer, schema=schema, window=window, target="onnx")
    onnx.helper.set_model_props(model, dict(contract))
    model.doc_string = _EXPORT_DOC.format(net=contract["metakd.net"])
    data = model.SerializeToString()
    try:
        onnx.checker.check_model(model)
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnx and onnxruntime raise their own kinds
        raise MetakdError(f"the ONNX export of the scorer is invalid ({err}); not written") from err
    with torch.no_grad():
        for rows in batches:
            want = scorer(rows).numpy()
            (got,) = session.run(["score"], {"rows": rows.numpy()})
            if got.shape != want.shape:
                raise MetakdError(
                    f"the ONNX export gives scores of shape {got.shape} for {len(rows)} rows, "
                    f"not {want.shape}; not written"
                )
            if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
                worst = float(np.max(np.abs(got.astype(np.float64) - want)))
                raise MetakdError(
                    f"the ONNX export's scores differ from the scorer's by up to {worst:.3g} "
                    f"(on {len(rows)} seeded rows; rtol 1e-4, atol 1e-5); not written"
                )
    atomic_write_bytes(path, lambda f: f.write(data))


# -- the contract an export carries ---------------------------------------------------------------

#: Version of the contract :func:`export_contract` writes (``metakd.contract_version``); a reader
#: refuses a newer one.
EXPORT_CONTRACT_VERSION = 1
#: Every key of an export's contract, stored as ``metakd.<key>``, and how its value is written:
#: ``text`` (a plain string; numbers in decimal, the threshold exactly as Python's ``repr``) or
#: ``json``.
EXPORT_CONTRACT_KEYS: dict[str, Literal["text", "json"]] = {
    "contract_version": "text",
    "version": "text",
    "net": "text",
    "input_columns": "json",
    "input_dim": "text",
    "label_column": "text",
    "ignore_columns": "json",
    "window": "json",
    "threshold": "text",
    "score_direction": "text",
    "flag_rule": "text",
    "signature": "text",
    "preprocessing_in_model": "json",
    "preprocessing_outside": "json",
}
#: ``metakd.score_direction``: every metakd score grows with how anomalous the row is.
SCORE_DIRECTION = "higher_is_more_anomalous"
#: ``metakd.flag_rule``: how ``metakd score`` (and ``DeployedScorer.predict``) flags a row.
FLAG_RULE = "score > threshold"
_SIGNATURES = {
    "onnx": "input rows: float32 [N, input_dim] -> output score: float32 [N]",
    "torchscript": (
        "forward(rows: Tensor [N, input_dim], any real dtype, cast to float32) -> scores [N]; "
        "predict(rows) -> int64 [N], 1 where score > threshold"
    ),
}
_EXPORT_DOC = (
    "metakd {net}: raw rows [N, input_dim] (the columns of metadata metakd.input_columns, in that "
    "order) to anomaly scores [N], higher = more anomalous; a row is an anomaly where score > "
    "metakd.threshold. Scaling, projection and neighbourhood profile are inside the graph."
)


def export_contract(
    scorer: DeployedScorer,
    *,
    schema: InputSchema | None,
    window: dict[str, Any] | None,
    target: Literal["onnx", "torchscript"],
) -> dict[str, str]:
    """What an exported scorer needs beside it to score as ``metakd score`` does, as the string
    key/values an export carries (ONNX ``metadata_props``, TorchScript extra files): every key of
    :data:`EXPORT_CONTRACT_KEYS` as ``metakd.<key>``.

    Args:
        schema: the columns the scorer reads (``None``: unnamed columns, taken in order).
        window: the scorer's window record, or ``None``.
        target: the export format (its call signature is recorded).
    """
    schema = schema if schema is not None else InputSchema(columns=None)
    p = scorer.preprocess
    in_model = {
        "dtype": "float32",
        "scaling": "z = (x - center) / scale per column, center and scale fitted at adapt",
        "clip": None if math.isinf(p.clip) else p.clip,
        "projection": [p.input_dim, int(p.projection.shape[1])] if p.use_projection else None,
        "neighbourhood_profile": (
            {"neighbours": int(p.profile.neighbours), "evidences": list(p.profile.evidences)}
            if p.use_profile
            else None
        ),
    }
    if schema.columns is not None:
        columns = (
            "select the columns input_columns by name, in that order (a missing column is an "
            "error); label_column and ignore_columns are not features, any other column is an error"
        )
    else:
        columns = "the file's columns in order, label_column and ignore_columns left out"
    outside = [
        columns,
        "rows as float32 [N, input_dim]; a NaN or infinite value is an error",
    ]
    if window is not None:
        outside.append(
            "a series with one of window.raw_widths columns is scored as its windows "
            "(window.config: size, stride, features), one score per window; rows of input_dim "
            "columns are taken as windows already"
        )
    outside += [
        "a NaN or infinite score is an error, never a normal row",
        f"is_anomaly = {FLAG_RULE}",
    ]
    values: dict[str, Any] = {
        "contract_version": EXPORT_CONTRACT_VERSION,
        "version": __version__,
        "net": "student" if isinstance(scorer.net, ScoreHead) else "teacher",
        "input_columns": schema.columns,
        "input_dim": p.input_dim,
        "label_column": schema.label_column,
        "ignore_columns": list(schema.ignore_columns),
        "window": window,
        "threshold": repr(float(scorer.threshold)),
        "score_direction": SCORE_DIRECTION,
        "flag_rule": FLAG_RULE,
        "signature": _SIGNATURES[target],
        "preprocessing_in_model": in_model,
        "preprocessing_outside": outside,
    }
    return {
        f"metakd.{key}": json.dumps(values[key]) if how == "json" else str(values[key])
        for key, how in EXPORT_CONTRACT_KEYS.items()
    }


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding ``code/``), read as a zip only."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read_export_contract(path: str | Path) -> dict[str, Any]:
    """The contract stored in an export written by :func:`export_onnx` or
    :func:`export_torchscript` (``student.onnx``, ``student.torchscript.pt``), by key without the
    ``metakd.`` prefix, decoded: ``input_columns`` (list of names, or ``None``), ``input_dim`` and
    ``contract_version`` (int), ``threshold`` (float), ``window`` (dict or ``None``), ... .

    Reads the file's metadata only: the ONNX graph is parsed (``onnx`` needed), never run; a
    TorchScript archive is read as a zip, never loaded (its program is not run). A file without
    the contract, or with part of it, is a :class:`DataError` naming the missing keys."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "model file not found")
    if is_torchscript_archive(path):
        with zipfile.ZipFile(path) as archive:
            raw = {
                name.split("/", 2)[2]: archive.read(name).decode("utf-8")
                for name in archive.namelist()
                if name.split("/")[1:2] == ["extra"] and name.count("/") == 2
            }
    else:
        raw = {prop.key: prop.value for prop in _read_onnx(path).metadata_props}
    return _parse_contract(path, raw)


def _read_onnx(path: Path) -> Any:
    """The ``onnx.ModelProto`` at ``path``, external data not loaded."""
    try:
        import onnx
    except ImportError as err:
        raise MetakdError(f"reading an ONNX model needs onnx ({ONNX_INSTALL_HINT})") from err
    if not path.is_file():
        raise DataError(str(path), "model file not found")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises its own kinds
        raise DataError(
            str(path), f"not an ONNX model or a TorchScript archive ({type(err).__name__})"
        ) from None


def _parse_contract(path: Path, raw: Mapping[str, str]) -> dict[str, Any]:
    missing = [f"metakd.{key}" for key in EXPORT_CONTRACT_KEYS if f"metakd.{key}" not in raw]
    if missing:
        whole = len(missing) == len(EXPORT_CONTRACT_KEYS)
        raise DataError(
            str(path),
            f"the exported model carries {'no' if whole else 'an incomplete'} metakd contract: "
            f"its metadata lacks {', '.join(missing)} (export it again with this metakd, e.g. "
            "metakd adapt, or score its student.pt)",
        )

    def bad(key: str, why: str) -> DataError:
        return DataError(str(path), f"metadata metakd.{key} {why}: {raw[f'metakd.{key}']!r}")

    out: dict[str, Any] = {}
    for key, how in EXPORT_CONTRACT_KEYS.items():
        text = raw[f"metakd.{key}"]
        if how == "json":
            try:
                out[key] = json.loads(text)
            except ValueError:
                raise bad(key, "is not JSON") from None
        else:
            out[key] = text
    for key in ("contract_version", "input_dim"):
        try:
            out[key] = int(out[key])
        except ValueError:
            raise bad(key, "is not an integer") from None
    if out["contract_version"] > EXPORT_CONTRACT_VERSION:
        raise bad(
            "contract_version", f"is newer than this metakd reads ({EXPORT_CONTRACT_VERSION})"
        )
    if out["input_dim"] < 1:
        raise bad("input_dim", "is not a positive width")
    try:
        out["threshold"] = float(out["threshold"])
    except ValueError:
        raise bad("threshold", "is not a number") from None
    if math.isnan(out["threshold"]):
        raise bad("threshold", "is NaN")
    if out["score_direction"] != SCORE_DIRECTION:
        raise bad("score_direction", f"is not {SCORE_DIRECTION!r}")
    if out["net"] not in ("student", "teacher"):
        raise bad("net", "is neither student nor teacher")
    names = out["input_columns"]
    if names is not None and not (
        isinstance(names, list) and all(isinstance(c, str) for c in names)
    ):
        raise bad("input_columns", "is neither null nor a list of names")
    ignored = out["ignore_columns"]
    if not (isinstance(ignored, list) and all(isinstance(c, str) for c in ignored)):
        raise bad("ignore_columns", "is not a list of names")
    window = out["window"]
    if window is not None and not (
        isinstance(window, dict) and isinstance(window.get("config"), dict)
    ):
        raise bad("window", "is neither null nor a window record")
    if names is not None and window is None and len(names) != out["input_dim"]:
        raise bad("input_columns", f"does not name input_dim = {out['input_dim']} columns")
    return out


def contract_input_schema(contract: Mapping[str, Any]) -> InputSchema:
    """The :class:`InputSchema` of an export's contract (:func:`read_export_contract`)."""
    return InputSchema(
        columns=None if contract["input_columns"] is None else list(contract["input_columns"]),
        label_column=str(contract["label_column"]),
        ignore_columns=list(contract["ignore_columns"]),
    )


@dataclass(frozen=True)
class OnnxScorer:
    """An exported ONNX scorer (``student.onnx``) and its contract, run by ONNX Runtime on the
    CPU: ``scorer(rows)`` gives the scores of float32 rows ``[N, input_dim]``."""

    path: str
    session: Any
    """The ``onnxruntime.InferenceSession``."""
    contract: dict[str, Any]
    """:func:`read_export_contract`'s answer."""

    @property
    def threshold(self) -> float:
        return float(self.contract["threshold"])

    @property
    def input_dim(self) -> int:
        return int(self.contract["input_dim"])

    @property
    def input_schema(self) -> InputSchema:
        return contract_input_schema(self.contract)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        (scores,) = self.session.run(
            ["score"], {"rows": np.ascontiguousarray(rows, dtype=np.float32)}
        )
        return np.asarray(scores)


#: Operator domains an ONNX scorer may use: ONNX's own (no custom operators).
_ONNX_DOMAINS = frozenset({"", "ai.onnx"})


def load_onnx_scorer(path: str | Path) -> OnnxScorer:
    """An ONNX export (:func:`export_onnx`) ready to score, with its contract: the graph must use
    ONNX's own operators only and hold its weights inside the file (no external data), and
    carry the whole contract, else :class:`DataError`. Needs ``pip install "metakd[onnx]"``."""
    path = Path(path)
    try:
        import onnxruntime
    except ImportError as err:
        raise MetakdError(
            f"scoring an ONNX model needs onnx and onnxruntime ({ONNX_INSTALL_HINT})"
        ) from err
    model = _read_onnx(path)
    contract = _parse_contract(path, {prop.key: prop.value for prop in model.metadata_props})
    domains, external = _onnx_graph_facts(model.graph)
    if external:
        raise DataError(str(path), "the ONNX model reads external data files; not loaded")
    domains |= {entry.domain for entry in model.opset_import}
    if domains - _ONNX_DOMAINS:
        raise DataError(
            str(path),
            f"the ONNX model uses operators outside ONNX's own ({sorted(domains - _ONNX_DOMAINS)})",
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as a .pt detector scores
    options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime raises its own kinds
        raise DataError(str(path), f"ONNX Runtime cannot load the model ({err})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != ["rows"] or [o.name for o in outputs] != ["score"]:
        raise DataError(
            str(path),
            f"the ONNX model takes {[i.name for i in inputs]} and gives "
            f"{[o.name for o in outputs]}, not ['rows'] -> ['score'] as metakd's exports",
        )
    width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
    if isinstance(width, int) and width != contract["input_dim"]:
        raise DataError(
            str(path),
            f"the ONNX model takes rows of {width} values but its metadata "
            f"metakd.input_dim says {contract['input_dim']}",
        )
    return OnnxScorer(path=str(path), session=session, contract=contract)


def _onnx_graph_facts(graph: Any) -> tuple[set[str], bool]:
    """The operator domains of ``graph``'s nodes and its subgraphs' (loop bodies), and whether
    any of their tensors is stored outside the file (external data)."""
    from onnx import AttributeProto
    from onnx.external_data_helper import uses_external_data

    domains: set[str] = set()
    external = any(uses_external_data(t) for t in graph.initializer) or any(
        uses_external_data(t.values) or uses_external_data(t.indices)
        for t in graph.sparse_initializer
    )
    for node in graph.node:
        domains.add(node.domain)
        for attribute in node.attribute:
            subgraphs = []
            if attribute.type == AttributeProto.GRAPH:
                subgraphs = [attribute.g]
            elif attribute.type == AttributeProto.GRAPHS:
                subgraphs = list(attribute.graphs)
            elif attribute.type == AttributeProto.TENSOR:
                external |= uses_external_data(attribute.t)
            elif attribute.type == AttributeProto.TENSORS:
                external |= any(uses_external_data(t) for t in attribute.tensors)
            for subgraph in subgraphs:
                inner_domains, inner_external = _onnx_graph_facts(subgraph)
                domains |= inner_domains
                external |= inner_external
    return domains, external
