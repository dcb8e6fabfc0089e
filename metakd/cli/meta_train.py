"""``metakd meta-train``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from metakd.cli.guard import run_guarded
from metakd.cli.options import (
    as_overrides,
    config_option,
    default_out,
    device_option,
    out_option,
    overwrite_option,
    progress_option,
    set_option,
    tasks_option,
    tracking_options,
    tracking_overrides,
)
from metakd.cli.render import print_meta_train
from metakd.errors import ConfigError


@click.command("meta-train")
@tasks_option(help="Task collection (overrides the config's `tasks`; default: built-in synthetic).")
@config_option()
@out_option(help="Run directory (default: runs/meta-train-TIME).")
@click.option(
    "--resume",
    "resume_dir",
    default=None,
    metavar="RUN_DIR",
    help="Continue the interrupted run whose --out was RUN_DIR (stopped by Ctrl-C, SIGTERM or a "
    "kill) from its newest checkpoint, and finish it into RUN_DIR. Its config applies; --config "
    "and --set may change only iterations, patience, checkpoint_every and tracking.*.",
)
@click.option(
    "--dist-timeout",
    type=click.FloatRange(min=1),
    default=600.0,
    show_default=True,
    help="Under torchrun: seconds a rank waits for the others before it stops with an error.",
)
@overwrite_option()
@set_option("inner.steps=5")
@device_option()
@progress_option()
@tracking_options
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
    tracking_mode: str | None,
    wandb_project: str | None,
    wandb_entity: str | None,
    wandb_group: str | None,
    wandb_tags: tuple[str, ...],
    run_name: str | None,
    extra_overrides: tuple[str, ...],
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
    every = [*overrides, *extra_overrides, *as_overrides({"device": device})]
    every += tracking_overrides(
        tracking_mode=tracking_mode,
        wandb_project=wandb_project,
        wandb_entity=wandb_entity,
        wandb_group=wandb_group,
        wandb_tags=wandb_tags,
        run_name=run_name,
    )
    # --tasks last: it wins over a `tasks=` of --set.
    every += as_overrides({"tasks": tasks_spec})

    def body() -> None:
        from metakd.launch import launch_meta_train
        from metakd.train import TrainingInterrupted

        if resume_dir is not None and out_dir is not None:
            raise ConfigError(
                "give --resume RUN_DIR or --out, not both: a resumed run ends in RUN_DIR"
            )
        out = Path(resume_dir or out_dir or default_out("meta-train"))
        try:
            launched = launch_meta_train(
                config_path,
                every,
                out,
                progress=progress,
                overwrite=overwrite,
                resume=resume_dir is not None,
                dist_timeout=dist_timeout,
            )
        except TrainingInterrupted as stop:
            click.echo(f"error: {stop}; resume with: metakd meta-train --resume {out}", err=True)
            sys.exit(stop.exit_code)
        if launched is not None:  # None: a rank other than 0 of a torchrun job; rank 0 reports
            print_meta_train(*launched, out)

    run_guarded(body)
