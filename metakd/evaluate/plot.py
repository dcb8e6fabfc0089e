"""The evaluation's plot, ``auroc_vs_shots.png``: one panel per anomaly-shot setting ``A``.

With several support sizes ``K``, mean AUROC against ``K``, one line per method. With a single
``K`` a line has one point, and a dozen methods' points pile up on one vertical: then each
method gets a row of its own instead, its mean AUROC as a dot, a bar of ± one standard
deviation of the tasks' means (how much the method varies from task to task) and a small tick
per task.

Drawn with matplotlib (the ``evaluate`` extra) through its object-oriented API, which renders
with Agg without touching pyplot's global backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metakd.checkpoint import atomic_write_bytes
from metakd.evaluate.registry import REGISTRY
from metakd.extras import require

_FEATURE = "the evaluation's plot (auroc_vs_shots.png)"


def plot_auroc_vs_shots(
    summary: pd.DataFrame, path: Path, *, results: pd.DataFrame | None = None
) -> None:
    """Write the plot of ``summary`` (:func:`~metakd.evaluate.report.summarise`) to ``path``.

    Several ``K``: mean AUROC (95 % interval bars) against ``K``, one line per method. One
    ``K``: a row per method, its mean AUROC with a bar of ± one standard deviation over the
    tasks' mean AUROCs and a tick per task, from ``results`` (the per-run rows; without them,
    the bar is the 95 % interval over runs). A red cross marks a mean from which failed runs
    were left out.
    """
    require("matplotlib", _FEATURE)
    if summary["shots"].nunique() == 1:
        figure = _per_method(summary, results)
    else:
        figure = _against_shots(summary)
    atomic_write_bytes(path, lambda f: figure.savefig(f, format="png", dpi=120))


def _colours(names: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab20"]
    # Colours follow the report order, so a method keeps its colour across runs and subsets;
    # an integer picks a qualitative map's i-th colour.
    return {name: palette(i) for i, name in enumerate(names)}


def _against_shots(summary: pd.DataFrame) -> Any:
    """Mean AUROC (95 % interval bars) against ``K``, one line per method, a panel per ``A``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    methods = REGISTRY.methods()
    ours = {m.name for m in methods if m.group == "ours"}
    names = [m.name for m in methods]
    settings = sorted(summary["anomaly_shots"].unique())
    fig = Figure(figsize=(4.5 * len(settings), 4), layout="constrained")
    axes = fig.subplots(1, len(settings), sharey=True, squeeze=False)[0]
    colours = _colours(names)
    legend: dict[str, Any] = {}
    for ax, anomaly_shots in zip(axes, settings, strict=True):
        part = summary[summary["anomaly_shots"] == anomaly_shots]
        for method in [m for m in names if m in set(part["method"])]:
            rows = part[part["method"] == method].sort_values("shots")
            legend[method] = ax.errorbar(
                rows["shots"],
                rows["auroc"],
                yerr=rows["auroc_ci"].fillna(0.0),
                color=colours[method],
                marker="o",
                linewidth=2.5 if method in ours else 1.2,
                elinewidth=0.7,
                capsize=2,
            )
            failed = rows[rows["failed"] > 0]
            # Means that leave failed runs out are marked, not hidden.
            ax.scatter(failed["shots"], failed["auroc"], marker="x", s=80, color="red", zorder=3)
        ax.set_xscale("log")
        ax.set_xticks(sorted(part["shots"].unique()))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("normal shots K")
        ax.set_title(f"{anomaly_shots} anomaly shots")
        ax.grid(alpha=0.3)
    # Interval bars may pass 1 (t-intervals are unbounded); AUROC itself cannot.
    axes[0].set_ylim(top=1.02)
    axes[0].set_ylabel("mean query AUROC")
    ordered = [m for m in names if m in legend]
    fig.legend([legend[m] for m in ordered], ordered, loc="outside right center", frameon=False)
    return fig


def task_means(results: pd.DataFrame) -> pd.DataFrame:
    """Per setting, method and task, the mean AUROC over its runs (seeds; failed runs left
    out): columns ``anomaly_shots, shots, method, task, auroc``."""
    finite = results[np.isfinite(results["auroc"].to_numpy(dtype=float))]
    keys = ["anomaly_shots", "shots", "method", "task"]
    return finite.groupby(keys, sort=False)["auroc"].mean().reset_index()


def _per_method(summary: pd.DataFrame, results: pd.DataFrame | None) -> Any:
    """One ``K``: a row per method (report order, top down), a panel per ``A``."""
    from matplotlib.figure import Figure

    methods = REGISTRY.methods()
    ours = {m.name for m in methods if m.group == "ours"}
    present = set(summary["method"])
    names = [m.name for m in methods if m.name in present]
    colours = _colours([m.name for m in methods])
    settings = sorted(summary["anomaly_shots"].unique())
    shots = int(summary["shots"].iloc[0])
    per_task = task_means(results) if results is not None else None
    fig = Figure(figsize=(4.2 * len(settings) + 2.0, 1.3 + 0.32 * len(names)), layout="constrained")
    axes = fig.subplots(1, len(settings), sharey=True, squeeze=False)[0]
    rows = {name: i for i, name in enumerate(names)}
    for ax, anomaly_shots in zip(axes, settings, strict=True):
        part = summary[summary["anomaly_shots"] == anomaly_shots]
        for r in part.itertuples():
            y = rows[r.method]
            colour = colours[r.method]
            spread = float(r.auroc_ci) if np.isfinite(r.auroc_ci) else 0.0
            if per_task is not None:
                tasks = per_task[
                    (per_task["anomaly_shots"] == anomaly_shots) & (per_task["method"] == r.method)
                ]["auroc"].to_numpy(dtype=float)
                spread = float(tasks.std(ddof=1)) if len(tasks) > 1 else 0.0
                ax.scatter(tasks, np.full(len(tasks), y), marker="|", s=60, color=colour, alpha=0.5)
            if np.isfinite(r.auroc):
                ax.errorbar(
                    r.auroc,
                    y,
                    xerr=spread,
                    color=colour,
                    marker="o",
                    markersize=7 if r.method in ours else 5,
                    elinewidth=2.5 if r.method in ours else 1.2,
                    capsize=3,
                )
            if r.failed > 0:
                # Means that leave failed runs out are marked, not hidden.
                ax.scatter([r.auroc], [y], marker="x", s=80, color="red", zorder=3)
        ax.set_title(f"{anomaly_shots} anomaly shots")
        ax.set_xlabel(f"query AUROC (K = {shots} normal shots)")
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(right=1.01)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()  # report order, top down
    for label in axes[0].get_yticklabels():
        if label.get_text() in ours:
            label.set_fontweight("bold")
    if per_task is not None:
        legend = "dot: mean over runs; bar: ± 1 s.d. of the tasks' means; ticks: each task's mean"
    else:
        legend = "dot: mean over runs; bar: its 95 % interval"
    fig.suptitle(legend, fontsize="small")
    return fig


__all__ = ["plot_auroc_vs_shots", "task_means"]
