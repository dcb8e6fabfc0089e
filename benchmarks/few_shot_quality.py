"""Few-shot detection quality on held-out tasks: meta-train, then ``metakd evaluate``, per collection.

For each collection (MVTec AD ViT embeddings, the classical ADBench tables, SKAB sensor windows)
this meta-trains a teacher with its config in ``configs/`` and evaluates it with
:func:`metakd.evaluate.run_evaluation` on the collection's held-out meta-test tasks against
every baseline. Per collection it writes ``<out>/<name>/meta-train/`` (teacher, metrics) and
``<out>/<name>/evaluate/`` (results.csv, summary.md, auroc_vs_shots.png); across collections
``<out>/headline.md`` (metakd-student minus the best baseline at 10 normal shots, with 0 and 5
anomaly shots, against the goals of +0.03 and +0.05 mean AUROC) and ``<out>/run.json``
(commit, command, settings, timings).

Usage (the script runs from the repository root, where the configs' data paths start)::

    python benchmarks/few_shot_quality.py [--collections mvtec,adbench-classical,skab]
        [--seeds 5] [--out runs/benchmarks/few_shot_quality] [--reuse-teachers]
        [--train-set key=value ...] [--eval-set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from metakd import configio
from metakd.checkpoint import atomic_write_text
from metakd.config import load_train_config
from metakd.evaluate import headline_gaps, load_evaluate_config, run_evaluation
from metakd.train import meta_train

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = {
    "mvtec": REPO / "configs" / "mvtec.yaml",
    "adbench-classical": REPO / "configs" / "adbench-classical.yaml",
    "skab": REPO / "configs" / "skab.yaml",
}
#: Goals (reported, not asserted): student minus best baseline, mean AUROC at K = 10.
GOALS = {0: 0.03, 5: 0.05}
HEADLINE_SHOTS = 10


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def _finished(run_dir: Path) -> bool:
    """Whether meta-training in ``run_dir`` ran to the end (``teacher.pt`` is saved at every new
    best validation score, so its presence alone says nothing); the run's last act is its
    summary line in ``metrics.jsonl``."""
    metrics = run_dir / "metrics.jsonl"
    if not (run_dir / "teacher.pt").is_file() or not metrics.is_file():
        return False
    return any('"summary"' in line for line in metrics.read_text().splitlines())


def _headline(name: str, summary: pd.DataFrame) -> list[str]:
    gaps = headline_gaps(summary)
    lines = []
    for anomaly_shots, goal in GOALS.items():
        row = gaps[(gaps["shots"] == HEADLINE_SHOTS) & (gaps["anomaly_shots"] == anomaly_shots)]
        if row.empty:
            lines.append(
                f"| {name} | {HEADLINE_SHOTS} | {anomaly_shots} | – | – | – | – | not run |"
            )
            continue
        g = row.iloc[0]
        if g["student_failed"]:
            verdict = f"**not met** (student failed {g['student_failed']} runs)"
        else:
            verdict = "met" if g["gap"] >= goal else "**not met**"
        lines.append(
            f"| {name} | {HEADLINE_SHOTS} | {anomaly_shots} | {g['student']:.3f} | "
            f"{g['best_baseline']} | {g['best_auroc']:.3f} | {g['gap']:+.3f} | "
            f"{verdict}, goal {goal:+.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collections", default=",".join(COLLECTIONS), help="comma-separated")
    parser.add_argument("--seeds", type=int, default=5, help="evaluation repetitions per setting")
    parser.add_argument(
        "--out", type=Path, default=REPO / "runs" / "benchmarks" / "few_shot_quality"
    )
    parser.add_argument(
        "--reuse-teachers",
        action="store_true",
        help="skip meta-training where a finished run exists",
    )
    parser.add_argument(
        "--train-set", action="append", default=[], help="meta-train override key=value"
    )
    parser.add_argument(
        "--eval-set", action="append", default=[], help="evaluate override key=value"
    )
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    # The configs name their data relative to the repository root (../shared/data, tasks/).
    os.chdir(REPO)
    names = [n.strip() for n in args.collections.split(",") if n.strip()]
    unknown = [n for n in names if n not in COLLECTIONS]
    if unknown:
        parser.error(f"unknown collection '{unknown[0]}' (known: {', '.join(COLLECTIONS)})")

    report: dict[str, object] = {
        "commit": _git_commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "collections": {},
    }
    headline = [
        "| collection | K | A | metakd-student | best baseline | its AUROC | gap | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        base = args.out / name
        train_config = load_train_config(
            COLLECTIONS[name], ["tracking.mode=disabled", *args.train_set]
        )
        teacher = base / "meta-train" / "teacher.pt"
        entry: dict[str, object] = {"train_config": configio.to_dict(train_config)}
        if not (args.reuse_teachers and _finished(base / "meta-train")):
            print(f"[{name}] meta-training ({train_config.iterations} iterations)", flush=True)
            trained = meta_train(train_config, out_dir=base / "meta-train")
            entry |= {
                "train_seconds": trained.seconds,
                "best_iteration": trained.best_iteration,
                "best_val_auroc": trained.best_val_auroc,
                "train_test_auroc": trained.test_auroc,
            }
        eval_config = load_evaluate_config(
            None, ["tracking.mode=disabled", f"seeds={args.seeds}", *args.eval_set]
        )
        print(f"[{name}] evaluating", flush=True)
        tick = time.perf_counter()
        result = run_evaluation(eval_config, teacher_path=teacher, out_dir=base / "evaluate")
        entry |= {
            "eval_config": configio.to_dict(eval_config),
            "eval_seconds": time.perf_counter() - tick,
            "tasks": sorted(result.results["task"].unique().tolist()),
            "skipped": result.skipped,
        }
        report["collections"][name] = entry  # type: ignore[index]
        headline += _headline(name, result.summary)
        # Written after every collection, so an interrupted run keeps what it finished.
        atomic_write_text(args.out / "run.json", json.dumps(report, indent=2, default=str) + "\n")
        atomic_write_text(args.out / "headline.md", "\n".join(headline) + "\n")
    print("\n".join(headline))


if __name__ == "__main__":
    main()
