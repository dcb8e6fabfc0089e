"""Peak memory and time of ``metakd adapt`` against pool size and of ``metakd score`` against rows.

Every measurement is one fresh CLI process (as users run it), its peak resident set size read by
a small parent (``getrusage(RUSAGE_CHILDREN)``), next to the input size and the peak of a process
that only imports metakd and torch (the interpreter's baseline), so the numbers read as ratios:

* ``adapt``: each teacher kind (tiny meta-training, default architecture), a 20-row support and an
  unlabelled pool of 1k-100k rows of 32 features (``.npz``); with distillation, as by default.
* ``adapt`` against the support: a support of 1k-20k labelled normal rows of 5 features (a
  20,000-row csv is about 1 MB) and no pool, each kind.
* ``score``: the adapted profile student on csv input of 100k-3M rows at width 32, and 100k-1M
  rows at width 1000.

Usage: python benchmarks/memory_scale.py [--pools 1000,5000,20000,100000] [--kinds ...]
       [--supports 1000,4000,20000]
       [--rows 100000,1000000,3000000] [--wide-rows 100000,300000] [--work DIR] [--out FILE]
Goals (issue #16): adapt with a 20,000-row pool under 2 GiB for every kind and linear growth to
100,000 rows; score below 1.5x the input size plus the baseline; (issue #27) adapt with a
20,000-row support under 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KINDS = ("profile", "knn", "svdd", "mlp", "autoencoder")
PEAK = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(r.returncode)"
)
ENV = os.environ | {"WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}


def measure(command: list[str]) -> tuple[float, float]:
    """``(peak RSS in MiB, wall seconds)`` of one process."""
    tick = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PEAK, *command], env=ENV, capture_output=True, text=True
    )
    seconds = time.perf_counter() - tick
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return int(done.stderr.strip().splitlines()[-1]) / 1024, seconds


def metakd(*args: str) -> list[str]:
    return [sys.executable, "-m", "metakd", *args]


def write_csv(path: Path, rows: int, width: int, seed: int) -> None:
    """Write ``rows`` x ``width`` Gaussian rows in blocks (the writer never holds the whole file)."""
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        f.write(",".join(f"f{j}" for j in range(width)) + "\n")
        for start in range(0, rows, 50_000):
            block = rng.normal(size=(min(50_000, rows - start), width)).astype(np.float32)
            np.savetxt(f, block, fmt="%.6g", delimiter=",")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pools", default="1000,5000,20000,100000")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--supports", default="1000,4000,20000")
    parser.add_argument("--rows", default="100000,1000000,3000000")
    parser.add_argument("--wide-rows", default="100000,300000")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="metakd-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    pools = [int(p) for p in args.pools.split(",") if p]
    kinds = [k for k in args.kinds.split(",") if k]
    results: dict[str, list[dict[str, float | int | str]]] = {
        "baseline": [],
        "adapt": [],
        "adapt_support": [],
        "score": [],
    }

    base, _ = measure([sys.executable, "-c", "import torch, metakd.cli, metakd.adapt"])
    results["baseline"].append({"peak_mib": base})
    print(f"baseline (python + torch + metakd imported): {base:.0f} MiB")

    rng = np.random.default_rng(0)
    support = work / "support.npz"
    np.savez(
        support, X=rng.normal(size=(20, 32)).astype(np.float32), y=np.zeros(20, dtype=np.int64)
    )
    print("\nadapt: peak MiB (seconds) by pool rows")
    print(f"{'kind':<12}" + "".join(f"{p:>18,}" for p in pools))
    for kind in kinds:
        run = work / f"teacher-{kind}"
        if not (run / "teacher.pt").is_file():
            subprocess.run(
                metakd("meta-train", "--out", str(run), "--overwrite", "--no-progress")
                + ["--set", f"model.kind={kind}", "--set", "iterations=2", "--set", "val_every=1"]
                + ["--set", "tracking.mode=disabled"],
                env=ENV,
                check=True,
                capture_output=True,
            )
        cells = []
        for rows in pools:
            pool = work / f"pool-{rows}.npz"
            if not pool.is_file():
                np.savez(
                    pool, X=np.random.default_rng(rows).normal(size=(rows, 32)).astype(np.float32)
                )
            peak, seconds = measure(
                metakd("adapt", "--teacher", str(run / "teacher.pt"), "--support", str(support))
                + ["--unlabeled", str(pool), "--out", str(work / f"adapted-{kind}"), "--overwrite"]
                + ["--set", "tracking.mode=disabled"]
            )
            results["adapt"].append(
                {
                    "kind": kind,
                    "pool_rows": rows,
                    "peak_mib": peak,
                    "seconds": seconds,
                    "input_mib": pool.stat().st_size / 2**20,
                }
            )
            cells.append(f"{peak:>10.0f} ({seconds:>4.0f})")
        print(f"{kind:<12}" + "".join(f"{c:>18}" for c in cells))

    supports = [int(r) for r in args.supports.split(",") if r]
    print("\nadapt: peak MiB (seconds) by support rows (5 features, no pool)")
    print(f"{'kind':<12}" + "".join(f"{r:>18,}" for r in supports))
    for kind in kinds:
        cells = []
        for rows in supports:
            big = work / f"support-rows-{rows}.npz"
            if not big.is_file():
                np.savez(
                    big,
                    X=np.random.default_rng(rows).normal(size=(rows, 5)).astype(np.float32),
                    y=np.zeros(rows, dtype=np.int64),
                )
            peak, seconds = measure(
                metakd("adapt", "--teacher", str(work / f"teacher-{kind}" / "teacher.pt"))
                + ["--support", str(big), "--out", str(work / f"adapted-{kind}"), "--overwrite"]
                + ["--set", "tracking.mode=disabled"]
            )
            results["adapt_support"].append(
                {"kind": kind, "support_rows": rows, "peak_mib": peak, "seconds": seconds}
            )
            cells.append(f"{peak:>10.0f} ({seconds:>4.0f})")
        print(f"{kind:<12}" + "".join(f"{c:>18}" for c in cells))

    print("\nscore (profile student): peak MiB against the csv input")
    print(f"{'rows x width':>18}{'input MiB':>12}{'peak MiB':>10}{'(peak-base)/input':>19}{'s':>7}")
    plan = [(int(r), 32) for r in args.rows.split(",") if r]
    plan += [(int(r), 1000) for r in args.wide_rows.split(",") if r]
    for width in sorted({w for _, w in plan}):
        model = work / f"score-model-{width}"
        wide_support = work / f"support-{width}.npz"
        np.savez(
            wide_support,
            X=rng.normal(size=(20, width)).astype(np.float32),
            y=np.zeros(20, dtype=np.int64),
        )
        subprocess.run(
            metakd("adapt", "--teacher", str(work / "teacher-profile" / "teacher.pt"))
            + ["--support", str(wide_support), "--out", str(model), "--overwrite"]
            + ["--set", "tracking.mode=disabled"],
            env=ENV,
            check=True,
            capture_output=True,
        )
        for rows, w in plan:
            if w != width:
                continue
            data = work / f"rows-{rows}-{width}.csv"
            if not data.is_file():
                write_csv(data, rows, width, seed=rows + width)
            out = work / "scores.csv"
            peak, seconds = measure(
                metakd("score", "--model", str(model / "student.pt"), "--data", str(data))
                + ["--out", str(out), "--overwrite"]
            )
            size = data.stat().st_size / 2**20
            results["score"].append(
                {
                    "rows": rows,
                    "width": width,
                    "input_mib": size,
                    "peak_mib": peak,
                    "seconds": seconds,
                }
            )
            label = f"{rows:,} x {width}"
            print(
                f"{label:>18}{size:>12.0f}{peak:>10.0f}{(peak - base) / size:>19.2f}{seconds:>7.0f}"
            )
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
