"""Bad config values, config files, task folders and checkpoints through the CLI: one table,
each a one-line ``error:`` and exit 2 naming the key, field or file; never a traceback, a hang
or a silent wrong result.

Every case checks the exit status, that the message names the fault, that there is no traceback,
that it ends within :data:`LIMIT_S` (a YAML alias bomb hung ``meta-train`` and ``adapt``) and
that no file that existed before the command changed (hashes). Below the table: the checks that
are not one command's refusal (range checks of every config section, the YAML limits, the
checkpoint field reader, and the student of a teacher meta-trained without a scaling clip, which
must flag extreme values instead of calling them normal).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import TINY_TRAIN, TrainedRun, adapt_model, file_hashes, sets, write_csv

from metakd import configio, yamlio
from metakd.checkpoint import Fields
from metakd.cli import main
from metakd.config import TrainConfig
from metakd.detect import AdaptConfig, ScoreConfig
from metakd.errors import MAX_SEED, ConfigError, DataError, MetakdError
from metakd.evaluate.config import EvaluateConfig, load_evaluate_config
from metakd.persist import load_scorer

#: Seconds any case may take: a refusal comes before any work.
LIMIT_S = 60


def _bomb(top_key: str = "seed") -> str:
    """A "billion laughs" YAML of ~330 bytes: nine levels of nine aliases, 9**9 strings once
    expanded, under ``top_key``."""
    text = f'{top_key}: [&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        text += f", &{name} [" + ",".join([f"*{prev}"] * 9) + "]"
    return text + "]\n"


def _raw_npz(path: Path, member: str = "X.npy", data: bytes = b"not an array" * 8) -> Path:
    """An ``.npz`` whose member holds raw bytes, not the ``.npy`` format."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, data)
    return path


def _crafted(source: Path, target: Path, edit: Any) -> Path:
    """A copy of checkpoint ``source`` with ``edit(data)`` applied, saved as ``target``."""
    data = copy.deepcopy(torch.load(source, weights_only=True))
    edit(data)
    torch.save(data, target)
    return target


def _drop(key: str) -> Any:
    return lambda d: d.pop(key)


def _put(*path: str, value: Any) -> Any:
    def edit(d: dict[str, Any]) -> None:
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = value

    return edit


def _task_folder(root: Path, name: str) -> Path:
    """A folder of two small labelled task files (a fault is then added beside them)."""
    folder = root / name
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        y = np.r_[np.zeros(50), np.ones(10)].astype(int)
        write_csv(folder / f"task{i}.csv", rng.normal(size=(60, 3)) + 3 * y[:, None], y)
    return folder


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, tiny_teacher: TrainedRun
) -> dict[str, Path]:
    """The tiny teacher's run folder (copied in: hashed with the rest), an adapted model, bad
    config files, task folders with a fault each, and crafted checkpoints."""
    root = tmp_path_factory.mktemp("bad-inputs-configs")
    shutil.copytree(tiny_teacher.run, root / "run")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6))
    files: dict[str, Path] = {
        "root": root,
        "teacher": root / "run" / "teacher.pt",
        "normals": write_csv(root / "normals.csv", x[:12], np.zeros(12)),
        "pool": write_csv(root / "pool.csv", x[12:], None),
    }
    adapt_model(files["teacher"], files["normals"], files["pool"], root / "model")
    student, model_teacher = root / "model" / "student.pt", root / "model" / "teacher.pt"
    files |= {"student": student, "model_teacher": model_teacher}

    configs = root / "configs"
    configs.mkdir()
    (configs / "utf16.yaml").write_bytes("iterations: 2\n".encode("utf-16"))
    (configs / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (configs / "nul.yaml").write_text("iterations: 2\x00\n")
    (configs / "deep.yaml").write_text("tracking: {tags: " + "[" * 5000 + "]" * 5000 + "}\n")
    (configs / "bomb.yaml").write_text(_bomb())
    assert len(_bomb()) < 400
    (configs / "cycle.yaml").write_text("seed: &x [*x]\n")
    (configs / "long_int.yaml").write_text("seed: " + "7" * 5000 + "\n")
    files["configs"] = configs

    dangling = _task_folder(root, "dangling")
    os.symlink(root / "nowhere.csv", dangling / "gone.csv")
    loop = _task_folder(root, "loop")
    os.symlink("loop.csv", loop / "loop.csv")
    folder_csv = _task_folder(root, "folder_csv")
    (folder_csv / "more.csv").mkdir()
    fifo = _task_folder(root, "fifo")
    os.mkfifo(fifo / "stream.csv")
    manifest = _task_folder(root, "manifest")
    os.symlink(root / "nowhere.csv", manifest / "gone.csv")
    (manifest / "tasks.yaml").write_text("files: ['*.csv']\n")
    files |= {"dangling": dangling, "loop": loop, "folder_csv": folder_csv, "fifo": fifo}
    files["manifest"] = manifest / "tasks.yaml"
    files["raw_npz"] = _raw_npz(root / "raw.npz")
    files["raw_y_npz"] = root / "raw_y.npz"
    with zipfile.ZipFile(files["raw_y_npz"], "w") as archive:
        with archive.open("X.npy", "w") as member:
            np.save(member, x[:12])
        archive.writestr("y.npy", b"labels")

    crafted = root / "crafted"
    crafted.mkdir()
    teacher_edits = {
        "t_no_info": _drop("info"),
        "t_model_list": _put("model", value=[1, 2]),
        "t_input_dim_str": _put("input_dim", value="abc"),
        "t_input_dim_zero": _put("input_dim", value=0),
        "t_state_nan": lambda d: d["state_dict"].update(
            {k: v * float("nan") for k, v in list(d["state_dict"].items())[:1]}
        ),
        "t_state_not_tensor": lambda d: d["state_dict"].update(
            {next(iter(d["state_dict"])): [0.0]}
        ),
        "t_rates": _put("rates", value=[torch.zeros(3, 3)]),
        "t_rates_str": _put("rates", value="fast"),
        "t_algorithm": _put("algorithm", value=7),
        "t_alignment_width": _put("alignment", "width", value=3),
        "t_inner_lr": _put("inner", "lr", value=-1.0),
        "t_window": _put("window", value={"config": {"size": 0, "stride": 1}, "raw_widths": [6]}),
        "t_format_dict": _put("format", value={"a": 1}),
        "t_version_tensor": _put("format_version", value=torch.zeros(2, 2)),
    }
    for name, edit in teacher_edits.items():
        files[name] = _crafted(files["teacher"], crafted / f"{name}.pt", edit)
    detector_edits = {
        "s_threshold_str": _put("threshold", value="abc"),
        "s_threshold_nan": _put("threshold", value=float("nan")),
        "s_threshold_inf": _put("threshold", value=float("inf")),
        "s_centre_list": _put("preprocess", "center", value=[0.0] * 6),
        "s_scale_zero": lambda d: d["preprocess"].update(scale=d["preprocess"]["scale"] * 0),
        "s_scale_shape": lambda d: d["preprocess"].update(scale=d["preprocess"]["scale"][:3]),
        "s_clip_str": _put("preprocess", "clip", value="ten"),
        "s_projection_rows": lambda d: d["preprocess"].update(
            projection=d["preprocess"]["projection"][:4]
        ),
        "s_no_info": _drop("info"),
        "s_columns": _put("info", "input", "columns", value="f0,f1"),
        "s_input_dim_str": _put("spec", "input_dim", value="abc"),
        "s_input_dim_wrong": _put("spec", "input_dim", value=7),
        "s_net": _put("net", value="oracle"),
        "s_student_list": _put("spec", "student", value=[16]),
        "s_profile_neighbours": _put("preprocess", "profile", "neighbours", value=0),
        "s_profile_state": lambda d: d["preprocess"]["profile"]["state"].update(
            support_a=torch.zeros(4, 2)
        ),
        "s_window": _put("info", "window", value={"config": {"size": 3}, "raw_widths": "6"}),
    }
    for name, edit in detector_edits.items():
        files[name] = _crafted(student, crafted / f"{name}.pt", edit)
    files["mt_model_list"] = _crafted(
        model_teacher, crafted / "mt_model_list.pt", _put("spec", "model", value=[1])
    )
    return files


def _train(*extra: str) -> list[str]:
    return [
        "meta-train",
        "--out",
        "{out}",
        "--no-progress",
        *sets(["tracking.mode=disabled", *extra]),
    ]


def _adapt(*extra: str, teacher: str = "{teacher}", support: str = "{normals}") -> list[str]:
    return [
        "adapt",
        "--teacher",
        teacher,
        "--support",
        support,
        "--out",
        "{out}",
        "--set",
        "tracking.mode=disabled",
        *extra,
    ]


def _score(model: str, *extra: str) -> list[str]:
    return ["score", "--model", model, "--data", "{pool}", *extra]


def _evaluate(*extra: str) -> list[str]:
    return ["evaluate", "--teacher", "{teacher}", "--out", "{out}", "--no-progress", *extra]


CASES: list[tuple[str, list[str], str]] = [
    # config values, each named with its section
    ("seed negative", _train("seed=-1"), f"seed must be an integer in [0, {MAX_SEED}], got -1"),
    ("seed 23 digits", _train("seed=12345678901234567890123"), "config key 'seed'"),
    ("split seed negative", _train("split.seed=-1"), "split.seed must be an integer in [0,"),
    ("alignment seed negative", _train("alignment.seed=-1"), "alignment.seed must be"),
    ("val_episodes zero", _train("val_episodes=0"), "val_episodes must be an integer >= 1"),
    ("test_episodes negative", _train("test_episodes=-1"), "test_episodes must be an integer"),
    ("split val nan", _train("split.val=.nan"), "split.val must be in [0, 1)"),
    ("scaling eps inf", _train("scaling.eps=.inf"), "scaling.eps must be > 0"),
    ("pool weight nan", _train("inner.pool_weight=.nan"), "inner.pool_weight must be >= 0"),
    ("pool trim one", _train("inner.pool_trim=1"), "inner.pool_trim must be in [0, 1)"),
    (
        "query of one class",
        _train("episode.query_anomaly_fraction=0"),
        "0 anomalous query rows; each episode needs at least one of each",
    ),
    ("number of 400 digits", _train("meta.meta_lr=1" + "0" * 400), "is out of range"),
    (
        "regression weight negative",
        _adapt("--set", "distill.regression_weight=-5"),
        "distill.regression_weight must be >= 0, got -5",
    ),
    ("eval_every zero", _adapt("--set", "distill.eval_every=0"), "distill.eval_every must be"),
    ("patience zero", _adapt("--set", "distill.patience=0"), "distill.patience must be"),
    ("temperature nan", _adapt("--set", "distill.temperature=.nan"), "distill.temperature"),
    ("min_delta negative", _adapt("--set", "distill.min_delta=-1"), "distill.min_delta"),
    ("noise nan", _adapt("--set", "distill.noise_std=[.nan, 1]"), "noise_std must be"),
    ("adapt seed negative", _adapt("--set", "seed=-1"), "seed must be an integer in [0,"),
    ("adapt inner steps", _adapt("--set", "inner.steps=-1"), "config 'inner': steps must be"),
    ("adapt inner key", _adapt("--set", "inner.stpes=2"), "unknown config key 'inner.stpes'"),
    (
        "evaluate seeds past the range",
        _evaluate("--set", f"seed={MAX_SEED}", "--seeds", "2"),
        "seed + seeds - 1",
    ),
    ("baseline lr inf", _evaluate("--set", "baselines.devnet.lr=.inf"), "baselines.devnet.lr"),
    ("pretrain seed", _evaluate("--set", "pretrain.seed=-2"), "pretrain.seed must be"),
    # config files: not text, too deep, alias bombs; --set values alike
    ("config utf-16", [*_train(), "--config", "{configs}/utf16.yaml"], "utf16.yaml: not a UTF-8"),
    ("config binary", [*_adapt(), "--config", "{configs}/binary.yaml"], "binary.yaml: not a"),
    ("config nul", [*_train(), "--config", "{configs}/nul.yaml"], "nul.yaml: not a text file"),
    ("config deep", [*_train(), "--config", "{configs}/deep.yaml"], "deep.yaml: refused"),
    ("config bomb train", [*_train(), "--config", "{configs}/bomb.yaml"], "bomb.yaml: refused"),
    ("config bomb adapt", [*_adapt(), "--config", "{configs}/bomb.yaml"], "bomb.yaml: refused"),
    ("config bomb score", [*_score("{student}"), "--config", "{configs}/bomb.yaml"], "refused"),
    ("config bomb evaluate", [*_evaluate(), "--config", "{configs}/bomb.yaml"], "refused"),
    ("config bomb tasks", ["tasks", "show", "{configs}/bomb.yaml"], "bomb.yaml: refused"),
    ("config cycle", [*_train(), "--config", "{configs}/cycle.yaml"], "recursive alias"),
    ("config long int", [*_train(), "--config", "{configs}/long_int.yaml"], "long_int.yaml"),
    ("set deep", _train("tracking.tags=" + "[" * 3000), "override 'tracking.tags=...': refused"),
    ("set bomb", _train(_bomb("seed").replace(": ", "=", 1).strip()), "values once its aliases"),
    # task files and folders: never a task skipped without a word
    ("npz raw X", _adapt(support="{raw_npz}"), "'X' in the archive is not a NumPy array"),
    ("npz raw y", _adapt(support="{raw_y_npz}"), "'y' in the archive is not a NumPy array"),
    ("npz raw meta-train", ["meta-train", "--tasks", "{raw_npz}", "--out", "{out}"], "raw.npz"),
    (
        "folder dangling link",
        ["meta-train", "--tasks", "{dangling}", "--out", "{out}"],
        "gone.csv: is a broken symlink",
    ),
    (
        "folder link loop",
        ["meta-train", "--tasks", "{loop}", "--out", "{out}"],
        "loop.csv: is a symlink loop",
    ),
    (
        "folder named csv",
        ["meta-train", "--tasks", "{folder_csv}", "--out", "{out}"],
        "more.csv: is a folder",
    ),
    (
        "folder fifo",
        ["meta-train", "--tasks", "{fifo}", "--out", "{out}"],
        "stream.csv: is not a regular file",
    ),
    ("manifest glob dangling", ["tasks", "show", "{manifest}"], "gone.csv: is a broken symlink"),
    # teacher checkpoints: every field type-checked, the file and field named
    (
        "teacher info missing",
        _adapt(teacher="{t_no_info}"),
        "t_no_info.pt: field 'info' is missing",
    ),
    ("teacher model list", _adapt(teacher="{t_model_list}"), "field 'model' must be a mapping"),
    (
        "teacher input_dim str",
        _adapt(teacher="{t_input_dim_str}"),
        "field 'input_dim' must be an integer",
    ),
    (
        "teacher input_dim zero",
        _adapt(teacher="{t_input_dim_zero}"),
        "field 'input_dim' must be >= 1",
    ),
    ("teacher weights nan", _adapt(teacher="{t_state_nan}"), "holds NaN values"),
    ("teacher weight not tensor", _adapt(teacher="{t_state_not_tensor}"), "must be a tensor"),
    ("teacher rates shapes", _adapt(teacher="{t_rates}"), "field 'rates' must be"),
    ("teacher rates str", _adapt(teacher="{t_rates_str}"), "field 'rates' must be a list"),
    (
        "teacher algorithm int",
        _adapt(teacher="{t_algorithm}"),
        "field 'algorithm' must be a string",
    ),
    (
        "teacher alignment width",
        _adapt(teacher="{t_alignment_width}"),
        "field 'alignment' has width 3",
    ),
    ("teacher inner lr", _adapt(teacher="{t_inner_lr}"), "t_inner_lr.pt"),
    ("teacher window", _adapt(teacher="{t_window}"), "field 'window.config'"),
    ("teacher format dict", _adapt(teacher="{t_format_dict}"), "expected a metakd teacher"),
    ("teacher version tensor", _adapt(teacher="{t_version_tensor}"), "format version"),
    # detector checkpoints (score)
    ("threshold str", _score("{s_threshold_str}"), "field 'threshold' must be a number"),
    (
        "threshold nan",
        _score("{s_threshold_nan}"),
        "field 'threshold' must be a finite number, got nan",
    ),
    ("threshold inf", _score("{s_threshold_inf}"), "field 'threshold' must be a finite number"),
    ("centre list", _score("{s_centre_list}"), "field 'preprocess.center' must be a floating"),
    ("scale zero", _score("{s_scale_zero}"), "field 'preprocess.scale' holds values <= 0"),
    ("scale shape", _score("{s_scale_shape}"), "field 'preprocess.scale' must match"),
    ("clip str", _score("{s_clip_str}"), "field 'preprocess.clip' must be a number"),
    ("projection rows", _score("{s_projection_rows}"), "field 'preprocess.projection' must have"),
    ("detector info missing", _score("{s_no_info}"), "s_no_info.pt: field 'info' is missing"),
    ("columns not a list", _score("{s_columns}"), "field 'info.input.columns'"),
    ("detector input_dim str", _score("{s_input_dim_str}"), "field 'spec.input_dim'"),
    ("detector input_dim wrong", _score("{s_input_dim_wrong}"), "s_input_dim_wrong.pt"),
    ("detector net", _score("{s_net}"), "field 'net' must be one of teacher, student"),
    ("student spec list", _score("{s_student_list}"), "field 'spec.student' must be a mapping"),
    ("profile neighbours", _score("{s_profile_neighbours}"), "'preprocess.profile.neighbours'"),
    ("profile references", _score("{s_profile_state}"), "s_profile_state.pt: the stored"),
    ("detector window", _score("{s_window}"), "field 'info.window.raw_widths'"),
    ("teacher detector model", _score("{mt_model_list}"), "field 'spec.model' must be a mapping"),
]


@pytest.fixture
def time_limit() -> Iterator[None]:
    """Fail a command that runs past :data:`LIMIT_S` (a hang) instead of waiting for it."""

    def stop(signum: int, frame: Any) -> None:
        raise TimeoutError(f"no answer within {LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("name, args, message", CASES, ids=[c[0] for c in CASES])
def test_bad_config_or_checkpoint_is_one_line_error(
    workspace: dict[str, Path],
    tmp_path: Path,
    time_limit: None,
    name: str,
    args: list[str],
    message: str,
) -> None:
    values = {k: str(v) for k, v in workspace.items()} | {"out": str(tmp_path / "out")}
    argv = [a.format(**values) if "{" in a else a for a in args]
    before = file_hashes(workspace["root"], skip=["wandb"])
    start = time.monotonic()
    result = CliRunner().invoke(main, argv)
    assert time.monotonic() - start < LIMIT_S
    assert result.exit_code == 2, (result.output, result.exception)
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    # One line, the last: nothing of the message spills onto further lines.
    assert errors == lines[-1:] and len(errors[0]) < 600, result.output
    after = file_hashes(workspace["root"], skip=["wandb"])
    changed = [str(p) for p, h in before.items() if after.get(p) != h]
    assert not changed, changed
    assert not (tmp_path / "out").exists()


def test_table_covers_every_kind_of_fault() -> None:
    assert len(CASES) >= 70


def test_the_crafted_checkpoints_differ_from_good_ones(workspace: dict[str, Path]) -> None:
    """The table's checkpoints fail for their own fault: the files they were made from load."""
    from metakd.persist import TeacherBundle

    TeacherBundle.load(workspace["teacher"])
    for key in ("student", "model_teacher"):
        load_scorer(workspace[key])


# -- range checks of every config section -----------------------------------------------------------

SECTION_CASES: list[tuple[type[Any], dict[str, Any], str]] = [
    (TrainConfig, {"seed": MAX_SEED + 1}, "seed must be an integer in [0,"),
    (TrainConfig, {"tasks": ""}, "tasks must name a task collection"),
    (TrainConfig, {"episode_streams": 0}, "episode_streams"),
    (TrainConfig, {"episode": {"query_size": 1}}, "at least one of each"),
    (TrainConfig, {"prior": {"weight": float("nan")}}, "prior.weight"),
    (TrainConfig, {"scaling": {"clip": float("nan")}}, "scaling.clip"),
    (TrainConfig, {"model": {"profile": {"clip": float("nan")}}}, "profile.clip"),
    (TrainConfig, {"model": {"gaussian": {"pool_trim": float("nan")}}}, "gaussian.pool_trim"),
    (TrainConfig, {"model": {"vae": {"beta": float("inf")}}}, "vae.beta"),
    (TrainConfig, {"meta": {"trust_lr": float("nan")}}, "meta.trust_lr"),
    (AdaptConfig, {"distill": {"batch_size": 1}}, "distill.batch_size must be an integer >= 2"),
    (AdaptConfig, {"distill": {"fidelity_copies": -1}}, "distill.fidelity_copies"),
    (AdaptConfig, {"distill": {"mixup_alpha": float("inf")}}, "distill.mixup_alpha"),
    (AdaptConfig, {"distill": {"mixup_extrapolation": -1}}, "distill.mixup_extrapolation"),
    (AdaptConfig, {"distill": {"noise_std": [0.1, float("inf")]}}, "noise_std"),
    (AdaptConfig, {"threshold": {"normal_quantile": float("nan")}}, "normal_quantile"),
    (AdaptConfig, {"seed": MAX_SEED + 1}, "seed must be an integer in [0,"),
    (EvaluateConfig, {"seed": -1}, "seed must be an integer in [0,"),
    (EvaluateConfig, {"adapt": {"seed": MAX_SEED}, "seeds": 3}, "adapt.seed + seeds - 1"),
    (EvaluateConfig, {"baselines": {"logreg": {"c": float("nan")}}}, "baselines.logreg.c"),
    (EvaluateConfig, {"pretrain": {"lr": float("inf")}}, "pretrain.lr"),
]


@pytest.mark.parametrize(
    "cls, data, message",
    SECTION_CASES,
    ids=[f"{cls.__name__}-{i}" for i, (cls, _, _) in enumerate(SECTION_CASES)],
)
def test_every_section_range_checks_its_values(
    cls: type[Any], data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        configio.from_dict(cls, data)
    assert message in str(raised.value)


def test_a_seed_at_the_top_of_the_range_is_accepted() -> None:
    assert configio.from_dict(TrainConfig, {"seed": MAX_SEED}).seed == MAX_SEED


# -- YAML limits --------------------------------------------------------------------------------------


def test_the_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    start = time.monotonic()
    with pytest.raises(ConfigError, match="bomb.yaml: refused: the YAML holds more than"):
        yamlio.read_yaml(path)
    assert time.monotonic() - start < 5


def test_aliases_within_the_limits_still_load(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("model: &m {hidden: [8], embedding_dim: 4}\ntracking: {tags: [a, b]}\n")
    assert yamlio.read_yaml(path)["model"] == {"hidden": [8], "embedding_dim": 4}
    chain = [f"k{i}: &a{i} [*a{i - 1}]" for i in range(1, 40)]
    path.write_text("\n".join(["k0: &a0 [1]", *chain]) + "\n")
    assert len(yamlio.read_yaml(path)) == 40


def test_a_chain_of_aliases_deeper_than_the_limit_is_refused(tmp_path: Path) -> None:
    chain = [f"k{i}: &a{i} [*a{i - 1}]" for i in range(1, 3000)]
    path = tmp_path / "chain.yaml"
    path.write_text("\n".join(["k0: &a0 [1]", *chain]) + "\n")
    with pytest.raises(ConfigError, match="levels deep once its aliases are expanded"):
        yamlio.read_yaml(path)


def test_a_fifo_as_config_is_refused_without_reading(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="not a regular file"):
        yamlio.read_yaml(tmp_path / "c.yaml")


# -- checkpoint fields ------------------------------------------------------------------------------


def test_fields_name_the_file_and_the_field() -> None:
    fields = Fields({"a": {"b": "x"}, "t": torch.tensor([1.0, float("nan")])}, "f.pt")
    with pytest.raises(DataError, match="f.pt: field 'a.b' must be an integer, got str 'x'"):
        fields.section("a").integer("b")
    with pytest.raises(DataError, match="field 't' holds NaN values"):
        fields.tensor("t")
    with pytest.raises(DataError, match="field 'c' is missing"):
        fields.number("c")
    with pytest.raises(DataError, match="field 'the checkpoint' must be a mapping"):
        Fields([1], "f.pt")


def test_long_values_are_cut_in_messages() -> None:
    fields = Fields({"x": list(range(10_000))}, "f.pt")
    with pytest.raises(DataError) as raised:
        fields.mapping("x")
    assert len(str(raised.value)) < 200


# -- a teacher meta-trained without a scaling clip: its student flags extreme values -----------------


@pytest.fixture(scope="module")
def unclipped_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny teacher meta-trained with ``scaling.clip: null`` and the model adapted from it."""
    root = tmp_path_factory.mktemp("unclipped")
    train = ["meta-train", "--tasks", "synthetic", "--out", str(root / "run"), "--no-progress"]
    trained = CliRunner().invoke(main, [*train, *sets([*TINY_TRAIN, "scaling.clip=null"])])
    assert trained.exit_code == 0, trained.output
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6))
    normals = write_csv(root / "normals.csv", x[:12], np.zeros(12))
    pool = write_csv(root / "pool.csv", x[12:], None)
    adapted = CliRunner().invoke(
        main,
        [
            "adapt",
            "--teacher",
            str(root / "run" / "teacher.pt"),
            "--support",
            str(normals),
            "--unlabeled",
            str(pool),
            "--out",
            str(root / "model"),
            "--set",
            "tracking.mode=disabled",
        ],
    )
    assert adapted.exit_code == 0, adapted.output
    return {"root": root, "model": root / "model", "pool": pool}


def test_a_student_without_scaling_clip_flags_extreme_values(
    unclipped_model: dict[str, Path],
) -> None:
    """Every feature in turn at ±1e3 ... ±1e30 (others typical): each row is flagged. Before, the
    student (a ReLU network, linear far from the data) scored ``-1e30`` in one feature as the most
    normal row of all, its slope along that feature being negative."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=6)
    rows = []
    for value in (1e3, 1e6, 1e10, 1e20, 1e30):
        for j in range(6):
            for sign in (1.0, -1.0):
                row = base.copy()
                row[j] = sign * value
                rows.append(row)
    data = write_csv(unclipped_model["root"] / "extreme.csv", np.array(rows))
    result = CliRunner().invoke(
        main,
        ["score", "--model", str(unclipped_model["model"] / "student.pt"), "--data", str(data)],
    )
    assert result.exit_code == 0, result.output
    table = [line.split(",") for line in result.output.strip().splitlines()[1:]]
    flags = [int(flag) for _, flag in table[-len(rows) :]]
    assert flags == [1] * len(rows), result.output


def test_the_unclipped_student_keeps_the_scores_of_its_own_rows(
    unclipped_model: dict[str, Path],
) -> None:
    """The student's clip lies beyond every support and pool row: their scores, which the
    threshold was fitted on, are as without it; the teacher keeps no clip."""
    student = load_scorer(unclipped_model["model"] / "student.pt")
    teacher = load_scorer(unclipped_model["model"] / "teacher.pt")
    assert np.isinf(teacher.preprocess.clip) and np.isfinite(student.preprocess.clip)
    rows = np.loadtxt(unclipped_model["pool"], delimiter=",", skiprows=1, dtype=np.float32)
    x = torch.from_numpy(rows)
    z = (x - student.preprocess.center) / student.preprocess.scale
    assert float(z.abs().max()) < student.preprocess.clip
    unclipped = copy.deepcopy(student)
    unclipped.preprocess.clip = float("inf")
    with torch.no_grad():
        torch.testing.assert_close(student(x), unclipped(x))


def test_errors_are_metakd_errors() -> None:
    """The range checks raise ConfigError (a MetakdError: one line at the CLI)."""
    with pytest.raises(MetakdError):
        configio.from_dict(AdaptConfig, {"distill": {"regression_weight": -5}})


@pytest.mark.parametrize(
    ("command", "load"),
    [
        ("meta-train", lambda o: configio.load(TrainConfig, None, o)),
        ("adapt", lambda o: configio.load(AdaptConfig, None, o)),
        ("evaluate", lambda o: load_evaluate_config(None, o)),
        ("score", lambda o: configio.load(ScoreConfig, None, o)),
    ],
)
def test_each_commands_set_example_is_one_of_its_own_keys(command: str, load: Any) -> None:
    """``--help``'s ``--set`` example works when copied: each command reads its own config."""
    (option,) = [p for p in main.commands[command].params if p.name == "overrides"]
    example = re.search(r"e\.g\. --set (\S+)", option.help or "")
    assert example is not None, option.help
    assert load([example.group(1)]) != load([])
