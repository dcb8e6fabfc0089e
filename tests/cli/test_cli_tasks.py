"""``metakd tasks list`` and ``metakd tasks show``, in-process and as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import REPO

from metakd.cli import main
from metakd.meta.learners import LEARNERS
from metakd.meta.optim import INNER_OPTIMIZERS
from metakd.models.teachers import ModelConfig, teacher_kinds

SHARED_DATA = REPO.parent / "shared" / "data"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def table_rows(stdout: str) -> dict[str, list[str]]:
    """Task name -> the other cells of each body row of a rich table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells and cells[0] not in ("", "task"):
            rows[cells[0]] = cells[1:]
    return rows


def test_tasks_list_shows_builtins_and_manifests(tmp_path, monkeypatch):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mine.yaml").write_text("description: my bench\nfiles: [x.csv]\n")
    monkeypatch.chdir(tmp_path)
    result = invoke("tasks", "list")
    assert result.exit_code == 0, result.output
    for expected in ("digits", "synthetic", "built-in", "mine", "manifest", "my bench"):
        assert expected in result.stdout


def test_tasks_list_and_readme_name_every_teacher_kind_with_its_use() -> None:
    kinds = teacher_kinds()
    # The registry holds the built-ins (a contributor's kind may add to them), default first.
    builtins = {"profile", "svdd", "knn", "autoencoder", "mlp", "gaussian", "vae", "ganomaly"}
    assert builtins <= set(kinds) and next(iter(kinds)) == ModelConfig().kind == "profile"
    result = CliRunner().invoke(main, ["tasks", "list"], terminal_width=400)
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    readme = (REPO / "README.md").read_text()
    for kind, use_when in kinds.items():
        assert use_when, kind
        assert rows[f"{kind} (default)" if kind == "profile" else kind] == [use_when]
        assert f"| `{kind}`" in readme, kind


def test_tasks_list_and_readme_name_every_meta_learner_and_inner_optimizer() -> None:
    builtins = {"maml", "fomaml", "anil", "metasgd", "reptile", "imaml", "pooled"}
    assert builtins <= set(LEARNERS)
    result = CliRunner().invoke(main, ["tasks", "list"], terminal_width=400)
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    readme = (REPO / "README.md").read_text()
    for name in LEARNERS:
        assert rows[f"{name} (default)" if name == "maml" else name][0], name
        assert f"| `{name}`" in readme, name
    for optimizer in INNER_OPTIMIZERS:
        assert optimizer in result.stdout.split("inner.optimizer")[-1], optimizer
        assert f"`{optimizer}`" in readme, optimizer
    # Docstrings feed the table; their reStructuredText markup does not reach the terminal.
    assert "``" not in result.stdout and ":class:" not in result.stdout
    assert "inner step θ - α ∘ ∇L has" in rows["metasgd"][0]


def test_tasks_show_directory(npz_dir):
    result = invoke("tasks", "show", str(npz_dir), "--query-size", "12")
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    assert list(rows) == ["1_alpha", "2_beta", "3_delta", "10_gamma", "20_eps"]
    assert rows["1_alpha"][1:] == ["60", "4", "6 (10.0%)", "yes"]
    assert rows["20_eps"][1:] == ["60", "4", "10 (16.7%)", "yes"]
    assert sorted(row[0] for row in rows.values()) == ["train", "train", "train", "train", "val"]
    assert "5 tasks (train 4, val 1, test 0)" in result.stdout


def test_tasks_show_usable_depends_on_shots(npz_dir):
    usable = invoke("tasks", "show", str(npz_dir), "--query-size", "12")
    assert "usable for episodes with shots=10, anomaly_shots=0, query_size=12: 5" in usable.stdout
    fewer = invoke("tasks", "show", str(npz_dir), "--query-size", "12", "--anomaly-shots", "5")
    assert "query_size=12: 3" in fewer.stdout
    assert "not usable: 1_alpha: 6 anomalous rows, needs 8 (5 support + 3 query)" in fewer.stdout


def test_tasks_show_defaults_to_the_meta_train_episode_shape(npz_dir):
    from metakd.config import TrainConfig

    shape = TrainConfig().episode
    result = invoke("tasks", "show", str(npz_dir))
    assert (
        f"shots={shape.shots}, anomaly_shots={shape.anomaly_shots}, query_size={shape.query_size}:"
        in result.stdout
    )
    assert (
        f"(query_anomaly_fraction={shape.query_anomaly_fraction}, pool_size={shape.pool_size})"
        in result.stdout
    )


def test_tasks_show_builtin_and_feature_count_note(tmp_path):
    digits = invoke("tasks", "show", "digits")
    assert digits.exit_code == 0
    assert "digit-7" in digits.stdout and "test" in digits.stdout
    for name, d in [("a", 3), ("b", 5), ("c", 3)]:
        np.savez(tmp_path / f"{name}.npz", X=np.ones((4, d)), y=np.array([0, 0, 0, 1]))
    # A directory is aligned to the universal width: mixed widths need no note.
    mixed = invoke("tasks", "show", str(tmp_path))
    assert mixed.exit_code == 0 and "note: " not in mixed.stdout


def test_user_error_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,label\n1,0\n2,7\n")
    result = CliRunner().invoke(main, ["tasks", "show", str(bad)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {bad}: label column 'label' has value '7' at row 1; labels must be 0 (normal), "
        "1 (anomaly) or -1/empty (unlabelled): map it with read.label_map"
    ]
    assert result.stdout == ""


def test_warnings_are_printed_as_one_line(npz_dir):
    result = invoke("tasks", "show", str(npz_dir / "1_alpha.npz"))
    assert result.exit_code == 0
    assert result.stderr.startswith("warning: ") and "only 1 task(s)" in result.stderr


def test_python_m_metakd_bad_file_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,when\n1,noon\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "metakd", "tasks", "show", str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {bad}: column 'when' is not numeric")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data (development data)")
def test_shared_data_collections(monkeypatch):
    monkeypatch.chdir(REPO)
    classical = invoke("tasks", "show", str(SHARED_DATA / "adbench-classical"))
    assert classical.exit_code == 0
    rows = table_rows(classical.stdout)
    assert len(rows) == 25
    # Usable by meta-train's default episodes (8 query anomalies), not by a balanced query of 64.
    assert rows["14_glass"][1:] == ["214", "7", "9 (4.2%)", "yes"]
    skab = invoke("tasks", "show", "skab")
    assert skab.exit_code == 0, skab.output
    rows = table_rows(skab.stdout)
    assert len(rows) == 30 and {"valve1/15", "other/14"} <= set(rows)
    assert all(row[2] == "40" for row in rows.values())  # 8 sensors x 5 window statistics


def test_tasks_show_reads_a_meta_train_config(tmp_path):
    """A meta-train config shows its collection with its own split and episode shape."""
    rng = np.random.default_rng(0)
    for i, anomalies in enumerate([10, 3, 10, 10]):
        y = np.r_[np.zeros(60), np.ones(anomalies)].astype(int)
        np.savez(tmp_path / f"t{i}.npz", X=rng.normal(size=(len(y), 4)), y=y)
    config = tmp_path / "train.yaml"
    config.write_text(
        f"tasks: {tmp_path}\nsplit: {{train_tasks: [t1, t3], val_tasks: [t0], test_tasks: [t2]}}\n"
        "episode: {shots: 5, query_size: 16, query_anomaly_fraction: 0.25, pool_size: 0}\n"
    )
    result = invoke("tasks", "show", str(config))
    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    assert rows["t0"][0] == "val" and rows["t2"][0] == "test" and rows["t3"][0] == "train"
    # 16 x 0.25 = 4 query anomalies: t1 (3 anomalies) cannot serve the config's episodes.
    assert rows["t1"][-1] == "no" and rows["t3"][-1] == "yes"
    assert "shots=5" in result.output and "query_size=16" in result.output
