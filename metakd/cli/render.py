"""What the commands print: rich tables on standard output, notes on standard error.

Functions here only format what a job returned; they read and write no file.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

if TYPE_CHECKING:
    from metakd.config import TrainConfig
    from metakd.detect import AdaptConfig
    from metakd.jobs.evaluate import Evaluation
    from metakd.jobs.score import ScoreJob
    from metakd.jobs.tasks import Catalogue, CollectionView
    from metakd.train import TrainResult

#: Names of the methods in meta-train's held-out table. ``untrained`` is the same teacher at its
#: initialisation (another seed): a random network for most kinds, but for the default
#: ``profile`` teacher the kNN hedge it starts as, so never called a random init.
_HELD_OUT_LABELS = {
    "metakd": "metakd (meta-learned init, adapted)",
    "untrained": "same teacher, not meta-trained (its initialisation), adapted",
    "knn_support": "kNN distance to the support normals (reference)",
    "knn_pool": "kNN density in the unlabelled pool (reference)",
}
_METRICS = ["auroc", "auprc", "precision", "recall", "f1"]


def _distinct(*values: float) -> list[str]:
    """AUROCs to 3 decimals, or as many more (up to 6) as it takes for values that differ to
    print differently: a share chosen over 0.9997 against 1.0 must not read "1.000 at 0"."""
    for digits in range(3, 7):
        text = [f"{v:.{digits}f}" for v in values]
        if len(set(text)) == len(set(values)):
            break
    return text


def _held_out_label(key: str) -> str:
    """The row name of a held-out report key (an old key, e.g. ``random_init``, as its new)."""
    from metakd.train.references import report_key

    return _HELD_OUT_LABELS.get(report_key(key), key)


#: The width of standard output when it is not a terminal: wide enough that no table is ever
#: squeezed or cut (a file or a pipe has no width; rich would assume 80 columns).
UNBOUNDED_WIDTH = 100_000


def console() -> Console:
    """The console of standard output: the terminal's width on a terminal (where
    :func:`print_table` fits tables to it), else unbounded (pipes, files, tests)."""
    width = None if sys.stdout.isatty() else UNBOUNDED_WIDTH
    return Console(width=width, highlight=False, markup=False)


def _natural_width(out: Console, table: Table) -> int:
    return Measurement.get(out, out.options.update_width(UNBOUNDED_WIDTH), table).maximum


def print_table(out: Console, table: Table) -> None:
    """Print ``table`` whole, whatever the width: where it is wider than a terminal, first
    without its frame (columns two spaces apart), then with cells folded onto more lines. A
    cell is never cut (rich's default ends it with an ellipsis)."""
    for column in table.columns:
        column.overflow = "fold"
        column.no_wrap = False
    if _natural_width(out, table) > out.width:
        table.box = box.SIMPLE_HEAD
        table.show_edge = False
        table.pad_edge = False
        table.padding = (0, 1, 0, 0)
    out.print(table)


def print_catalogue(found: Catalogue) -> None:
    """``metakd tasks list``: the collections, then the teacher kinds."""
    table = Table(title="Task collections")
    table.add_column("name", no_wrap=True)
    table.add_column("kind")
    table.add_column("description")
    for name, kind, description in found.collections:
        table.add_row(name, kind, description)
    print_table(console(), table)
    kinds = Table(title="Teachers (model.kind)")
    kinds.add_column("kind", no_wrap=True)
    kinds.add_column("when to use it")
    for i, (name, use_when) in enumerate(found.teachers.items()):
        kinds.add_row(f"{name} (default)" if i == 0 else name, use_when)
    print_table(console(), kinds)
    learners = Table(title="Meta-learners (meta.algorithm)")
    learners.add_column("algorithm", no_wrap=True)
    learners.add_column("what it is")
    for i, (name, summary) in enumerate(found.learners.items()):
        learners.add_row(f"{name} (default)" if i == 0 else name, summary)
    print_table(console(), learners)
    console().print(
        "Inner optimisers (inner.optimizer, any meta-learner): "
        + ", ".join(f"{o} (default)" if i == 0 else o for i, o in enumerate(found.optimizers))
    )


def print_collection(view: CollectionView) -> None:
    """``metakd tasks show``: one row per task, the counts, the unusable tasks and a note."""
    collection, config = view.collection, view.episode
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
    for task, shortfall in zip(collection.tasks, view.shortfalls, strict=True):
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

    out = console()
    print_table(out, table)
    counts = ", ".join(f"{key} {len(names)}" for key, names in collection.splits.items())
    out.print(
        f"{len(collection.tasks)} tasks ({counts}); usable for episodes with "
        f"shots={config.shots}, anomaly_shots={config.anomaly_shots}, "
        f"query_size={config.query_size}: {len(collection.tasks) - len(unusable)} "
        f"(query_anomaly_fraction={config.query_anomaly_fraction}, "
        f"pool_size={config.pool_size})",
        soft_wrap=True,
    )
    for name, shortfall in unusable:
        out.print(f"  not usable: {name}: {shortfall}", soft_wrap=True)
    if view.note is not None:
        out.print(f"note: {view.note}", soft_wrap=True)


def print_meta_train(config: TrainConfig, result: TrainResult, out: Path) -> None:
    """``metakd meta-train``: the best meta-val AUROC, the held-out table and the teacher."""
    from metakd.checkpoint import fitted_shares  # after a run: torch is loaded by then

    out_console = console()
    out_console.print(
        f"meta-trained {config.meta.algorithm} ({config.model.kind} teacher) on {config.tasks} in "
        f"{result.seconds:.0f} s; best meta-val AUROC "
        + (f"{result.best_val_auroc:.3f}" if result.best_val_auroc is not None else "n/a")
        + f" at iteration {result.best_iteration}"
        + (
            ""
            if result.stopped_at is None
            else f" (stopped early at iteration {result.stopped_at} of {config.iterations}: no "
            f"better meta-val AUROC in {config.patience} validations)"
        ),
        soft_wrap=True,
    )
    if result.best_val_auroc is not None and result.best_iteration == 0:
        out_console.print(
            "note: no meta-training iterate beat the initialisation on the meta-val tasks, so the "
            "saved teacher is the initialisation",
            soft_wrap=True,
        )
    if result.pool_share is not None:
        fit = result.pool_share
        if fit["episodes"]:
            share, auroc = f"{fit['share']:g}", fit["auroc"]
            at_0, at_1, at_share = _distinct(auroc["0"], auroc["1"], auroc[share])
            chosen = f", {at_share} at {share}" if share not in ("0", "1") else ""
            fitted = fit.get("groups", {"meta-train": fit})  # one group before groups were kept
            groups = " and ".join(
                f"{name} (adapted from the initialisation)"
                if group.get("adapted_from") == "initialisation"
                else name
                for name, group in fitted.items()
                if group["episodes"]
            )
            out_console.print(
                f"pool Gaussian share {share} in adapted scores (fitted on {fit['episodes']} "
                f"episodes of the {groups} domains: mean AUROC {at_0} at 0, the "
                f"teacher alone, {at_1} at 1, the Gaussian alone{chosen})",
                soft_wrap=True,
            )
            if fit.get("knn_share"):
                with_knn, without = _distinct(fit["auroc_knn"][share], auroc[share])
                out_console.print(
                    f"pool kNN share {fit['knn_share']:g} of the teacher's part (mean AUROC "
                    f"{with_knn} with it, {without} without, at Gaussian share {share})",
                    soft_wrap=True,
                )
            if "pool_share_anomalies" in fitted_shares(fit):  # the share a teacher.pt stores
                anomalies = fit["with_anomalies"]
                at_0, at_1 = _distinct(anomalies["auroc"]["0"], anomalies["auroc"]["1"])
                out_console.print(
                    f"pool Gaussian share {anomalies['share']:g} where the support holds labelled "
                    f"anomalies (fitted the same way with {anomalies['anomaly_shots']} in each: "
                    f"{at_0} at 0, {at_1} at 1)",
                    soft_wrap=True,
                )
        else:
            out_console.print(
                "pool Gaussian share 0: no meta-train or meta-val domain had labelled anomalies "
                "to fit it on",
                soft_wrap=True,
            )
    if result.test_auroc:
        table = Table(
            title=f"Held-out few-shot AUROC ({', '.join(result.test_tasks)}; "
            f"{config.episode.shots} normal shots, {config.episode.anomaly_shots} anomaly shots)"
        )
        table.add_column("method")
        table.add_column("mean AUROC", justify="right")
        for key, value in result.test_auroc.items():
            table.add_row(_held_out_label(key), f"{value:.3f}")
        print_table(out_console, table)
        ours = result.test_auroc["metakd"]
        below = [
            _held_out_label(k) for k, v in result.test_auroc.items() if k != "metakd" and v > ours
        ]
        if below:
            warnings.warn(
                f"the meta-learned teacher ({ours:.3f}) is below {'; '.join(below)} on the "
                "held-out tasks: meta-training did not help here (fewer iterations, a smaller "
                "meta.meta_lr or more meta-train tasks may)",
                stacklevel=1,
            )
    else:
        out_console.print(
            "no held-out tasks, so no held-out AUROC to report: a folder or manifest is "
            "meta-trained on every task but the validation ones (--set split.test=0.2 holds some "
            "out and reports on them)",
            soft_wrap=True,
        )
    out_console.print(f"teacher: {out / 'teacher.pt'}", soft_wrap=True)


def print_adapt(
    config: AdaptConfig, report: dict[str, Any], *, teacher: str, support: str, out: str
) -> None:
    """``metakd adapt --support``: the detectors, the threshold rule, timings and fidelity."""
    table = Table(title=f"adapted {teacher} to {support}")
    table.add_column("detector")
    table.add_column("parameters", justify="right")
    table.add_column("threshold", justify="right")
    evaluation = report.get("eval", {})
    for name in _METRICS if evaluation else []:
        table.add_column(name, justify="right")
    for net in ("teacher", "student"):
        if f"{net}_parameters" not in report:
            continue
        row = [net, str(report[f"{net}_parameters"]), f"{report[f'{net}_threshold']:.4g}"]
        row += [f"{evaluation[net][m]:.3f}" for m in _METRICS] if evaluation else []
        table.add_row(*row)
    out_console = console()
    print_table(out_console, table)
    method = report["threshold_method"]
    rule = {
        "contamination": f"the top {config.threshold.contamination:.0%} of the unlabelled rows "
        "are anomalous (threshold.contamination)",
        "normal_quantile": f"the {config.threshold.normal_quantile:.0%} quantile of the support "
        "normals' "
        + (
            f"cross-fitted scores (threshold.normal_quantile, {config.threshold.folds} folds)"
            if report.get("threshold_cross_fitted")
            else "scores (threshold.normal_quantile)"
        ),
        "f1": "best F1 on the labelled support",
    }.get(method, method)
    out_console.print(f"threshold rule: {method}: {rule}", soft_wrap=True)
    mixed = [
        f"{what} (adapt.{key} {report[key]:g})"
        for key, what in (
            ("linear_mix", "the labelled rows' ridge discriminant"),
            ("anomaly_mix", "the nearest normal against the nearest labelled anomaly"),
        )
        if report.get(key)
    ]
    if mixed:
        out_console.print(
            f"teacher score: standardised and mixed with {' and '.join(mixed)}", soft_wrap=True
        )
    timings = report["timings"]
    out_console.print(
        "adapt {:.2f} s, distil {:.2f} s; fidelity (Spearman) {}; wrote {}".format(
            timings["adapt_seconds"],
            timings.get("distill_seconds", 0.0),
            f"{report['fidelity_spearman']:.3f}" if "fidelity_spearman" in report else "n/a",
            out,
        ),
        soft_wrap=True,
    )


def print_adapt_dir(
    rows: list[dict[str, Any]], *, teacher: str, support_dir: str, out: str
) -> None:
    """``metakd adapt --support-dir``: one row per domain and where the files are."""
    table = Table(title=f"adapted {teacher} to the domains of {support_dir}")
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
    out_console = console()
    print_table(out_console, table)
    out_console.print(f"wrote {out}/DOMAIN/ and {out}/summary.csv", soft_wrap=True)


def note_windows(job: ScoreJob) -> None:
    """``metakd score`` of a windowed model: how the series became windows (standard error)."""
    assert job.window is not None
    click.echo(
        f"windowed {job.series_rows} rows into {job.windows} windows of {job.window.size} "
        f"(stride {job.window.stride}), as the teacher was meta-trained",
        err=True,
    )


def note_scored(job: ScoreJob, *, out: str) -> None:
    """``metakd score --out``: how many rows were scored and flagged (standard error)."""
    what = "windows" if job.window is not None else "rows"
    click.echo(f"scored {job.scored} {what} ({job.flagged} flagged) -> {out}", err=True)


def print_evaluation(done: Evaluation, *, out: Path) -> None:
    """``metakd evaluate``: skipped settings, the student against the best baseline, files."""
    out_console = console()
    result = done.result
    for line in result.skipped:
        out_console.print(f"skipped: {line}", soft_wrap=True)
    # The key table only; every method's numbers with intervals are in summary.md.
    table = Table(title="metakd's student against the best baseline (mean AUROC)")
    for column in ("A", "K", "student", "best baseline", "its AUROC", "gap"):
        table.add_column(column, justify="left" if column == "best baseline" else "right")
    for row in done.headline.itertuples():
        failed = f" ({row.student_failed} failed)" if row.student_failed else ""
        table.add_row(
            str(row.anomaly_shots),
            str(row.shots),
            f"{row.student:.3f}{failed}",
            str(row.best_baseline),
            f"{row.best_auroc:.3f}",
            f"{row.gap:+.3f}",
        )
    print_table(out_console, table)
    out_console.print(f"all methods, with 95 % intervals: {out / 'summary.md'}", soft_wrap=True)
    out_console.print(
        f"{len(result.results)} runs in {result.seconds:.0f} s; wrote "
        + ", ".join(str(out / p.name) for p in result.files.values()),
        soft_wrap=True,
    )
