"""Unseen-domain quality at defaults: leave-domains-out over a collection, as users use metakd.

Every domain of the collection is held out once: the domains are dealt into ``--folds`` folds,
and per fold a teacher is meta-trained at defaults (no config) on the other folds' domains. Per
held-out domain and seed, the support is ``K`` normals (+ ``A`` labelled anomalies); then

* **transductive**: the pool is every other row of the domain (at most ``--max-rows``), given
  unlabelled, and the pool's own rows are scored (as a user scores today's data);
* **inductive**: a disjoint ``--query-fraction`` of those rows is held back as the query and
  scored, the rest is the pool.

Beside metakd's student and teacher, on exactly the same rows: kNN to the support normals
(features standardised on the support), kNN density in the pool (5-NN, standardised on the pool),
LOF in the pool, Isolation Forest on the support and on the pool, ECOD and COPOD on the pool (from
PyOD, a dependency of metakd), and with anomaly shots logistic regression on the support. Reports mean
AUROC and AUPRC with 95 % intervals (t over runs) per collection, AUROC per domain, and the
meta-training time, as Markdown (stdout and ``--out``) and JSON.

Usage (from the repository root)::

    python benchmarks/domain_quality.py ../shared/data/adbench-mvtec-vit [--folds 2] [--seeds 2]
        [--shots 10] [--anomaly-shots 0,5] [--out runs/domain-quality/mvtec]

A collection is a directory of ``.npz`` task files or a manifest (SKAB: ``tasks/skab.yaml``
reads the series; windows are not used, rows are scored one by one). For time-ordered
collections pass ``--ordered``: the support is the first ``K`` normal rows, as a user who starts
monitoring after a normal run-in would have.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from pyod.models.copod import COPOD
from pyod.models.ecod import ECOD
from scipy import stats
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

from metakd import configio
from metakd.config import TrainConfig
from metakd.data.collection import load_collection
from metakd.data.task import Task
from metakd.detector import FewShotDetector
from metakd.train import meta_train


def _standardise(fit: np.ndarray, *rows: np.ndarray) -> list[np.ndarray]:
    mu, sd = fit.mean(0), fit.std(0) + 1e-6
    return [(r - mu) / sd for r in rows]


def baselines(
    s: np.ndarray, a: np.ndarray, p: np.ndarray, q: np.ndarray, seed: int
) -> dict[str, np.ndarray]:
    """Scores of rows ``q`` by the detectors a user would otherwise fit on support ``s``
    (anomalies ``a``) and pool ``p`` (``q`` may be ``p`` itself: then pool rows are scored
    leave-one-out)."""
    same = q is p
    out: dict[str, np.ndarray] = {}
    sz, qz = _standardise(s, s, q)
    out["knn-support"] = NearestNeighbors(n_neighbors=1).fit(sz).kneighbors(qz)[0][:, 0]
    pz, qpz = _standardise(p, p, q)
    k = min(5, len(p) - 1)
    if same:
        out["knn-pool"] = (
            NearestNeighbors(n_neighbors=k + 1).fit(pz).kneighbors(pz)[0][:, 1:].mean(1)
        )
        lof = LocalOutlierFactor(n_neighbors=min(20, len(p) - 1)).fit(pz)
        out["lof-pool"] = -lof.negative_outlier_factor_
    else:
        out["knn-pool"] = NearestNeighbors(n_neighbors=k).fit(pz).kneighbors(qpz)[0].mean(1)
        lof = LocalOutlierFactor(n_neighbors=min(20, len(p) - 1), novelty=True).fit(pz)
        out["lof-pool"] = -lof.score_samples(qpz)
    out["iforest-support"] = -IsolationForest(random_state=seed).fit(s).score_samples(q)
    out["iforest-pool"] = -IsolationForest(random_state=seed).fit(p).score_samples(q)
    for name, cls in (("ecod-pool", ECOD), ("copod-pool", COPOD)):
        det = cls().fit(p)
        out[name] = det.decision_scores_ if same else det.decision_function(q)
    if len(a):
        x, qa = _standardise(p, np.concatenate([s, a]), q)
        y = np.r_[np.zeros(len(s)), np.ones(len(a))]
        lr = LogisticRegression(max_iter=2000, class_weight="balanced").fit(x, y)
        out["logreg-support"] = lr.decision_function(qa)
    return out


def _interval(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), 0.0
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("collection")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--anomaly-shots", default="0,5")
    ap.add_argument("--max-rows", type=int, default=5000)
    ap.add_argument("--query-fraction", type=float, default=0.3)
    ap.add_argument(
        "--ordered", action="store_true", help="time-ordered rows: support = first K normals"
    )
    ap.add_argument(
        "--train-set", action="append", default=[], help="meta-train override key=value"
    )
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    collection = load_collection(a.collection)
    tasks: list[Task] = sorted(collection.tasks, key=lambda t: t.name)
    anomaly_shots = [int(v) for v in a.anomaly_shots.split(",")]
    rows: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="domain-quality-"))
    meta_seconds = []
    for fold in range(a.folds):
        held = tasks[fold :: a.folds]
        names = {t.name for t in held}
        train = [t.name for t in tasks if t.name not in names]
        # Meta-validation needs tasks of its own: a quarter of the training domains (never a
        # held-out one); the held-out domains are the split's test tasks, never trained on.
        n_val = max(1, len(train) // 4)
        overrides = [
            f"tasks={a.collection}",
            "tracking.mode=disabled",
            f"split.train_tasks={json.dumps(train[:-n_val])}",
            f"split.val_tasks={json.dumps(train[-n_val:])}",
            f"split.test_tasks={json.dumps(sorted(names))}",
            *a.train_set,
        ]
        split = {"train": train[:-n_val]}
        config = configio.load(TrainConfig, None, overrides)
        tick = time.perf_counter()
        meta_train(config, out_dir=work / f"fold{fold}", progress=False)
        meta_seconds.append(time.perf_counter() - tick)
        teacher = work / f"fold{fold}" / "teacher.pt"
        print(
            f"fold {fold}: meta-trained on {len(split['train'])} + {n_val} val domains in "
            f"{meta_seconds[-1]:.0f} s",
            flush=True,
        )
        for task in held:
            x, y = task.X, task.y
            for n_anom in anomaly_shots:
                for seed in range(a.seeds):
                    rng = np.random.default_rng(seed)
                    normals, anomalies = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
                    if len(normals) < a.shots + 10 or len(anomalies) < n_anom + 4:
                        break
                    s_idx = (
                        normals[: a.shots]
                        if a.ordered
                        else rng.choice(normals, a.shots, replace=False)
                    )
                    a_idx = (
                        rng.choice(anomalies, n_anom, replace=False) if n_anom else np.zeros(0, int)
                    )
                    rest = np.setdiff1d(np.arange(len(y)), np.r_[s_idx, a_idx])
                    if len(rest) > a.max_rows:
                        rest = np.sort(rng.choice(rest, a.max_rows, replace=False))
                    shuffled = rng.permutation(rest)
                    n_query = int(round(a.query_fraction * len(rest)))
                    for mode, pool, query in (
                        ("transductive", rest, rest),
                        ("inductive", np.sort(shuffled[n_query:]), np.sort(shuffled[:n_query])),
                    ):
                        yq = y[query]
                        if len(np.unique(yq)) < 2:
                            continue
                        support = np.r_[s_idx, a_idx]
                        ys = np.r_[np.zeros(len(s_idx)), np.ones(len(a_idx))]
                        tick = time.perf_counter()
                        det = FewShotDetector(teacher).fit(x[support], ys, unlabeled=x[pool])
                        fit_s = time.perf_counter() - tick
                        scores = {
                            "metakd-student": det.decision_function(x[query]),
                            "metakd-teacher": _teacher_scores(det, x[query]),
                        }
                        scores |= baselines(
                            x[s_idx],
                            x[a_idx],
                            x[pool],
                            x[pool] if mode == "transductive" else x[query],
                            seed,
                        )
                        for method, sc in scores.items():
                            rows.append(
                                {
                                    "domain": task.name,
                                    "fold": fold,
                                    "seed": seed,
                                    "mode": mode,
                                    "anomaly_shots": n_anom,
                                    "method": method,
                                    "auroc": float(roc_auc_score(yq, sc)),
                                    "auprc": float(average_precision_score(yq, sc)),
                                    "adapt_seconds": fit_s if method.startswith("metakd") else None,
                                }
                            )
                    print(
                        f"  {task.name} A={n_anom} seed={seed}: student "
                        f"{rows[-len(scores)]['auroc']:.3f}",
                        flush=True,
                    )
    report = _report(rows, a, meta_seconds)
    print(report)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.md").write_text(report)
        (out / "results.json").write_text(json.dumps(rows, indent=1))


def _teacher_scores(det: FewShotDetector, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return det.teacher_scorer_(torch.tensor(x)).numpy()


def _report(rows: list[dict], a: argparse.Namespace, meta_seconds: list[float]) -> str:
    lines = [
        f"# {a.collection}: leave-domains-out, K = {a.shots}, {a.folds} folds, {a.seeds} seeds",
        "",
        f"meta-training: {np.mean(meta_seconds):.0f} s per fold (mean of {len(meta_seconds)})",
        "",
    ]
    for mode in ("transductive", "inductive"):
        for n_anom in sorted({r["anomaly_shots"] for r in rows}):
            sel = [r for r in rows if r["mode"] == mode and r["anomaly_shots"] == n_anom]
            if not sel:
                continue
            methods = list(dict.fromkeys(r["method"] for r in sel))
            lines += [
                f"## {mode}, A = {n_anom} ({len(sel) // len(methods)} runs)",
                "",
                "| method | AUROC (95 % CI) | AUPRC (95 % CI) |",
                "|---|---|---|",
            ]
            means = {}
            for m in methods:
                au, ci = _interval([r["auroc"] for r in sel if r["method"] == m])
                ap_, ci2 = _interval([r["auprc"] for r in sel if r["method"] == m])
                means[m] = au
                lines.append(f"| {m} | {au:.3f} ± {ci:.3f} | {ap_:.3f} ± {ci2:.3f} |")
            base = {m: v for m, v in means.items() if not m.startswith("metakd")}
            best = max(base, key=base.get)
            lines += [
                "",
                f"student − best baseline ({best}): {means['metakd-student'] - base[best]:+.3f}",
                "",
            ]
            domains = list(dict.fromkeys(r["domain"] for r in sel))
            lines += [
                "| domain | student | teacher | " + " | ".join(base) + " |",
                "|---" * (3 + len(base)) + "|",
            ]
            for d in domains:
                cell = {
                    m: np.mean([r["auroc"] for r in sel if r["domain"] == d and r["method"] == m])
                    for m in methods
                }
                lines.append(
                    f"| {d} | {cell['metakd-student']:.3f} | {cell['metakd-teacher']:.3f} | "
                    + " | ".join(f"{cell[m]:.3f}" for m in base)
                    + " |"
                )
            lines.append("")
    adapt = [r["adapt_seconds"] for r in rows if r["adapt_seconds"] is not None]
    lines.append(
        f"adapt + distil: {np.mean(adapt):.1f} s mean, {np.max(adapt):.1f} s max per domain"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
