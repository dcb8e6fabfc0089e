"""Run tracking: offline W&B runs hold what was logged (read back from the run files),
`disabled` writes no W&B files, and metrics.jsonl is written in every mode."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from helpers import REPO
from wandb.proto import wandb_internal_pb2

from metakd.cli import main
from metakd.data.builtin import synthetic_collection
from metakd.errors import ConfigError
from metakd.tracking import Run, TrackingConfig, has_credentials, resolve_mode

TINY = [
    "iterations=12",
    "val_every=6",
    "model.hidden=[16]",
    "model.embedding_dim=4",
    "episode.meta_batch=2",
]


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """Records of a `.wandb` transaction log: W&B's LevelDB-log format (a ':W&B' header, 32 KiB
    blocks, records of <crc32, length, type> headers, split FIRST/MIDDLE/LAST across blocks)."""
    data = path.read_bytes()
    if len(data) < 7:  # not written yet
        return []
    assert data[:4] == b":W&B"
    block, pos, chunks, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        space = block - pos % block
        if space < 7:  # a block's tail too short for a header is zero padding
            pos += space
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # a record still being written
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            chunks.append(pending + chunk)
        else:
            break
    return [wandb_internal_pb2.Record.FromString(c) for c in chunks]


def offline_run(run_dir: Path) -> dict:
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    return read_run(files[0])


def read_run(path: Path, *, timeout: float = 60.0) -> dict:
    """What one offline run's `.wandb` file holds, read once W&B has written all of it.

    `run.finish()` can return before W&B's service has flushed the file (a `run` record was
    missing in 1 of 2 runs read at once), so the file is read again until it holds the run's
    `exit` record, W&B's last, and then once more after it has stopped growing.
    """
    deadline = time.monotonic() + timeout
    size = -1
    while True:
        records = read_records(path)
        kinds = {record.WhichOneof("record_type") for record in records}
        if "exit" in kinds and path.stat().st_size == size:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} holds no finished run after {timeout} s: {kinds}")
        size = path.stat().st_size
        time.sleep(0.2)
    out: dict = {"history": set(), "summary": {}, "artifacts": [], "config": {}, "job_type": None}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "exit":
            out["exit_code"] = record.exit.exit_code
        if kind == "run":
            out["job_type"] = record.run.job_type
            out["project"] = record.run.project
            out["entity"] = record.run.entity
            out["config"] |= {i.key: json.loads(i.value_json) for i in record.run.config.update}
        elif kind == "config":
            out["config"] |= {i.key: json.loads(i.value_json) for i in record.config.update}
        elif kind == "history":
            # A logged media object (table, image) is a nested item: its name comes first.
            out["history"] |= {i.key or i.nested_key[0] for i in record.history.item}
        elif kind == "summary":
            out["summary"] |= {
                i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in record.summary.update
            }
        elif kind == "artifact":
            art = record.artifact
            out["artifacts"].append(
                {
                    "name": art.name,
                    "type": art.type,
                    "aliases": set(art.aliases),
                    "metadata": json.loads(art.metadata or "{}"),
                }
            )
    return out


@pytest.fixture(scope="module")
def offline_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tracked")
    train = root / "train"
    args = [
        "meta-train",
        "--tasks",
        "synthetic",
        "--out",
        str(train),
        "--no-progress",
        "--tracking",
        "offline",
        "--wandb-project",
        "metakd-tests",
        "--wandb-tag",
        "ci",
        *TINY,
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    task = synthetic_collection(n_tasks=1, seed=5)[0]
    normals = np.flatnonzero(task.y == 0)
    header = ",".join(f"f{j}" for j in range(task.n_features))
    (root / "support.csv").write_text(
        header
        + ",label\n"
        + "\n".join(",".join(map(str, task.X[i])) + ",0" for i in normals[:10])
        + "\n"
    )
    (root / "pool.csv").write_text(
        header + "\n" + "\n".join(",".join(map(str, row)) for row in task.X[100:300]) + "\n"
    )
    adapted = root / "adapted"
    result = CliRunner().invoke(
        main,
        [
            "adapt",
            "--teacher",
            str(train / "teacher.pt"),
            "--support",
            str(root / "support.csv"),
            "--unlabeled",
            str(root / "pool.csv"),
            "--out",
            str(adapted),
            "--tracking",
            "offline",
            "--set",
            "distill.steps=50",
        ],
    )
    assert result.exit_code == 0, result.output
    evaluated = root / "evaluated"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--teacher",
            str(train / "teacher.pt"),
            "--shots",
            "5",
            "--anomaly-shots",
            "0",
            "--seeds",
            "1",
            "--out",
            str(evaluated),
            "--no-progress",
            "--tracking",
            "offline",
            "--set",
            "methods=[metakd-teacher,knn-support,iforest-pool]",
        ],
    )
    assert result.exit_code == 0, result.output
    return {"train": train, "adapt": adapted, "evaluate": evaluated}


def test_meta_train_offline_run_holds_keys_and_teacher_artifact(offline_runs) -> None:
    run = offline_run(offline_runs["train"])
    assert run["job_type"] == "meta-train"
    assert run["config"]["inner"]["steps"] == 3 and run["config"]["iterations"] == 12
    assert {
        "outer_loss",
        "support_loss_before",
        "support_loss_after",
        "query_auroc",
        "inner_lr",
        "meta_lr",
        "tasks_per_second",
        "val_auroc",
    } <= run["history"]
    assert {"best_val_auroc", "best_iteration", "test_auroc/metakd"} <= set(run["summary"])
    teacher = [a for a in run["artifacts"] if a["name"] == "teacher"]
    assert teacher and teacher[0]["type"] == "model" and teacher[0]["aliases"] >= {"latest", "best"}
    lines = [
        json.loads(x)
        for x in (offline_runs["train"] / "metrics.jsonl").read_text().split("\n")
        if x
    ]
    assert lines[0]["step"] == 0 and "val_auroc" in lines[0], "the initialisation is validated"
    assert lines[1]["step"] == 1 and "outer_loss" in lines[1]


def test_adapt_offline_run_logs_curves_and_student_lineage(offline_runs) -> None:
    run = offline_run(offline_runs["adapt"])
    assert run["job_type"] == "adapt"
    assert {"distill/loss", "distill/fidelity"} <= run["history"]
    assert {
        "support_rows",
        "unlabeled_rows",
        "fidelity_spearman",
        "teacher_threshold",
        "student_threshold",
    } <= set(run["summary"])
    assert run["summary"]["support_rows"] == 10 and run["summary"]["unlabeled_rows"] == 200
    student = next(a for a in run["artifacts"] if a["name"] == "student")
    teacher_file = offline_runs["train"] / "teacher.pt"
    (source,) = student["metadata"]["sources"]
    assert source["artifact"] == "teacher"
    assert source["sha256"] == hashlib.sha256(teacher_file.read_bytes()).hexdigest()


def test_evaluate_offline_run_logs_results_table_and_plot(offline_runs) -> None:
    run = offline_run(offline_runs["evaluate"])
    assert run["job_type"] == "evaluate"
    assert {"results_table", "summary_table", "auroc_vs_shots"} <= run["history"]
    assert "auroc/knn-support/K5-A0" in run["summary"]
    (table,) = offline_runs["evaluate"].glob(
        "wandb/offline-run-*/files/media/table/results_table_*.json"
    )
    logged = json.loads(table.read_text())
    csv_rows = (offline_runs["evaluate"] / "results.csv").read_text().splitlines()
    assert logged["columns"] == csv_rows[0].split(",")
    assert len(logged["data"]) == len(csv_rows) - 1
    assert list(offline_runs["evaluate"].glob("wandb/offline-run-*/files/media/images/*.png"))


def test_disabled_writes_no_wandb_files_but_metrics(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "meta-train",
        "--tasks",
        "synthetic",
        "--out",
        str(out),
        "--no-progress",
        "--tracking",
        "disabled",
        *TINY,
    ]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert (out / "metrics.jsonl").exists() and not (out / "wandb").exists()
    assert not list(tmp_path.rglob("*.wandb"))


def test_auto_mode_never_needs_a_login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"
    assert resolve_mode("offline") == "offline"


def test_a_bad_wandb_mode_in_the_environment_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WANDB_MODE", "")
    args = ["meta-train", "--out", str(tmp_path / "run"), "--no-progress", *TINY]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "WANDB_MODE=''" in result.output and "Traceback" not in result.output
    # With tracking off, W&B (and its environment) is never touched.
    assert CliRunner().invoke(main, [*args, "--tracking", "disabled"]).exit_code == 0


def _no_login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An environment with no W&B credentials anywhere (and no W&B settings from outside)."""
    for var in (
        "WANDB_MODE",
        "WANDB_API_KEY",
        "WANDB_IDENTITY_TOKEN_FILE",
        "WANDB_BASE_URL",
        "WANDB_PROJECT",
        "WANDB_ENTITY",
        "WANDB_DIR",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))


def test_online_without_a_login_is_a_clear_error_before_wandb_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_login(monkeypatch, tmp_path)
    assert not has_credentials()
    with pytest.raises(ConfigError, match="wandb login.*WANDB_API_KEY.*--tracking offline"):
        Run(tmp_path / "run", config={}, tracking=TrackingConfig(mode="online"), job_type="t")
    assert not (tmp_path / "run").exists(), "nothing is written, W&B is never started"
    args = ["meta-train", "--out", str(tmp_path / "cli"), "--no-progress", "--tracking", "online"]
    result = CliRunner().invoke(main, [*args, *TINY])
    assert result.exit_code == 2, result.output
    assert "wandb login" in result.output and "Traceback" not in result.output
    # A login (netrc entry for the W&B host, as `wandb login` writes) is found without W&B.
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert has_credentials() and resolve_mode("auto") == "online"


def test_wandb_environment_variables_apply(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_login(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_ENTITY", "team-from-env")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    out = tmp_path / "run"
    with Run(out, config={}, tracking=TrackingConfig(mode="offline"), job_type="t") as run:
        run.log({"loss": 1.0}, step=0)
    (file,) = (tmp_path / "wandb-dir").glob("wandb/offline-run-*/run-*.wandb")
    logged = read_run(file)
    assert logged["project"] == "from-env" and logged["entity"] == "team-from-env"
    assert [p.name for p in out.iterdir()] == ["metrics.jsonl"], "W&B's files are in WANDB_DIR"
    # Without WANDB_PROJECT (and none in the config) the project stays metakd.
    monkeypatch.delenv("WANDB_PROJECT")
    assert TrackingConfig().project is None
    with Run(out, config={}, tracking=TrackingConfig(mode="offline"), job_type="t") as run:
        assert run.wandb_run.project == "metakd"


def test_a_failed_or_interrupted_run_is_not_recorded_as_finished(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_login(monkeypatch, tmp_path)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with Run(out, config={}, tracking=TrackingConfig(mode="offline"), job_type="t") as run:
            run.log({"loss": 1.0}, step=0)
            raise RuntimeError("boom")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 0, "loss": 1.0}, {"status": "failed", "error": "RuntimeError"}]
    (file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    assert read_run(file)["exit_code"] != 0, "W&B marks the run failed, not finished"
    with pytest.raises(KeyboardInterrupt):
        with Run(out, config={}, tracking=TrackingConfig(mode="disabled"), job_type="t"):
            raise KeyboardInterrupt
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last == {"status": "interrupted", "error": "KeyboardInterrupt"}
    with Run(out, config={}, tracking=TrackingConfig(mode="disabled"), job_type="t") as run:
        run.summary({"auroc": 0.5})
    assert "status" not in (out / "metrics.jsonl").read_text(), "success keeps summary last"


def test_sweep_config_keys_are_real_config_keys() -> None:
    from metakd.config import load_train_config

    sweep = yaml.safe_load((REPO / "configs" / "sweep.yaml").read_text())
    assert "${args_no_hyphens}" in sweep["command"]
    overrides = [
        f"{key}={spec['values'][0] if 'values' in spec else spec['min']}"
        for key, spec in sweep["parameters"].items()
    ]
    config = load_train_config(REPO / "configs" / "default.yaml", overrides)
    assert config.inner.lr == sweep["parameters"]["inner.lr"]["min"]
    assert config.inner.steps == sweep["parameters"]["inner.steps"]["values"][0]
    assert config.meta.algorithm == sweep["parameters"]["meta.algorithm"]["values"][0]
    # The metric the sweep maximises is one meta-train reports (see the offline-run test).
    assert sweep["metric"]["name"] == "best_val_auroc"
