"""``metakd evaluate``."""

from __future__ import annotations

from pathlib import Path

import click

from metakd.cli.guard import run_guarded
from metakd.cli.options import (
    CommaList,
    as_overrides,
    config_option,
    default_out,
    device_option,
    out_option,
    overwrite_option,
    progress_option,
    set_option,
    tasks_option,
    teacher_option,
    tracking_options,
    tracking_overrides,
)
from metakd.cli.render import print_evaluation


@click.command("evaluate")
@teacher_option(required=False, help="teacher.pt from metakd meta-train (not with --folds).")
@tasks_option(help="Collection to evaluate on (default: the teacher's own, its meta-test tasks).")
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
@out_option(help="Output directory (default: runs/evaluate-TIME).")
@overwrite_option()
@config_option()
@set_option("train.iterations=100")
@device_option()
@progress_option()
@tracking_options
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
    tracking_mode: str | None,
    wandb_project: str | None,
    wandb_entity: str | None,
    wandb_group: str | None,
    wandb_tags: tuple[str, ...],
    run_name: str | None,
) -> None:
    """Benchmark the teacher's few-shot adaptation (teacher and distilled student) against
    baselines on held-out tasks, on identical disjoint support / pool / query splits; or, with
    --folds, leave the domains of --tasks out in turn (a teacher meta-trained per fold).

    Writes OUT/results.csv, OUT/summary.md and OUT/auroc_vs_shots.png.
    """
    every = [*overrides]
    every += as_overrides(
        {
            "tasks": tasks_spec,
            "folds": folds,
            "shots": None if shots is None else CommaList(shots),
            "anomaly_shots": None if anomaly_shots is None else CommaList(anomaly_shots),
            "seeds": seeds,
            "adapt.device": device,
        }
    )
    every += tracking_overrides(
        tracking_mode=tracking_mode,
        wandb_project=wandb_project,
        wandb_entity=wandb_entity,
        wandb_group=wandb_group,
        wandb_tags=wandb_tags,
        run_name=run_name,
    )

    def body() -> None:
        from metakd.jobs.evaluate import evaluate

        out = Path(out_dir or default_out("evaluate"))
        done = evaluate(
            teacher_path=None if teacher_path is None else Path(teacher_path),
            out_dir=out,
            config_path=config_path,
            overrides=every,
            overwrite=overwrite,
            progress=progress,
        )
        print_evaluation(done, out=out)

    run_guarded(body)
