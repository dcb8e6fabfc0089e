"""The ``metakd`` command line.

Every command body runs through :func:`run_guarded`: a :class:`~metakd.errors.MetakdError`
(bad file, key or value) prints ``error: <message>`` on stderr and exits with status 2, without a
traceback; warnings print as ``warning: <message>``. Add a command with::

    @main.command()
    @click.argument("config")
    def train(config: str) -> None:
        run_guarded(lambda: _train(config))
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO, TypeVar

import click
from rich.console import Console
from rich.table import Table

from metakd import __version__
from metakd.errors import MetakdError

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np

    from metakd.config import TrainConfig
    from metakd.data.readers import ReadOptions
    from metakd.data.windows import WindowConfig

T = TypeVar("T")

#: Exit status for user errors (the same as click's usage errors).
USER_ERROR_EXIT = 2
#: Exit status after SIGINT (128 + 2, the shell convention).
INTERRUPTED_EXIT = 130


def run_guarded(body: Callable[[], T]) -> T:
    """Run a command body, turning user errors into one line on stderr and exit status 2.

    Warnings raised inside ``body`` are printed as ``warning: <message>`` on stderr as they
    occur. Anything that is not a :class:`MetakdError` is a bug and keeps its traceback.
    """

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        click.echo(f"warning: {message}", err=True)

    # catch_warnings restores the original showwarning (and filters) on exit.
    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            return body()
        except MetakdError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(USER_ERROR_EXIT)
        except OSError as err:
            # A path that cannot be read or written (permissions, a file where a folder must
            # go, a full disk): the user's environment, named by the OS message.
            click.echo(f"error: {err}", err=True)
            sys.exit(USER_ERROR_EXIT)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(INTERRUPTED_EXIT)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="metakd")
def main() -> None:
    """metakd: meta-learned few-shot anomaly detection."""


@main.group()
def tasks() -> None:
    """Inspect task collections (built-ins, manifests in tasks/, directories, files)."""


@tasks.command("list")
def tasks_list() -> None:
    """List the built-in collections, the manifests in tasks/ and the teacher kinds."""
    run_guarded(_tasks_list)


@tasks.command("show")
@click.argument("spec", metavar="PATH_OR_NAME")
@click.option(
    "--shots",
    type=click.IntRange(min=1),
    default=None,
    show_default="meta-train's",
    help="Normal support rows per episode.",
)
@click.option(
    "--anomaly-shots",
    type=click.IntRange(min=0),
    default=None,
    show_default="meta-train's",
    help="Anomalous support rows per episode.",
)
@click.option(
    "--query-size",
    type=click.IntRange(min=1),
    default=None,
    show_default="meta-train's",
    help="Query rows per episode (anomaly fraction and pool size are meta-train's defaults).",
)
def tasks_show(
    spec: str, shots: int | None, anomaly_shots: int | None, query_size: int | None
) -> None:
    """Show the tasks of a collection: split, size, anomalies and whether each can serve
    episodes of the given shape (by default meta-train's default episode shape).

    PATH_OR_NAME is a built-in (digits, synthetic), a manifest name in tasks/ or a .yaml path,
    a directory of task files, or one task file.
    """
    run_guarded(lambda: _tasks_show(spec, shots, anomaly_shots, query_size))


def _as_train_config(spec: str) -> TrainConfig | None:
    """The meta-train config ``spec`` names, if it is one (a YAML file with a ``tasks`` key and
    none of a manifest's ``files``), else ``None``."""
    import yaml

    from metakd.config import load_train_config

    path = Path(spec)
    if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None  # the manifest reader reports it
    if not isinstance(data, dict) or "tasks" not in data or "files" in data:
        return None
    return load_train_config(path)


def _console() -> Console:
    # Never truncate or squeeze columns when stdout is not a terminal (pipes, tests).
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False, markup=False)


def _tasks_list() -> None:
    from metakd.data.builtin import BUILTIN_COLLECTIONS
    from metakd.data.collection import list_collections
    from metakd.models.teachers import teacher_kinds

    table = Table(title="Task collections")
    table.add_column("name", no_wrap=True)
    table.add_column("kind")
    table.add_column("description")
    for name, description in list_collections():
        kind = "built-in" if name in BUILTIN_COLLECTIONS else "manifest"
        table.add_row(name, kind, description)
    _console().print(table)
    kinds = Table(title="Teachers (model.kind)")
    kinds.add_column("kind", no_wrap=True)
    kinds.add_column("when to use it")
    for i, (name, use_when) in enumerate(teacher_kinds().items()):
        kinds.add_row(f"{name} (default)" if i == 0 else name, use_when)
    _console().print(kinds)


def _tasks_show(
    spec: str, shots: int | None, anomaly_shots: int | None, query_size: int | None
) -> None:
    import dataclasses

    from metakd.data.collection import load_collection
    from metakd.data.transforms import check_feature_counts
    from metakd.episodes import EpisodeConfig, episode_shortfall

    # EpisodeConfig's defaults are meta-train's episode shape: "usable" means usable there. A
    # meta-train config (a YAML with `tasks:`) shows its own collection, split and episodes.
    train_config = _as_train_config(spec)
    if train_config is not None:
        collection = load_collection(
            train_config.tasks, split=train_config.split, alignment=train_config.alignment
        )
        default = train_config.episode
    else:
        collection = load_collection(spec)
        default = EpisodeConfig()
    config = dataclasses.replace(
        default,
        shots=default.shots if shots is None else shots,
        anomaly_shots=default.anomaly_shots if anomaly_shots is None else anomaly_shots,
        query_size=default.query_size if query_size is None else query_size,
    )
    any_unlabelled = any(task.n_unlabelled for task in collection.tasks)

    table = Table(title=f"{collection.name} ({collection.source})")
    table.add_column("task", no_wrap=True)
    table.add_column("split")
    table.add_column("rows", justify="right")
    table.add_column("features", justify="right")
    table.add_column("anomalies", justify="right")
    if any_unlabelled:
        table.add_column("unlabelled", justify="right")
    table.add_column("usable")
    unusable: list[tuple[str, str]] = []
    for task in collection.tasks:
        shortfall = episode_shortfall(task, config)
        if shortfall is not None:
            unusable.append((task.name, shortfall))
        share = 100.0 * task.n_anomalies / task.n_rows
        row = [
            task.name,
            collection.split_of(task.name),
            str(task.n_rows),
            str(task.n_features),
            f"{task.n_anomalies} ({share:.1f}%)",
        ]
        if any_unlabelled:
            row.append(str(task.n_unlabelled))
        row.append("yes" if shortfall is None else "no")
        table.add_row(*row)

    console = _console()
    console.print(table)
    counts = ", ".join(f"{key} {len(names)}" for key, names in collection.splits.items())
    console.print(
        f"{len(collection.tasks)} tasks ({counts}); usable for episodes with "
        f"shots={config.shots}, anomaly_shots={config.anomaly_shots}, "
        f"query_size={config.query_size}: {len(collection.tasks) - len(unusable)} "
        f"(query_anomaly_fraction={config.query_anomaly_fraction}, "
        f"pool_size={config.pool_size})",
        soft_wrap=True,
    )
    for name, shortfall in unusable:
        console.print(f"  not usable: {name}: {shortfall}", soft_wrap=True)
    try:
        check_feature_counts(collection.feature_counts, collection.alignment, where=collection.name)
    except MetakdError as err:
        # Fine for inspection, but meta-training across these tasks would fail: say so.
        console.print(f"note: {err}", soft_wrap=True)


# -- meta-train / adapt / score ------------------------------------------------------------------

_CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML config file (see configs/).",
)
_SET_OPTION = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set inner.steps=5 (repeatable).",
)


def _tracking_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add the W&B tracking flags; :func:`_tracking_overrides` turns them into config overrides."""
    options = [
        click.option(
            "--tracking",
            "tracking_mode",
            type=click.Choice(["auto", "online", "offline", "disabled"]),
            default=None,
            help="W&B mode (default: offline unless W&B is configured).",
        ),
        click.option("--wandb-project", default=None, help="W&B project."),
        click.option("--wandb-entity", default=None, help="W&B entity (user or team)."),
        click.option("--wandb-group", default=None, help="W&B run group."),
        click.option("--wandb-tag", "wandb_tags", multiple=True, help="W&B run tag (repeatable)."),
        click.option("--run-name", default=None, help="W&B run name."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _tracking_overrides(
    tracking_mode: str | None,
    wandb_project: str | None,
    wandb_entity: str | None,
    wandb_group: str | None,
    wandb_tags: tuple[str, ...],
    run_name: str | None,
) -> list[str]:
    import json

    values = {
        "mode": tracking_mode,
        "project": wandb_project,
        "entity": wandb_entity,
        "group": wandb_group,
        "name": run_name,
        "tags": list(wandb_tags) or None,
    }
    # JSON is valid YAML and keeps strings strings (a run named "1e3" stays a string).
    return [f"tracking.{k}={json.dumps(v)}" for k, v in values.items() if v is not None]


def _device_override(key: str, device: str | None) -> list[str]:
    """``--device`` as a config override of ``key`` (none when the flag is not given)."""
    import json

    return [] if device is None else [f"{key}={json.dumps(device)}"]


_TEACHER_OPTION = click.option(
    "--teacher",
    "teacher_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="teacher.pt from metakd meta-train.",
)
_PROGRESS_OPTION = click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Show a progress bar."
)
_DEVICE_OPTION = click.option(
    "--device",
    default=None,
    metavar="cpu|cuda|auto",
    help="Torch device: cpu, cuda (or cuda:N) or auto (CUDA when this machine has it); "
    "overrides the config's device.",
)
_OVERWRITE_OPTION = click.option(
    "--overwrite",
    is_flag=True,
    default=False,
    help="Replace an existing --out written by metakd (never any other folder or file).",
)


def _default_out(kind: str) -> str:
    import time

    return f"runs/{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


@main.command("meta-train")
@click.option(
    "--tasks",
    "tasks_spec",
    default=None,
    metavar="PATH_OR_NAME",
    help="Task collection (overrides the config's `tasks`; default: built-in synthetic).",
)
@_CONFIG_OPTION
@click.option(
    "--out", "out_dir", default=None, help="Run directory (default: runs/meta-train-TIME)."
)
@click.option(
    "--resume",
    "resume_dir",
    default=None,
    metavar="RUN_DIR",
    help="Continue the interrupted run whose --out was RUN_DIR (stopped by Ctrl-C, SIGTERM or a "
    "kill) from its newest checkpoint, and finish it into RUN_DIR. Its config applies; --config "
    "and --set may change only iterations, checkpoint_every and tracking.*.",
)
@click.option(
    "--dist-timeout",
    type=click.FloatRange(min=1),
    default=600.0,
    show_default=True,
    help="Under torchrun: seconds a rank waits for the others before it stops with an error.",
)
@_OVERWRITE_OPTION
@_SET_OPTION
@_DEVICE_OPTION
@_PROGRESS_OPTION
@_tracking_options
@click.argument("extra_overrides", nargs=-1, metavar="[KEY=VALUE]...")
def meta_train_command(
    tasks_spec: str | None,
    config_path: str | None,
    out_dir: str | None,
    resume_dir: str | None,
    dist_timeout: float,
    overwrite: bool,
    overrides: tuple[str, ...],
    device: str | None,
    progress: bool,
    extra_overrides: tuple[str, ...],
    **tracking: Any,
) -> None:
    """Meta-train a teacher on a task collection.

    Writes OUT/teacher.pt (best on meta-val), OUT/config.yaml and OUT/metrics.jsonl, then prints
    held-out few-shot AUROC on the meta-test tasks. KEY=VALUE arguments are config overrides,
    like --set (the form W&B sweep agents pass with ${args_no_hyphens}).

    Ctrl-C or SIGTERM stops it after the current iteration with a checkpoint (exit 130 or 143);
    it also checkpoints every `checkpoint_every` iterations. Continue with --resume OUT: the
    result is the same as an uninterrupted run's. Under `torchrun --nproc_per_node N -m metakd
    meta-train ...` the N ranks share every meta-batch (episode.meta_batch divisible by N).
    """
    every = [*overrides, *extra_overrides, *_device_override("device", device)]
    every += _tracking_overrides(**tracking)
    run_guarded(
        lambda: _meta_train(
            tasks_spec,
            config_path,
            out_dir,
            every,
            progress,
            overwrite=overwrite,
            resume_dir=resume_dir,
            dist_timeout=dist_timeout,
        )
    )


def _meta_train(
    tasks_spec: str | None,
    config_path: str | None,
    out_dir: str | None,
    overrides: list[str],
    progress: bool,
    *,
    overwrite: bool,
    resume_dir: str | None = None,
    dist_timeout: float = 600.0,
) -> None:
    from metakd.errors import ConfigError
    from metakd.launch import launch_meta_train
    from metakd.train import TrainingInterrupted

    if resume_dir is not None and out_dir is not None:
        raise ConfigError("give --resume RUN_DIR or --out, not both: a resumed run ends in RUN_DIR")
    if tasks_spec is not None:
        overrides = [*overrides, f"tasks={json.dumps(tasks_spec)}"]
    out = Path(resume_dir or out_dir or _default_out("meta-train"))
    try:
        launched = launch_meta_train(
            config_path,
            overrides,
            out,
            progress=progress,
            overwrite=overwrite,
            resume=resume_dir is not None,
            dist_timeout=dist_timeout,
        )
    except TrainingInterrupted as stop:
        click.echo(f"error: {stop}; resume with: metakd meta-train --resume {out}", err=True)
        sys.exit(stop.exit_code)
    if launched is None:
        return  # a rank other than 0 of a torchrun job: rank 0 reports
    config, result = launched
    console = _console()
    console.print(
        f"meta-trained {config.meta.algorithm} ({config.model.kind} teacher) on {config.tasks} in "
        f"{result.seconds:.0f} s; best meta-val AUROC "
        + (f"{result.best_val_auroc:.3f}" if result.best_val_auroc is not None else "n/a")
        + f" at iteration {result.best_iteration}",
        soft_wrap=True,
    )
    if result.best_val_auroc is not None and result.best_iteration == 0:
        console.print(
            "note: no meta-training iterate beat the initialisation on the meta-val tasks, so the "
            "saved teacher is the initialisation",
            soft_wrap=True,
        )
    if result.test_auroc:
        table = Table(
            title=f"Held-out few-shot AUROC ({', '.join(result.test_tasks)}; "
            f"{config.episode.shots} normal shots, {config.episode.anomaly_shots} anomaly shots)"
        )
        table.add_column("method")
        table.add_column("mean AUROC", justify="right")
        labels = {
            "metakd": "metakd (meta-learned init, adapted)",
            "random_init": "same network, random init, adapted",
            "knn_support": "kNN distance to the support normals (reference)",
            "knn_pool": "kNN density in the unlabelled pool (reference)",
        }
        for key, value in result.test_auroc.items():
            table.add_row(labels.get(key, key), f"{value:.3f}")
        console.print(table)
        ours = result.test_auroc["metakd"]
        below = [labels[k] for k, v in result.test_auroc.items() if k != "metakd" and v > ours]
        if below:
            warnings.warn(
                f"the meta-learned teacher ({ours:.3f}) is below {'; '.join(below)} on the "
                "held-out tasks: meta-training did not help here (fewer iterations, a smaller "
                "meta.meta_lr or more meta-train tasks may)",
                stacklevel=1,
            )
    else:
        console.print(
            "no held-out tasks, so no held-out AUROC to report: a folder or manifest is "
            "meta-trained on every task but the validation ones (--set split.test=0.2 holds some "
            "out and reports on them)",
            soft_wrap=True,
        )
    console.print(f"teacher: {out / 'teacher.pt'}", soft_wrap=True)


@main.command("adapt")
@_TEACHER_OPTION
@click.option(
    "--support",
    "support_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Labelled rows of the new domain (0 normal, 1 anomaly; at least one normal).",
)
@click.option(
    "--unlabeled",
    "unlabeled_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Unlabelled rows of the domain (labels, if any, are ignored).",
)
@click.option(
    "--eval",
    "eval_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Labelled rows to report AUROC, AUPRC, precision, recall and F1 on.",
)
@click.option(
    "--support-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Instead of --support: a folder with one support file per domain (OUT/DOMAIN each).",
)
@click.option(
    "--unlabeled-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="With --support-dir: unlabelled rows per domain, matched by file name.",
)
@click.option(
    "--eval-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="With --support-dir: labelled evaluation rows per domain, matched by file name.",
)
@click.option("--out", "out_dir", required=True, help="Output directory.")
@_OVERWRITE_OPTION
@_CONFIG_OPTION
@_SET_OPTION
@_DEVICE_OPTION
@_PROGRESS_OPTION
@_tracking_options
def adapt_command(
    teacher_path: str,
    support_path: str | None,
    unlabeled_path: str | None,
    eval_path: str | None,
    support_dir: str | None,
    unlabeled_dir: str | None,
    eval_dir: str | None,
    out_dir: str,
    overwrite: bool,
    config_path: str | None,
    overrides: tuple[str, ...],
    device: str | None,
    progress: bool,
    **tracking: Any,
) -> None:
    """Adapt a teacher to a new domain, distil a student and calibrate a threshold.

    Writes OUT/teacher.pt, OUT/student.pt, OUT/student.torchscript.pt and OUT/report.json.
    With --support-dir, every domain of the folder: OUT/DOMAIN/ each and OUT/summary.csv.
    """
    every = [*overrides, *_device_override("device", device), *_tracking_overrides(**tracking)]
    if support_path is None or any(d is not None for d in (support_dir, unlabeled_dir, eval_dir)):
        run_guarded(
            lambda: _adapt_dir(
                teacher_path,
                (support_dir, unlabeled_dir, eval_dir),
                (support_path, unlabeled_path, eval_path),
                out_dir,
                config_path,
                every,
                overwrite=overwrite,
                progress=progress,
            )
        )
        return
    run_guarded(
        lambda: _adapt(
            teacher_path,
            support_path,
            unlabeled_path,
            eval_path,
            out_dir,
            config_path,
            every,
            overwrite=overwrite,
            progress=progress,
        )
    )


def _adapt_dir(
    teacher_path: str,
    dirs: tuple[str | None, str | None, str | None],
    files: tuple[str | None, str | None, str | None],
    out_dir: str,
    config_path: str | None,
    overrides: list[str],
    *,
    overwrite: bool,
    progress: bool,
) -> None:
    from metakd.adapt import AdaptConfig, run_adapt_dir
    from metakd.configio import load
    from metakd.rundir import staged_run_dir

    support_dir, unlabeled_dir, eval_dir = dirs
    if support_dir is None:
        if files[0] is not None:
            raise MetakdError("--unlabeled-dir and --eval-dir go with --support-dir")
        raise MetakdError("adapt needs --support FILE or --support-dir DIR")
    if files[0] is not None:
        raise MetakdError("--support and --support-dir exclude each other")
    for flag, value in zip(("--unlabeled", "--eval"), files[1:], strict=True):
        if value is not None:
            raise MetakdError(f"{flag} FILE goes with --support; with --support-dir use {flag}-dir")
    config = load(AdaptConfig, config_path, overrides)
    out = Path(out_dir)
    with staged_run_dir(out, command="adapt", overwrite=overwrite) as stage:
        rows = run_adapt_dir(
            config,
            teacher_path=Path(teacher_path),
            support_dir=Path(support_dir),
            unlabeled_dir=None if unlabeled_dir is None else Path(unlabeled_dir),
            eval_dir=None if eval_dir is None else Path(eval_dir),
            out_dir=stage,
            progress=progress,
        )
    table = Table(title=f"adapted {teacher_path} to the domains of {support_dir}")
    for name, justify in (
        ("domain", "left"),
        ("status", "left"),
        ("support", "right"),
        ("unlabeled", "right"),
        ("threshold", "right"),
        ("fidelity", "right"),
        ("seconds", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]

    def cell(value: Any, spec: str = "") -> str:
        return "" if value is None else format(value, spec)

    for row in rows:
        table.add_row(
            row["domain"],
            "ok" if row["status"] == "ok" else f"failed: {row['error']}",
            cell(row["support_rows"]),
            cell(row["unlabeled_rows"]),
            cell(row["threshold"], ".4g"),
            cell(row["fidelity"], ".3f"),
            cell(row["seconds"], ".2f"),
        )
    console = _console()
    console.print(table)
    failed = [row["domain"] for row in rows if row["status"] != "ok"]
    console.print(f"wrote {out_dir}/DOMAIN/ and {out_dir}/summary.csv", soft_wrap=True)
    if failed:
        # The finished domains are in place; the exit status says that some are missing.
        raise MetakdError(
            f"{len(failed)} of {len(rows)} domains failed ({', '.join(failed)}); see "
            f"{out_dir}/summary.csv"
        )


def _adapt(
    teacher_path: str,
    support_path: str,
    unlabeled_path: str | None,
    eval_path: str | None,
    out_dir: str,
    config_path: str | None,
    overrides: list[str],
    *,
    overwrite: bool,
    progress: bool,
) -> None:
    from metakd.adapt import AdaptConfig, run_adapt
    from metakd.configio import load
    from metakd.rundir import staged_run_dir

    out = Path(out_dir)
    config = load(AdaptConfig, config_path, overrides)
    with staged_run_dir(out, command="adapt", overwrite=overwrite) as stage:
        report = run_adapt(
            config,
            teacher_path=Path(teacher_path),
            support_path=Path(support_path),
            unlabeled_path=Path(unlabeled_path) if unlabeled_path else None,
            eval_path=Path(eval_path) if eval_path else None,
            out_dir=stage,
            progress=progress,
        )
    console = _console()
    table = Table(title=f"adapted {teacher_path} to {support_path}")
    table.add_column("detector")
    table.add_column("parameters", justify="right")
    table.add_column("threshold", justify="right")
    evaluation = report.get("eval", {})
    metric_names = ["auroc", "auprc", "precision", "recall", "f1"]
    for name in metric_names if evaluation else []:
        table.add_column(name, justify="right")
    for net in ("teacher", "student"):
        if f"{net}_parameters" not in report:
            continue
        row = [net, str(report[f"{net}_parameters"]), f"{report[f'{net}_threshold']:.4g}"]
        row += [f"{evaluation[net][m]:.3f}" for m in metric_names] if evaluation else []
        table.add_row(*row)
    console.print(table)
    method = report["threshold_method"]
    rule = {
        "contamination": f"the top {config.threshold.contamination:.0%} of the unlabelled rows "
        "are anomalous (threshold.contamination)",
        "normal_quantile": f"the {config.threshold.normal_quantile:.0%} quantile of the support "
        "normals' scores (threshold.normal_quantile)",
        "f1": "best F1 on the labelled support",
    }.get(method, method)
    console.print(f"threshold rule: {method}: {rule}", soft_wrap=True)
    timings = report["timings"]
    console.print(
        "adapt {:.2f} s, distil {:.2f} s; fidelity (Spearman) {}; wrote {}".format(
            timings["adapt_seconds"],
            timings.get("distill_seconds", 0.0),
            f"{report['fidelity_spearman']:.3f}" if "fidelity_spearman" in report else "n/a",
            out_dir,
        ),
        soft_wrap=True,
    )


@main.command("score")
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="teacher.pt or student.pt written by metakd adapt.",
)
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Rows to score (npz, csv/tsv or parquet; a label column is ignored).",
)
@click.option(
    "--out",
    "out_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Output CSV (default: standard output).",
)
@click.option(
    "--label-column",
    default=None,
    help="Column to ignore as labels in csv/parquet input (default: the model's, 'label').",
)
@click.option(
    "--ignore-column",
    "ignore_columns",
    multiple=True,
    metavar="NAME",
    help="Another column that is not a feature, e.g. an id (repeatable).",
)
@click.option(
    "--id-column",
    default=None,
    metavar="NAME",
    help="A column copied to the output as its first column (not a feature), e.g. a row id.",
)
@_OVERWRITE_OPTION
@_CONFIG_OPTION
@_SET_OPTION
@_DEVICE_OPTION
def score_command(
    model_path: str,
    data_path: str,
    out_path: str | None,
    label_column: str | None,
    ignore_columns: tuple[str, ...],
    id_column: str | None,
    overwrite: bool,
    config_path: str | None,
    overrides: tuple[str, ...],
    device: str | None,
) -> None:
    """Score rows with an adapted detector: one output row per input row, in order, with
    columns `score` (higher = more anomalous) and `is_anomaly`. Rows are read and scored in
    chunks, so memory stays bounded whatever the size of a csv or parquet input.

    A file with a header is matched to the model's columns by name (reordered as needed); a
    missing or renamed column is an error naming it. The columns the model was adapted with as
    ignored (ids, timestamps) are ignored here too."""
    import json

    flags = [*overrides, *_device_override("device", device)]
    for key, value in (("label_column", label_column), ("id_column", id_column)):
        if value is not None:
            flags.append(f"{key}={json.dumps(value)}")
    if ignore_columns:
        flags.append(f"ignore_columns={json.dumps(list(ignore_columns))}")
    run_guarded(lambda: _score(model_path, data_path, out_path, config_path, flags, overwrite))


#: Rows read and scored at a time by ``metakd score`` (``None``: sized by the input's width, see
#: :data:`metakd.data.readers.CHUNK_VALUES`).
SCORE_CHUNK_ROWS: int | None = None


def _score(
    model_path: str,
    data_path: str,
    out_path: str | None,
    config_path: str | None,
    overrides: list[str],
    overwrite: bool,
) -> None:
    from metakd.checkpoint import atomic_write_bytes
    from metakd.config import resolve_device
    from metakd.configio import load
    from metakd.data.readers import read_row_chunks, read_task
    from metakd.data.windows import window_starts, window_task
    from metakd.detector import ScoreConfig, score_rows
    from metakd.persist import load_input_schema, load_scorer

    config = load(ScoreConfig, config_path, overrides)
    id_column = config.id_column
    if out_path is not None:
        _check_score_output(
            Path(out_path), inputs=[Path(model_path), Path(data_path)], overwrite=overwrite
        )
    scorer = load_scorer(model_path).to(resolve_device(config.device))
    options = load_input_schema(model_path).read_options(
        label_column=config.label_column, ignore_columns=config.ignore_columns
    )
    counts = [0, 0]
    header = ([id_column] if id_column else []) + ["score", "is_anomaly"]
    # Each block: model input rows and the leading output cells of each (ids, window rows).
    blocks: Iterator[tuple[np.ndarray, list[list[str]] | None]]
    window, options = _score_window(model_path, data_path, options)
    if window is not None:
        # A model of windowed time series scores windows: the whole series is read at once.
        if id_column is not None:
            raise MetakdError(
                "--id-column: this model scores windows of rows (it was meta-trained on "
                "windows), so output rows are windows, named by first_row and last_row"
            )
        series = read_task(data_path, options)
        starts = window_starts(series.n_rows, window)
        header = ["first_row", "last_row", "score", "is_anomaly"]
        spans = [[str(a), str(a + window.size - 1)] for a in starts.tolist()]
        blocks = iter([(window_task(series, window).X, spans)])
        click.echo(
            f"windowed {series.n_rows} rows into {len(starts)} windows of {window.size} "
            f"(stride {window.stride}), as the teacher was meta-trained",
            err=True,
        )
    else:
        chunks = read_row_chunks(data_path, options, rows=SCORE_CHUNK_ROWS, id_column=id_column)
        blocks = ((c.X, None if c.ids is None else [[i] for i in c.ids]) for c in chunks)

    def write(handle: BinaryIO) -> None:
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="", write_through=True)
        rows = csv.writer(text, lineterminator="\n")
        rows.writerow(header)
        for X, lead in blocks:
            scores, flags = score_rows(scorer, X)
            cells = [[f"{s:.9g}", str(int(f))] for s, f in zip(scores, flags, strict=True)]
            if lead is not None:
                cells = [[*a, *c] for a, c in zip(lead, cells, strict=True)]
            rows.writerows(cells)
            counts[0] += len(scores)
            counts[1] += int(flags.sum())
        # Detach, not close: the caller owns ``handle`` (a temp file or standard output).
        text.detach()

    if out_path is None:
        # Rows reach standard output as they are scored; an error stops the stream (exit 2).
        try:
            write(sys.stdout.buffer)
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader stopped (`| head`): not an error of ours. Python's documented recipe:
            # point stdout at devnull so the interpreter's final flush does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
    else:
        atomic_write_bytes(Path(out_path), write)
        what = "windows" if window is not None else "rows"
        click.echo(f"scored {counts[0]} {what} ({counts[1]} flagged) -> {out_path}", err=True)


def _score_window(
    model_path: str, data_path: str, options: ReadOptions
) -> tuple[WindowConfig | None, ReadOptions]:
    """The windows ``score`` applies (the model's, when the data has its raw series' width) and
    the options to read the data with: rows already windowed are taken as they are, in order
    (the stored columns are the raw series')."""
    import dataclasses

    from metakd.data.readers import read_row_chunks
    from metakd.persist import load_detector_window, windowing

    record = load_detector_window(model_path)
    if record is None:
        return None, options
    loose = dataclasses.replace(options, columns=None)
    first = next(iter(read_row_chunks(data_path, loose, rows=1)))  # the width, one row read
    window = windowing(record, first.X.shape[1])
    return window, (options if window is not None else loose)


def _check_score_output(out: Path, *, inputs: list[Path], overwrite: bool) -> None:
    """Refuse an output path that is one of the inputs or holds a model (never overwritten), or
    any other existing file unless ``overwrite``."""
    for path in inputs:
        if out.exists() and path.exists() and out.resolve() == path.resolve():
            raise MetakdError(f"--out {out} is also an input of this command; choose another file")
    if out.is_file() and out.suffix in (".pt", ".pth", ".onnx"):
        raise MetakdError(f"--out {out} is a model file; metakd score never overwrites models")
    if out.exists() and not out.is_file():
        raise MetakdError(f"--out {out} exists and is not a file; choose another path")
    if out.exists() and not overwrite:
        raise MetakdError(f"--out {out} exists; pass --overwrite to replace it")


@main.command("evaluate")
@click.option(
    "--teacher",
    "teacher_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="teacher.pt from metakd meta-train (not with --folds).",
)
@click.option(
    "--tasks",
    "tasks_spec",
    default=None,
    metavar="PATH_OR_NAME",
    help="Collection to evaluate on (default: the teacher's own, its meta-test tasks).",
)
@click.option(
    "--folds",
    type=click.IntRange(min=2),
    default=None,
    help="Leave domains out: per fold of --tasks, meta-train a teacher on the other folds' "
    "domains and evaluate it on the fold's (no --teacher).",
)
@click.option("--shots", default=None, metavar="K,K,...", help="Normal shots, e.g. 1,5,10,20.")
@click.option("--anomaly-shots", default=None, metavar="A,A,...", help="Anomaly shots, e.g. 0,1,5.")
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Repetitions per setting.")
@click.option(
    "--out", "out_dir", default=None, help="Output directory (default: runs/evaluate-TIME)."
)
@_OVERWRITE_OPTION
@_CONFIG_OPTION
@_SET_OPTION
@_DEVICE_OPTION
@_PROGRESS_OPTION
@_tracking_options
def evaluate_command(
    teacher_path: str | None,
    tasks_spec: str | None,
    folds: int | None,
    shots: str | None,
    anomaly_shots: str | None,
    seeds: int | None,
    out_dir: str | None,
    overwrite: bool,
    config_path: str | None,
    overrides: tuple[str, ...],
    device: str | None,
    progress: bool,
    **tracking: Any,
) -> None:
    """Benchmark the teacher's few-shot adaptation (teacher and distilled student) against
    baselines on held-out tasks, on identical disjoint support / pool / query splits; or, with
    --folds, leave the domains of --tasks out in turn (a teacher meta-trained per fold).

    Writes OUT/results.csv, OUT/summary.md and OUT/auroc_vs_shots.png.
    """
    every = list(overrides)
    if tasks_spec is not None:
        every.append(f"tasks={json.dumps(tasks_spec)}")
    if folds is not None:
        every.append(f"folds={folds}")
    for key, value in (("shots", shots), ("anomaly_shots", anomaly_shots)):
        if value is not None:
            every.append(f"{key}=[{value}]")
    if seeds is not None:
        every.append(f"seeds={seeds}")
    every += _device_override("adapt.device", device) + _tracking_overrides(**tracking)
    run_guarded(
        lambda: _evaluate(teacher_path, out_dir, config_path, every, progress, overwrite=overwrite)
    )


def _evaluate(
    teacher_path: str | None,
    out_dir: str | None,
    config_path: str | None,
    overrides: list[str],
    progress: bool,
    *,
    overwrite: bool,
) -> None:
    from metakd.baselines import POOLED_CACHE
    from metakd.evaluate import load_evaluate_config, run_evaluation
    from metakd.evaluate.domains import run_domain_evaluation
    from metakd.rundir import staged_run_dir

    out = Path(out_dir or _default_out("evaluate"))
    config = load_evaluate_config(config_path, overrides)
    if (config.folds is None) == (teacher_path is None):
        raise MetakdError(
            "give --teacher (evaluate a meta-trained teacher) or --folds with --tasks (leave "
            "domains out, a teacher meta-trained per fold), not both or neither"
        )
    # The pooled pre-training of a previous run into the same --out is reused (it is keyed by
    # its own settings and recomputed when they differ).
    with staged_run_dir(
        out, command="evaluate", overwrite=overwrite, carry=(POOLED_CACHE,)
    ) as stage:
        if teacher_path is None:
            result = run_domain_evaluation(config, out_dir=stage, progress=progress)
        else:
            result = run_evaluation(
                config, teacher_path=Path(teacher_path), out_dir=stage, progress=progress
            )
    from metakd.evaluate import headline_gaps

    console = _console()
    for line in result.skipped:
        console.print(f"skipped: {line}", soft_wrap=True)
    # The key table only; every method's numbers with intervals are in summary.md.
    table = Table(title="metakd's student against the best baseline (mean AUROC)")
    for column in ("A", "K", "student", "best baseline", "its AUROC", "gap"):
        table.add_column(column, justify="left" if column == "best baseline" else "right")
    for row in headline_gaps(result.summary).itertuples():
        failed = f" ({row.student_failed} failed)" if row.student_failed else ""
        table.add_row(
            str(row.anomaly_shots),
            str(row.shots),
            f"{row.student:.3f}{failed}",
            str(row.best_baseline),
            f"{row.best_auroc:.3f}",
            f"{row.gap:+.3f}",
        )
    console.print(table)
    console.print(f"all methods, with 95 % intervals: {out / 'summary.md'}", soft_wrap=True)
    console.print(
        f"{len(result.results)} runs in {result.seconds:.0f} s; wrote "
        + ", ".join(str(out / p.name) for p in result.files.values()),
        soft_wrap=True,
    )
