"""Peak memory and time of one meta-step against inner steps: MAML, its variants and iMAML.

MAML, MAML + checkpointing, FOMAML and ANIL by default; iMAML with ``--configs``.

One meta-step is the forward and backward pass of one synthetic meta-batch
(``learner.meta_gradients``). Every configuration runs in a fresh process, so peaks are
independent. The process first runs one meta-step of the same learner with one inner step
(libtorch's one-off allocations), hands freed heap back to the system (glibc ``malloc_trim``) and
reads its resident set size (``/proc/self/statm``, Linux); then one untimed and ``--repeats``
timed meta-steps at the configured inner steps. The meta-step's memory is the process's peak
(``getrusage(RUSAGE_SELF).ru_maxrss``) above that size. Time is the best CPU time
(``time.process_time``) of the timed meta-steps on ``--threads`` threads (default one): on a
shared machine it moves far less than wall time, which other load inflates (two threads spin at
their barriers when the cores are busy). Ratios to MAML at the same step count are measured side
by side in one run.

Defaults: the default teacher (``model.kind: profile``, hidden [256, 128], embedding 32) at the
default episode shape (10 shots, 32 query rows, meta-batch 16) with a 128-row pool, which its
head reads in the inner loop, and the ``mlp`` teacher at the same shape (its inner loop reads the
support only). Rows are Gaussian: memory and time do not depend on their values. About 3 minutes
on 2 cores.

iMAML (``meta.algorithm: imaml``, ``meta.imaml`` at its defaults: λ = 1, 5 conjugate-gradient
steps) keeps nothing of its inner loop, so its memory should not grow with the inner steps, where
second-order MAML's grows faster than linearly (each step's low-rank factor stacks the rows of
the steps before it): ``--configs MAML,iMAML,FOMAML --steps 1,5,20,50``.

Usage: python benchmarks/memory.py [--steps 1,2,4,8] [--kinds profile,mlp] [--meta-batch 16]
       [--shots 10] [--query 32] [--pool 128] [--features 64] [--hidden 256,128] [--repeats 2]
       [--threads 1] [--configs MAML,MAML+ckpt,FOMAML,ANIL] [--out FILE]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# (column name, algorithm, inner.checkpoint)
CONFIGS = (
    ("MAML", "maml", False),
    ("MAML+ckpt", "maml", True),
    ("FOMAML", "fomaml", False),
    ("ANIL", "anil", False),
    ("iMAML", "imaml", False),
)
DEFAULT_CONFIGS = "MAML,MAML+ckpt,FOMAML,ANIL"
ENV = os.environ | {"WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}


def _rss_mib() -> float:
    """Current resident set size of this process."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(spec: dict[str, Any]) -> dict[str, float | int]:
    """Measure one configuration in this (fresh) process; ``spec`` as built by :func:`main`."""
    import torch

    from metakd.meta.learners import InnerConfig, MetaConfig, MetaLearner, build_learner
    from metakd.models.teachers import ModelConfig, build_teacher

    torch.manual_seed(0)
    config = ModelConfig(kind=spec["kind"], hidden=spec["hidden"])
    # The profile teacher reads a neighbourhood profile after the aligned features.
    profile = config.profile.width if spec["kind"] == "profile" else 0
    d = spec["features"] + profile
    teacher = build_teacher(d, config)
    torch.set_num_threads(spec["threads"])

    def learner_with(steps: int) -> MetaLearner:
        inner = InnerConfig(steps=steps, checkpoint=spec["checkpoint"])
        meta = MetaConfig(algorithm=spec["algorithm"])
        return build_learner(teacher, inner=inner, meta=meta, anomaly_shots=0)

    learner, warm = learner_with(spec["steps"]), learner_with(1)
    g = torch.Generator().manual_seed(1)
    b, n, q, m = spec["meta_batch"], spec["shots"], spec["query"], spec["pool"]
    sx = torch.randn(b, n, d, generator=g)
    sy = torch.zeros(b, n)
    qx = torch.randn(b, q, d, generator=g)
    qy = (torch.arange(q) % 4 == 0).float().expand(b, q).contiguous()
    px = torch.randn(b, m, d, generator=g) if m > 0 else None

    def meta_step(which: MetaLearner) -> tuple[float, float]:
        """``(CPU seconds, wall seconds)`` of one meta-step."""
        which.zero_grad(set_to_none=True)
        cpu, wall = time.process_time(), time.perf_counter()
        which.meta_gradients(sx, sy, qx, qy, px)
        return time.process_time() - cpu, time.perf_counter() - wall

    meta_step(warm)
    del warm
    _trim()
    start = _rss_mib()
    meta_step(learner)  # the first call at these shapes is slower (fresh pages)
    times = [meta_step(learner) for _ in range(spec["repeats"])]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "start_mib": start,
        "peak_mib": peak,
        "step_mib": peak - start,
        "cpu_seconds": min(cpu for cpu, _ in times),
        "wall_seconds": min(wall for _, wall in times),
        "input_dim": d,
        "threads": torch.get_num_threads(),
    }


def _trim() -> None:
    """Return freed heap memory to the system (glibc), so the starting size counts live memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="1,2,4,8", help="inner step counts")
    parser.add_argument("--kinds", default="profile,mlp", help="teacher kinds")
    parser.add_argument("--meta-batch", type=int, default=16)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--query", type=int, default=32)
    parser.add_argument("--pool", type=int, default=128, help="unlabelled pool rows per task")
    parser.add_argument("--features", type=int, default=64, help="aligned input features")
    parser.add_argument("--hidden", default="256,128", help="hidden widths")
    parser.add_argument("--repeats", type=int, default=2, help="timed meta-steps per process")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument(
        "--configs",
        default=DEFAULT_CONFIGS,
        help=f"columns, MAML first (of {', '.join(name for name, _, _ in CONFIGS)})",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return
    steps = [int(s) for s in args.steps.split(",") if s]
    known = {name: (name, algorithm, checkpoint) for name, algorithm, checkpoint in CONFIGS}
    chosen = [c for c in args.configs.split(",") if c]
    if not chosen or chosen[0] != "MAML" or any(c not in known for c in chosen):
        raise SystemExit(f"--configs: MAML first, then any of {', '.join(known)}")
    configs = [known[c] for c in chosen]
    hidden = [int(h) for h in args.hidden.split(",") if h]
    shape = {
        "meta_batch": args.meta_batch,
        "shots": args.shots,
        "query": args.query,
        "pool": args.pool,
        "features": args.features,
        "hidden": hidden,
        "repeats": args.repeats,
        "threads": args.threads,
    }
    results = []
    for kind in [k for k in args.kinds.split(",") if k]:
        rows = {}
        for k in steps:
            for name, algorithm, checkpoint in configs:
                spec = shape | {
                    "kind": kind,
                    "steps": k,
                    "algorithm": algorithm,
                    "checkpoint": checkpoint,
                }
                done = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(spec)],
                    env=ENV,
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    raise SystemExit(f"failed: {spec}\n{done.stderr[-2000:]}")
                measured = json.loads(done.stdout.strip().splitlines()[-1])
                rows[k, name] = measured
                results.append(spec | {"config": name} | measured)
        first = rows[steps[0], "MAML"]
        print(
            f"\n{kind} teacher: {first['input_dim']} inputs → {hidden}, meta-batch "
            f"{args.meta_batch}, {args.shots} shots, {args.query} query, {args.pool} pool rows; "
            f"torch threads: {first['threads']}; process at start ≈ {first['start_mib']:.0f} MiB"
        )
        print("meta-step peak MiB above the start (CPU seconds per meta-step)")
        names = [name for name, _, _ in configs]
        others = names[1:]
        print(
            f"{'steps':>5} |"
            + "".join(f"{n:>16}" for n in names)
            + " | "
            + " ".join(f"{n + '/MAML mem  time':>22}" for n in others)
        )
        for k in steps:
            cells = "".join(
                f"{rows[k, n]['step_mib']:>9.0f} ({rows[k, n]['cpu_seconds']:>4.2f})" for n in names
            )
            maml = rows[k, "MAML"]
            ratios = " ".join(
                f"{rows[k, n]['step_mib'] / maml['step_mib']:>16.2f}"
                f"{rows[k, n]['cpu_seconds'] / maml['cpu_seconds']:>6.2f}"
                for n in others
            )
            print(f"{k:>5} |{cells} | {ratios}")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
