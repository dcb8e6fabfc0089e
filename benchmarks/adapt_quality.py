"""`metakd adapt` on held-out domains: student vs adapted teacher, size, speed and adapt time.

Meta-trains a teacher on a collection with some tasks held out (default: MVTec AD ViT embeddings,
3 categories held out, `configs/mvtec.yaml`), then for every held-out task and seed: draws
`--shots` normal support rows, splits the remaining rows into an unlabelled pool and a disjoint
labelled evaluation half, runs `FewShotDetector` exactly as `metakd adapt` does, and reports
AUROC of teacher and student on the evaluation half, parameter counts, per-row scoring latency
(both measured side by side in this process) and adapt (+ distil) wall time.

Usage: python benchmarks/adapt_quality.py [--config configs/mvtec.yaml] [--seeds 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from metakd.config import load_train_config
from metakd.data.collection import load_collection
from metakd.detector import AdaptConfig, FewShotDetector
from metakd.models.deploy import DeployedScorer
from metakd.persist import TeacherBundle
from metakd.train import meta_train


def per_row_seconds(scorer: DeployedScorer, x: torch.Tensor, repeats: int = 20) -> float:
    """Median seconds per row to score a batch ``x`` (after warm-up)."""
    with torch.no_grad():
        scorer(x)
        times = []
        for _ in range(repeats):
            tick = time.perf_counter()
            scorer(x)
            times.append(time.perf_counter() - tick)
    return float(np.median(times)) / x.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/mvtec.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/adapt-quality")
    args = parser.parse_args()
    out = Path(args.out)
    config = load_train_config(args.config, ["tracking.mode=disabled", *args.overrides])
    tick = time.perf_counter()
    result = meta_train(config, out_dir=out / "meta-train", progress=True)
    print(f"meta-train: {time.perf_counter() - tick:.0f} s, best val AUROC {result.best_val_auroc}")
    bundle = TeacherBundle.load(out / "meta-train" / "teacher.pt")
    collection = load_collection(config.tasks, split=config.split, alignment=config.alignment)
    rows = []
    for task in collection.split("test"):
        for seed in range(args.seeds):
            rng = np.random.default_rng([seed, 7])
            normal = rng.permutation(np.flatnonzero(task.y == 0))
            support = normal[: args.shots]
            rest = rng.permutation(np.setdiff1d(np.arange(task.n_rows), support))
            pool, held = rest[: len(rest) // 2], rest[len(rest) // 2 :]
            detector = FewShotDetector(bundle, config=AdaptConfig(seed=seed))
            tick = time.perf_counter()
            detector.fit(task.X[support], np.zeros(len(support)), unlabeled=task.X[pool])
            fit_seconds = time.perf_counter() - tick
            y = task.y[held]
            x = torch.tensor(task.X[held])
            with torch.no_grad():
                teacher_auroc = roc_auc_score(y, detector.teacher_scorer_(x).numpy())
                student_auroc = roc_auc_score(y, detector.student_scorer_(x).numpy())
            batch = torch.tensor(task.X[rng.integers(0, task.n_rows, 4096)])
            t_teacher = per_row_seconds(detector.teacher_scorer_, batch)
            t_student = per_row_seconds(detector.student_scorer_, batch)
            report = detector.report_
            rows.append(
                {
                    "task": task.name,
                    "seed": seed,
                    "teacher_auroc": teacher_auroc,
                    "student_auroc": student_auroc,
                    "fidelity": report["fidelity_spearman"],
                    "teacher_params": report["teacher_parameters"],
                    "student_params": report["student_parameters"],
                    "teacher_us_per_row": 1e6 * t_teacher,
                    "student_us_per_row": 1e6 * t_student,
                    "adapt_seconds": fit_seconds,
                }
            )
            r = rows[-1]
            print(
                f"{task.name:12s} seed {seed}: AUROC teacher {teacher_auroc:.3f} student "
                f"{student_auroc:.3f} (fidelity {r['fidelity']:.3f}); params "
                f"{r['teacher_params']}/{r['student_params']} = "
                f"{r['teacher_params'] / r['student_params']:.1f}x; per row "
                f"{r['teacher_us_per_row']:.2f}/{r['student_us_per_row']:.2f} us = "
                f"{t_teacher / t_student:.1f}x; adapt {fit_seconds:.2f} s"
            )
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("task", "seed")}
    gap = mean["teacher_auroc"] - mean["student_auroc"]
    print(
        f"\nmean over {len(rows)} runs: teacher AUROC {mean['teacher_auroc']:.3f}, student "
        f"{mean['student_auroc']:.3f} (gap {gap:+.3f}); parameters "
        f"{mean['teacher_params'] / mean['student_params']:.1f}x fewer; per-row speed-up "
        f"{mean['teacher_us_per_row'] / mean['student_us_per_row']:.1f}x; adapt "
        f"{mean['adapt_seconds']:.2f} s mean, {max(r['adapt_seconds'] for r in rows):.2f} s max"
    )
    (out / "adapt_quality.json").write_text(json.dumps({"rows": rows, "mean": mean}, indent=2))


if __name__ == "__main__":
    main()
