"""Data-parallel meta-training on torch.distributed (gloo, CPU processes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import sets, teacher_checkpoint

from metakd.cli import main
from metakd.config import load_train_config
from metakd.distributed import launch_from_env
from metakd.errors import ConfigError
from metakd.resume import RESUME_FILE, ResumeState
from metakd.train import resolve_streams

# Validation only at iteration 0 and at the end, and the end beats the initialisation: the
# compared teachers are the trained weights after the last step.
CONFIG = [
    "tracking.mode=disabled",
    "iterations=4",
    "val_every=100",
    "model.kind=svdd",
    "model.hidden=[32]",
    "model.embedding_dim=8",
    "meta.meta_lr=0.01",
    "episode.meta_batch=16",
    "checkpoint_every=0",
]
ENV = os.environ | {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def _close_teachers(a: Path, b: Path) -> None:
    ta, tb = teacher_checkpoint(a), teacher_checkpoint(b)
    assert ta["info"]["iteration"] == tb["info"]["iteration"]
    for key in ta["state_dict"]:
        torch.testing.assert_close(
            ta["state_dict"][key], tb["state_dict"][key], rtol=1e-4, atol=1e-5
        )


def _losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [line["outer_loss"] for line in lines if "outer_loss" in line]


def _one_process(out: Path, *extra: str) -> None:
    args = ["meta-train", "--out", str(out), "--no-progress", *sets(CONFIG), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output


def test_two_ranks_equal_one_process_with_the_same_episode_streams(tmp_path: Path) -> None:
    """2 ranks x 8 episodes == 1 process x 16 episodes: with two episode streams both draw the
    very same meta-batches (each rank its own stream), so only the order of float sums differs."""
    two = tmp_path / "two"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    command += ["-m", "metakd", "meta-train", "--out", str(two), "--no-progress", *sets(CONFIG)]
    launched = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr
    assert launched.stdout.count("Held-out few-shot AUROC") == 1, "rank 0 alone reports"

    one = tmp_path / "one"
    _one_process(one, "--set", "episode_streams=2")
    assert teacher_checkpoint(two)["info"]["iteration"] == 4, (
        "the compared teacher is the trained one"
    )
    _close_teachers(two, one)
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"], "rank 1 wrote nothing"


def test_early_stopping_stops_every_rank_at_once(tmp_path: Path) -> None:
    """Rank 0's early-stopping decision reaches every rank, so none waits for a collective."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    command += ["2", "-m", "metakd", "meta-train", "--out", str(tmp_path), "--no-progress"]
    overrides = ["iterations=200", "val_every=1", "patience=1", "--dist-timeout", "60"]
    command += [*sets(CONFIG), *sets(overrides[:3]), *overrides[3:]]
    launched = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr
    assert launched.stdout.count("stopped early at iteration") == 1, launched.stdout


_RANK = """
import os, signal, sys, time
from pathlib import Path

mode, out, marker = sys.argv[1:4]
if os.environ["RANK"] == "1":
    # Where the rank's own process asks for iteration 3's episodes (drawn by a prefetching
    # worker process, which must not be the one that fails).
    from metakd.prefetch import Prefetch

    get = Prefetch.get

    def get_or_fail(self, iteration):
        if iteration == 3:
            Path(marker).write_text(repr(time.time()))
            if mode == "raise":
                raise ValueError("boom on rank 1")
            if mode == "die":
                os._exit(7)
            if mode == "hang":
                time.sleep(12)  # past rank 0's --dist-timeout
            else:
                os.kill(os.getpid(), signal.SIGTERM)  # only this rank is asked to stop
        return get(self, iteration)

    Prefetch.get = get_or_fail
from metakd.cli import main

main(["meta-train", "--out", out, "--no-progress", *sys.argv[4:]], prog_name="metakd")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two_ranks(
    tmp_path: Path, mode: str, config: list[str], *extra: str
) -> tuple[list[int], list[str], float]:
    """Run 2 ranks, rank 1 failing as ``mode`` says at iteration 3: exit codes, stderr, and the
    seconds from that failure until rank 0 exited."""
    port = _free_port()
    marker = tmp_path / f"failed-{mode}"
    procs = []
    for rank in range(2):
        env = ENV | {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
        }
        args = [sys.executable, "-c", _RANK, mode, str(tmp_path / "out"), str(marker)]
        procs.append(
            subprocess.Popen(
                [*args, *sets(config), *extra],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    rank0 = procs[0].communicate(timeout=240)[1]
    ended = time.time()
    errors = [rank0, procs[1].communicate(timeout=240)[1]]
    return [p.returncode for p in procs], errors, ended - float(marker.read_text())


LOST = "rank 0: lost contact with the other ranks during the meta-gradient all-reduce"


@pytest.mark.parametrize(
    "mode, rank1_code, message",
    [
        ("raise", 1, "rank 0 stops because rank 1: ValueError: boom on rank 1 (at iteration 3)"),
        ("die", 7, LOST),
        ("hang", 2, LOST + " of iteration 3 (a rank died, or hung past the 5 s timeout"),
    ],
)
def test_a_failing_rank_stops_every_rank(
    tmp_path: Path, mode: str, rank1_code: int, message: str
) -> None:
    """A rank that raises, dies or hangs ends every rank within seconds, each with an error."""
    # Only the hang needs a short timeout (under load, healthy ranks may drift apart by seconds).
    timeout = ["--dist-timeout", "5"] if mode == "hang" else []
    codes, errors, seconds = _two_ranks(tmp_path, mode, [*CONFIG, "iterations=50"], *timeout)
    assert codes == [2, rank1_code], errors
    assert message in errors[0] and "Traceback" not in errors[0], errors[0]
    if mode == "raise":
        assert "ValueError: boom on rank 1" in errors[1]  # its own traceback
    if mode == "hang":
        assert "error: rank 1: lost contact with the other ranks" in errors[1]
    assert seconds < 15, f"rank 0 took {seconds:.1f} s to stop"
    assert list(tmp_path.iterdir()) == [tmp_path / f"failed-{mode}"], "nothing published or left"


def test_sigterm_on_one_rank_stops_all_and_resumes_on_one_process(tmp_path: Path) -> None:
    codes, errors, seconds = _two_ranks(tmp_path, "sigterm", [*CONFIG, "iterations=6"])
    assert codes == [143, 143], errors
    out = tmp_path / "out"
    assert f"resume with: metakd meta-train --resume {out}" in errors[0]
    assert "resume" not in errors[1], "rank 0 alone says how to resume"
    assert seconds < 15
    state = ResumeState.load(out / RESUME_FILE)
    assert state.iteration == 3 and state.streams == 2
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"

    # The 2 streams can be drawn by 1 process: it must say so, as the default would be 1.
    refused = CliRunner().invoke(main, ["meta-train", "--resume", str(out), "--no-progress"])
    assert refused.exit_code == 2 and "--set episode_streams=2" in refused.output
    resumed = CliRunner().invoke(
        main, ["meta-train", "--resume", str(out), "--no-progress", "--set", "episode_streams=2"]
    )
    assert resumed.exit_code == 0, resumed.output
    reference = tmp_path / "reference"
    _one_process(reference, "--set", "iterations=6", "--set", "episode_streams=2")
    _close_teachers(out, reference)
    assert _losses(out) == pytest.approx(_losses(reference), rel=1e-5)


def test_meta_batch_must_divide_among_ranks_before_any_rendezvous(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No MASTER_ADDR: had it tried to join a job, the error would be a different one.
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    args = ["meta-train", "--out", str(tmp_path / "out"), "--no-progress", *sets(CONFIG)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert (
        "episode.meta_batch=16 is not divisible by the world size 3 (WORLD_SIZE)" in result.output
    )
    config = load_train_config(None, ["episode.meta_batch=16", "episode_streams=4"])
    assert resolve_streams(config, 2) == 4
    with pytest.raises(ConfigError, match="episode_streams=4 is not divisible by the world size 3"):
        resolve_streams(config, 3)
    with pytest.raises(ConfigError, match="episode_streams=3 must be >= 1 and divide"):
        load_train_config(None, ["episode.meta_batch=16", "episode_streams=3"])


def test_launch_environment() -> None:
    assert launch_from_env({}) is None
    assert launch_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    launch = launch_from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert launch is not None and (launch.rank, launch.world_size, launch.local_rank) == (2, 4, 0)
    with pytest.raises(ConfigError, match="RANK='x'"):
        launch_from_env({"WORLD_SIZE": "2", "RANK": "x"})
    with pytest.raises(ConfigError, match="RANK=2 and WORLD_SIZE=2 do not fit"):
        launch_from_env({"WORLD_SIZE": "2", "RANK": "2"})
