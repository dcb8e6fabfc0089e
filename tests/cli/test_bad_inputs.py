"""Bad inputs and faults through the CLI: one table, each a one-line error and exit 2.

Every case checks the exit status, that the message names the fault, that there is no
traceback, and that no file that existed before the command changed (hashes).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import TrainedRun, adapt_model, file_hashes, sets, write_csv

from metakd.cli import INTERRUPTED_EXIT, main, run_guarded


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, tiny_teacher: TrainedRun
) -> dict[str, Path]:
    """A tiny teacher's run folder (the session's, copied in: its files are hashed with the
    rest), an adapted model folder and input files of every kind."""
    root = tmp_path_factory.mktemp("bad-inputs")
    shutil.copytree(tiny_teacher.run, root / "run")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6))
    y = np.r_[np.zeros(12), np.ones(3), np.zeros(105)].astype(int)
    files = {
        "teacher": root / "run" / "teacher.pt",
        "support": write_csv(root / "support.csv", x[:15], y[:15]),
        "normals": write_csv(root / "normals.csv", x[:12], y[:12]),
        "one_normal": write_csv(root / "one_normal.csv", x[:1], y[:1]),
        "pool": write_csv(root / "pool.csv", x[15:], None),
        "wide_pool": write_csv(root / "wide_pool.csv", rng.normal(size=(50, 9)), None),
        "bad_label": write_csv(root / "bad_label.csv", x[:5], np.array([0, 0, 2, 0, 0])),
        "anomalies": write_csv(root / "anomalies.csv", x[12:15], y[12:15]),
        "text": root / "text.csv",
        "nan": root / "nan.csv",
        "empty": root / "empty.csv",
    }
    files["wide_npz"] = root / "wide_pool.npz"
    np.savez(files["wide_npz"], X=rng.normal(size=(50, 9)))
    files["text"].write_text("f0,f1,label\n1,abc,0\n2,3,0\n")
    files["nan"].write_text("f0,f1,label\n1,2,0\n3,,0\n")
    files["empty"].write_text("f0,f1,label\n")
    adapt_model(files["teacher"], files["normals"], files["pool"], root / "model")
    files["student"] = root / "model" / "student.pt"
    files["model_teacher"] = root / "model" / "teacher.pt"
    files["existing_file"] = root / "existing.txt"
    files["existing_file"].write_text("keep me\n")
    files["other_model"] = root / "other.pt"
    shutil.copy(files["student"], files["other_model"])
    files["foreign"] = root / "foreign"
    files["foreign"].mkdir()
    (files["foreign"] / "notes.txt").write_text("not metakd's\n")
    files["root"] = root
    return files


def _adapt(*extra: str) -> list[str]:
    return [
        "adapt",
        "--teacher",
        "{teacher}",
        "--out",
        "{out}",
        "--set",
        "tracking.mode=disabled",
        *extra,
    ]


def _train(*extra: str) -> list[str]:
    return [
        "meta-train",
        "--out",
        "{out}",
        "--no-progress",
        *sets(["tracking.mode=disabled", *extra]),
    ]


CASES: list[tuple[str, list[str], str]] = [
    # meta-train: config values and cross-field rules, checked before any work starts
    ("meta_lr negative", _train("meta.meta_lr=-0.01"), "meta_lr must be a positive"),
    ("meta_lr nan", _train("meta.meta_lr=.nan"), "meta_lr must be a positive"),
    ("meta_lr zero", _train("meta.meta_lr=0"), "meta_lr must be a positive"),
    ("grad_clip negative", _train("meta.grad_clip=-1"), "grad_clip must be >= 0"),
    ("weight_decay negative", _train("meta.weight_decay=-1"), "weight_decay must be >= 0"),
    ("inner lr nan", _train("inner.lr=.nan"), "lr must be a positive"),
    ("inner steps negative", _train("inner.steps=-1"), "steps must be >= 0"),
    ("iterations zero", _train("iterations=0"), "iterations must be >= 1"),
    ("device unknown", _train("device=tpu9"), "'tpu9' is not a torch device"),
    ("bce with a distance teacher", _train("model.kind=svdd", "inner.loss=bce"), "inner.loss=bce"),
    ("sad with a logit teacher", _train("inner.loss=sad"), "inner.loss=sad"),
    ("prior weight", _train("prior.weight=2"), "prior.weight must be in [0, 1]"),
    ("prior features", _train("prior.features=[5, 2]"), "prior.features"),
    ("prior contamination", _train("prior.contamination=[0.1, 0.7]"), "prior.contamination"),
    ("prior features zero", _train("prior.features=[0, 4]"), "prior.features"),
    ("profile neighbours", _train("model.profile.neighbours=0"), "neighbours must be >= 1"),
    ("hidden empty", _train("model.hidden=[]"), "hidden"),
    ("unknown key", _train("model.hidnen=[8]"), "unknown config key 'model.hidnen'"),
    ("wrong type", _train("iterations=many"), "expected an integer"),
    ("bad override", ["meta-train", "--out", "{out}", "--set", "iterations"], "key=value"),
    ("missing tasks", ["meta-train", "--out", "{out}", "--tasks", "{root}/nope"], "nope"),
    ("out is a file", ["meta-train", "--out", "{existing_file}"], "existing.txt"),
    # adapt: files and rows
    ("support missing", _adapt("--support", "{root}/nope.csv"), "nope.csv"),
    ("support label 2", _adapt("--support", "{bad_label}"), "bad_label.csv"),
    ("support all anomalies", _adapt("--support", "{anomalies}"), "at least one normal"),
    ("support text value", _adapt("--support", "{text}"), "column 'f1' is not numeric"),
    ("support empty value", _adapt("--support", "{nan}"), "nan.csv"),
    ("support no rows", _adapt("--support", "{empty}"), "empty.csv"),
    ("one normal no pool", _adapt("--support", "{one_normal}"), "at least 5 normal rows"),
    ("pool width", _adapt("--support", "{normals}", "--unlabeled", "{wide_pool}"), "features"),
    ("eval without both labels", _adapt("--support", "{normals}", "--eval", "{normals}"), "both"),
    (
        "teacher not a checkpoint",
        ["adapt", "--teacher", "{support}", "--support", "{normals}", "--out", "{out}"],
        "support.csv",
    ),
    (
        "teacher is an adapted model",
        ["adapt", "--teacher", "{student}", "--support", "{normals}", "--out", "{out}"],
        "student.pt",
    ),
    ("distill lr", _adapt("--support", "{normals}", "--set", "distill.lr=-1"), "lr must be"),
    (
        "f1 without anomalies",
        _adapt("--support", "{normals}", "--set", "threshold.method=f1"),
        "threshold.method=f1 needs labelled anomalies",
    ),
    (
        "contamination without pool",
        _adapt("--support", "{normals}", "--set", "threshold.method=contamination"),
        "threshold.method=contamination needs an unlabelled pool",
    ),
    (
        "contamination range",
        _adapt("--support", "{normals}", "--set", "threshold.contamination=0.7"),
        "contamination must be in",
    ),
    (
        "adapt unknown key",
        _adapt("--support", "{normals}", "--set", "distill.alfa=1"),
        "unknown config key 'distill.alfa'",
    ),
    (
        "adapt out is a file",
        [
            "adapt",
            "--teacher",
            "{teacher}",
            "--support",
            "{normals}",
            "--out",
            "{existing_file}",
            "--set",
            "tracking.mode=disabled",
        ],
        "existing.txt",
    ),
    # score: outputs never overwrite inputs or models
    (
        "score out is the data",
        ["score", "--model", "{student}", "--data", "{pool}", "--out", "{pool}"],
        "is also an input",
    ),
    (
        "score out is the model",
        ["score", "--model", "{student}", "--data", "{pool}", "--out", "{student}"],
        "is also an input",
    ),
    (
        "score out is a model",
        ["score", "--model", "{student}", "--data", "{pool}", "--out", "{other_model}"],
        "is a model file",
    ),
    ("score model missing", ["score", "--model", "{root}/nope.pt", "--data", "{pool}"], "nope.pt"),
    (
        "score model is a teacher run",
        ["score", "--model", "{teacher}", "--data", "{pool}"],
        "teacher.pt",
    ),
    ("score wrong width", ["score", "--model", "{student}", "--data", "{wide_pool}"], "f6"),
    (
        "score wrong width, no header",
        ["score", "--model", "{student}", "--data", "{wide_npz}"],
        "wide_pool.npz: the rows have 9 features but the model takes 6",
    ),
    ("score text value", ["score", "--model", "{student}", "--data", "{text}"], "not numeric"),
    (
        "score out exists",
        ["score", "--model", "{student}", "--data", "{pool}", "--out", "{existing_file}"],
        "pass --overwrite",
    ),
    (
        "score ignored column missing",
        ["score", "--model", "{student}", "--data", "{pool}", "--ignore-column", "id"],
        "ignored column 'id' is not in the file",
    ),
    # run folders: never replaced without --overwrite, foreign folders never
    ("meta-train out holds a run", ["meta-train", "--out", "{root}/run"], "pass --overwrite"),
    (
        "adapt out holds a run",
        ["adapt", "--teacher", "{teacher}", "--support", "{normals}", "--out", "{root}/model"],
        "pass --overwrite",
    ),
    (
        "adapt out is a foreign folder",
        ["adapt", "--teacher", "{teacher}", "--support", "{normals}", "--out", "{foreign}"]
        + ["--overwrite"],
        "not a metakd run folder",
    ),
    (
        "evaluate out holds a run",
        ["evaluate", "--teacher", "{teacher}", "--out", "{root}/model"],
        "pass --overwrite",
    ),
    ("pool weight negative", _train("inner.pool_weight=-1"), "pool_weight must be >= 0"),
    (
        "distill holdout",
        _adapt("--support", "{normals}", "--set", "distill.holdout_fraction=1"),
        "holdout_fraction",
    ),
    (
        "student width",
        _adapt("--support", "{normals}", "--set", "distill.student.hidden=[0]"),
        "student hidden widths must be positive",
    ),
    # tasks and evaluate
    ("tasks show missing", ["tasks", "show", "{root}/nope"], "nope"),
    (
        "evaluate teacher missing",
        ["evaluate", "--teacher", "{root}/nope.pt", "--out", "{out}"],
        "nope.pt",
    ),
]


@pytest.mark.parametrize("name, args, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_error_and_changes_no_file(
    workspace: dict[str, Path], tmp_path: Path, name: str, args: list[str], message: str
) -> None:
    if name == "device unknown" and torch.cuda.is_available():
        pytest.skip("needs a machine without that device")
    values = {k: str(v) for k, v in workspace.items()} | {"out": str(tmp_path / "out")}
    argv = [a.format(**values) for a in args]
    before = file_hashes(workspace["root"], skip=["wandb"])
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    after = file_hashes(workspace["root"], skip=["wandb"])
    changed = [str(p) for p, h in before.items() if after.get(p) != h]
    assert not changed, changed


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 40


def test_sigint_exits_130() -> None:
    def body() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        run_guarded(body)
    assert exit_info.value.code == INTERRUPTED_EXIT == 130


def test_cuda_device_without_cuda_is_an_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(
        main, ["meta-train", "--out", str(tmp_path / "o"), "--set", "device=cuda"]
    )
    assert result.exit_code == 2 and "no CUDA device" in result.output
