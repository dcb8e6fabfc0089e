"""The flags several commands share, one factory each, and the one flag-to-override encoder.

Every flag that sets a config key reaches the config as a ``key=value`` override built by
:func:`as_overrides`, the same form as ``--set``; so a flag and ``--set`` never disagree on how
a value is read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CommaList:
    """A flag's comma-separated list (``--shots 1,5,10``), read as a YAML list of its items."""

    text: str


def as_overrides(values: Mapping[str, object]) -> list[str]:
    """``key=value`` config overrides for the flags that were given (``None``: not given).

    Values are JSON, which is valid YAML and keeps strings strings: ``--tasks 2024`` names the
    folder 2024, a run named ``1e3`` stays a string. A :class:`CommaList` becomes a YAML list.
    """
    overrides = []
    for key, value in values.items():
        if value is None:
            continue
        text = f"[{value.text}]" if isinstance(value, CommaList) else json.dumps(value)
        overrides.append(f"{key}={text}")
    return overrides


def default_out(kind: str) -> str:
    """The run folder a command writes when ``--out`` is not given: ``runs/KIND-TIME``."""
    return f"runs/{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def out_option(*, help: str, required: bool = False) -> Callable[[F], F]:
    """``--out`` (parameter ``out_dir``): the run folder a command writes."""
    return click.option("--out", "out_dir", required=required, default=None, help=help)


def tasks_option(*, help: str) -> Callable[[F], F]:
    """``--tasks`` (parameter ``tasks_spec``): a task collection, by path or name."""
    return click.option("--tasks", "tasks_spec", default=None, metavar="PATH_OR_NAME", help=help)


def teacher_option(
    *, required: bool = True, help: str = "teacher.pt from metakd meta-train."
) -> Callable[[F], F]:
    """``--teacher`` (parameter ``teacher_path``): a meta-trained teacher's file."""
    return click.option(
        "--teacher",
        "teacher_path",
        required=required,
        default=None,
        type=click.Path(dir_okay=False),
        help=help,
    )


def config_option() -> Callable[[F], F]:
    """``--config`` (parameter ``config_path``): the command's YAML config file."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="YAML config file (see configs/).",
    )


def set_option(example: str) -> Callable[[F], F]:
    """``--set KEY=VALUE`` (parameter ``overrides``), repeatable; ``example`` is one of the
    command's own keys (each command reads its own config)."""
    return click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help=f"Override a config key, e.g. --set {example} (repeatable).",
    )


def device_option() -> Callable[[F], F]:
    """``--device``: the torch device, overriding the config's."""
    return click.option(
        "--device",
        default=None,
        metavar="cpu|cuda|auto",
        help="Torch device: cpu, cuda (or cuda:N) or auto (CUDA when this machine has it); "
        "overrides the config's device.",
    )


def progress_option() -> Callable[[F], F]:
    """``--progress/--no-progress``: show a progress bar."""
    return click.option(
        "--progress/--no-progress", default=True, show_default=True, help="Show a progress bar."
    )


def overwrite_option() -> Callable[[F], F]:
    """``--overwrite``: replace an existing ``--out`` written by metakd."""
    return click.option(
        "--overwrite",
        is_flag=True,
        default=False,
        help="Replace an existing --out written by metakd (never any other folder or file).",
    )


def tracking_options(command: F) -> F:
    """Add the W&B tracking flags; :func:`tracking_overrides` turns them into overrides."""
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


def tracking_overrides(
    *,
    tracking_mode: str | None,
    wandb_project: str | None,
    wandb_entity: str | None,
    wandb_group: str | None,
    wandb_tags: tuple[str, ...],
    run_name: str | None,
) -> list[str]:
    """The ``tracking.*`` overrides of the flags added by :func:`tracking_options`."""
    return as_overrides(
        {
            "tracking.mode": tracking_mode,
            "tracking.project": wandb_project,
            "tracking.entity": wandb_entity,
            "tracking.group": wandb_group,
            "tracking.name": run_name,
            "tracking.tags": list(wandb_tags) or None,
        }
    )
