"""Messages about columns name what the user types: the flags of the command that has them
(``metakd score``: ``--ignore-column``, ``--id-column``, ``--label-column``), ``--set`` for
``metakd adapt``, the config key (``read.ignore_columns``) everywhere else, and the config key
beside any flag."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TrainedRun

from metakd.cli import main
from metakd.data.readers import read_task
from metakd.data.readers.options import ColumnFlags, column_flags
from metakd.errors import DataError


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, tiny_teacher: TrainedRun) -> Path:
    """A detector adapted (teacher only) on columns f0, f1."""
    root = tmp_path_factory.mktemp("hints")
    x = np.random.default_rng(0).normal(size=(12, 2))
    (root / "support.csv").write_text("f0,f1,label\n" + "".join(f"{a},{b},0\n" for a, b in x))
    argv = ["adapt", "--teacher", str(tiny_teacher.teacher), "--support", str(root / "support.csv")]
    argv += ["--out", str(root / "model"), "--set", "student=false", "--no-progress"]
    argv += ["--set", "tracking.mode=disabled"]
    adapted = CliRunner().invoke(main, argv)
    assert adapted.exit_code == 0, adapted.output
    return root / "model" / "teacher.pt"


def test_the_default_names_the_config_keys(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,x,0\n2,3,0\n")
    with pytest.raises(DataError) as error:
        read_task(path)
    assert str(error.value) == (
        f"{path}: column 'b' is not numeric (row 0: 'x'); if it is not a feature, list it in "
        "read.ignore_columns; if it holds the labels, set read.label_column to it"
    )


def test_a_command_s_flags_name_its_flags_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,row id,label\n1,x,0\n2,y,0\n")
    flags = ColumnFlags(
        ignore_flag="--ignore-column",
        id_flag="--id-column",
        label_flag="--label-column",
        ignore_key="ignore_columns",
        label_key="label_column",
    )
    with column_flags(flags), pytest.raises(DataError) as error:
        read_task(path)
    assert str(error.value).endswith(
        "if it is not a feature, pass --ignore-column 'row id' (or --id-column 'row id' to copy "
        "it to the output; config key ignore_columns); if it holds the labels, pass "
        "--label-column 'row id' (config key label_column)"
    )
    with column_flags(ColumnFlags(set_flag=True)), pytest.raises(DataError) as error:
        read_task(path)
    assert "list it in read.ignore_columns (--set 'read.ignore_columns=[\"row id\"]')" in str(
        error.value
    )
    with pytest.raises(DataError, match="list it in read.ignore_columns; "):
        read_task(path)  # the block is over: the default again


def test_score_names_its_flags(model: Path, tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    data.write_text("f0,f1,id\n1,2,a\n3,4,b\n")
    result = CliRunner().invoke(main, ["score", "--model", str(model), "--data", str(data)])
    assert result.exit_code == 2
    assert "column 'id' is not numeric (row 0: 'a')" in result.output
    assert "pass --ignore-column id (or --id-column id to copy it to the output" in result.output
    assert "config key ignore_columns" in result.output
    assert "read.ignore_columns" not in result.output, "score has no read section"
    extra = tmp_path / "extra.csv"
    extra.write_text("f0,f1,f2\n1,2,3\n")
    result = CliRunner().invoke(main, ["score", "--model", str(model), "--data", str(extra)])
    assert result.exit_code == 2
    assert "column 'f2' is not one of the model's features" in result.output
    assert "if it is not a feature, pass --ignore-column f2" in result.output


def test_adapt_names_the_set_flag(tiny_teacher: TrainedRun, tmp_path: Path) -> None:
    support = tmp_path / "support.csv"
    support.write_text("f0,f1,machine,label\n1,2,m1,0\n3,4,m1,0\n5,6,m2,0\n")
    argv = ["adapt", "--teacher", str(tiny_teacher.teacher), "--support", str(support)]
    argv += ["--out", str(tmp_path / "out"), "--set", "tracking.mode=disabled"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2
    assert "column 'machine' is not numeric (row 0: 'm1')" in result.output
    assert "list it in read.ignore_columns (--set 'read.ignore_columns=[\"machine\"]')" in (
        result.output
    )
    assert "(--set read.label_column=machine)" in result.output


def test_the_timestamp_warning_names_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("when,a,label\n2024-01-01 10:00,1,0\n2024-01-01 11:00,2,0\n")
    with (
        column_flags(ColumnFlags(ignore_flag="--ignore-column")),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        read_task(path)
    assert "(to silence this, pass --ignore-column when (config key" in str(caught[0].message)
