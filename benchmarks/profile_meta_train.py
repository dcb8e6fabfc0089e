"""Where the seconds of ``metakd meta-train`` go, as a user runs it (issue #24).

Runs the CLI in this process (``metakd meta-train --tasks T --out TMP`` plus ``--set`` overrides)
with light wall-clock timers around the parts of the job, and prints the seconds of each part
(exclusive: a timed part called inside another counts once, in the inner one), its share, and
the rest ("other": progress bar, metrics, Python). Timers wrap functions, they do not sample, so
the overhead is a few microseconds per call.

Usage:
  python benchmarks/profile_meta_train.py synthetic [--iterations 400] [--tracking offline]
  python benchmarks/profile_meta_train.py ../shared/data/adbench-mvtec-vit --iterations 40
  python benchmarks/profile_meta_train.py tasks/skab.yaml --cprofile 30   # also cProfile's top 30
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import os
import pstats
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

_seconds: dict[str, float] = defaultdict(float)
_calls: dict[str, int] = defaultdict(int)
_local = threading.local()  # .stack: per active timer [start, seconds spent in nested timers]


def _timed(part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stack = _local.__dict__.setdefault("stack", [])
        # Work on another thread (the episode prefetcher) overlaps the main thread's: it is
        # reported apart and not counted in the wall time's shares.
        name = part if threading.current_thread() is threading.main_thread() else f"({part})"
        frame = [time.perf_counter(), 0.0]
        stack.append(frame)
        try:
            return fn(*args, **kwargs)
        finally:
            stack.pop()
            spent = time.perf_counter() - frame[0]
            _seconds[name] += spent - frame[1]
            _calls[name] += 1
            if stack:
                stack[-1][1] += spent

    return wrapper


def _patch(owner: Any, name: str, part: str) -> None:
    if hasattr(owner, name):
        setattr(owner, name, _timed(part, getattr(owner, name)))


def instrument() -> None:
    """Wrap the parts of meta-training in timers (the names of the current code base)."""
    import metakd.train.loop as train
    from metakd import tracking
    from metakd.resume import ResumeState

    _patch(train, "load_collection", "load tasks")
    _patch(train, "held_out", "val/test episodes")
    _patch(train, "few_shot_auroc", "validate / test report")
    _patch(train, "meta_test_report", "validate / test report")
    _patch(train, "outer_step", "outer step")
    _patch(train, "write_teacher", "checkpoints")
    _patch(ResumeState, "save", "checkpoints")
    for name in ("__init__", "log", "summary", "log_artifact", "finish"):
        _patch(tracking.Run, name, "tracking (metrics.jsonl + W&B)")
    _patch(train.EpisodeStreams, "sample", "sampling")
    from metakd import prefetch

    _patch(prefetch.Prefetch, "get", "sampling")
    from metakd.meta.learners.registry import LEARNERS

    for cls in set(LEARNERS.values()):
        # Patched where it is defined, so a subclass that inherits it is timed once.
        if "meta_gradients" in vars(cls):
            _patch(cls, "meta_gradients", "meta-gradient")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tasks")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--tracking", default="offline")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--cprofile", type=int, default=0, help="also print cProfile's top N")
    args = ap.parse_args()

    t0 = time.perf_counter()
    import torch  # noqa: F401

    import metakd.cli as cli

    imports = time.perf_counter() - t0
    instrument()
    overrides = list(args.overrides)
    if args.iterations is not None:
        overrides.append(f"iterations={args.iterations}")
    out = os.path.join(tempfile.mkdtemp(prefix="profile-meta-train-"), "run")
    argv = ["meta-train", "--tasks", args.tasks, "--out", out, "--no-progress"]
    argv += ["--tracking", args.tracking]
    for item in overrides:
        argv += ["--set", item]
    profiler = cProfile.Profile() if args.cprofile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    try:
        cli.main.main(argv, standalone_mode=False)
    finally:
        if profiler:
            profiler.disable()
    wall = time.perf_counter() - start
    import torch as t

    print(
        f"\n{args.tasks}: {' '.join(overrides) or 'defaults'}, tracking {args.tracking}, "
        f"torch {t.__version__}; wall {wall:.1f} s "
        f"(+ {imports:.1f} s imports)",
        file=sys.stderr,
    )
    parts = dict(_seconds)
    parts["other"] = wall - sum(v for k, v in parts.items() if not k.startswith("("))
    print(f"{'part':<32}{'seconds':>9}{'share':>8}{'calls':>8}", file=sys.stderr)
    print("(parenthesised: on the prefetching thread, overlapping the rest)", file=sys.stderr)
    for part, seconds in sorted(parts.items(), key=lambda kv: (kv[0].startswith("("), -kv[1])):
        calls = _calls.get(part, 0)
        print(
            f"{part:<32}{seconds:>9.1f}{seconds / wall:>8.0%}{calls or '':>8}",
            file=sys.stderr,
        )
    if profiler:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(args.cprofile)


if __name__ == "__main__":
    main()
