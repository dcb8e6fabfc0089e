"""Streamed reading and scoring: chunks give exactly the rows (and errors) of a whole read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from metakd import cli
from metakd.data.readers import ReadOptions, read_row_chunks, read_task
from metakd.data.transforms import AlignmentConfig, ScalingConfig
from metakd.detector import AdaptConfig, FewShotDetector
from metakd.errors import DataError
from metakd.meta.learners import InnerConfig
from metakd.models.teachers import ModelConfig, build_teacher
from metakd.persist import TeacherBundle


def _frame(rows: int = 50, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, 4)), columns=["a", "b", "c", "d"])
    frame["label"] = rng.choice(["0", "1", "2", ""], size=rows)  # "2": scored rows ignore labels
    frame["id"] = [f"row-{i}" for i in range(rows)]
    return frame


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".npz"])
def test_chunks_concatenate_to_the_whole_file(tmp_path: Path, suffix: str) -> None:
    frame = _frame()
    path = tmp_path / f"rows{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".npz":
        np.savez(path, X=frame[["a", "b", "c", "d"]].to_numpy(), y=np.full(len(frame), 7))
    else:
        frame.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    options = ReadOptions(ignore_columns=[] if suffix == ".npz" else ["id"], ignore_labels=True)
    chunks = list(read_row_chunks(path, options, rows=7))
    assert [len(c.X) for c in chunks] == [7] * 7 + [1]
    whole = read_task(path, options)
    np.testing.assert_array_equal(np.concatenate([c.X for c in chunks]), whole.X)
    assert (whole.y == -1).all()  # labels ignored, never validated


def test_errors_name_the_row_in_the_whole_file(tmp_path: Path) -> None:
    frame = _frame().drop(columns=["id"])
    frame.loc[23, "c"] = np.nan
    path = tmp_path / "rows.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"column 'c' .* at row 23"):
        list(read_row_chunks(path, ReadOptions(ignore_labels=True), rows=5))
    frame = _frame().drop(columns=["id"]).astype({"b": object})
    frame.loc[31, "b"] = "oops"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"column 'b' is not numeric \(row 31: 'oops'\)"):
        list(read_row_chunks(path, ReadOptions(ignore_labels=True), rows=5))
    path.write_text("a,b,label\n")
    with pytest.raises(DataError, match="no data rows"):
        list(read_row_chunks(path, rows=5))


def test_streamed_score_equals_whole_score(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = ModelConfig(kind="knn", hidden=[8], embedding_dim=4, neighbours=3, input_skip=True)
    torch.manual_seed(0)
    bundle = TeacherBundle(
        teacher=build_teacher(4, model).eval(),
        model=model,
        inner=InnerConfig(steps=1, lr=0.05),
        algorithm="maml",
        rates=[],
        scaling=ScalingConfig(),
        alignment=AlignmentConfig(),
        info={},
    )
    rng = np.random.default_rng(1)
    support = rng.normal(size=(10, 4)).astype(np.float32)
    detector = FewShotDetector(bundle, config=AdaptConfig(student=False)).fit(support)
    detector.save(tmp_path / "model")
    frame = _frame(rows=40)
    data = tmp_path / "rows.csv"
    frame.to_csv(data, index=False)
    monkeypatch.setattr(cli, "SCORE_CHUNK_ROWS", 6)
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(
        cli.main,
        ["score", "--model", str(tmp_path / "model" / "teacher.pt"), "--data", str(data)]
        + ["--id-column", "id", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    scored = pd.read_csv(out)
    expected = detector.decision_function(frame[["a", "b", "c", "d"]].to_numpy(np.float32))
    assert len(scored) == 40 and list(scored.columns) == ["id", "score", "is_anomaly"]
    assert (scored["id"] == frame["id"]).all()
    # float32 scores of 6-row chunks and of all 40 rows at once go through different matmul
    # blockings: equal up to a few ulps (~1e-7 at these magnitudes), not bitwise.
    np.testing.assert_allclose(scored["score"], expected, rtol=1e-6, atol=1e-6)
    assert (scored["is_anomaly"] == (expected > detector.threshold_)).all()


def test_id_column_rules(tmp_path: Path) -> None:
    path = tmp_path / "rows.npz"
    np.savez(path, X=np.zeros((3, 2)))
    with pytest.raises(DataError, match="no column 'id'"):
        list(read_row_chunks(path, id_column="id"))
    frame = _frame(rows=9)
    frame.loc[4, "id"] = 'a,"quoted" id'  # survives the csv round trip below
    csv_path = tmp_path / "rows.csv"
    frame.to_csv(csv_path, index=False)
    ids = np.concatenate(
        [
            c.ids
            for c in read_row_chunks(
                csv_path, ReadOptions(ignore_labels=True), rows=4, id_column="id"
            )
        ]
    )
    assert list(ids) == list(frame["id"])
