"""ONNX export of the student: ``student.onnx`` scores as the detector does, at any batch size."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_bundle

from metakd import exports, extras
from metakd.detect import files
from metakd.detector import AdaptConfig, FewShotDetector
from metakd.distill import DistillConfig
from metakd.errors import MetakdError

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def _detector(kind: str, anomalies: int = 0) -> FewShotDetector:
    bundle = tiny_bundle(4, kind=kind, neighbours=5 if kind == "profile" else 3)
    rng = np.random.default_rng(1)
    support = rng.normal(size=(10, 4)).astype(np.float32)
    support = np.concatenate([support, 3.0 + rng.normal(size=(anomalies, 4)).astype(np.float32)])
    labels = np.r_[np.zeros(10), np.ones(anomalies)].astype(int)
    pool = rng.normal(size=(30, 4)).astype(np.float32)
    config = AdaptConfig(distill=DistillConfig(steps=50, batch_size=32))
    return FewShotDetector(bundle, config=config).fit(support, labels, unlabeled=pool)


@pytest.mark.parametrize(
    ("kind", "anomalies"),
    # With labelled anomalies the profile's `linear` evidence (an asinh) is in the graph.
    [("profile", 0), ("profile", 3), ("knn", 0)],
)
def test_onnx_scores_equal_the_detector(tmp_path: Path, kind: str, anomalies: int) -> None:
    detector = _detector(kind, anomalies)
    paths = detector.save(tmp_path / "model")
    assert paths["onnx"] == tmp_path / "model" / "student.onnx"
    session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["rows"]
    assert [o.name for o in session.get_outputs()] == ["score"]
    rng = np.random.default_rng(7)
    # Batch sizes other than the export's (5), and more rows than the profile's 2048-row blocks.
    for n in (1, 13, 2100):
        rows = (3.0 * rng.normal(size=(n, 4))).astype(np.float32)
        (got,) = session.run(["score"], {"rows": rows})
        want = detector.decision_function(rows)
        assert got.shape == (n,)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # Reloaded from disk, the detector scores as the ONNX file does.
    rows = rng.normal(size=(9, 4)).astype(np.float32)
    (got,) = session.run(["score"], {"rows": rows})
    loaded = FewShotDetector.load(tmp_path / "model")
    np.testing.assert_allclose(got, loaded.decision_function(rows), rtol=1e-4, atol=1e-5)


def test_a_mismatching_export_raises_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    detector = _detector("profile")
    scorer = detector.student_scorer_
    assert scorer is not None
    original = exports._cast_boolean_cumsums

    def tamper(graph: object) -> None:
        original(graph)
        # Scale the student's weights: the file no longer scores as the scorer does.
        from onnx import numpy_helper

        for init in graph.initializer:  # type: ignore[attr-defined]
            value = numpy_helper.to_array(init)
            if value.dtype == np.float32 and value.size > 1:
                init.CopyFrom(numpy_helper.from_array(value * 1.5, init.name))

    monkeypatch.setattr(exports, "_cast_boolean_cumsums", tamper)
    path = tmp_path / "student.onnx"
    with pytest.raises(MetakdError, match="differ from the scorer's by up to"):
        exports.export_onnx(scorer, path)
    assert not path.exists()
    assert not list(tmp_path.iterdir())  # no temporary file either


def test_an_exporter_failure_says_its_first_line_not_its_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TorchScript exporter's errors append the whole graph; the warning a user reads (the
    error's message) keeps its first line, the rest stays on the chained exception."""
    scorer = _detector("knn").student_scorer_
    assert scorer is not None
    graph = "\n".join(f"  %{i} : Tensor = aten::mul(%x, %y)" for i in range(1000))

    def unsupported(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"Exporting the operator 'aten::foo' is not supported.\n{graph}")

    monkeypatch.setattr(exports.torch.onnx, "export", unsupported)
    with pytest.raises(MetakdError) as caught:
        exports.export_onnx(scorer, tmp_path / "student.onnx")
    message = str(caught.value)
    assert "\n" not in message and "'aten::foo' is not supported" in message
    assert "and 1000 more lines of the exporter's graph" in message
    assert str(caught.value.__cause__).count("aten::mul") == 1000
    assert not list(tmp_path.iterdir())


def test_without_onnx_save_warns_once_and_writes_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    detector = _detector("knn")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "student.onnx").write_bytes(b"an earlier student")
    monkeypatch.setattr(files, "onnx_available", lambda: False)  # where save looks it up
    monkeypatch.setattr(extras, "NOTED", set())
    with pytest.warns(UserWarning, match=r"pip install \"metakd\[onnx\]\""):
        paths = detector.save(tmp_path / "model")
    assert "onnx" not in paths
    assert paths["torchscript"].is_file()
    assert not (tmp_path / "model" / "student.onnx").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detector.save(tmp_path / "again")  # once per process


def test_an_onnx_export_that_fails_its_check_is_a_warning_and_the_rest_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX is an optional export: a file that does not score as the scorer is not written, and
    the detector (student.pt, TorchScript) still is, with a warning saying why."""
    detector = _detector("knn")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "student.onnx").write_bytes(b"an earlier student")

    def failing(*args: object, **kwargs: object) -> None:
        raise MetakdError("the ONNX export's scores differ from the scorer's by up to 1")

    monkeypatch.setattr(files, "export_onnx", failing)
    with pytest.warns(UserWarning, match="student.onnx is not written: the ONNX export's"):
        paths = detector.save(tmp_path / "model")
    assert "onnx" not in paths and paths["student"].is_file() and paths["torchscript"].is_file()
    assert not (tmp_path / "model" / "student.onnx").exists()


def test_asinh_exports_in_float64_without_overflow(tmp_path: Path) -> None:
    """ONNX Runtime's ``Asinh`` has no float64 kernel; the export's own formula matches torch's
    from tiny to huge magnitudes (where a naive ``log(a + √(a² + 1))`` overflows)."""
    import torch

    class Asinh(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.asinh(x)

    torch.onnx.register_custom_op_symbolic(
        "aten::asinh", exports._asinh_symbolic, exports.ONNX_OPSET
    )
    x = torch.tensor([-1e300, -3.0, -0.5, 0.0, 1e-12, 0.7, 1.0, 2.0, 1e160, 1e300])
    path = tmp_path / "asinh.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            torch.jit.script(Asinh()),
            (x.double(),),
            path,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
            opset_version=exports.ONNX_OPSET,
            dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["y"], {"x": x.double().numpy()})
    np.testing.assert_allclose(got, torch.asinh(x.double()).numpy(), rtol=1e-12, atol=1e-15)
