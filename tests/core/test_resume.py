"""Exact resume of meta-training: checkpoints, SIGTERM/SIGKILL, and the run-folder rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from helpers import sets, teacher_checkpoint

from metakd.checkpoint import load_checkpoint
from metakd.cli import main
from metakd.errors import MetakdError
from metakd.resume import RESUME_FILE, ResumeState
from metakd.rundir import OutputExistsError, ResumeError, resume_source, staged_run_dir
from metakd.tracking import Run

# Small and fast.
CONFIG = [
    "tracking.mode=disabled",
    "iterations=10",
    "val_every=2",
    "model.kind=svdd",
    "model.hidden=[32]",
    "model.embedding_dim=8",
    "meta.meta_lr=0.01",
    "episode.meta_batch=4",
    "checkpoint_every=3",
]
#: CONFIG without the synthetic prior: its meta-val AUROC climbs at every validation (0.70 at
#: the initialisation, 0.84 at iteration 10), so the kept teacher is the last iterate, one a
#: resumed run trained. The SIGKILL tests below keep the prior, and its draws, in the resume.
CLIMBING = [*CONFIG, "prior.weight=0"]
TIMING = ("tasks_per_second",)


def _train(out: Path, *extra: str, config: list[str] = CONFIG) -> str:
    result = CliRunner().invoke(
        main, ["meta-train", "--out", str(out), "--no-progress", *sets(config), *extra]
    )
    assert result.exit_code == 0, result.output
    return result.output


def _same_teacher(a: Path, b: Path) -> None:
    ta, tb = teacher_checkpoint(a), teacher_checkpoint(b)
    assert ta["info"] == tb["info"]
    assert ta["state_dict"].keys() == tb["state_dict"].keys()
    for key in ta["state_dict"]:
        assert torch.equal(ta["state_dict"][key], tb["state_dict"][key]), key
    # The share's fit adapts the meta-train domains from where the run started, not resumed.
    assert ta["pool_share_fit"] == tb["pool_share_fit"]


def _metrics(run: Path) -> list[dict]:
    """metrics.jsonl without its timing fields."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        for key in TIMING:
            line.pop(key, None)
        line.get("summary", {}).pop("seconds", None)
    return lines


def _stages(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.metakd-partial-*"))


@pytest.fixture
def interrupted_run(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Result]:
    """Meta-train into ``out`` (``config``, CONFIG by default) and send the run SIGTERM once it
    has logged iteration ``at`` (it then stops after the next one); the CLI result, its exit
    code checked to be 143."""

    def run(out: Path, at: int, config: list[str] = CONFIG) -> Result:
        log = Run.log

        def log_then_signal(self: Run, metrics: dict[str, Any], *, step: int) -> None:
            log(self, metrics, step=step)
            if step == at:
                os.kill(os.getpid(), signal.SIGTERM)

        monkeypatch.setattr(Run, "log", log_then_signal)
        try:
            stopped = CliRunner().invoke(
                main, ["meta-train", "--out", str(out), "--no-progress", *sets(config)]
            )
        finally:
            monkeypatch.undo()
        assert stopped.exit_code == 143, stopped.output
        return stopped

    return run


def test_sigterm_checkpoint_then_resume_equals_uninterrupted_run(
    tmp_path: Path, interrupted_run
) -> None:
    reference = tmp_path / "reference"
    _train(reference, config=CLIMBING)

    out = tmp_path / "run"
    stopped = interrupted_run(out, 3, CLIMBING)
    last = stopped.output.strip().splitlines()[-1]
    assert "interrupted by SIGTERM at iteration 4" in last
    assert f"metakd meta-train --resume {out}" in last
    # --out did not exist, so the interrupted run is published there, marked as such.
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and RESUME_FILE in record["files"]
    raw = torch.load(out / RESUME_FILE, weights_only=True)  # plain tensors and data only
    assert raw["format"] == "metakd.resume" and raw["iteration"] == 4
    assert not _stages(out)

    resumed = CliRunner().invoke(main, ["meta-train", "--resume", str(out), "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert teacher_checkpoint(out)["info"]["iteration"] > 4, (
        "the compared teacher was trained after resume"
    )
    _same_teacher(out, reference)
    assert _metrics(out) == _metrics(reference)
    assert (out / "config.yaml").read_text() == (reference / "config.yaml").read_text()
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished" and RESUME_FILE not in record["files"]
    assert not (out / RESUME_FILE).exists() and not _stages(out)


def test_resume_refuses_a_changed_config_naming_the_keys(tmp_path: Path, interrupted_run) -> None:
    out = tmp_path / "run"
    interrupted_run(out, 2)

    changed = CliRunner().invoke(
        main,
        [
            "meta-train",
            "--resume",
            str(out),
            "--set",
            "inner.steps=5",
            "--set",
            "model.embedding_dim=4",
        ],
    )
    assert changed.exit_code == 2
    assert "cannot resume with a changed config" in changed.output
    assert (
        "inner.steps: 3 -> 5" in changed.output and "model.embedding_dim: 8 -> 4" in changed.output
    )
    assert "Traceback" not in changed.output
    shorter = CliRunner().invoke(
        main, ["meta-train", "--resume", str(out), "--set", "iterations=2"]
    )
    assert shorter.exit_code == 2 and "iterations=2 is below the 3 iterations" in shorter.output
    # The refused attempts left the interrupted run as it was.
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"

    # iterations may grow: the result is that of an uninterrupted run of the new length; and
    # patience may change (here one that cannot end 12 iterations early).
    longer = [*CONFIG, "iterations=12"]
    reference = tmp_path / "reference"
    _train(reference, config=longer)
    resumed = CliRunner().invoke(
        main,
        ["meta-train", "--resume", str(out), "--no-progress"]
        + sets(["iterations=12", "patience=50"]),
    )
    assert resumed.exit_code == 0, resumed.output
    _same_teacher(out, reference)
    assert _metrics(out) == _metrics(reference)


def _spawn(out: Path, config: list[str]) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "metakd", "meta-train", "--out", str(out), "--no-progress"]
    return subprocess.Popen(
        [*command, *sets(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"WANDB_MODE": "disabled"},
    )


def _wait_for(proc: subprocess.Popen[str], ready, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, (
            f"the run ended before {what}: {proc.stderr and proc.stderr.read()}"
        )
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _logged(out: Path) -> int:
    """Iterations the (single) staging folder of ``out`` has logged so far."""
    stages = _stages(out)
    if not stages or not (stages[0] / "metrics.jsonl").is_file():
        return 0
    return max(0, len((stages[0] / "metrics.jsonl").read_text().splitlines()) - 1)


def test_sigterm_to_a_subprocess_leaves_a_checkpoint_that_loads_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _spawn(out, [*CONFIG, "iterations=400", "checkpoint_every=0"])
    _wait_for(proc, lambda: _logged(out) >= 3, "three iterations")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert (
        stderr.strip().splitlines()[-1].endswith(f"resume with: metakd meta-train --resume {out}")
    )

    state = ResumeState.load(out / RESUME_FILE)  # checkpoint_every=0: the signal wrote it
    assert 3 <= state.iteration < 400
    assert load_checkpoint(out / RESUME_FILE, "resume")["iteration"] == state.iteration

    total = state.iteration + 2
    reference = tmp_path / "reference"
    _train(
        reference, config=[*CONFIG, "iterations=400", "checkpoint_every=0", f"iterations={total}"]
    )
    resumed = CliRunner().invoke(
        main, ["meta-train", "--resume", str(out), "--no-progress", "--set", f"iterations={total}"]
    )
    assert resumed.exit_code == 0, resumed.output
    _same_teacher(out, reference)
    assert _metrics(out) == _metrics(reference)


def test_sigkill_leaves_a_resumable_staging_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _spawn(out, [*CONFIG, "iterations=400", "checkpoint_every=2"])
    _wait_for(
        proc,
        lambda: _logged(out) >= 5 and any((s / RESUME_FILE).is_file() for s in _stages(out)),
        "a periodic checkpoint",
    )
    proc.kill()
    proc.communicate(timeout=60)
    assert not out.exists(), "a killed run publishes nothing"
    [stage] = _stages(out)
    done = ResumeState.load(stage / RESUME_FILE).iteration
    assert done >= 2 and done % 2 == 0

    # The orphan cleanup keeps it, and a fresh run into the same --out says what to do.
    fresh = CliRunner().invoke(
        main, ["meta-train", "--out", str(out), "--no-progress", *sets(CONFIG)]
    )
    assert (
        fresh.exit_code == 2 and f"--resume {out}" in fresh.output and "--overwrite" in fresh.output
    )
    assert stage.is_dir() and not out.exists()

    total = done + 3
    reference = tmp_path / "reference"
    _train(
        reference, config=[*CONFIG, "iterations=400", "checkpoint_every=2", f"iterations={total}"]
    )
    resumed = CliRunner().invoke(
        main, ["meta-train", "--resume", str(out), "--no-progress", "--set", f"iterations={total}"]
    )
    assert resumed.exit_code == 0, resumed.output
    _same_teacher(out, reference)
    assert _metrics(out) == _metrics(reference)
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert not _stages(out), "the continued staging folder is gone once the run finished"


_KILLED_WRITE = """
import os, sys, torch
from pathlib import Path
from metakd.resume import ResumeState
state = ResumeState.load(Path(sys.argv[1]))
state.iteration = 99

def half_then_die(data, f):
    f.write(b"PK\\x03\\x04 half a zip")
    f.flush()
    os._exit(9)  # the process dies in the middle of writing, as under SIGKILL

torch.save = half_then_die
state.save(Path(sys.argv[1]))
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one(
    tmp_path: Path, interrupted_run
) -> None:
    out = tmp_path / "run"
    interrupted_run(out, 2)
    path = out / RESUME_FILE
    before = path.read_bytes()

    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITE, str(path)], capture_output=True)
    assert killed.returncode == 9, killed.stderr
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".metakd-tmp")]
    assert leftovers, "the simulated kill left its half-written temporary file"
    assert path.read_bytes() == before
    assert ResumeState.load(path).iteration == 3
    assert resume_source(out) == out


def test_first_checkpoint_killed_mid_write_is_not_resumable(tmp_path: Path) -> None:
    out = tmp_path / "run"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stage = tmp_path / f".run.metakd-partial-{int(dead.stdout)}-abcd"
    stage.mkdir()
    (stage / f".{RESUME_FILE}.x1y2.metakd-tmp").write_bytes(b"PK half")
    with pytest.raises(ResumeError, match="nothing to resume"):
        resume_source(out)
    with staged_run_dir(out, command="test", overwrite=False) as new:
        (new / "a.txt").write_text("a")
    assert not stage.exists(), "an orphan without a checkpoint is cleaned up as ever"


def test_fresh_run_discards_a_resumable_stage_only_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stage = tmp_path / f".run.metakd-partial-{int(dead.stdout)}-abcd"
    stage.mkdir()
    (stage / RESUME_FILE).write_bytes(b"any")
    with pytest.raises(OutputExistsError, match=f"--resume {out}, or pass --overwrite"):
        with staged_run_dir(out, command="test", overwrite=False):
            raise AssertionError("not reached")
    assert stage.is_dir()
    assert resume_source(out) == stage
    with staged_run_dir(out, command="test", overwrite=True) as new:
        (new / "a.txt").write_text("a")
    assert not stage.exists() and (out / "a.txt").is_file()


def test_failure_keeps_a_resumable_stage_and_never_touches_out(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"status": "finished"}))
    with pytest.raises(RuntimeError, match="boom"):
        with staged_run_dir(out, command="test", overwrite=True) as stage:
            (stage / RESUME_FILE).write_bytes(b"state")
            raise RuntimeError("boom")
    assert [p.name for p in out.iterdir()] == ["run.json"]
    assert resume_source(out) == stage and (stage / RESUME_FILE).is_file()
    # Interrupted while --out held a run: stays staged too, --out unchanged.
    with pytest.raises(KeyboardInterrupt):
        with staged_run_dir(out, command="test", overwrite=True, resume_from=stage) as again:
            (again / RESUME_FILE).write_bytes(b"newer")
            raise KeyboardInterrupt
    assert [p.name for p in out.iterdir()] == ["run.json"]
    assert not stage.exists(), "the continued stage is superseded by the newer checkpoint"
    assert (resume_source(out) / RESUME_FILE).read_bytes() == b"newer"


def test_resume_errors(tmp_path: Path) -> None:
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "run.json").write_text(json.dumps({"status": "finished"}))
    cases = [
        (["--resume", str(finished)], "that run finished; there is nothing to resume"),
        (["--resume", str(tmp_path / "none")], "nothing to resume"),
        (["--resume", str(finished), "--out", str(tmp_path / "x")], "--resume RUN_DIR or --out"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, ["meta-train", "--no-progress", *args])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
    with pytest.raises(MetakdError, match="not a loadable metakd checkpoint"):
        (tmp_path / "bad.pt").write_bytes(b"junk")
        ResumeState.load(tmp_path / "bad.pt")
