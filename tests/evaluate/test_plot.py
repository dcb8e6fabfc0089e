"""The evaluation's plot: lines against K with several K; with one K a row per method (its mean,
± one standard deviation of the tasks' means, a tick per task) instead of a pile of points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from metakd.evaluate.plot import _against_shots, _per_method, plot_auroc_vs_shots, task_means
from metakd.evaluate.registry import REGISTRY
from metakd.evaluate.report import summarise

METHODS = ["metakd-student", "knn-support", "iforest-pool", "devnet"]


def _results(shots: list[int]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [
        {"task": f"t{t}", "shots": k, "anomaly_shots": a, "seed": s, "method": m}
        | {"auroc": float(rng.uniform(0.5, 1.0)), "auprc": 0.5}
        for t in range(4)
        for k in shots
        for a in (0, 5)
        for s in range(3)
        for m in METHODS
        if not (m == "devnet" and a == 0)
    ]
    results = pd.DataFrame(rows)
    results.loc[0, "auroc"] = np.nan  # a failed run
    return results


def test_one_k_draws_a_row_per_method(tmp_path: Path) -> None:
    results = _results([10])
    summary = summarise(results)
    plot_auroc_vs_shots(summary, tmp_path / "p.png", results=results)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure = _per_method(summary, results)
    axes = figure.get_axes()
    assert [ax.get_title() for ax in axes] == ["0 anomaly shots", "5 anomaly shots"]
    order = [m for m in REGISTRY.names() if m in METHODS]
    assert [t.get_text() for t in axes[0].get_yticklabels()] == order
    assert "K = 10" in axes[0].get_xlabel()
    # Each method's bar is ± one standard deviation of its tasks' means.
    means = task_means(results)
    knn = means[(means["method"] == "knn-support") & (means["anomaly_shots"] == 0)]["auroc"]
    assert len(knn) == 4
    half = float(knn.std(ddof=1))
    bars = [c for c in axes[0].collections if hasattr(c, "get_segments")]
    spans = sorted(float(np.ptp(c.get_segments()[0][:, 0])) for c in bars)
    assert any(abs(span - 2 * half) < 1e-9 for span in spans), (spans, half)


def test_one_k_without_results_uses_the_interval_over_runs(tmp_path: Path) -> None:
    summary = summarise(_results([5]))
    plot_auroc_vs_shots(summary, tmp_path / "p.png")
    assert (tmp_path / "p.png").is_file()
    assert "95 % interval" in _per_method(summary, None)._suptitle.get_text()


def test_several_k_keep_the_lines(tmp_path: Path) -> None:
    summary = summarise(_results([1, 5, 10]))
    figure = _against_shots(summary)
    assert [ax.get_xlabel() for ax in figure.get_axes()] == ["normal shots K"] * 2
    plot_auroc_vs_shots(summary, tmp_path / "p.png")
    assert (tmp_path / "p.png").is_file()
