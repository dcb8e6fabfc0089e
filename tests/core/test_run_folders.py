"""Run folders: staged, moved into place only on success, replaced only with --overwrite."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TrainedRun, file_hashes, write_csv

from metakd.cli import main
from metakd.errors import MetakdError
from metakd.rundir import RUN_FILE, check_output_dir, staged_run_dir


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny_teacher: TrainedRun) -> dict[str, Path]:
    """The session's tiny teacher run (a finished meta-train run folder) and input files."""
    root = tmp_path_factory.mktemp("run-folders")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 6))
    return {
        "root": root,
        "run": tiny_teacher.run,
        "teacher": tiny_teacher.teacher,
        "support": write_csv(root / "support.csv", x[:12], np.zeros(12)),
        "pool": write_csv(root / "pool.csv", x[12:], None),
        "bad": write_csv(root / "bad.csv", x[:5], np.array([0, 0, 2, 0, 0])),
    }


def _adapt(files: dict[str, Path], out: Path, *extra: str, support: str = "support") -> list[str]:
    return [
        "adapt",
        "--teacher",
        str(files["teacher"]),
        "--support",
        str(files[support]),
        "--unlabeled",
        str(files["pool"]),
        "--out",
        str(out),
        "--set",
        "tracking.mode=disabled",
        *extra,
    ]


def test_finished_run_folder_lists_exactly_its_files(files: dict[str, Path]) -> None:
    folder = files["run"]
    run = json.loads((folder / RUN_FILE).read_text())
    assert run["status"] == "finished" and run["command"] == "meta-train"
    on_disk = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != RUN_FILE
    )
    assert run["files"] == on_disk
    assert {"teacher.pt", "config.yaml", "metrics.jsonl"} <= set(on_disk)
    # No staging leftovers beside it.
    assert not [p for p in folder.parent.iterdir() if "metakd-partial" in p.name]


def test_rerun_needs_overwrite_and_replaces_the_whole_folder(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "model"
    first = CliRunner().invoke(main, _adapt(files, out))
    assert first.exit_code == 0, first.output
    assert (out / "student.pt").is_file()
    before = file_hashes(out)

    again = CliRunner().invoke(main, _adapt(files, out, "--set", "student=false"))
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert file_hashes(out) == before

    replaced = CliRunner().invoke(main, _adapt(files, out, "--set", "student=false", "--overwrite"))
    assert replaced.exit_code == 0, replaced.output
    # The student of the earlier run is gone: the folder describes one run.
    assert not (out / "student.pt").exists() and not (out / "student.torchscript.pt").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["files"] == {"teacher": "teacher.pt"}
    assert json.loads((out / RUN_FILE).read_text())["command"] == "adapt"


def test_failed_run_leaves_existing_folder_untouched(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "model"
    assert CliRunner().invoke(main, _adapt(files, out)).exit_code == 0
    before = file_hashes(out)
    failed = CliRunner().invoke(main, _adapt(files, out, "--overwrite", support="bad"))
    assert failed.exit_code == 2 and str(files["bad"]) in failed.output
    assert file_hashes(out) == before  # metrics.jsonl is not truncated, models not replaced
    assert not [p for p in tmp_path.iterdir() if "metakd" in p.name]


def test_foreign_folder_is_never_replaced(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8")
    result = CliRunner().invoke(main, _adapt(files, out, "--overwrite"))
    assert result.exit_code == 2 and "not a metakd run folder" in result.output
    assert (out / "holiday.jpg").read_bytes() == b"\xff\xd8"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert CliRunner().invoke(main, _adapt(files, empty)).exit_code == 0
    assert (empty / "teacher.pt").is_file()


def test_interrupted_body_discards_stage(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with staged_run_dir(out, command="test", overwrite=False) as stage:
            (stage / "half.txt").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_orphan_stage_of_dead_process_is_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    orphan = tmp_path / f".out.metakd-partial-{pid}-abcd"
    orphan.mkdir()
    (orphan / ".teacher.pt.x.metakd-tmp").write_text("half")
    live = tmp_path / f".out.metakd-partial-{os.getpid()}-efgh"
    live.mkdir()  # a run still in progress in this very process: kept
    with staged_run_dir(tmp_path / "out", command="test", overwrite=False) as stage:
        (stage / "a.txt").write_text("a")
    assert not orphan.exists() and live.exists()
    assert (tmp_path / "out" / "a.txt").read_text() == "a"


def test_outputs_are_readable_by_others(files: dict[str, Path]) -> None:
    mask = os.umask(0)
    os.umask(mask)
    for path in (files["teacher"], files["teacher"].parent / "config.yaml"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    assert stat.S_IMODE(files["teacher"].parent.stat().st_mode) == 0o777 & ~mask


def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("keep")
    with pytest.raises(MetakdError, match="not a folder"):
        check_output_dir(target, overwrite=True)
    assert target.read_text() == "keep"


def test_concurrent_writers_never_interleave(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "shared"
    command = [sys.executable, "-m", "metakd", *_adapt(files, out, "--overwrite")]
    env = os.environ | {"WANDB_MODE": "disabled"}
    procs = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE) for _ in range(2)]
    codes = [p.wait(timeout=300) for p in procs]
    assert 0 in codes and set(codes) <= {0, 2}, codes
    lines = (out / "metrics.jsonl").read_text().splitlines()
    for line in lines:
        json.loads(line)  # valid JSONL: one writer's lines only
    assert json.loads((out / RUN_FILE).read_text())["status"] == "finished"
    assert not [p for p in tmp_path.iterdir() if "metakd" in p.name]
