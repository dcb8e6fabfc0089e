"""``metakd adapt``: one domain (``--support``) or every domain of a folder (``--support-dir``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from metakd.cli.guard import run_guarded
from metakd.cli.options import (
    as_overrides,
    config_option,
    device_option,
    out_option,
    overwrite_option,
    progress_option,
    set_option,
    teacher_option,
    tracking_options,
    tracking_overrides,
)
from metakd.cli.render import print_adapt, print_adapt_dir
from metakd.errors import MetakdError


def _path(value: str | None) -> Path | None:
    """An optional path flag as a path (an empty value is not given)."""
    return Path(value) if value else None


@click.command("adapt")
@teacher_option()
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
@out_option(required=True, help="Output directory.")
@overwrite_option()
@config_option()
@set_option("inner.steps=5")
@device_option()
@progress_option()
@tracking_options
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
    tracking_mode: str | None,
    wandb_project: str | None,
    wandb_entity: str | None,
    wandb_group: str | None,
    wandb_tags: tuple[str, ...],
    run_name: str | None,
) -> None:
    """Adapt a teacher to a new domain, distil a student and calibrate a threshold.

    Writes OUT/teacher.pt, OUT/student.pt, OUT/student.torchscript.pt and OUT/report.json.
    With --support-dir, every domain of the folder: OUT/DOMAIN/ each and OUT/summary.csv.
    """
    every = [*overrides, *as_overrides({"device": device})]
    every += tracking_overrides(
        tracking_mode=tracking_mode,
        wandb_project=wandb_project,
        wandb_entity=wandb_entity,
        wandb_group=wandb_group,
        wandb_tags=wandb_tags,
        run_name=run_name,
    )

    def one_domain(support: str) -> None:
        from metakd.jobs.adapt import adapt_domain

        config, report = adapt_domain(
            teacher_path=Path(teacher_path),
            support_path=Path(support),
            unlabeled_path=_path(unlabeled_path),
            eval_path=_path(eval_path),
            out_dir=Path(out_dir),
            config_path=config_path,
            overrides=every,
            overwrite=overwrite,
            progress=progress,
        )
        print_adapt(config, report, teacher=teacher_path, support=support, out=out_dir)

    def every_domain() -> None:
        from metakd.jobs.adapt_dir import adapt_folder

        if support_dir is None:
            if support_path is not None:
                raise MetakdError("--unlabeled-dir and --eval-dir go with --support-dir")
            raise MetakdError("adapt needs --support FILE or --support-dir DIR")
        if support_path is not None:
            raise MetakdError("--support and --support-dir exclude each other")
        for flag, value in (("--unlabeled", unlabeled_path), ("--eval", eval_path)):
            if value is not None:
                raise MetakdError(
                    f"{flag} FILE goes with --support; with --support-dir use {flag}-dir"
                )
        rows = adapt_folder(
            teacher_path=Path(teacher_path),
            support_dir=Path(support_dir),
            unlabeled_dir=None if unlabeled_dir is None else Path(unlabeled_dir),
            eval_dir=None if eval_dir is None else Path(eval_dir),
            out_dir=Path(out_dir),
            config_path=config_path,
            overrides=every,
            overwrite=overwrite,
            progress=progress,
        )
        print_adapt_dir(rows, teacher=teacher_path, support_dir=support_dir, out=out_dir)
        failed = [row["domain"] for row in rows if row["status"] != "ok"]
        if failed:
            # The finished domains are in place; the exit status says that some are missing.
            raise MetakdError(
                f"{len(failed)} of {len(rows)} domains failed ({', '.join(failed)}); see "
                f"{out_dir}/summary.csv"
            )

    def with_flags(body: Callable[[], None]) -> None:
        from metakd.data.readers.options import ColumnFlags, column_flags

        # adapt has no column flags: messages about columns name the config key and --set.
        with column_flags(ColumnFlags(set_flag=True)):
            body()

    if support_path is None or any(d is not None for d in (support_dir, unlabeled_dir, eval_dir)):
        run_guarded(lambda: with_flags(every_domain))
    else:
        run_guarded(lambda: with_flags(lambda: one_domain(support_path)))
