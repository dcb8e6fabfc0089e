"""Reading and writing teachers and adapted detectors (plain tensors and data; never code).

``teacher.pt`` (written by ``metakd meta-train``) loads into a :class:`TeacherBundle`; the
detectors ``metakd adapt`` writes (``teacher.pt``, ``student.pt``) load into a
:class:`~metakd.models.deploy.DeployedScorer` with :func:`load_scorer`; a scorer exports to
TorchScript with :func:`export_torchscript` and to ONNX with :func:`export_onnx` (needs the
``onnx`` extra: ``pip install metakd[onnx]``).
"""

from __future__ import annotations

import inspect
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from metakd import configio
from metakd.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
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
from metakd.models.profile import LEGACY_EVIDENCES, NeighbourProfile
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
                alignment=configio.from_dict(
                    AlignmentConfig, _ALIGNMENT_BEFORE_OPTIONS | data["alignment"]
                ),
                info=dict(data["info"]),
                path=str(path),
                window=data.get("window"),  # teachers saved before windows were kept: none
            )
        except (KeyError, RuntimeError, MetakdError) as err:
            raise DataError(
                str(path), f"teacher checkpoint is incomplete or inconsistent ({err})"
            ) from None


def windowing(window: dict[str, Any] | None, n_features: int) -> WindowConfig | None:
    """The windows to apply to raw rows of ``n_features`` columns before a model sees them:
    those of its meta-train tasks when the rows have a raw width of those tasks, else ``None``
    (the rows are already windowed, or the model was trained on plain rows)."""
    if window is None or n_features not in window.get("raw_widths", []):
        return None
    return configio.from_dict(WindowConfig, window["config"], prefix="window.")


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
    stored = load_checkpoint(path, "detector")["info"].get("input")
    if stored is None:
        return InputSchema(columns=None)
    return InputSchema(
        columns=None if stored["columns"] is None else [str(c) for c in stored["columns"]],
        label_column=str(stored["label_column"]),
        ignore_columns=[str(c) for c in stored["ignore_columns"]],
    )


def load_detector_window(path: str | Path) -> dict[str, Any] | None:
    """The window record stored with a detector written by ``metakd adapt`` (or ``None``)."""
    return load_checkpoint(path, "detector")["info"].get("window")


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
                # Detectors saved before evidences existed hold the three original ones.
                evidences=stored.get("evidences"),
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


def export_torchscript(scorer: DeployedScorer, path: Path) -> None:
    """Atomically save ``scorer`` as TorchScript (loads with plain ``torch.jit.load``)."""
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream but remains the format that runs without Python deps.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(scorer)
        atomic_write_bytes(path, lambda f: torch.jit.save(scripted, f))


#: ONNX opset of :func:`export_onnx` (ONNX Runtime 1.17 and later run it).
ONNX_OPSET = 17
ONNX_INSTALL_HINT = "pip install metakd[onnx]"
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


def export_onnx(scorer: DeployedScorer, path: Path) -> None:
    """Atomically save ``scorer`` as ONNX: input ``rows [N, d]`` (float32) to output
    ``score [N]``, any ``N``; the preprocessing (scaling, projection, neighbourhood profile) is in
    the graph. The export is run with ONNX Runtime on seeded rows and compared with ``scorer``
    before it is written: scores that differ raise :class:`MetakdError` and write nothing.

    Needs ``onnx`` and ``onnxruntime`` (``pip install metakd[onnx]``)."""
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
