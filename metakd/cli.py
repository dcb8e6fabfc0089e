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

import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click
from rich.console import Console
from rich.table import Table

from metakd import __version__
from metakd.errors import MetakdError

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
    """List the built-in collections and the manifests in tasks/."""
    run_guarded(_tasks_list)


@tasks.command("show")
@click.argument("spec", metavar="PATH_OR_NAME")
@click.option(
    "--shots",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Normal support rows per episode.",
)
@click.option(
    "--anomaly-shots",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Anomalous support rows per episode.",
)
@click.option(
    "--query-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Query rows per episode (half of them anomalies).",
)
def tasks_show(spec: str, shots: int, anomaly_shots: int, query_size: int) -> None:
    """Show the tasks of a collection: split, size, anomalies and whether each can serve
    episodes of the given shape.

    PATH_OR_NAME is a built-in (digits, synthetic), a manifest name in tasks/ or a .yaml path,
    a directory of task files, or one task file.
    """
    run_guarded(lambda: _tasks_show(spec, shots, anomaly_shots, query_size))


def _console() -> Console:
    # Never truncate or squeeze columns when stdout is not a terminal (pipes, tests).
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False, markup=False)


def _tasks_list() -> None:
    from metakd.data.builtin import BUILTIN_COLLECTIONS
    from metakd.data.collection import list_collections

    table = Table(title="Task collections")
    table.add_column("name", no_wrap=True)
    table.add_column("kind")
    table.add_column("description")
    for name, description in list_collections():
        kind = "built-in" if name in BUILTIN_COLLECTIONS else "manifest"
        table.add_row(name, kind, description)
    _console().print(table)


def _tasks_show(spec: str, shots: int, anomaly_shots: int, query_size: int) -> None:
    from metakd.data.collection import load_collection
    from metakd.data.transforms import check_feature_counts
    from metakd.episodes import EpisodeConfig, episode_shortfall

    collection = load_collection(spec)
    config = EpisodeConfig(shots=shots, anomaly_shots=anomaly_shots, query_size=query_size)
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
        f"{len(collection.tasks)} tasks ({counts}); usable for episodes with shots={shots}, "
        f"anomaly_shots={anomaly_shots}, query_size={query_size}: "
        f"{len(collection.tasks) - len(unusable)}",
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
@_SET_OPTION
@_PROGRESS_OPTION
@_tracking_options
@click.argument("extra_overrides", nargs=-1, metavar="[KEY=VALUE]...")
def meta_train_command(
    tasks_spec: str | None,
    config_path: str | None,
    out_dir: str | None,
    overrides: tuple[str, ...],
    progress: bool,
    extra_overrides: tuple[str, ...],
    **tracking: Any,
) -> None:
    """Meta-train a teacher on a task collection.

    Writes OUT/teacher.pt (best on meta-val), OUT/config.yaml and OUT/metrics.jsonl, then prints
    held-out few-shot AUROC on the meta-test tasks. KEY=VALUE arguments are config overrides,
    like --set (the form W&B sweep agents pass with ${args_no_hyphens}).
    """
    every = [*overrides, *extra_overrides, *_tracking_overrides(**tracking)]
    run_guarded(lambda: _meta_train(tasks_spec, config_path, out_dir, every, progress))


def _meta_train(
    tasks_spec: str | None,
    config_path: str | None,
    out_dir: str | None,
    overrides: list[str],
    progress: bool,
) -> None:
    from pathlib import Path

    from metakd.config import load_train_config
    from metakd.train import meta_train

    if tasks_spec is not None:
        overrides = [*overrides, f"tasks={tasks_spec}"]
    config = load_train_config(config_path, overrides)
    out = Path(out_dir or _default_out("meta-train"))
    result = meta_train(config, out_dir=out, progress=progress)
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
    else:
        console.print("no usable meta-test tasks: no held-out AUROC to report")
    console.print(f"teacher: {out / 'teacher.pt'}", soft_wrap=True)


@main.command("adapt")
@_TEACHER_OPTION
@click.option(
    "--support",
    "support_path",
    required=True,
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
@click.option("--out", "out_dir", required=True, help="Output directory.")
@_CONFIG_OPTION
@_SET_OPTION
@_tracking_options
def adapt_command(
    teacher_path: str,
    support_path: str,
    unlabeled_path: str | None,
    eval_path: str | None,
    out_dir: str,
    config_path: str | None,
    overrides: tuple[str, ...],
    **tracking: Any,
) -> None:
    """Adapt a teacher to a new domain, distil a student and calibrate a threshold.

    Writes OUT/teacher.pt, OUT/student.pt, OUT/student.torchscript.pt and OUT/report.json.
    """
    run_guarded(
        lambda: _adapt(
            teacher_path,
            support_path,
            unlabeled_path,
            eval_path,
            out_dir,
            config_path,
            [*overrides, *_tracking_overrides(**tracking)],
        )
    )


def _adapt(
    teacher_path: str,
    support_path: str,
    unlabeled_path: str | None,
    eval_path: str | None,
    out_dir: str,
    config_path: str | None,
    overrides: list[str],
) -> None:
    from pathlib import Path

    from metakd.adapt import AdaptConfig, run_adapt
    from metakd.configio import load

    config = load(AdaptConfig, config_path, overrides)
    report = run_adapt(
        config,
        teacher_path=Path(teacher_path),
        support_path=Path(support_path),
        unlabeled_path=Path(unlabeled_path) if unlabeled_path else None,
        eval_path=Path(eval_path) if eval_path else None,
        out_dir=Path(out_dir),
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
    default="label",
    show_default=True,
    help="Column to ignore as labels in csv/parquet input.",
)
def score_command(model_path: str, data_path: str, out_path: str | None, label_column: str) -> None:
    """Score rows with an adapted detector: one output row per input row, in order, with
    columns `score` (higher = more anomalous) and `is_anomaly`."""
    run_guarded(lambda: _score(model_path, data_path, out_path, label_column))


def _score(model_path: str, data_path: str, out_path: str | None, label_column: str) -> None:
    from pathlib import Path

    from metakd.adapt import load_scorer, score_rows
    from metakd.checkpoint import atomic_write_text
    from metakd.data.readers import ReadOptions, read_task

    if out_path is not None:
        _check_score_output(Path(out_path), inputs=[Path(model_path), Path(data_path)])
    scorer = load_scorer(model_path)
    task = read_task(data_path, ReadOptions(label_column=label_column))
    scores, flags = score_rows(scorer, task.X)
    lines = ["score,is_anomaly", *(f"{s:.9g},{int(f)}" for s, f in zip(scores, flags, strict=True))]
    text = "\n".join(lines) + "\n"
    if out_path is None:
        click.echo(text, nl=False)
    else:
        atomic_write_text(Path(out_path), text)
        click.echo(
            f"scored {len(scores)} rows ({int(flags.sum())} flagged) -> {out_path}", err=True
        )


def _check_score_output(out: Path, *, inputs: list[Path]) -> None:
    """Refuse an output path that is one of the inputs or holds a model (never overwritten)."""
    for path in inputs:
        if out.exists() and path.exists() and out.resolve() == path.resolve():
            raise MetakdError(f"--out {out} is also an input of this command; choose another file")
    if out.is_file() and out.suffix in (".pt", ".pth", ".onnx"):
        raise MetakdError(f"--out {out} is a model file; metakd score never overwrites models")


@main.command("evaluate")
@_TEACHER_OPTION
@click.option(
    "--tasks",
    "tasks_spec",
    default=None,
    metavar="PATH_OR_NAME",
    help="Collection to evaluate on (default: the teacher's own, its meta-test tasks).",
)
@click.option("--shots", default=None, metavar="K,K,...", help="Normal shots, e.g. 1,5,10,20.")
@click.option("--anomaly-shots", default=None, metavar="A,A,...", help="Anomaly shots, e.g. 0,1,5.")
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Repetitions per setting.")
@click.option(
    "--out", "out_dir", default=None, help="Output directory (default: runs/evaluate-TIME)."
)
@_CONFIG_OPTION
@_SET_OPTION
@_PROGRESS_OPTION
@_tracking_options
def evaluate_command(
    teacher_path: str,
    tasks_spec: str | None,
    shots: str | None,
    anomaly_shots: str | None,
    seeds: int | None,
    out_dir: str | None,
    config_path: str | None,
    overrides: tuple[str, ...],
    progress: bool,
    **tracking: Any,
) -> None:
    """Benchmark the teacher's few-shot adaptation (teacher and distilled student) against
    baselines on held-out tasks, on identical disjoint support / pool / query splits.

    Writes OUT/results.csv, OUT/summary.md and OUT/auroc_vs_shots.png.
    """
    every = list(overrides)
    if tasks_spec is not None:
        every.append(f"tasks={tasks_spec}")
    for key, value in (("shots", shots), ("anomaly_shots", anomaly_shots)):
        if value is not None:
            every.append(f"{key}=[{value}]")
    if seeds is not None:
        every.append(f"seeds={seeds}")
    every += _tracking_overrides(**tracking)
    run_guarded(lambda: _evaluate(teacher_path, out_dir, config_path, every, progress))


def _evaluate(
    teacher_path: str,
    out_dir: str | None,
    config_path: str | None,
    overrides: list[str],
    progress: bool,
) -> None:
    from pathlib import Path

    from metakd.evaluate import load_evaluate_config, run_evaluation

    config = load_evaluate_config(config_path, overrides)
    out = Path(out_dir or _default_out("evaluate"))
    result = run_evaluation(config, teacher_path=Path(teacher_path), out_dir=out, progress=progress)
    console = _console()
    for line in result.skipped:
        console.print(f"skipped: {line}", soft_wrap=True)
    console.print((out / "summary.md").read_text(), soft_wrap=True)
    console.print(
        f"{len(result.results)} runs in {result.seconds:.0f} s; wrote "
        + ", ".join(str(p) for p in result.files.values()),
        soft_wrap=True,
    )
