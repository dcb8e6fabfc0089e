"""Collections: directories, manifests (globs, names, read/window options), splits, lookup."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from metakd.data.collection import (
    SplitConfig,
    TaskCollection,
    list_collections,
    load_collection,
    natural_key,
    split_tasks,
    task_names,
)
from metakd.data.transforms import AlignmentConfig
from metakd.errors import ConfigError, DataError


def write_manifest(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def series_rows(n: int, anomalous_from: int) -> list[list[object]]:
    return [[f"t{i}", float(i), float(i % 3), int(i >= anomalous_from), 0] for i in range(n)]


SERIES_HEADER = ["datetime", "p", "q", "anomaly", "changepoint"]


def assert_partition(collection: TaskCollection) -> None:
    assigned = sorted(n for names in collection.splits.values() for n in names)
    assert assigned == sorted(t.name for t in collection.tasks)
    assert collection.splits["train"]


# ------------------------------------------------------------------------------- directories


def test_directory_of_npz_files(npz_dir):
    collection = load_collection(npz_dir)
    names = [t.name for t in collection.tasks]
    assert names == ["1_alpha", "2_beta", "3_delta", "10_gamma", "20_eps"]  # README.md skipped
    assert collection.name == "npz_tasks"
    assert collection.feature_counts == dict.fromkeys(names, 4)
    assert collection.task("2_beta").n_anomalies == 7
    # A folder's default split: every task but the validation one is meta-trained on.
    assert {k: len(v) for k, v in collection.splits.items()} == {"train": 4, "val": 1, "test": 0}
    assert_partition(collection)
    collection.check_alignment()


def test_split_is_deterministic_by_task_and_seeded(npz_dir):
    first = load_collection(npz_dir).splits
    assert load_collection(npz_dir).splits == first
    splits = {str(load_collection(npz_dir, split=SplitConfig(seed=s)).splits) for s in range(6)}
    assert len(splits) > 1


def test_split_tasks_fractions():
    names = [f"t{i}" for i in range(10)]
    splits = split_tasks(names, SplitConfig(seed=3, val=0.2, test=0.3), where="x")
    assert [len(splits[k]) for k in ("train", "val", "test")] == [5, 2, 3]
    assert splits["train"] == sorted(splits["train"], key=natural_key)


def test_fewer_than_three_tasks_all_train_with_warning():
    with pytest.warns(UserWarning, match="only 2 task"):
        splits = split_tasks(["a", "b"], SplitConfig(), where="x")
    assert splits == {"train": ["a", "b"], "val": [], "test": []}


def test_single_file(npz_dir):
    with pytest.warns(UserWarning, match="only 1 task"):
        collection = load_collection(npz_dir / "2_beta.npz")
    assert [t.name for t in collection.tasks] == ["2_beta"]
    assert collection.splits["train"] == ["2_beta"]


def test_directory_without_task_files(tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match="no task files"):
        load_collection(tmp_path / "sub")


def test_unknown_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="'nothing' is not a built-in collection"):
        load_collection("nothing")


# --------------------------------------------------------------------------------- manifests


def test_manifest_globs_subfolders_windows_and_read_options(tmp_path, write_table):
    for sub in ("valve1", "other"):
        for i in (1, 2, 10):
            write_table(f"data/{sub}/{i}.csv", SERIES_HEADER, series_rows(40, 30), sep=";")
    manifest = write_manifest(
        tmp_path / "tasks",
        "bench.yaml",
        """
        description: test bench
        files: ["../data/valve1/*.csv", "../data/**/*.csv"]
        read: {label_column: anomaly, ignore_columns: [datetime, changepoint]}
        window: {size: 8, stride: 8}
        split: {seed: 1, val: 0.2, test: 0.2}
        """,
    )
    collection = load_collection(manifest)
    names = [t.name for t in collection.tasks]
    # Same stems in two folders: named by path relative to the common root; a file matched by
    # both globs is one task.
    assert names == ["other/1", "other/2", "other/10", "valve1/1", "valve1/2", "valve1/10"]
    assert collection.name == "bench"
    task = collection.task("valve1/10")
    assert task.n_rows == 5 and task.n_features == 10  # 40 rows / 8, 2 columns x 5 stats
    np.testing.assert_array_equal(task.y, [0, 0, 0, 1, 1])
    assert task.feature_names[:2] == ("p.mean", "q.mean")
    assert_partition(collection)
    assert all(len(v) >= 1 for v in collection.splits.values())


def test_manifest_explicit_split_lists(tmp_path, write_table):
    for sub, i in [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 1)]:
        write_table(f"d/{sub}/{i}.csv", ["x", "label"], [[1, 0], [2, 1]])
    manifest = write_manifest(
        tmp_path,
        "m.yaml",
        """
        files: ["d/*/*.csv"]
        split: {val_tasks: ["b/1"], test_tasks: ["c/*", "b/2"]}
        """,
    )
    splits = load_collection(manifest).splits
    assert splits == {"train": ["a/1", "a/2"], "val": ["b/1"], "test": ["b/2", "c/1"]}

    override = SplitConfig(train_tasks=["a/*"], val_tasks=["b/*"])
    with pytest.raises(DataError, match="tasks in no split list: c/1"):
        load_collection(manifest, split=override)
    with pytest.raises(DataError, match=r"split.test_tasks: 'z\*' matches no task"):
        load_collection(manifest, split=SplitConfig(test_tasks=["z*"]))
    with pytest.raises(DataError, match="task 'b/1' is listed in both"):
        load_collection(manifest, split=SplitConfig(val_tasks=["b/1"], test_tasks=["b/*"]))


def test_manifest_single_folder_names_by_stem(tmp_path, npz_dir):
    manifest = write_manifest(tmp_path / "m", "m.yaml", f"files: ['{npz_dir}/*_*.npz']\n")
    assert [t.name for t in load_collection(manifest).tasks][:2] == ["1_alpha", "2_beta"]


def test_manifest_directory_entry(tmp_path, npz_dir):
    manifest = write_manifest(tmp_path / "m", "m.yaml", "files: ['../npz_tasks']\n")
    assert len(load_collection(manifest).tasks) == 5


def test_manifest_errors_name_file_and_key(tmp_path):
    bad_key = write_manifest(tmp_path, "bad.yaml", "files: [a.csv]\nread: {lable_column: x}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'read.lable_column'"):
        load_collection(bad_key)
    empty = write_manifest(tmp_path, "empty.yaml", "name: x\n")
    with pytest.raises(ConfigError, match=r"empty\.yaml: 'files' lists no task files"):
        load_collection(empty)
    no_match = write_manifest(tmp_path, "nomatch.yaml", "files: ['data/*.csv']\n")
    with pytest.raises(DataError, match=r"nomatch\.yaml: files: 'data/\*\.csv' matches no file"):
        load_collection(no_match)
    missing = write_manifest(tmp_path, "missing.yaml", "files: ['x.csv']\n")
    with pytest.raises(DataError, match=r"files: 'x\.csv' not found"):
        load_collection(missing)
    bad_window = write_manifest(
        tmp_path, "win.yaml", "files: [a.csv]\nwindow: {size: 0, stride: 1}\n"
    )
    with pytest.raises(ConfigError, match="window.size must be a positive integer"):
        load_collection(bad_window)


def test_bad_file_in_manifest_names_the_file(tmp_path, write_table):
    write_table("d/ok.csv", ["x", "label"], [[1, 0]])
    write_table("d/bad.csv", ["x", "label"], [[1, 3]])
    manifest = write_manifest(tmp_path, "m.yaml", "files: ['d/*.csv']\n")
    with pytest.raises(DataError, match=r"d/bad\.csv: label column 'label' has value '3'"):
        load_collection(manifest)


def test_name_collision_same_path_different_suffix(tmp_path, write_table, write_npz):
    write_table("d/1.csv", ["x"], [[1]])
    write_npz("d/1.npz", np.ones((1, 1)))
    with pytest.raises(DataError, match="task name '1' is also the name of"):
        task_names([tmp_path / "d/1.csv", tmp_path / "d/1.npz"])


def test_manifest_by_name_from_tasks_folder_and_listing(tmp_path, monkeypatch, npz_dir):
    write_manifest(
        tmp_path / "tasks", "mine.yaml", f"description: my tasks\nfiles: ['{npz_dir}']\n"
    )
    write_manifest(tmp_path / "tasks", "broken.yaml", "files: [\n")
    monkeypatch.chdir(tmp_path)
    collection = load_collection("mine")
    assert collection.name == "mine" and len(collection.tasks) == 5
    listed = dict(list_collections(tmp_path / "tasks"))
    assert listed["mine"] == "my tasks"
    assert listed["broken"].startswith("invalid manifest")
    assert {"digits", "synthetic"} <= set(listed)


# --------------------------------------------------------------------------------- alignment


def test_check_alignment_lists_differing_feature_counts(tmp_path, write_npz):
    write_npz("d/14_glass.npz", np.ones((3, 7)), np.zeros(3, dtype=int))
    write_npz("d/17_ads.npz", np.ones((3, 1555)), np.zeros(3, dtype=int))
    write_npz("d/2_thyroid.npz", np.ones((3, 7)), np.zeros(3, dtype=int))
    # A directory is aligned to the universal width by default: any widths mix.
    load_collection(tmp_path / "d").check_alignment()
    collection = load_collection(tmp_path / "d", alignment=AlignmentConfig(kind="none"))
    message = r"tasks differ in feature count \(7: 2_thyroid, 14_glass; 1555: 17_ads\); set alignment: project or pad"
    with pytest.raises(DataError, match=message):
        collection.check_alignment()
    load_collection(tmp_path / "d", alignment=AlignmentConfig(kind="project")).check_alignment()
    padded = load_collection(tmp_path / "d", alignment=AlignmentConfig(kind="pad", width=64))
    with pytest.raises(
        DataError, match=r"more features than alignment.width = 64 \(1555: 17_ads\)"
    ):
        padded.check_alignment()


def test_collection_validates_split_partition(make_task):
    tasks = [make_task("a"), make_task("b")]
    with pytest.raises(DataError, match="exactly one split"):
        TaskCollection("c", tasks, {"train": ["a"], "val": [], "test": []}, AlignmentConfig(), "s")
    with pytest.raises(DataError, match="train split is empty"):
        TaskCollection(
            "c", tasks, {"train": [], "val": ["a"], "test": ["b"]}, AlignmentConfig(), "s"
        )
    with pytest.raises(DataError, match="duplicate task names: a"):
        TaskCollection(
            "c",
            [tasks[0], tasks[0]],
            {"train": ["a", "a"], "val": [], "test": []},
            AlignmentConfig(),
            "s",
        )


def test_split_config_validation():
    with pytest.raises(ConfigError, match="split.val"):
        SplitConfig(val=1.5)
    with pytest.raises(ConfigError, match="below 1"):
        SplitConfig(val=0.5, test=0.5)
