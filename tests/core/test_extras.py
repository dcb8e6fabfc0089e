"""Optional dependencies (metakd.extras): with an extra's package missing (simulated by
``sys.modules[name] = None``, which makes ``import name`` fail as an absent package does), the
feature that needs it fails with one line naming ``pip install "metakd[EXTRA]"``, W&B's default
mode falls back to metrics.jsonl, and the core install still meta-trains, adapts and scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, TINY_TRAIN, TrainedRun, sets

from metakd import extras
from metakd.data.readers import read_task
from metakd.data.transforms import ScalingConfig
from metakd.evaluate import load_evaluate_config
from metakd.evaluate.baselines.pyod import PyODDetector
from metakd.evaluate.run import check_extras
from metakd.extras import MissingExtra
from metakd.tracking import Run, TrackingConfig

#: Every optional package, by the extra that installs it.
EXTRA_PACKAGES = {
    "tracking": ["wandb"],
    "evaluate": ["pyod", "matplotlib"],
    "parquet": ["pyarrow"],
    "onnx": ["onnx", "onnxruntime"],
}


def _hide(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def test_the_extras_table_matches_pyproject() -> None:
    text = (REPO / "pyproject.toml").read_text()
    for extra, packages in EXTRA_PACKAGES.items():
        assert all(extras.OPTIONAL[p] == (p, extra) for p in packages)
        line = next(line for line in text.splitlines() if line.startswith(f"{extra} = "))
        assert all(f'"{p}>=' in line for p in packages), line
    assert set(extras.OPTIONAL) == {p for ps in EXTRA_PACKAGES.values() for p in ps}


def test_is_installed_sees_a_hidden_package(monkeypatch: pytest.MonkeyPatch) -> None:
    assert extras.is_installed("numpy")
    _hide(monkeypatch, "numpy")
    assert not extras.is_installed("numpy")
    assert not extras.is_installed("surely_not_a_package_metakd_needs")


def test_missing_message_names_one_install_command() -> None:
    message = extras.missing_message(["pyod", "matplotlib"], "metakd evaluate")
    assert message == (
        'metakd evaluate needs pyod and matplotlib, which are not installed: pip install "metakd[evaluate]"'
    )
    assert extras.missing_message(["wandb", "pyarrow"], "x").endswith(
        'pip install "metakd[tracking,parquet]"'
    )


# --- tracking (wandb) --------------------------------------------------------------------


@pytest.fixture
def without_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "wandb")
    monkeypatch.setattr(extras, "NOTED", set())


@pytest.mark.usefixtures("without_wandb")
@pytest.mark.parametrize("env_mode", [None, "offline"])
def test_default_mode_without_wandb_writes_metrics_only_with_one_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env_mode: str | None
) -> None:
    if env_mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env_mode)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ("a", "b"):
            with Run(tmp_path / name, config={}, tracking=TrackingConfig(), job_type="t") as run:
                assert run.mode == "disabled" and run.wandb_run is None
                run.log({"loss": 1.0}, step=0)
    notes = [str(w.message) for w in caught]
    assert len(notes) == 1, "said once per process"
    assert "metrics.jsonl only" in notes[0] and 'pip install "metakd[tracking]"' in notes[0]
    assert "\n" not in notes[0]
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"step": 0, "loss": 1.0}
    assert not (tmp_path / "a" / "wandb").exists()


@pytest.mark.usefixtures("without_wandb")
@pytest.mark.parametrize("mode", ["offline", "online"])
def test_an_explicit_wandb_mode_without_wandb_is_an_error(tmp_path: Path, mode: str) -> None:
    with pytest.raises(MissingExtra, match=r'pip install "metakd\[tracking\]"') as error:
        Run(tmp_path, config={}, tracking=TrackingConfig(mode=mode), job_type="t")  # type: ignore[arg-type]
    assert f"tracking.mode={mode}" in str(error.value)
    assert not (tmp_path / "metrics.jsonl").exists(), "refused before anything was written"


@pytest.mark.usefixtures("without_wandb")
def test_disabled_tracking_needs_no_wandb_and_says_nothing(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Run(tmp_path, config={}, tracking=TrackingConfig(mode="disabled"), job_type="t"):
            pass


# --- evaluate (pyod, matplotlib) ---------------------------------------------------------


@pytest.mark.parametrize("hidden", [["pyod"], ["matplotlib"], ["pyod", "matplotlib"]])
def test_evaluate_without_its_extra_fails_before_any_work(
    monkeypatch: pytest.MonkeyPatch, hidden: list[str]
) -> None:
    _hide(monkeypatch, *hidden)
    with pytest.raises(MissingExtra) as error:
        check_extras(load_evaluate_config())
    message = str(error.value)
    assert message.startswith("metakd evaluate needs " + " and ".join(reversed(hidden)))
    assert message.endswith('pip install "metakd[evaluate]"')


def test_evaluate_without_pyod_runs_when_no_pyod_method_is_selected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _hide(monkeypatch, "pyod")
    check_extras(load_evaluate_config(None, ["methods=[metakd-student, logreg-support]"]))


def test_a_pyod_baseline_without_pyod_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "pyod")
    x = np.random.default_rng(0).normal(size=(12, 3))
    with pytest.raises(MissingExtra, match=r'pip install "metakd\[evaluate\]"'):
        detector = PyODDetector("knn", source="support", scaling=ScalingConfig(), seed=0)
        detector.fit(x, np.zeros(12, dtype=np.int64))


def test_the_plot_without_matplotlib_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from metakd.evaluate.report import plot_auroc_vs_shots

    _hide(monkeypatch, "matplotlib")
    summary = pd.DataFrame(
        {"anomaly_shots": [0], "shots": [5], "method": ["metakd-student"], "auroc": [0.9]}
        | {"auroc_ci": [0.01], "auprc": [0.5], "auprc_ci": [0.1], "n": [2], "failed": [0]}
    )
    with pytest.raises(MissingExtra, match=r'pip install "metakd\[evaluate\]"'):
        plot_auroc_vs_shots(summary, tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


# --- parquet (pyarrow) -------------------------------------------------------------------


def test_a_parquet_file_without_pyarrow_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "t.parquet"
    pd.DataFrame({"a": [1.0, 2.0, 3.0], "label": [0, 0, 1]}).to_parquet(path)
    _hide(monkeypatch, "pyarrow")
    with pytest.raises(MissingExtra) as error:
        read_task(path)
    assert str(error.value) == (
        f"reading {path} (parquet) needs pyarrow, which is not installed: "
        'pip install "metakd[parquet]"'
    )


# --- onnx (onnx, onnxruntime) ------------------------------------------------------------


def test_onnx_export_without_onnx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from metakd.exports import ONNX_INSTALL_HINT, onnx_available

    _hide(monkeypatch, "onnx", "onnxruntime")
    assert not onnx_available()
    assert "metakd[onnx]" in ONNX_INSTALL_HINT


# --- the core install ---------------------------------------------------------------------

#: Run metakd's CLI with every optional package hidden, as on a core install.
CORE_ONLY = (
    "import sys\n"
    + "".join(f"sys.modules[{p!r}] = None\n" for ps in EXTRA_PACKAGES.values() for p in ps)
    + "from metakd.cli import main\n"
    + "main()\n"
)


def _core(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("WANDB_MODE", None)  # the default tracking mode, as a user meets it
    return subprocess.run(
        [sys.executable, "-c", CORE_ONLY, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
        check=False,
    )


def test_the_core_install_meta_trains_adapts_and_scores(
    tmp_path: Path, tiny_teacher: TrainedRun
) -> None:
    """Without any extra: meta-train (progress as plain lines, output not a terminal; W&B's
    default mode falls back to metrics.jsonl with a note), adapt a csv, score it; `evaluate`
    and a parquet file fail with one line naming the install command."""
    train = sets([a for a in TINY_TRAIN if a != "tracking.mode=disabled"])
    trained = _core("meta-train", "--tasks", "synthetic", "--out", "run", *train, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "Held-out few-shot AUROC" in trained.stdout
    assert "wandb is not installed, so runs are tracked in metrics.jsonl only" in trained.stderr
    assert "meta-train 0/20 (0%)" in trained.stderr and "meta-train 20/20 (100%)" in trained.stderr
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    assert not (tmp_path / "run" / "wandb").exists()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    support = pd.DataFrame(x[:12], columns=[f"f{i}" for i in range(6)]).assign(label=0)
    support.to_csv(tmp_path / "support.csv", index=False)
    pd.DataFrame(x[12:], columns=support.columns[:6]).to_csv(tmp_path / "rows.csv", index=False)
    teacher = str(tiny_teacher.teacher)
    adapted = _core(
        "adapt", "--teacher", teacher, "--support", "support.csv", "--unlabeled", "rows.csv",
        "--out", "line", "--set", "distill.steps=20", cwd=tmp_path,
    )  # fmt: skip
    assert adapted.returncode == 0, adapted.stderr
    assert (tmp_path / "line" / "student.pt").is_file()
    assert not (tmp_path / "line" / "student.onnx").exists()
    scored = _core("score", "--model", "line/student.pt", "--data", "rows.csv", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert len(scored.stdout.splitlines()) == 1 + 28

    evaluated = _core("evaluate", "--teacher", teacher, "--out", "eval", cwd=tmp_path)
    assert evaluated.returncode == 2
    assert evaluated.stderr.strip().splitlines()[-1] == (
        "error: metakd evaluate needs matplotlib and pyod, which are not installed: "
        'pip install "metakd[evaluate]"'
    )
    assert not (tmp_path / "eval").exists()
    support.to_parquet(tmp_path / "support.parquet")
    refused = _core(
        "adapt", "--teacher", teacher, "--support", "support.parquet", "--out", "p", cwd=tmp_path
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(
        'needs pyarrow, which is not installed: pip install "metakd[parquet]"'
    )
