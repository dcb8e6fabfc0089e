"""Statistics and reports of an evaluation: the summary table and ``summary.md`` (the plot is
:mod:`~metakd.evaluate.plot`'s, re-exported here).

Every task × seed run is one observation; means come with 95 % t-interval half-widths over
runs. A run whose scores were not finite *fails*: it is left out of the means and counted
beside them, and a mean with failed runs is never marked best.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from metakd.data.task import Task
from metakd.evaluate.config import EvaluateConfig
from metakd.evaluate.plot import plot_auroc_vs_shots
from metakd.evaluate.registry import REGISTRY

SUMMARY_COLUMNS: tuple[str, ...] = (
    "anomaly_shots",
    "shots",
    "method",
    "auroc",
    "auroc_ci",
    "auprc",
    "auprc_ci",
    "n",
    "failed",
)


def _mean_ci(values: pd.Series) -> tuple[float, float, int]:
    """Mean, 95 % t-interval half-width and count of the finite values (half-width NaN if n < 2)."""
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(v[0]), float("nan"), 1
    half = float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return float(v.mean()), half, n


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean AUROC and AUPRC with 95 % t-interval half-widths per method × setting.

    Each task × seed run is one observation (the interval is over runs, so it reflects both
    task-to-task and split-to-split variation). Runs whose scores were not finite count as
    ``failed`` and are left out of the means, which are then flagged wherever they are shown.

    Returns:
        Columns ``SUMMARY_COLUMNS`` (``n``: runs averaged, ``failed``: runs without a score),
        ordered by setting and report order.
    """
    out = []
    for (anomaly_shots, shots, method), group in results.groupby(
        ["anomaly_shots", "shots", "method"], sort=False
    ):
        auroc, auroc_ci, n = _mean_ci(group["auroc"])
        auprc, auprc_ci, _ = _mean_ci(group["auprc"])
        out.append(
            {
                "anomaly_shots": int(anomaly_shots),
                "shots": int(shots),
                "method": method,
                "auroc": auroc,
                "auroc_ci": auroc_ci,
                "auprc": auprc,
                "auprc_ci": auprc_ci,
                "n": n,
                "failed": len(group) - n,
            }
        )
    summary = pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))
    order = {m: i for i, m in enumerate(REGISTRY.names())}
    summary["_order"] = summary["method"].map(order)
    return (
        summary.sort_values(["anomaly_shots", "shots", "_order"])
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def method_means(results: pd.DataFrame, metric: str) -> dict[str, float]:
    """Per method, the mean of ``metric`` over all its runs (every task, setting and seed;
    failed runs left out), in report order: one number per method for a run summary."""
    present = set(results["method"])
    return {
        method: _mean_ci(results.loc[results["method"] == method, metric])[0]
        for method in REGISTRY.names()
        if method in present
    }


def _cell(mean: float, half: float, failed: int, n: int, *, bold: bool) -> str:
    if not np.isfinite(mean):
        return f"failed {failed}/{failed}" if failed else "–"
    text = f"{mean:.3f}" if not np.isfinite(half) else f"{mean:.3f} ± {half:.3f}"
    text = f"**{text}**" if bold else text
    return f"{text} (failed {failed}/{n + failed})" if failed else text


def _metric_table(summary: pd.DataFrame, metric: str, anomaly_shots: int) -> list[str]:
    part = summary[summary["anomaly_shots"] == anomaly_shots]
    shots = sorted(part["shots"].unique())
    methods = [m for m in REGISTRY.names() if m in set(part["method"])]
    # A mean over the runs that did not fail is not comparable: such cells are never "best".
    clean = part[part["failed"] == 0]
    best = {k: clean[clean["shots"] == k][metric].max() for k in shots}
    lines = [
        "| method | " + " | ".join(f"K={k}" for k in shots) + " |",
        "|---|" + "---|" * len(shots),
    ]
    for method in methods:
        cells = []
        for k in shots:
            row = part[(part["shots"] == k) & (part["method"] == method)]
            if row.empty:
                cells.append("–")
                continue
            r = row.iloc[0]
            bold = bool(r["failed"] == 0 and r[metric] == best[k])
            cells.append(
                _cell(r[metric], r[f"{metric}_ci"], int(r["failed"]), int(r["n"]), bold=bold)
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def headline_gaps(summary: pd.DataFrame) -> pd.DataFrame:
    """Per setting: the headline method's (metakd's student) mean AUROC minus the best
    baseline's (``REGISTRY.baselines()``).

    The best baseline is the one with the highest mean among those that never failed (among all
    when every one failed somewhere).

    Returns:
        Columns ``anomaly_shots, shots, student, student_failed, best_baseline, best_auroc,
        gap``; ``student_failed`` counts the student's failed runs, whose gap is then not a
        like-for-like comparison.
    """
    headline = REGISTRY.headline().name
    baselines = REGISTRY.baselines()
    out = []
    for (anomaly_shots, shots), part in summary.groupby(["anomaly_shots", "shots"], sort=True):
        student = part[part["method"] == headline]
        base = part[part["method"].isin(baselines)].dropna(subset=["auroc"])
        if student.empty or base.empty:
            continue
        if (base["failed"] == 0).any():
            base = base[base["failed"] == 0]
        best = base.loc[base["auroc"].idxmax()]
        value = float(student["auroc"].iloc[0])
        out.append(
            {
                "anomaly_shots": int(anomaly_shots),
                "shots": int(shots),
                "student": value,
                "student_failed": int(student["failed"].iloc[0]),
                "best_baseline": best["method"],
                "best_auroc": float(best["auroc"]),
                "gap": value - float(best["auroc"]),
            }
        )
    columns = [
        "anomaly_shots",
        "shots",
        "student",
        "student_failed",
        "best_baseline",
        "best_auroc",
        "gap",
    ]
    return pd.DataFrame(out, columns=columns)


def summary_markdown(
    summary: pd.DataFrame,
    *,
    config: EvaluateConfig,
    teacher_path: Path,
    tasks: list[Task],
    skipped: list[str],
) -> str:
    """``summary.md``: per anomaly-shot setting, AUROC and AUPRC tables (methods × K) with the
    best mean per column in bold, the student-vs-best-baseline gaps and the skipped settings."""
    lines = [
        "# Few-shot evaluation",
        "",
        f"Teacher: `{teacher_path}`. Tasks ({len(tasks)}): {', '.join(t.name for t in tasks)}. "
        f"Seeds: {config.seeds}. Pool: up to {config.pool_size} unlabelled rows. Query: all "
        f"remaining labelled rows (at most {config.query_max}, stratified).",
        "",
        "Cells: mean over task × seed runs ± half-width of the 95 % t-interval; best mean per "
        "column in bold. A run *fails* when a method's query scores are not all finite; failed "
        "runs are left out of a cell's mean and counted beside it, and such cells are never "
        "marked best.",
    ]
    for anomaly_shots in sorted(summary["anomaly_shots"].unique()):
        for metric in ("auroc", "auprc"):
            lines += ["", f"## {metric.upper()}, {anomaly_shots} anomaly shots", ""]
            lines += _metric_table(summary, metric, int(anomaly_shots))
    gaps = headline_gaps(summary)
    if not gaps.empty:
        headline = REGISTRY.headline().name
        lines += [
            "",
            f"## {headline} vs the best baseline (mean AUROC)",
            "",
            f"| A | K | {headline} | best baseline | its AUROC | gap |",
            "|---|---|---|---|---|---|",
        ]
        for g in gaps.itertuples():
            flag = f" (student failed {g.student_failed} runs)" if g.student_failed else ""
            lines.append(
                f"| {g.anomaly_shots} | {g.shots} | {g.student:.3f} | {g.best_baseline} | "
                f"{g.best_auroc:.3f} | {g.gap:+.3f}{flag} |"
            )
    if skipped:
        lines += ["", "## Skipped settings", ""] + [f"- {line}" for line in skipped]
    return "\n".join(lines) + "\n"


__all__ = [
    "SUMMARY_COLUMNS",
    "headline_gaps",
    "method_means",
    "plot_auroc_vs_shots",
    "summarise",
    "summary_markdown",
]
