"""Share of unseen normals flagged by a threshold fitted on a few normals and no pool.

Adapts a teacher to ``n`` Gaussian normal rows (8 features) without an unlabelled pool and
reports the share of 1,000 unseen normals of the same distribution above the threshold: the
default (the conformal order statistic of the leave-one-out scores), the plain 0.95 quantile of
them, and their maximum. The nominal share is 5 %.

Usage: python benchmarks/threshold_small_support.py TEACHER.pt [--sizes 5,10,20,50] [--draws 2]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from metakd.detect import AdaptConfig, FewShotDetector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("teacher")
    parser.add_argument("--sizes", default="5,10,20,50")
    parser.add_argument("--draws", type=int, default=2)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"{'normals':>8} {'draw':>5} {'default':>8} {'q0.95':>8} {'max':>8}")
    for draw in range(args.draws):
        rng = np.random.default_rng(draw)
        rows = rng.normal(size=(3000, 8))
        unseen = rows[2000:]
        for n in (int(s) for s in args.sizes.split(",")):
            det = FewShotDetector(args.teacher, config=AdaptConfig(student=False))
            det.fit(rows[:n], np.zeros(n))
            scores, loo = det.decision_function(unseen), det.decision_scores_
            shares = [
                (scores > det.threshold_).mean(),
                (scores > np.quantile(loo, 0.95)).mean(),
                (scores > loo.max()).mean(),
            ]
            print(f"{n:>8} {draw:>5}" + "".join(f"{s:>9.3f}" for s in shares))


if __name__ == "__main__":
    main()
