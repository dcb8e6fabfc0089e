"""Never touch a file metakd did not write, nor an input of the running command: one table.

Each case runs a command whose ``--out`` is, holds or resolves to one of its inputs, or a folder
that only looks like a run folder, or a ``--support-dir`` whose file names would put a domain's
model folder outside the run folder. Each is exit 2 with one ``error:`` line naming the fault,
no traceback, and every file under the workspace (the inputs, the teacher's run folder, the
user's files beside ``--out``) byte for byte as it was, with no file added.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TrainedRun, file_hashes, sets, write_csv

from metakd import __version__
from metakd.cli import main
from metakd.errors import MetakdError
from metakd.rundir import RUN_FILE, staged_run_dir


def _run_folder(folder: Path, files: dict[str, str | Path]) -> Path:
    """A folder that is a finished metakd run folder in every respect: its files (text, or a
    copy of a file) and a ``run.json`` listing exactly them."""
    folder.mkdir()
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copy(content, folder / name)
        else:
            (folder / name).write_text(content)
    record = {
        "status": "finished",
        "command": "adapt",
        "started": "2024-01-01T00:00:00+0000",
        "finished": "2024-01-01T00:00:01+0000",
        "metakd_version": __version__,
        "files": sorted(files),
    }
    (folder / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return folder


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, tiny_teacher: TrainedRun
) -> dict[str, Path]:
    """The tiny teacher's run folder (copied in: hashed with the rest), input files, run folders
    that hold inputs, user folders that look like run folders, and support folders with file
    names that cannot name a domain folder."""
    root = tmp_path_factory.mktemp("bad-inputs-files")
    shutil.copytree(tiny_teacher.run, root / "run")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6))
    y = np.r_[np.zeros(12), np.ones(3), np.zeros(65)].astype(int)
    support = write_csv(root / "support.csv", x[:15], y[:15])
    pool = write_csv(root / "pool.csv", x[15:], None)
    config = "tracking:\n  mode: disabled\n"
    files: dict[str, Path] = {
        "root": root,
        "teacher": root / "run" / "teacher.pt",
        "support": support,
        "pool": pool,
        "user_config": root / "adapt.yaml",
    }
    files["user_config"].write_text("device: cpu\n")

    # A user's folder holding the support file (no run.json).
    data = root / "data"
    data.mkdir()
    write_csv(data / "support.csv", x[:15], y[:15])
    (data / "notes.txt").write_text("the user's\n")
    files["data"] = data
    # Run folders in every respect that hold an input of the command.
    files["prev"] = _run_folder(
        root / "prev",
        {"support.csv": support, "pool.csv": pool, "adapt.yaml": config, "train.yaml": config},
    )
    tasks = {
        f"t{i}.csv": write_csv(root / f"t{i}.csv", x[i * 20 : i * 20 + 20], y[:20]) for i in (0, 1)
    }
    files["tasks_run"] = _run_folder(root / "tasks_run", dict(tasks))
    files["pools_run"] = _run_folder(root / "pools_run", {"plant.csv": pool})
    for path in tasks.values():
        path.unlink()
    files["manifest"] = root / "manifest.yaml"
    files["manifest"].write_text("files: ['tasks_run/*.csv']\n")
    # Folders that look like run folders but hold the user's files.
    metrics = root / "metrics_only"
    metrics.mkdir()
    (metrics / "metrics.jsonl").write_text('{"loss": 1}\n')
    (metrics / "thesis.tex").write_text("mine\n")
    files["metrics_only"] = metrics
    bare = root / "bare_record"
    bare.mkdir()
    (bare / RUN_FILE).write_text('{"status": "finished"}\n')
    (bare / "photo.jpg").write_bytes(b"\xff\xd8")
    files["bare_record"] = bare
    extra = _run_folder(root / "extra", {"report.json": "{}\n"})
    (extra / "sub").mkdir()
    (extra / "sub" / "mine.txt").write_text("added by the user\n")
    files["extra"] = extra
    foreign_record = root / "foreign_record"
    foreign_record.mkdir()
    (foreign_record / RUN_FILE).write_text('{"status": "done", "files": ["a.txt"]}\n')
    (foreign_record / "a.txt").write_text("another tool's\n")
    files["foreign_record"] = foreign_record
    # A run folder in every respect, reached through a symlink: the link is never replaced.
    files["listed"] = _run_folder(root / "listed", {"report.json": "{}\n"})
    (root / "link_to_listed").symlink_to(root / "listed", target_is_directory=True)
    files["link_to_listed"] = root / "link_to_listed"
    # Symlinks that resolve to a folder holding the teacher, or to an input file.
    (root / "link_to_run").symlink_to(root / "run", target_is_directory=True)
    files["link_to_run"] = root / "link_to_run"
    (root / "pool_link.csv").symlink_to(pool)
    files["pool_link"] = root / "pool_link.csv"
    os.link(pool, root / "pool_hardlink.csv")
    files["pool_hardlink"] = root / "pool_hardlink.csv"
    # Support folders: one good domain and one file whose name cannot name a domain folder.
    for key, bad in (
        ("dots3", "...csv"),  # the domain '..': OUT/.. is the folder beside OUT
        ("dots2", "..csv"),  # the domain '.': OUT itself
        ("hidden", ".secret.csv"),
        ("newline", "a\nb.csv"),
        ("backslash", "a\\b.csv"),
        ("reserved", "summary.csv.csv"),
        ("reserved_case", "RUN.JSON.csv"),
    ):
        folder = root / f"domains_{key}"
        folder.mkdir()
        write_csv(folder / "good.csv", x[:15], y[:15])
        write_csv(folder / bad, x[:15], y[:15])
        files[f"domains_{key}"] = folder
    good = root / "domains_good"
    good.mkdir()
    write_csv(good / "plant.csv", x[:15], y[:15])
    files["domains_good"] = good
    # A support folder whose file is a symlink into a run folder.
    linked = root / "domains_linked"
    linked.mkdir()
    (linked / "plant.csv").symlink_to(files["prev"] / "support.csv")
    files["domains_linked"] = linked
    return files


def _adapt(*extra: str) -> list[str]:
    return ["adapt", "--teacher", "{teacher}", *sets(["tracking.mode=disabled"]), *extra]


def _train(*extra: str) -> list[str]:
    return ["meta-train", "--no-progress", *sets(["tracking.mode=disabled"]), *extra]


CASES: list[tuple[str, list[str], str]] = [
    # --out is or holds an input, with or without --overwrite
    (
        "adapt out is the teacher's run folder",
        _adapt("--support", "{support}", "--out", "{root}/run", "--overwrite"),
        "holds --teacher {teacher}",
    ),
    (
        "adapt out is the teacher's run folder, no overwrite",
        _adapt("--support", "{support}", "--out", "{root}/run"),
        "holds --teacher {teacher}",
    ),
    (
        "adapt out is the teacher's folder through a symlink",
        _adapt("--support", "{support}", "--out", "{link_to_run}", "--overwrite"),
        "holds --teacher {teacher}",
    ),
    (
        "adapt out is the teacher's folder through ..",
        _adapt("--support", "{support}", "--out", "{root}/data/../run", "--overwrite"),
        "holds --teacher {teacher}",
    ),
    (
        "adapt out is a run folder holding the support",
        _adapt("--support", "{prev}/support.csv", "--out", "{prev}", "--overwrite"),
        "holds --support {prev}/support.csv",
    ),
    (
        "adapt out is a user folder holding the support",
        _adapt("--support", "{data}/support.csv", "--out", "{data}", "--overwrite"),
        "holds --support {data}/support.csv",
    ),
    (
        "adapt out holds the unlabeled file",
        _adapt("--support", "{support}", "--unlabeled", "{prev}/pool.csv", "--out", "{prev}")
        + ["--overwrite"],
        "holds --unlabeled {prev}/pool.csv",
    ),
    (
        "adapt out holds the eval file",
        _adapt("--support", "{support}", "--eval", "{prev}/support.csv", "--out", "{prev}")
        + ["--overwrite"],
        "holds --eval {prev}/support.csv",
    ),
    (
        "adapt out holds the config",
        _adapt("--support", "{support}", "--config", "{prev}/adapt.yaml", "--out", "{prev}")
        + ["--overwrite"],
        "holds --config {prev}/adapt.yaml",
    ),
    (
        "adapt out is the support dir",
        _adapt("--support-dir", "{domains_good}", "--out", "{domains_good}", "--overwrite"),
        "is --support-dir {domains_good}",
    ),
    (
        "adapt out holds a support-dir file through a symlink",
        _adapt("--support-dir", "{domains_linked}", "--out", "{prev}", "--overwrite"),
        "holds --support-dir {domains_linked}/plant.csv",
    ),
    (
        "adapt out holds the unlabeled dir",
        _adapt("--support-dir", "{domains_good}", "--unlabeled-dir", "{pools_run}")
        + ["--out", "{pools_run}", "--overwrite"],
        "is --unlabeled-dir {pools_run}",
    ),
    (
        "meta-train out holds the config",
        _train("--config", "{prev}/train.yaml", "--out", "{prev}", "--overwrite"),
        "holds --config {prev}/train.yaml",
    ),
    (
        "meta-train out is the tasks folder",
        _train("--tasks", "{tasks_run}", "--out", "{tasks_run}", "--overwrite"),
        "is --tasks {tasks_run}",
    ),
    (
        "meta-train out holds the manifest's task files",
        _train("--tasks", "{manifest}", "--out", "{tasks_run}", "--overwrite"),
        "holds --tasks {root}/tasks_run/t0.csv",
    ),
    (
        "evaluate out is the teacher's run folder",
        ["evaluate", "--teacher", "{teacher}", "--out", "{root}/run", "--overwrite"],
        "holds --teacher {teacher}",
    ),
    (
        "evaluate out holds the config",
        ["evaluate", "--teacher", "{teacher}", "--config", "{prev}/adapt.yaml"]
        + ["--out", "{prev}", "--overwrite"],
        "holds --config {prev}/adapt.yaml",
    ),
    # score: every input, however named
    (
        "score out is the config",
        ["score", "--model", "{root}/run/teacher.pt", "--data", "{pool}"]
        + ["--config", "{user_config}", "--out", "{user_config}", "--overwrite"],
        "is also an input of this command (--config {user_config})",
    ),
    (
        "score out is a symlink to the data",
        ["score", "--model", "{teacher}", "--data", "{pool}", "--out", "{pool_link}"]
        + ["--overwrite"],
        "is also an input of this command (--data {pool})",
    ),
    (
        "score out is a hard link to the data",
        ["score", "--model", "{teacher}", "--data", "{pool}", "--out", "{pool_hardlink}"]
        + ["--overwrite"],
        "is also an input of this command (--data {pool})",
    ),
    (
        "score out is the data through ..",
        ["score", "--model", "{teacher}", "--data", "{pool}", "--out", "{data}/../pool.csv"]
        + ["--overwrite"],
        "is also an input of this command (--data {pool})",
    ),
    # --overwrite replaces only folders whose run.json lists every file in them
    (
        "overwrite a user folder with a metrics.jsonl",
        _adapt("--support", "{support}", "--out", "{metrics_only}", "--overwrite"),
        "not a metakd run folder (it has no run.json)",
    ),
    (
        "overwrite a user folder with a bare run.json",
        _adapt("--support", "{support}", "--out", "{bare_record}", "--overwrite"),
        "not a metakd run folder (it holds photo.jpg, which its run.json does not list)",
    ),
    (
        "overwrite a run folder with a file added",
        _adapt("--support", "{support}", "--out", "{extra}", "--overwrite"),
        "it holds sub/mine.txt, which its run.json does not list",
    ),
    (
        "overwrite a folder with another tool's run.json",
        _adapt("--support", "{support}", "--out", "{foreign_record}", "--overwrite"),
        "its run.json is not a metakd run record",
    ),
    (
        "meta-train overwrite a user folder with a metrics.jsonl",
        _train("--out", "{metrics_only}", "--overwrite"),
        "not a metakd run folder",
    ),
    (
        "evaluate overwrite a user folder with a run.json",
        ["evaluate", "--teacher", "{teacher}", "--out", "{bare_record}", "--overwrite"],
        "not a metakd run folder",
    ),
    (
        "overwrite a symlink to a run folder",
        _adapt("--support", "{support}", "--out", "{link_to_listed}", "--overwrite"),
        "is a symlink (to {listed}); metakd replaces a run folder whole, never a link",
    ),
    # --support-dir: domain names that cannot name a folder inside --out
    (
        "domain '..'",
        _adapt("--support-dir", "{domains_dots3}", "--out", "{root}/run/adapted", "--overwrite"),
        "{domains_dots3}/...csv: --support-dir: the domain name '..'",
    ),
    (
        "domain '.'",
        _adapt("--support-dir", "{domains_dots2}", "--out", "{root}/out", "--overwrite"),
        "{domains_dots2}/..csv: --support-dir: the domain name '.'",
    ),
    (
        "domain hidden",
        _adapt("--support-dir", "{domains_hidden}", "--out", "{root}/out"),
        "the domain name '.secret' (the file name without its suffix) starts with '.'",
    ),
    (
        "domain with a newline",
        _adapt("--support-dir", "{domains_newline}", "--out", "{root}/out"),
        "the domain name 'a\\nb' (the file name without its suffix) holds a control character",
    ),
    (
        "domain with a backslash",
        _adapt("--support-dir", "{domains_backslash}", "--out", "{root}/out"),
        "holds a path separator",
    ),
    (
        "domain summary.csv",
        _adapt("--support-dir", "{domains_reserved}", "--out", "{root}/out"),
        "the domain name 'summary.csv' (the file name without its suffix) is a name the run",
    ),
    (
        "domain RUN.JSON",
        _adapt("--support-dir", "{domains_reserved_case}", "--out", "{root}/out"),
        "the domain name 'RUN.JSON' (the file name without its suffix) is a name the run",
    ),
]


@pytest.mark.parametrize("name, args, message", CASES, ids=[c[0] for c in CASES])
def test_output_never_touches_inputs_or_foreign_files(
    workspace: dict[str, Path], name: str, args: list[str], message: str
) -> None:
    values = {k: str(v) for k, v in workspace.items()}
    argv = [a.format(**values) for a in args]
    expected = message.format(**values)
    before = file_hashes(workspace["root"])
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], result.output
    assert "Traceback" not in result.output
    assert file_hashes(workspace["root"]) == before  # no file changed, none added or removed
    leftovers = [p.name for p in workspace["root"].rglob("*") if "metakd-" in p.name]
    assert not leftovers, leftovers


def test_table_covers_every_measured_failure() -> None:
    names = {c[0] for c in CASES}
    assert {
        "adapt out is the teacher's run folder",
        "adapt out is a run folder holding the support",
        "overwrite a user folder with a metrics.jsonl",
        "overwrite a user folder with a bare run.json",
        "domain '..'",
    } <= names


def test_run_folder_listing_every_file_is_still_replaced(
    workspace: dict[str, Path], tmp_path: Path
) -> None:
    """The documented exit 0: a finished run folder (its run.json lists every file) is
    replaced whole with --overwrite, and a --support-dir run writes only inside --out."""
    out = tmp_path / "model"
    first = CliRunner().invoke(
        main,
        _adapt_args(workspace, "--support-dir", str(workspace["domains_good"]), "--out", str(out)),
    )
    assert first.exit_code == 0, first.output
    record = json.loads((out / RUN_FILE).read_text())
    assert "plant/teacher.pt" in record["files"] and "summary.csv" in record["files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing beside --out
    before = file_hashes(workspace["root"])
    again = CliRunner().invoke(
        main,
        _adapt_args(
            workspace, "--support", str(workspace["support"]), "--out", str(out), "--overwrite"
        ),
    )
    assert again.exit_code == 0, again.output
    assert not (out / "plant").exists() and (out / "teacher.pt").is_file()
    assert file_hashes(workspace["root"]) == before


def _adapt_args(workspace: dict[str, Path], *extra: str) -> list[str]:
    return [a.format(teacher=workspace["teacher"]) for a in _adapt(*extra)]


def test_file_added_to_out_during_the_run_keeps_the_folder(tmp_path: Path) -> None:
    """A file the user adds to a run folder while a run with --overwrite works is never lost:
    the folder is checked again before it is replaced, and this run's files are discarded."""
    out = _run_folder(tmp_path / "out", {"report.json": "{}\n"})
    with pytest.raises(MetakdError, match="it holds notes.txt, which its run.json does not list"):
        with staged_run_dir(out, command="test", overwrite=True) as stage:
            (stage / "new.txt").write_text("this run's\n")
            (out / "notes.txt").write_text("the user's\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "report.json", RUN_FILE]


@pytest.mark.parametrize(
    "teacher, out",
    [
        ("run/teacher.pt", "{root}/run"),
        ("{root}/run/teacher.pt", "run"),
        ("./run/../run/teacher.pt", "."),
    ],
    ids=["relative input", "relative out", "out is the working folder"],
)
def test_relative_and_absolute_paths_are_compared_resolved(
    workspace: dict[str, Path], monkeypatch: pytest.MonkeyPatch, teacher: str, out: str
) -> None:
    monkeypatch.chdir(workspace["root"])
    values = {"root": str(workspace["root"])}
    argv = _adapt("--support", "support.csv", "--out", out.format(**values), "--overwrite")
    argv = [a.format(teacher=teacher.format(**values)) for a in argv]
    before = file_hashes(workspace["root"])
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    assert "an input of this command; choose another --out" in result.output
    assert "Traceback" not in result.output
    assert file_hashes(workspace["root"]) == before
