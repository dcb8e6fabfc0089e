"""A teacher meta-trained on windowed time series adapts to and scores a new domain's raw rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from click.testing import CliRunner

from metakd.cli import main
from metakd.data.readers import ReadOptions, read_task
from metakd.data.windows import WindowConfig, window_task


def _series(path: Path, rows: int, seed: int, *, label: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, 3)), columns=["a", "b", "c"])
    y = np.zeros(rows, dtype=int)
    y[rows - 40 :] = 1  # a fault at the end of each run
    frame.loc[y == 1, "a"] += 4.0
    if label:
        frame["label"] = y
    frame.to_csv(path, index=False)
    return path


def test_raw_rows_are_windowed_as_in_meta_training(tmp_path: Path) -> None:
    for i in range(6):
        _series(tmp_path / f"run{i}.csv", 400, seed=i)
    manifest = tmp_path / "bench.yaml"
    manifest.write_text(
        "files: ['run*.csv']\nwindow: {size: 4, stride: 4, features: stats}\n"
        "alignment: {kind: none}\nsplit: {train_tasks: ['run[0-3]'], val_tasks: [run4], test_tasks: [run5]}\n"
    )
    train = CliRunner().invoke(
        main,
        ["meta-train", "--tasks", str(manifest), "--out", str(tmp_path / "t"), "--no-progress"]
        + [
            a
            for s in (
                "tracking.mode=disabled",
                "iterations=2",
                "val_every=1",
                "prior.weight=0",
                "model.hidden=[8]",
                "episode.meta_batch=2",
            )
            for a in ("--set", s)
        ],
    )
    assert train.exit_code == 0, train.output
    new = _series(tmp_path / "new.csv", 200, seed=9)
    support = tmp_path / "support.csv"
    pd.read_csv(new).iloc[:80].to_csv(support, index=False)  # normal rows, raw (3 columns)
    adapted = CliRunner().invoke(
        main,
        ["adapt", "--teacher", str(tmp_path / "t" / "teacher.pt"), "--support", str(support)]
        + [
            "--out",
            str(tmp_path / "m"),
            "--set",
            "tracking.mode=disabled",
            "--set",
            "student=false",
        ],
    )
    assert adapted.exit_code == 0, adapted.output
    assert "80 support rows became 20 windows" in adapted.output
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["window"]["size"] == 4 and report["support_rows"] == 20

    out = tmp_path / "scores.csv"
    scored = CliRunner().invoke(
        main,
        [
            "score",
            "--model",
            str(tmp_path / "m" / "teacher.pt"),
            "--data",
            str(new),
            "--out",
            str(out),
        ],
    )
    assert scored.exit_code == 0, scored.output
    windows = pd.read_csv(out)
    assert list(windows.columns) == ["first_row", "last_row", "score", "is_anomaly"]
    assert windows["first_row"].tolist() == list(range(0, 200, 4))
    # The fault (rows 160-199) scores above the normal stretch.
    assert windows["score"][40:].mean() > windows["score"][:40].mean()

    # Rows already windowed (12 columns) are scored one output row per input row, unchanged.
    task = window_task(read_task(new, ReadOptions()), WindowConfig(size=4, stride=4))
    pre = tmp_path / "windowed.csv"
    pd.DataFrame(task.X, columns=list(task.feature_names)).to_csv(pre, index=False)
    again = CliRunner().invoke(
        main, ["score", "--model", str(tmp_path / "m" / "teacher.pt"), "--data", str(pre)]
    )
    assert again.exit_code == 0, again.output
    direct = pd.read_csv(pd.io.common.StringIO(again.stdout))
    assert list(direct.columns) == ["score", "is_anomaly"]
    np.testing.assert_allclose(direct["score"], windows["score"], rtol=1e-5, atol=1e-6)
