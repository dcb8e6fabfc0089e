"""A detector carries its input columns (matched by name when scoring) and every command takes a
device (CUDA where the machine has none is a one-line error)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from helpers import tiny_bundle

from metakd import cli
from metakd.data.readers import ReadOptions, read_task
from metakd.data.transforms import AlignmentConfig
from metakd.detector import AdaptConfig, FewShotDetector
from metakd.errors import ConfigError, DataError
from metakd.persist import TeacherBundle

FEATURES = ["temp", "pressure", "flow"]
AS_IS = AlignmentConfig(kind="none")  # columns as they are, so they keep their names
HAS_CUDA = torch.cuda.is_available()


def _frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, 3)), columns=FEATURES)
    frame["label"] = 0
    frame["machine"] = [f"m{i}" for i in range(rows)]  # not a feature: ignored at adapt
    return frame


def _adapted(tmp_path: Path, write_teacher: Callable[[TeacherBundle, Path], Path]) -> Path:
    support = tmp_path / "support.csv"
    _frame(30, 0).to_csv(support, index=False)
    out = tmp_path / "model"
    result = CliRunner().invoke(
        cli.main,
        [
            "adapt",
            "--teacher",
            str(
                write_teacher(tiny_bundle(len(FEATURES), alignment=AS_IS), tmp_path / "teacher.pt")
            ),
        ]
        + ["--support", str(support)]
        + ["--out", str(out), "--set", "student=false", "--set", 'read.ignore_columns=["machine"]']
        + ["--tracking", "disabled", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    return out


def _score(tmp_path: Path, model: Path, frame: pd.DataFrame, *extra: str) -> tuple[int, str]:
    data = tmp_path / "rows.csv"
    frame.to_csv(data, index=False)
    out = tmp_path / "scores.csv"
    out.unlink(missing_ok=True)
    result = CliRunner().invoke(
        cli.main,
        ["score", "--model", str(model / "teacher.pt"), "--data", str(data), "--out", str(out)]
        + list(extra),
    )
    return result.exit_code, result.output


def test_score_matches_columns_by_name_and_refuses_renamed_ones(
    tmp_path: Path, write_teacher: Callable[[TeacherBundle, Path], Path]
) -> None:
    model = _adapted(tmp_path, write_teacher)
    report = json.loads((model / "report.json").read_text())
    assert report["inputs"]["columns"] == FEATURES
    assert report["threshold"]["method"] == report["threshold_method"]
    # 30 normals, no pool: the threshold reads the support's cross-fitted scores.
    assert report["threshold"] == {
        "method": "normal_quantile",
        "configured": "auto",
        "normal_quantile": 0.95,
        "cross_fitted": True,
        "folds": 10,
    }
    frame = _frame(20, 1)
    code, output = _score(tmp_path, model, frame)
    assert code == 0, output
    expected = pd.read_csv(tmp_path / "scores.csv")["score"].to_numpy()
    # The same rows with the columns in another order (and the ignored column absent): the same
    # scores, because columns are matched by name.
    code, output = _score(tmp_path, model, frame[["flow", "label", "temp", "pressure"]])
    assert code == 0, output
    np.testing.assert_allclose(pd.read_csv(tmp_path / "scores.csv")["score"], expected)
    code, output = _score(tmp_path, model, frame.rename(columns={"pressure": "press"}))
    assert code != 0
    assert "'pressure'" in output and "'press'" in output and "renamed" in output
    code, output = _score(tmp_path, model, frame.drop(columns=["flow"]))
    assert code != 0 and "column 'flow'" in output and "missing" in output
    frame["extra"] = 1.0
    code, output = _score(tmp_path, model, frame)
    assert code != 0 and "column 'extra' is not one of the model's features" in output
    code, output = _score(tmp_path, model, frame, "--set", 'ignore_columns=["extra"]')
    assert code == 0, output  # score takes --set like the other commands
    np.testing.assert_allclose(pd.read_csv(tmp_path / "scores.csv")["score"], expected)


def test_detector_keeps_dataframe_columns(tmp_path: Path) -> None:
    frame = _frame(30, 0)[FEATURES]
    detector = FewShotDetector(
        tiny_bundle(len(FEATURES), alignment=AS_IS), config=AdaptConfig(student=False)
    ).fit(frame)
    assert list(detector.feature_names_in_) == FEATURES and detector.n_features_in_ == 3
    rows = _frame(10, 2)[FEATURES]
    expected = detector.decision_function(rows.to_numpy())
    np.testing.assert_allclose(detector.decision_function(rows[FEATURES[::-1]]), expected)
    with pytest.raises(DataError, match="column 'flow'"):
        detector.decision_function(rows.rename(columns={"flow": "f"}))
    detector.save(tmp_path / "saved")
    loaded = FewShotDetector.load(tmp_path / "saved")
    assert list(loaded.feature_names_in_) == FEATURES
    np.testing.assert_allclose(loaded.decision_function(rows[FEATURES[::-1]]), expected)
    # Plain arrays: no names are kept, rows are taken in order.
    plain = FewShotDetector(
        tiny_bundle(len(FEATURES), alignment=AS_IS), config=AdaptConfig(student=False)
    ).fit(frame.to_numpy())
    assert not hasattr(plain, "feature_names_in_") and plain.input_columns_ is None


def test_read_columns_option(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    _frame(5, 0).to_csv(path, index=False)
    task = read_task(
        path, ReadOptions(ignore_columns=["machine"], columns=["flow", "temp", "pressure"])
    )
    assert task.feature_names == ("flow", "temp", "pressure") and task.named
    whole = read_task(path, ReadOptions(ignore_columns=["machine"]))
    np.testing.assert_array_equal(task.X, whole.X[:, [2, 0, 1]])
    npz = tmp_path / "a.npz"
    np.savez(npz, X=whole.X, feature_names=np.array(FEATURES))
    assert (
        read_task(npz, ReadOptions(columns=["flow", "temp", "pressure"])).feature_names[0] == "flow"
    )
    np.savez(npz, X=whole.X)
    assert not read_task(npz).named  # made-up names x0, x1, ... are never matched by name
    with pytest.raises(ConfigError, match="read.columns"):
        ReadOptions(columns=["label"])


@pytest.mark.skipif(HAS_CUDA, reason="checks the error of a machine without CUDA")
@pytest.mark.parametrize("command", ["meta-train", "adapt", "score", "evaluate"])
def test_cuda_without_cuda_is_one_line(tmp_path: Path, command: str) -> None:
    args = {
        "meta-train": ["meta-train", "--out", str(tmp_path / "run")],
        "adapt": ["adapt", "--teacher", "t.pt", "--support", "s.csv", "--out", str(tmp_path / "o")],
        "score": ["score", "--model", "m.pt", "--data", "d.csv"],
        "evaluate": ["evaluate", "--teacher", "t.pt", "--out", str(tmp_path / "e")],
    }[command]
    result = CliRunner().invoke(cli.main, [*args, "--device", "cuda"])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], result.output
    assert not any(tmp_path.iterdir())  # nothing written


def test_auto_device_is_cpu_without_cuda(tmp_path: Path) -> None:
    rows = _frame(30, 0)[FEATURES].to_numpy()
    bundle = tiny_bundle(len(FEATURES), alignment=AS_IS)
    cpu = FewShotDetector(bundle, config=AdaptConfig(seed=1)).fit(rows)
    auto = FewShotDetector(bundle, config=AdaptConfig(seed=1, device="auto")).fit(rows)
    assert auto.report_["device"] == ("cuda" if HAS_CUDA else "cpu")
    if not HAS_CUDA:
        np.testing.assert_array_equal(cpu.decision_scores_, auto.decision_scores_)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_fit_and_score_equal_cpu(tmp_path: Path) -> None:
    rows = _frame(60, 0)[FEATURES].to_numpy()
    new = _frame(50, 3)[FEATURES].to_numpy()
    bundle = tiny_bundle(len(FEATURES), alignment=AS_IS)
    cpu = FewShotDetector(bundle, config=AdaptConfig(seed=1)).fit(rows[:20], unlabeled=rows[20:])
    gpu = FewShotDetector(bundle, config=AdaptConfig(seed=1, device="cuda")).fit(
        rows[:20], unlabeled=rows[20:]
    )
    np.testing.assert_allclose(
        gpu.decision_function(new), cpu.decision_function(new), rtol=1e-3, atol=1e-4
    )
    cpu.save(tmp_path / "m")
    frame = pd.DataFrame(new, columns=FEATURES)
    scores = {}
    for device in ("cpu", "cuda"):
        code, output = _score(tmp_path, tmp_path / "m", frame, "--device", device)
        assert code == 0, output
        scores[device] = pd.read_csv(tmp_path / "scores.csv")["score"].to_numpy()
    np.testing.assert_allclose(scores["cuda"], scores["cpu"], rtol=1e-4, atol=1e-5)
