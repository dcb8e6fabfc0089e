"""Exports carry their contract: ``student.onnx`` (``metadata_props``) and
``student.torchscript.pt`` (extra files) hold the input columns, the threshold, the score direction
and the rest ``metakd score`` needs; ``metakd score --model student.onnx`` reads them and scores as
``student.pt`` does, matching columns by name; a TorchScript archive is refused (a program)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from helpers import tiny_bundle, write_teacher_file

import metakd
from metakd import cli, exports
from metakd.data.transforms import AlignmentConfig
from metakd.errors import DataError
from metakd.exports import read_export_contract
from metakd.persist import TeacherBundle, load_scorer

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

FEATURES = ["temp", "pressure", "flow"]
FAST = ["--set", "distill.steps=40", "--tracking", "disabled", "--no-progress"]


def _frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, 3)) * [1.0, 5.0, 0.2], columns=FEATURES)
    frame["label"] = 0
    frame["machine"] = [f"m{i}" for i in range(rows)]  # not a feature: ignored at adapt
    return frame


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.main, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def adapted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``metakd adapt`` with a student, on a csv of named columns (``machine`` ignored)."""
    root = tmp_path_factory.mktemp("contract")
    teacher = write_teacher_file(
        tiny_bundle(len(FEATURES), kind="profile", neighbours=5), root / "teacher.pt"
    )
    support, pool = root / "support.csv", root / "pool.csv"
    _frame(30, 0).to_csv(support, index=False)
    _frame(60, 1).to_csv(pool, index=False)
    out = root / "model"
    code, output = _invoke(
        "adapt",
        *("--teacher", str(teacher), "--support", str(support), "--unlabeled", str(pool)),
        *("--out", str(out), "--set", 'read.ignore_columns=["machine"]', *FAST),
    )
    assert code == 0, output
    assert (out / "student.onnx").is_file()
    return out


def _score(model: Path, frame: pd.DataFrame, tmp_path: Path, *extra: str) -> pd.DataFrame:
    data = tmp_path / "rows.csv"
    frame.to_csv(data, index=False)
    out = tmp_path / "scores.csv"
    out.unlink(missing_ok=True)
    code, output = _invoke("score", "--model", str(model), "--data", str(data), "--out", str(out))
    assert code == 0, output
    return pd.read_csv(out)


def _score_fails(model: Path, frame: pd.DataFrame, tmp_path: Path) -> str:
    data = tmp_path / "rows.csv"
    frame.to_csv(data, index=False)
    code, output = _invoke("score", "--model", str(model), "--data", str(data))
    assert code == 2, output
    return output


def test_onnx_and_torchscript_carry_the_contract(adapted: Path) -> None:
    student = load_scorer(adapted / "student.pt")
    # Read as a deployer would, without metakd: onnx's metadata_props, ONNX Runtime's custom
    # metadata, torch.jit.load's extra files.
    props = {p.key: p.value for p in onnx.load(str(adapted / "student.onnx")).metadata_props}
    session = ort.InferenceSession(
        str(adapted / "student.onnx"), providers=["CPUExecutionProvider"]
    )
    assert session.get_modelmeta().custom_metadata_map == props
    extra = dict.fromkeys(props, "")
    torch.jit.load(str(adapted / "student.torchscript.pt"), _extra_files=extra)
    scripted = {k: v.decode() for k, v in extra.items()}  # type: ignore[attr-defined]
    assert set(props) == {f"metakd.{key}" for key in exports.EXPORT_CONTRACT_KEYS}
    # The same contract but the call signature (ONNX's input name, TorchScript's methods).
    assert {k: v for k, v in scripted.items() if k != "metakd.signature"} == {
        k: v for k, v in props.items() if k != "metakd.signature"
    }
    assert json.loads(props["metakd.input_columns"]) == FEATURES
    assert float(props["metakd.threshold"]) == student.threshold  # exactly
    assert props["metakd.score_direction"] == "higher_is_more_anomalous"
    assert props["metakd.flag_rule"] == "score > threshold"
    assert props["metakd.version"] == metakd.__version__
    assert props["metakd.net"] == "student"
    for path in (adapted / "student.onnx", adapted / "student.torchscript.pt"):
        contract = read_export_contract(path)
        assert contract["input_columns"] == FEATURES
        assert contract["label_column"] == "label"
        assert contract["ignore_columns"] == ["machine"]
        assert contract["input_dim"] == 3 and contract["window"] is None
        assert contract["threshold"] == student.threshold
        assert contract["contract_version"] == exports.EXPORT_CONTRACT_VERSION
        inside = contract["preprocessing_in_model"]
        assert inside["clip"] == student.preprocess.clip
        assert inside["neighbourhood_profile"]["neighbours"] == 5
        assert any("input_columns by name" in step for step in contract["preprocessing_outside"])


def test_torchscript_contract_is_read_without_loading_the_program(
    adapted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the archive was loaded")

    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert read_export_contract(adapted / "student.torchscript.pt")["input_columns"] == FEATURES
    assert exports.is_torchscript_archive(adapted / "student.torchscript.pt")
    assert not exports.is_torchscript_archive(adapted / "student.pt")
    assert not exports.is_torchscript_archive(adapted / "student.onnx")


def test_score_onnx_equals_onnxruntime_and_student_pt(adapted: Path, tmp_path: Path) -> None:
    frame = _frame(50, 7)
    frame.loc[:4, "temp"] += 6.0  # a few clear anomalies
    onnx_out = _score(adapted / "student.onnx", frame, tmp_path)
    pt_out = _score(adapted / "student.pt", frame, tmp_path)
    session = ort.InferenceSession(
        str(adapted / "student.onnx"), providers=["CPUExecutionProvider"]
    )
    (direct,) = session.run(["score"], {"rows": frame[FEATURES].to_numpy(np.float32)})
    np.testing.assert_allclose(onnx_out["score"], direct, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(onnx_out["score"], pt_out["score"], rtol=1e-4, atol=1e-5)
    threshold = read_export_contract(adapted / "student.onnx")["threshold"]
    np.testing.assert_array_equal(onnx_out["is_anomaly"], onnx_out["score"] > threshold)
    assert onnx_out["is_anomaly"].sum() > 0


def test_score_onnx_matches_columns_by_name(adapted: Path, tmp_path: Path) -> None:
    frame = _frame(20, 3)
    expected = _score(adapted / "student.onnx", frame, tmp_path)["score"]
    reversed_frame = frame[["machine", "label", *reversed(FEATURES)]]
    got = _score(adapted / "student.onnx", reversed_frame, tmp_path)["score"]
    np.testing.assert_array_equal(got, expected)
    output = _score_fails(adapted / "student.onnx", frame.drop(columns=["pressure"]), tmp_path)
    assert "column 'pressure'" in output and "missing" in output


def _without(props: set[str] | None, source: Path, target: Path) -> Path:
    """``source`` with the metadata keys ``props`` removed (``None``: all of them)."""
    model = onnx.load(str(source))
    kept = [p for p in model.metadata_props if props is not None and p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(target))
    return target


def test_onnx_without_the_contract_is_an_error_naming_what_is_missing(
    adapted: Path, tmp_path: Path
) -> None:
    bare = _without(None, adapted / "student.onnx", tmp_path / "bare.onnx")
    output = _score_fails(bare, _frame(5, 2), tmp_path)
    assert "no metakd contract" in output
    assert "metakd.input_columns" in output and "metakd.threshold" in output
    partial = _without({"metakd.threshold"}, adapted / "student.onnx", tmp_path / "partial.onnx")
    with pytest.raises(DataError, match="incomplete metakd contract") as caught:
        read_export_contract(partial)
    assert "metakd.threshold" in str(caught.value)
    assert "metakd.input_columns" not in str(caught.value)


def test_onnx_with_custom_operators_or_external_data_is_refused(
    adapted: Path, tmp_path: Path
) -> None:
    model = onnx.load(str(adapted / "student.onnx"))
    model.graph.node[0].domain = "com.example.custom"
    onnx.save(model, str(tmp_path / "custom.onnx"))
    with pytest.raises(DataError, match="operators outside ONNX"):
        exports.load_onnx_scorer(tmp_path / "custom.onnx")
    model = onnx.load(str(adapted / "student.onnx"))
    onnx.save(
        model,
        str(tmp_path / "external.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    with pytest.raises(DataError, match="external data"):
        exports.load_onnx_scorer(tmp_path / "external.onnx")


def test_score_refuses_a_torchscript_archive(adapted: Path, tmp_path: Path) -> None:
    output = _score_fails(adapted / "student.torchscript.pt", _frame(5, 2), tmp_path)
    assert "TorchScript archive" in output and "student.pt" in output


def test_exports_without_a_schema_have_unnamed_columns(adapted: Path, tmp_path: Path) -> None:
    scorer = load_scorer(adapted / "student.pt")
    exports.export_torchscript(scorer, tmp_path / "s.torchscript.pt")
    exports.export_onnx(scorer, tmp_path / "s.onnx")
    for path in (tmp_path / "s.torchscript.pt", tmp_path / "s.onnx"):
        contract = read_export_contract(path)
        assert contract["input_columns"] is None and contract["input_dim"] == 3
        assert contract["threshold"] == scorer.threshold
    assert zipfile.is_zipfile(tmp_path / "s.torchscript.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.onnx", "s.torchscript.pt"]  # no temp


def test_windowed_model_scores_alike_from_onnx(tmp_path: Path) -> None:
    """A model of windowed series: the contract carries the windows, and score windows the raw
    series for the ONNX model as for student.pt."""
    bundle: TeacherBundle = tiny_bundle(15, alignment=AlignmentConfig(kind="none"))
    bundle.window = {
        "config": {"size": 4, "stride": 2, "label": "any", "features": "stats"},
        "raw_widths": [3],
    }
    teacher = write_teacher_file(bundle, tmp_path / "teacher.pt")
    support = tmp_path / "support.csv"
    _frame(40, 0).drop(columns=["machine"]).to_csv(support, index=False)
    out = tmp_path / "model"
    code, output = _invoke(
        "adapt", "--teacher", str(teacher), "--support", str(support), "--out", str(out), *FAST
    )
    assert code == 0, output
    assert read_export_contract(out / "student.onnx")["window"] == bundle.window
    series = _frame(30, 5).drop(columns=["machine"])
    onnx_out = _score(out / "student.onnx", series, tmp_path)
    pt_out = _score(out / "student.pt", series, tmp_path)
    assert list(onnx_out.columns) == ["first_row", "last_row", "score", "is_anomaly"]
    assert len(onnx_out) == 14
    np.testing.assert_array_equal(onnx_out["first_row"], pt_out["first_row"])
    np.testing.assert_allclose(onnx_out["score"], pt_out["score"], rtol=1e-4, atol=1e-5)
