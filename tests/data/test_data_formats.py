"""The file-format registry: built-ins registered, duplicates refused, a new format is one class,
and every name the rest of the code imports from the data modules still resolves."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import metakd.data
from metakd.data.collection import SplitConfig, load_collection
from metakd.data.readers import (
    FORMATS,
    SUPPORTED_SUFFIXES,
    FrameFormat,
    ReadOptions,
    Table,
    TaskFormat,
    format_for,
    read_row_chunks,
    read_task,
    register_format,
    supported_suffixes,
)
from metakd.errors import DataError

BUILTIN_SUFFIXES = {".npz", ".csv", ".tsv", ".txt", ".parquet"}
DATA_DIR = Path(metakd.data.__file__).parent


class _Npy(TaskFormat):
    """A plain ``.npy`` matrix: features only, unlabelled, columns unnamed."""

    def read(self, path: Path, where: str, options: ReadOptions) -> Table:
        X = np.load(path, allow_pickle=False)
        return Table(X, None, [f"x{j}" for j in range(X.shape[1])], named=False)


class _JsonLines(FrameFormat):
    """One JSON object per line (a table format: named columns, streamed in chunks)."""

    def frame(self, path: Path, where: str, options: ReadOptions) -> pd.DataFrame:
        return pd.read_json(path, lines=True, dtype={options.label_column: str})

    def frames(
        self, path: Path, where: str, options: ReadOptions, rows: int | None
    ) -> Iterator[pd.DataFrame]:
        with pd.read_json(path, lines=True, chunksize=rows or 1000) as reader:
            yield from reader


@pytest.fixture
def registry() -> Iterator[dict[str, TaskFormat]]:
    """The live registry, restored after the test (formats registered by it are removed)."""
    saved = dict(FORMATS)
    yield FORMATS
    FORMATS.clear()
    FORMATS.update(saved)


def test_every_builtin_suffix_is_registered() -> None:
    assert BUILTIN_SUFFIXES <= set(supported_suffixes())
    assert BUILTIN_SUFFIXES <= set(SUPPORTED_SUFFIXES)
    assert isinstance(SUPPORTED_SUFFIXES, tuple)
    assert all(s.startswith(".") and s == s.lower() for s in SUPPORTED_SUFFIXES)
    assert isinstance(format_for(".CSV", where="f"), FrameFormat)  # any case, as files spell it


def test_registry_refuses_a_duplicate_suffix(registry: dict[str, TaskFormat]) -> None:
    before = dict(registry)
    with pytest.raises(ValueError, match=r"'\.csv' is already registered"):

        @register_format(".csv2", ".csv")
        class Other(_Npy):
            pass

    assert registry == before  # nothing half-registered (not even .csv2)


@pytest.mark.parametrize("suffixes", [(), ("csv",), (".CSV",), (".",), (".a", ".a")])
def test_registry_refuses_malformed_suffixes(suffixes: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        register_format(*suffixes)


def test_unknown_suffix_names_the_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unsupported file type '\.XLSX' \(supported: \.npz, "):
        format_for(".XLSX", where="t.XLSX")
    path = tmp_path / "t.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"t\.xlsx: unsupported file type '\.xlsx'"):
        next(read_row_chunks(path))


def test_a_new_array_format_is_one_decorated_class(
    registry: dict[str, TaskFormat], tmp_path: Path
) -> None:
    register_format(".npy")(_Npy)
    X = np.arange(12, dtype=np.float64).reshape(6, 2)
    np.save(tmp_path / "m.npy", X)
    task = read_task(tmp_path / "m.npy")
    np.testing.assert_array_equal(task.X, X.astype(np.float32))
    assert (task.y == -1).all() and task.feature_names == ("x0", "x1") and not task.named
    chunks = list(read_row_chunks(tmp_path / "m.npy", rows=4))  # read whole, then sliced
    assert [len(c.X) for c in chunks] == [4, 2]
    with pytest.raises(DataError, match="no column 'id' to carry through"):
        next(read_row_chunks(tmp_path / "m.npy", id_column="id"))
    with pytest.raises(DataError, match="no label column 'label'"):
        read_task(tmp_path / "m.npy", ReadOptions(require_labels=True))
    # Folders pick the new suffix up (a second file so the collection has two tasks).
    np.save(tmp_path / "n.npy", X + 1)
    assert [t.name for t in load_collection(tmp_path, split=SplitConfig(val=0)).tasks] == ["m", "n"]


def test_a_new_table_format_gets_the_shared_rules_and_streaming(
    registry: dict[str, TaskFormat], tmp_path: Path
) -> None:
    register_format(".jsonl")(_JsonLines)
    frame = pd.DataFrame({"id": list("pqrst"), "a": [1.0, 2, 3, 4, 5], "label": [0, 1, 0, 0, 1]})
    path = tmp_path / "t.jsonl"
    frame.to_json(path, orient="records", lines=True)
    task = read_task(path, ReadOptions(ignore_columns=["id"]))
    assert task.feature_names == ("a",) and task.y.tolist() == [0, 1, 0, 0, 1]
    chunks = list(read_row_chunks(path, rows=2, id_column="id"))
    assert [c.ids.tolist() for c in chunks if c.ids is not None] == [["p", "q"], ["r", "s"], ["t"]]
    with pytest.raises(DataError, match=r"column 'id' is not numeric \(row 0: 'p'\)"):
        read_task(path)


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (
            "metakd.data.readers",
            "CHUNK_VALUES SUPPORTED_SUFFIXES ReadOptions RowChunk match_columns read_row_chunks "
            "read_task",
        ),
        (
            "metakd.data.collection",
            "CollectionSpec SplitConfig TaskCollection list_collections load_collection "
            "natural_key read_manifest split_tasks task_names universal_alignment",
        ),
        (
            "metakd.data",
            "SUPPORTED_SUFFIXES CollectionSpec ReadOptions SplitConfig TaskCollection "
            "list_collections load_collection read_manifest read_task",
        ),
    ],
)
def test_names_other_modules_import_still_resolve(module: str, names: str) -> None:
    imported = importlib.import_module(module)
    missing = [name for name in names.split() if not hasattr(imported, name)]
    assert not missing


def test_no_data_module_is_over_450_lines() -> None:
    long = {
        str(path.relative_to(DATA_DIR)): n
        for path in DATA_DIR.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 450
    }
    assert not long
