"""The contract an export carries (input columns, threshold, score direction, windows, version),
written into it by :mod:`metakd.exports` and read back without running the file
(:func:`read_export_contract`); :func:`load_onnx_scorer` runs an ONNX export by it
(``metakd score --model student.onnx``)."""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from metakd import __version__
from metakd.errors import DataError, MetakdError
from metakd.extras import install_hint
from metakd.models.deploy import (
    DeployedScorer,
    ScoreHead,
)
from metakd.persist import (
    InputSchema,
)

#: The command that installs what ONNX export and scoring need.
ONNX_INSTALL_HINT = install_hint("onnx")


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
EXPORT_DOC = (
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
