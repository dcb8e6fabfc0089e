"""Many new domains: `metakd adapt --support-dir` against one `metakd adapt` call per domain.

Writes, for each of the first `--domains` tables of a shared collection (default: the 10 MVTec AD
ViT-embedding categories), a support file of `--shots` normal rows and an unlabelled pool of
`--pool` other rows; meta-trains a small teacher on the synthetic prior (so no domain is seen in
meta-training); then times, side by side in one run, (a) one `metakd adapt --support-dir` call
and (b) one `metakd adapt` process per domain, and prints domains per minute and their ratio.

Usage: python benchmarks/adapt_many.py [--data ../shared/data/adbench-mvtec-vit] [--domains 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def metakd(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "metakd", *args], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/adbench-mvtec-vit")
    parser.add_argument("--domains", type=int, default=10)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--distill-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    files = sorted(Path(args.data).glob("*.npz"))[: args.domains]
    if not files:
        raise SystemExit(f"no .npz tables in {args.data}")
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        supports, pools = root / "support", root / "pool"
        supports.mkdir()
        pools.mkdir()
        for path in files:
            with np.load(path) as table:
                X, y = table["X"].astype(np.float32), table["y"].astype(np.int64)
            normals = rng.permutation(np.flatnonzero(y == 0))
            rest = rng.permutation(np.setdiff1d(np.arange(len(y)), normals[: args.shots]))
            cols = [f"f{j}" for j in range(X.shape[1])]
            support = pd.DataFrame(X[normals[: args.shots]], columns=cols).assign(label=0)
            support.to_csv(supports / f"{path.stem}.csv", index=False)
            pool = pd.DataFrame(X[rest[: args.pool]], columns=cols)
            pool.to_csv(pools / f"{path.stem}.csv", index=False)
        run = root / "teacher"
        metakd("meta-train", "--out", str(run), "--set", "iterations=20", "--no-progress")
        teacher = str(run / "teacher.pt")
        common = ["--set", f"distill.steps={args.distill_steps}", "--no-progress"]

        tick = time.perf_counter()
        metakd(
            "adapt", "--teacher", teacher, "--support-dir", str(supports),
            "--unlabeled-dir", str(pools), "--out", str(root / "many"), *common,
        )  # fmt: skip
        batched = time.perf_counter() - tick

        tick = time.perf_counter()
        for path in files:
            metakd(
                "adapt", "--teacher", teacher, "--support", str(supports / f"{path.stem}.csv"),
                "--unlabeled", str(pools / f"{path.stem}.csv"),
                "--out", str(root / "one" / path.stem), *common,
            )  # fmt: skip
        separate = time.perf_counter() - tick

    n = len(files)
    print(f"{n} domains of {args.data}, {args.shots} normal shots, pool {args.pool}")
    print(f"adapt --support-dir      : {batched:7.1f} s  {60 * n / batched:6.1f} domains/min")
    print(f"adapt per domain (x{n:<3d}) : {separate:7.1f} s  {60 * n / separate:6.1f} domains/min")
    print(f"ratio (domains/min)      : {separate / batched:.2f}x")


if __name__ == "__main__":
    main()
