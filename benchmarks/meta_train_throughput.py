"""End-to-end throughput of ``metakd meta-train`` at defaults, as users run it (issue #24).

For each collection: ``metakd meta-train --tasks T --out TMP --no-progress`` at defaults (tracking
offline, as a user's run without a W&B login), timed as a whole command (start-up, loading,
validation and the final report included) and per iteration (the median of ``metrics.jsonl``'s
``tasks_per_second``); beside it, measured in the same run, the meta-gradient alone
(``learner.meta_gradients`` on real meta-batches of the same collection, teacher and meta-batch,
on the same one torch thread) and the ratio end-to-end ÷ meta-gradient; the peak RSS of the
meta-train process. ``--busy`` repeats the end-to-end runs with one CPU-bound process beside
them and prints the share of the idle throughput kept.

Usage:
  python benchmarks/meta_train_throughput.py                        # the four collections
  python benchmarks/meta_train_throughput.py --collections synthetic --iterations 100 --busy
Collections: synthetic (built in), mvtec (../shared/data/adbench-mvtec-vit), classical
(../shared/data/adbench-classical), skab (tasks/skab.yaml); ../shared is not part of a clone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
COLLECTIONS = {
    "synthetic": "synthetic",
    "mvtec": str(SHARED / "adbench-mvtec-vit"),
    "classical": str(SHARED / "adbench-classical"),
    "skab": "skab",  # the built-in manifest name (tasks/skab.yaml of the timed checkout)
}


@contextmanager
def cpu_hog(on: bool) -> Iterator[None]:
    """One CPU-bound process beside the measurement (a busy user machine), if ``on``."""
    if not on:
        yield
        return
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def end_to_end(tasks: str, iterations: int, extra: list[str], project: Path) -> dict[str, float]:
    """Wall time, tasks/s (whole command and steady state) and peak RSS of one meta-train."""
    out = Path(tempfile.mkdtemp(prefix="throughput-")) / "run"
    cmd = [sys.executable, "-m", "metakd", "meta-train", "--tasks", tasks, "--out", str(out)]
    cmd += ["--no-progress", "--tracking", "offline", "--set", f"iterations={iterations}", *extra]
    # GNU time's %M: the peak resident set of the meta-train process itself.
    timed = ["/usr/bin/time", "-f", "%M"] if Path("/usr/bin/time").exists() else []
    env = {**os.environ, "WANDB_SILENT": "true"}
    start = time.perf_counter()
    # Run from the project whose metakd is timed: `python -m` puts the working folder first.
    done = subprocess.run(timed + cmd, capture_output=True, text=True, env=env, cwd=project)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    rss = float(done.stderr.strip().splitlines()[-1]) / 1024 if timed else float("nan")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [x["tasks_per_second"] for x in lines if "tasks_per_second" in x]
    meta_batch = _config(out)["episode"]["meta_batch"]
    # Iterations run: fewer than asked where early stopping (`patience`) ended the run.
    return {
        "wall": wall,
        "iterations": len(rates),
        "tasks_per_s": len(rates) * meta_batch / wall,
        "steady_tasks_per_s": statistics.median(rates),
        "rss_mib": rss,
    }


def _config(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


def meta_gradient_only(tasks: str, seconds: float, extra: list[str]) -> float:
    """Tasks/s of ``learner.meta_gradients`` alone on real meta-batches of ``tasks``, the teacher
    and meta-batch meta-train builds at defaults, on one torch thread (median of a window)."""
    import torch

    from metakd.config import load_train_config
    from metakd.data.collection import load_collection
    from metakd.episodes import EpisodeSampler
    from metakd.train import init_learner

    try:
        from metakd.threads import torch_threads
    except ImportError:  # a metakd before threads were chosen (this benchmark's "before" runs)
        torch_threads = _keep_threads

    overrides = [f"tasks={tasks}"] + [x for x in extra if x != "--set"]
    config = load_train_config(None, overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collection = load_collection(config.tasks, split=config.split, alignment=config.alignment)
        sampler = EpisodeSampler(
            collection.split("train"),
            config.episode,
            scaling=config.scaling,
            alignment=collection.alignment,
            seed=config.seed,
            profile=config.model.input_profile(),
            prior=config.prior,
        )
    batches = [sampler.sample() for _ in range(4)]
    learner = init_learner(config, batches[0].support_x.shape[-1], seed=config.seed)
    times = []
    # meta-train's own thread count: `threads` (null: 1), or torch's default before it existed.
    threads = getattr(config, "threads", None) or (
        1 if hasattr(config, "threads") else torch.get_num_threads()
    )
    with torch_threads(threads):
        deadline = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < deadline or len(times) < 5:
            b = batches[i % len(batches)]
            learner.zero_grad(set_to_none=True)
            tick = time.perf_counter()
            learner.meta_gradients(b.support_x, b.support_y, b.query_x, b.query_y, b.pool_x)
            times.append(time.perf_counter() - tick)
            i += 1
    return config.episode.meta_batch / statistics.median(times)


@contextmanager
def _keep_threads(threads: int) -> Iterator[None]:
    yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collections", default=",".join(COLLECTIONS))
    ap.add_argument("--iterations", type=int, default=400, help="meta-train's default: 400")
    ap.add_argument("--seconds", type=float, default=10.0, help="meta-gradient timing window")
    ap.add_argument("--busy", action="store_true", help="also with one CPU-bound process beside")
    ap.add_argument("--set", action="append", default=[], help="a config override for both")
    ap.add_argument(
        "--project",
        type=Path,
        default=ROOT,
        help="the checkout whose metakd is timed (e.g. a worktree of an older commit, with "
        "PYTHONPATH pointing at it for the meta-gradient measured in this process)",
    )
    args = ap.parse_args()
    extra = [y for x in args.set for y in ("--set", x)]
    names = args.collections.split(",")
    timed = subprocess.run(
        [sys.executable, "-c", "import metakd; print(metakd.__file__)"],
        capture_output=True,
        text=True,
        cwd=args.project,
        check=True,
    ).stdout.strip()
    print(
        f"metakd meta-train at defaults, {args.iterations} iterations (fewer where early stopping "
        f"ends a run), tracking offline; {os.cpu_count()} CPUs; metakd from {timed}"
    )
    header = (
        f"{'collection':>10} | {'wall s':>7} {'iters':>5} {'tasks/s':>8} {'steady':>8} | "
        f"{'grad only':>9} {'ratio':>6} | {'RSS MiB':>8}"
        + (f" | {'busy tasks/s':>12} {'kept':>5}" if args.busy else "")
    )
    print(header + "\n" + "-" * len(header))
    for name in names:
        tasks = COLLECTIONS.get(name, name)
        idle = end_to_end(tasks, args.iterations, extra, args.project)
        grad = meta_gradient_only(tasks, args.seconds, extra)
        line = (
            f"{name:>10} | {idle['wall']:7.1f} {idle['iterations']:5d} {idle['tasks_per_s']:8.1f} "
            f"{idle['steady_tasks_per_s']:8.1f} | {grad:9.1f} {idle['tasks_per_s'] / grad:6.0%} | "
            f"{idle['rss_mib']:8.0f}"
        )
        if args.busy:
            with cpu_hog(True):
                busy = end_to_end(tasks, args.iterations, extra, args.project)
            line += (
                f" | {busy['tasks_per_s']:12.1f} {busy['tasks_per_s'] / idle['tasks_per_s']:5.0%}"
            )
        print(line, flush=True)
    print(
        "\ntasks/s: iterations run × meta-batch ÷ the whole command's wall time; steady: the "
        "median per-iteration rate in metrics.jsonl; grad only: the meta-gradient alone, same "
        "teacher and meta-batch, one thread; ratio: tasks/s ÷ grad only."
    )


if __name__ == "__main__":
    main()
