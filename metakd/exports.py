"""Exports of an adapted scorer that run without metakd, and the contract they carry.

:func:`export_torchscript` and :func:`export_onnx` (needs the ``onnx`` extra:
``pip install "metakd[onnx]"``) write a :class:`~metakd.models.deploy.DeployedScorer` with its
contract (input columns, threshold, score direction, windows: :func:`export_contract`), read back
without running the file by :func:`read_export_contract`; :func:`load_onnx_scorer` runs an ONNX
export by it (``metakd score --model student.onnx``).
"""

from __future__ import annotations

import inspect
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metakd.checkpoint import (
    atomic_write_bytes,
)
from metakd.contract import (  # the contract's readers, here too: one import for exports
    EXPORT_CONTRACT_KEYS,
    EXPORT_CONTRACT_VERSION,
    EXPORT_DOC,
    ONNX_INSTALL_HINT,
    OnnxScorer,
    contract_input_schema,
    export_contract,
    is_torchscript_archive,
    load_onnx_scorer,
    read_export_contract,
)
from metakd.errors import MetakdError, first_line
from metakd.extras import note_once
from metakd.models.deploy import (
    DeployedScorer,
)
from metakd.persist import (
    InputSchema,
)


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
_ONNX_BOOLEAN_OPS = frozenset(
    {"Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "And", "Or", "Not", "Xor"}
    | {"IsInf", "IsNaN"}
)


def _asinh_symbolic(g: Any, x: Any) -> Any:
    """ONNX for ``aten::asinh`` (the ``linear`` evidence's), which torch's TorchScript exporter
    lacks and ONNX Runtime's ``Asinh`` runs in float32 only, where the profile is float64:
    ``sign(x) · asinh|x|``, with ``asinh a = log(a + √(a² + 1))`` below 1 and
    ``log a + log(1 + √(1 + a⁻²))`` from 1 on, which no float64 ``a`` overflows."""
    one = g.op("CastLike", g.op("Constant", value_t=torch.tensor(1.0)), x)
    a = g.op("Abs", x)
    square = g.op("Mul", a, a)
    small = g.op("Log", g.op("Add", a, g.op("Sqrt", g.op("Add", square, one))))
    tail = g.op("Sqrt", g.op("Add", one, g.op("Div", one, square)))
    large = g.op("Add", g.op("Log", a), g.op("Log", g.op("Add", one, tail)))
    return g.op("Mul", g.op("Sign", x), g.op("Where", g.op("Less", a, one), small, large))


def onnx_available() -> bool:
    """Whether ``onnx`` and ``onnxruntime`` import (the ``onnx`` extra is installed)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def warn_onnx_unavailable() -> None:
    """Warn, once per process, that ONNX files are not written and how to get them."""
    note_once(
        "onnx",
        f"onnx / onnxruntime are not installed, so student.onnx is not written; "
        f"install them with `{ONNX_INSTALL_HINT}`",
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


def _headline(err: Exception) -> str:
    """The exporter's message up to its first line break: its failures go on to print the whole
    TorchScript graph (a thousand lines for a profile), which a warning cannot carry; the rest
    stays on the chained exception."""
    more = len(str(err).strip().splitlines()) - 1
    return first_line(err) + (
        f" [and {more} more lines of the exporter's graph]" if more > 0 else ""
    )


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
        torch.onnx.register_custom_op_symbolic("aten::asinh", _asinh_symbolic, ONNX_OPSET)
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
            raise MetakdError(f"could not export the scorer to ONNX: {_headline(err)}") from err
        model = onnx.load(Path(tmp) / "scorer.onnx")
    _cast_boolean_cumsums(model.graph)
    contract = export_contract(scorer, schema=schema, window=window, target="onnx")
    onnx.helper.set_model_props(model, dict(contract))
    model.doc_string = EXPORT_DOC.format(net=contract["metakd.net"])
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
            # Float32 rounding in ONNX Runtime's kernels (reductions in another order) moves
            # scores by ~1e-4 of their scale (measured: 6.7e-5 on a SKAB student); an export that
            # scores differently (wrong weights, columns) is off by the scores' own scale.
            atol = 1e-4 * max(1.0, float(np.abs(want).max()))
            if not np.allclose(got, want, rtol=1e-3, atol=atol):
                worst = float(np.max(np.abs(got.astype(np.float64) - want)))
                raise MetakdError(
                    f"the ONNX export's scores differ from the scorer's by up to {worst:.3g} "
                    f"(on {len(rows)} seeded rows; rtol 1e-3, atol {atol:.2g}); not written"
                )
    atomic_write_bytes(path, lambda f: f.write(data))


# -- the contract an export carries ---------------------------------------------------------------


__all__ = [
    "EXPORT_CONTRACT_KEYS",
    "EXPORT_CONTRACT_VERSION",
    "ONNX_INSTALL_HINT",
    "ONNX_OPSET",
    "OnnxScorer",
    "contract_input_schema",
    "export_contract",
    "export_onnx",
    "export_torchscript",
    "is_torchscript_archive",
    "load_onnx_scorer",
    "onnx_available",
    "read_export_contract",
    "warn_onnx_unavailable",
]
