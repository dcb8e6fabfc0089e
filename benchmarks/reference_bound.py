"""Held-out AUROC and adapt time against the reference bound ``model.profile.max_pool``.

For each ADBench classical table given: 20 support normals, 80 % of the other rows as the
unlabelled pool, AUROC on the disjoint other 20 %; each teacher adapted (no student) with the
bound set to each value. Prints one line per table and teacher.

Usage: python benchmarks/reference_bound.py --teacher profile=RUN/teacher.pt --teacher knn=RUN2/teacher.pt
       [--data ../shared/data/adbench-classical] [--tables 22_magic.gamma,32_shuttle,...]
       [--bounds 1024,4096,8192]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from metakd.detector import AdaptConfig, FewShotDetector
from metakd.persist import TeacherBundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/adbench-classical"))
    parser.add_argument("--tables", default="22_magic.gamma,32_shuttle,19_landsat,24_mnist")
    parser.add_argument("--bounds", default="1024,4096,8192")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bounds = [int(b) for b in args.bounds.split(",")]
    teachers = dict(item.split("=", 1) for item in args.teacher)
    for table in args.tables.split(","):
        data = np.load(args.data / f"{table}.npz")
        X, y = data["X"].astype(np.float32), data["y"].astype(int)
        rng = np.random.default_rng(0)
        support = rng.permutation(np.flatnonzero(y == 0))[:20]
        rest = rng.permutation(np.setdiff1d(np.arange(len(y)), support))
        held_out, pool = rest[: len(rest) // 5], rest[len(rest) // 5 :]
        for name, path in teachers.items():
            base = TeacherBundle.load(path)
            cells = []
            for bound in bounds:
                profile = dataclasses.replace(base.model.profile, max_pool=bound)
                bundle = dataclasses.replace(
                    base, model=dataclasses.replace(base.model, profile=profile)
                )
                tick = time.perf_counter()
                detector = FewShotDetector(bundle, config=AdaptConfig(student=False))
                detector.fit(X[support], unlabeled=X[pool])
                auroc = roc_auc_score(y[held_out], detector.decision_function(X[held_out]))
                cells.append(f"{bound}: {auroc:.4f} ({time.perf_counter() - tick:.0f} s)")
            print(f"{table:<16} pool {len(pool):>6} {name:<8} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
