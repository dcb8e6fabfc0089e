"""Teacher kinds side by side: mean held-out AUROC per collection from ``domain_quality.py`` runs.

Each ``--run COLLECTION=KIND=DIR`` names one ``benchmarks/domain_quality.py --out DIR`` run (its
``results.json``) made with ``--train-set model.kind=KIND``. Per collection and reading
(transductive, inductive) the chart shows the student's and the teacher's mean AUROC for every
kind, and the best simple detector on the same rows as a dashed line (the best of the baselines
in that collection's runs, which all use the same splits).

Usage (from the repository root)::

    python benchmarks/plot_teacher_kinds.py --out benchmarks/results/teacher_kinds.png \\
        --run mvtec=profile=runs/dq/mvtec-profile --run mvtec=gaussian=runs/dq/mvtec-gaussian ...
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

MODES = ("transductive", "inductive")


def mean_auroc(rows: list[dict], mode: str) -> dict[str, float]:
    """Method -> mean AUROC over the runs (domains × seeds) of one reading, A = 0."""
    by_method: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row["mode"] == mode and row["anomaly_shots"] == 0:
            by_method[row["method"]].append(row["auroc"])
    return {method: float(np.mean(values)) for method, values in by_method.items()}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", action="append", required=True, help="COLLECTION=KIND=DIR")
    ap.add_argument("--out", required=True, help="PNG path")
    a = ap.parse_args()
    runs: dict[str, dict[str, list[dict]]] = defaultdict(dict)
    for spec in a.run:
        collection, kind, directory = spec.split("=", 2)
        path = Path(directory) / "results.json"
        if not path.is_file():
            raise SystemExit(f"--run {spec}: {path} does not exist")
        runs[collection][kind] = json.loads(path.read_text())
    collections = list(runs)
    fig, axes = plt.subplots(
        len(MODES), len(collections), figsize=(4.2 * len(collections), 6.5), squeeze=False
    )
    for col, collection in enumerate(collections):
        kinds = list(runs[collection])
        for r, mode in enumerate(MODES):
            ax = axes[r][col]
            means = {kind: mean_auroc(rows, mode) for kind, rows in runs[collection].items()}
            x = np.arange(len(kinds))
            student = [means[k]["metakd-student"] for k in kinds]
            teacher = [means[k]["metakd-teacher"] for k in kinds]
            ax.bar(x - 0.2, student, 0.4, label="student")
            ax.bar(x + 0.2, teacher, 0.4, label="teacher")
            baselines = {m: v for m, v in means[kinds[0]].items() if not m.startswith("metakd")}
            best = max(baselines, key=lambda m: baselines[m])
            ax.axhline(baselines[best], ls="--", c="k", lw=1, label=f"best simple: {best}")
            ax.set_xticks(x, kinds, rotation=20)
            low = min(student + teacher + [baselines[best]])
            ax.set_ylim(max(0.0, low - 0.08), 1.0)
            ax.set_title(f"{collection}, {mode}")
            ax.legend(fontsize=7, loc="upper right")
            if col == 0:
                ax.set_ylabel("mean AUROC, held-out domains")
    fig.tight_layout()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
