"""Share of unseen normals flagged by a threshold fitted on a few normals and no pool.

Adapts a teacher to ``n`` Gaussian normal rows (8 features) without an unlabelled pool and
reports the share of 1,000 unseen normals of the same distribution above the threshold, at the
default ``normal_quantile`` 0.95: the teacher's threshold from cross-fitted support scores (the
default, ``threshold.folds: 10``), from the rows' own scores (``threshold.folds: 0``), and the
student's (the deployed detector's) threshold. The conformal share is at most
``1 − 0.95`` from 19 rows on and ``1 / (n + 1)`` below (the threshold is then the highest score).

Usage: python benchmarks/threshold_small_support.py TEACHER.pt [--sizes 5,10,20,50] [--draws 2]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from metakd.detect import AdaptConfig, FewShotDetector
from metakd.threshold import ThresholdConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("teacher")
    parser.add_argument("--sizes", default="5,10,20,50")
    parser.add_argument("--draws", type=int, default=2)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    columns = {
        "cross-fitted": AdaptConfig(student=False),
        "own scores": AdaptConfig(student=False, threshold=ThresholdConfig(folds=0)),
        "student": AdaptConfig(),
    }
    print(f"{'normals':>8} {'draw':>5}" + "".join(f"{c:>14}" for c in columns) + f"{'bound':>8}")
    for draw in range(args.draws):
        rng = np.random.default_rng(draw)
        rows = rng.normal(size=(3000, 8))
        unseen = rows[2000:]
        for n in (int(s) for s in args.sizes.split(",")):
            shares = []
            for config in columns.values():
                det = FewShotDetector(args.teacher, config=config).fit(rows[:n], np.zeros(n))
                shares.append((det.decision_function(unseen) > det.threshold_).mean())
            bound = max(0.05, 1 / (n + 1))
            print(f"{n:>8} {draw:>5}" + "".join(f"{s:>14.3f}" for s in shares) + f"{bound:>8.3f}")


if __name__ == "__main__":
    main()
