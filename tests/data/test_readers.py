"""Reading task files: formats, column rules, labels, and every bad-input error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metakd.data.readers import ReadOptions, read_task
from metakd.data.task import Task
from metakd.errors import ConfigError, DataError

HEADER = ["a", "b", "label"]
ROWS = [[1.5, 2, 0], [2.5, 3, 1], [3.5, 4, 0], [4.5, 5, 0]]
X_EXPECTED = np.array([[1.5, 2], [2.5, 3], [3.5, 4], [4.5, 5]], dtype=np.float32)
Y_EXPECTED = np.array([0, 1, 0, 0], dtype=np.int64)


def assert_expected(task: Task) -> None:
    assert task.X.dtype == np.float32 and task.y.dtype == np.int64
    np.testing.assert_array_equal(task.X, X_EXPECTED)
    np.testing.assert_array_equal(task.y, Y_EXPECTED)
    assert task.feature_names == ("a", "b")


# ----------------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("name", "sep"),
    [
        ("t.csv", ","),
        ("t.csv", ";"),
        ("t.csv", "\t"),
        ("t.tsv", "\t"),
        ("t.txt", ";"),
        ("t.txt", "|"),
    ],
)
def test_delimited_text_with_any_delimiter(write_table, name, sep):
    task = read_task(write_table(name, HEADER, ROWS, sep=sep))
    assert_expected(task)
    assert task.name == "t"


def test_quoted_delimiter_inside_a_field_does_not_fool_detection(tmp_path):
    path = tmp_path / "quoted.csv"
    path.write_text('a;b;label\n1;"x,y";0\n2;"u,v";1\n')
    with pytest.raises(DataError, match="column 'b' is not numeric"):
        read_task(path)


def test_skab_style_file(tmp_path):
    path = tmp_path / "1.csv"
    path.write_text(
        "datetime;Pressure;Temperature;anomaly;changepoint\r\n"
        "2020-03-09 10:34:33;0.05;75.5;0.0;0.0\r\n"
        "2020-03-09 10:34:34;0.06;75.6;1.0;1.0\r\n"
    )
    options = ReadOptions(label_column="anomaly", ignore_columns=["datetime", "changepoint"])
    task = read_task(path, options)
    assert task.feature_names == ("Pressure", "Temperature")
    np.testing.assert_array_equal(task.y, [0, 1])
    np.testing.assert_allclose(task.X, [[0.05, 75.5], [0.06, 75.6]], rtol=1e-6)


def test_npz_with_labels(write_npz):
    X = np.arange(12, dtype=np.float64).reshape(4, 3)
    task = read_task(write_npz("glass.npz", X, np.array([0, 1, 0, 1], dtype=np.int32)))
    assert task.name == "glass"
    np.testing.assert_array_equal(task.X, X.astype(np.float32))
    np.testing.assert_array_equal(task.y, [0, 1, 0, 1])
    assert task.feature_names == ("x0", "x1", "x2")


def test_npz_integer_features_and_feature_names(write_npz):
    X = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    task = read_task(write_npz("t.npz", X, np.array([0, 0]), np.array(["p", "q"])))
    assert task.X.dtype == np.float32
    assert task.feature_names == ("p", "q")


def test_npz_without_y_is_unlabelled(write_npz):
    task = read_task(write_npz("t.npz", np.ones((3, 2))))
    np.testing.assert_array_equal(task.y, [-1, -1, -1])
    assert task.n_unlabelled == 3


def test_npz_float_labels_with_nan_are_unlabelled(write_npz):
    task = read_task(write_npz("t.npz", np.ones((3, 2)), np.array([0.0, np.nan, 1.0])))
    np.testing.assert_array_equal(task.y, [0, -1, 1])


def test_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    frame = pd.DataFrame(
        {"a": X_EXPECTED[:, 0], "b": X_EXPECTED[:, 1].astype(int), "label": Y_EXPECTED}
    )
    frame.to_parquet(path)
    assert_expected(read_task(path))


def test_parquet_string_column_is_rejected(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"a": [1.0, 2.0], "id": ["u", "v"]}).to_parquet(path)
    with pytest.raises(DataError, match=r"t\.parquet: column 'id' is not numeric \(row 0: 'u'\)"):
        read_task(path)


def test_explicit_name(write_table):
    assert read_task(write_table("t.csv", HEADER, ROWS), name="custom").name == "custom"


# ------------------------------------------------------------------------- columns and labels


def test_ignored_and_label_columns(write_table):
    path = write_table(
        "t.csv", ["time", "a", "target", "b", "note"], [["t0", 1, 1, 2, "x"], ["t1", 3, 0, 4, "y"]]
    )
    options = ReadOptions(label_column="target", ignore_columns=["time", "note"])
    task = read_task(path, options)
    assert task.feature_names == ("a", "b")
    np.testing.assert_array_equal(task.X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(task.y, [1, 0])


def test_missing_label_column_means_unlabelled(write_table):
    task = read_task(write_table("t.csv", ["a", "b"], [[1, 2], [3, 4]]))
    np.testing.assert_array_equal(task.y, [-1, -1])
    assert task.feature_names == ("a", "b")


def test_require_labels(write_table):
    path = write_table("t.csv", ["a", "b"], [[1, 2]])
    with pytest.raises(DataError, match=r"t\.csv: no label column 'label'"):
        read_task(path, ReadOptions(require_labels=True))


def test_require_labels_npz(write_npz):
    with pytest.raises(DataError, match="no array 'y'"):
        read_task(write_npz("t.npz", np.ones((2, 2))), ReadOptions(require_labels=True))


def test_empty_and_minus_one_labels_are_unlabelled(write_table):
    path = write_table("t.csv", ["a", "label"], [[1, ""], [2, -1], [3, "1.0"], [4, "0.0"]])
    np.testing.assert_array_equal(read_task(path).y, [-1, -1, 1, 0])


def test_label_map_text_labels(write_table):
    path = write_table("t.csv", ["a", "label"], [[1, "normal"], [2, "attack"], [3, ""]])
    task = read_task(path, ReadOptions(label_map={"normal": 0, "attack": 1}))
    np.testing.assert_array_equal(task.y, [0, 1, -1])


def test_label_map_numeric_keys_match_numerically(write_table, write_npz):
    path = write_table("t.csv", ["a", "label"], [[1, "2.0"], [2, 0], [3, 1]])
    options = ReadOptions(label_map={"2": 1, "1": -1})
    np.testing.assert_array_equal(read_task(path, options).y, [1, 0, -1])
    npz = write_npz("t.npz", np.ones((3, 1)), np.array([2, 0, 1]))
    np.testing.assert_array_equal(read_task(npz, options).y, [1, 0, -1])


def test_label_outside_zero_one_names_value(write_table):
    path = write_table("t.csv", ["a", "label"], [[1, 0], [2, 2], [3, 1]])
    with pytest.raises(DataError, match=r"t\.csv: label column 'label' has value '2' at row 1"):
        read_task(path)


def test_label_not_covered_by_label_map(write_table):
    path = write_table("t.csv", ["a", "label"], [[1, "normal"], [2, "weird"]])
    with pytest.raises(DataError, match="value 'weird' at row 1.*add it to read.label_map"):
        read_task(path, ReadOptions(label_map={"normal": 0}))


def test_npz_label_outside_zero_one(write_npz):
    with pytest.raises(DataError, match=r"t\.npz: array 'y' has value 7 at row 2"):
        read_task(write_npz("t.npz", np.ones((3, 1)), np.array([0, 1, 7])))


# --------------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_task(tmp_path / "nope.csv")


def test_unknown_extension(tmp_path):
    path = tmp_path / "t.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"t\.xlsx: unsupported file type '\.xlsx'"):
        read_task(path)


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=r"t\.csv: file is empty"):
        read_task(path)


def test_header_only(write_table):
    with pytest.raises(DataError, match=r"t\.csv: no data rows"):
        read_task(write_table("t.csv", HEADER, []))


def test_no_feature_columns(write_table):
    path = write_table("t.csv", ["id", "label"], [["a", 0]])
    with pytest.raises(DataError, match=r"t\.csv: no feature columns"):
        read_task(path, ReadOptions(ignore_columns=["id"]))


def test_non_numeric_column_named(write_table):
    path = write_table("t.csv", ["a", "when", "label"], [[1, 5, 0], [2, "noon", 1]])
    with pytest.raises(DataError, match=r"t\.csv: column 'when' is not numeric \(row 1: 'noon'\)"):
        read_task(path)


def test_ignored_column_must_exist(write_table):
    path = write_table("t.csv", HEADER, ROWS)
    with pytest.raises(DataError, match="ignored column 'tim' is not in the file"):
        read_task(path, ReadOptions(ignore_columns=["tim"]))


def test_duplicate_and_unnamed_columns(write_table):
    with pytest.raises(DataError, match="duplicate column name 'a'"):
        read_task(write_table("dup.csv", ["a", "a"], [[1, 2]]))
    with pytest.raises(DataError, match="column 1 has no name"):
        read_task(write_table("idx.csv", ["", "a"], [[0, 2]]))


def test_ragged_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3,4,5\n")
    with pytest.raises(DataError, match=r"t\.csv: cannot parse"):
        read_task(path)


@pytest.mark.parametrize(("cell", "what"), [("", "missing/NaN"), ("inf", "value inf")])
def test_nonfinite_error_names_column_and_row(write_table, cell, what):
    path = write_table("t.csv", ["a", "b", "label"], [[1, 2, 0], [3, cell, 0], [5, cell, 1]])
    with pytest.raises(
        DataError, match=rf"t\.csv: column 'b' has 2 non-finite .*first {what}.* row 1"
    ):
        read_task(path)


def test_nonfinite_npz(write_npz):
    X = np.ones((3, 2))
    X[2, 1] = np.nan
    with pytest.raises(DataError, match="column 'x1' .* row 2"):
        read_task(write_npz("t.npz", X))


def test_value_overflowing_float32(write_table):
    with pytest.raises(DataError, match="overflows float32"):
        read_task(write_table("t.csv", ["a"], [[1.0], [1e300]]))


def test_nonfinite_drop_warns_with_count(write_table):
    path = write_table(
        "t.csv", ["a", "b", "label"], [[1, 2, 0], [3, "", 1], ["nan", 6, 0], [7, 8, 1]]
    )
    with pytest.warns(UserWarning, match=r"t\.csv: dropped 2 of 4 rows"):
        task = read_task(path, ReadOptions(nonfinite="drop"))
    np.testing.assert_array_equal(task.X, [[1, 2], [7, 8]])
    np.testing.assert_array_equal(task.y, [0, 1])


def test_nonfinite_drop_of_every_row_is_an_error(write_table):
    path = write_table("t.csv", ["a", "b"], [[1, ""], ["", 2]])
    with pytest.raises(DataError, match="all 2 rows have non-finite"):
        read_task(path, ReadOptions(nonfinite="drop"))


def test_npz_problems(tmp_path, write_npz):
    np.savez(tmp_path / "nox.npz", data=np.ones((2, 2)))
    with pytest.raises(DataError, match=r"nox\.npz: no array 'X' in the archive \(arrays: data\)"):
        read_task(tmp_path / "nox.npz")
    with pytest.raises(DataError, match="must be 2-D"):
        read_task(write_npz("flat.npz", np.ones(3)))
    with pytest.raises(DataError, match=r"array 'y' must have shape \(3,\)"):
        read_task(write_npz("short.npz", np.ones((3, 2)), np.zeros(2)))
    with pytest.raises(DataError, match="no rows"):
        read_task(write_npz("empty.npz", np.ones((0, 2))))
    (tmp_path / "broken.npz").write_bytes(b"not a zip archive")
    with pytest.raises(DataError, match=r"broken\.npz: cannot read \.npz"):
        read_task(tmp_path / "broken.npz")


def test_read_options_validation():
    with pytest.raises(ConfigError, match="contains the label column"):
        ReadOptions(ignore_columns=["label"])
    with pytest.raises(ConfigError, match=r"read.label_map\['x'\] must be 0"):
        ReadOptions(label_map={"x": 2})


# ------------------------------------------------------------------------------------- Task


def test_task_properties_subset_and_immutability(make_task):
    task = make_task(normals=6, anomalies=3, unlabelled=2, features=4)
    assert (task.n_rows, task.n_features) == (11, 4)
    assert (task.n_normals, task.n_anomalies, task.n_unlabelled) == (6, 3, 2)
    sub = task.subset(np.flatnonzero(task.y == 1), name="anomalies")
    assert sub.name == "anomalies" and sub.n_rows == 3 and sub.n_anomalies == 3
    assert task.subset(task.y == 0).n_rows == 6
    with pytest.raises(ValueError):
        task.X[0, 0] = 1.0


def test_task_validation(make_task):
    good = make_task()
    with pytest.raises(DataError, match="float32"):
        Task("t", good.X.astype(np.float64), good.y, good.feature_names, "s")
    with pytest.raises(DataError, match="label 5 at row 0"):
        Task("t", good.X[:1].copy(), np.array([5]), good.feature_names, "s")
    with pytest.raises(DataError, match="2 feature names for 3"):
        Task("t", good.X, good.y, ("a", "b"), "s")


def test_task_does_not_freeze_the_callers_array():
    X = np.zeros((2, 1), dtype=np.float32)
    task = Task("t", X, np.array([0, 1]), ("a",), "s")
    X[0, 0] = 1.0  # the caller's array stays writable; the task sees a view of it
    assert X.flags.writeable and not task.X.flags.writeable
