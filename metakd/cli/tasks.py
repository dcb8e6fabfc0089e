"""``metakd tasks list`` and ``metakd tasks show``."""

from __future__ import annotations

import click

from metakd.cli.guard import run_guarded
from metakd.cli.render import print_catalogue, print_collection


@click.group("tasks")
def tasks_group() -> None:
    """Inspect task collections (built-ins, manifests in tasks/, directories, files)."""


@tasks_group.command("list")
def tasks_list() -> None:
    """List the built-in collections, the manifests in tasks/ and the teacher kinds."""

    def body() -> None:
        from metakd.jobs.tasks import catalogue

        print_catalogue(catalogue())

    run_guarded(body)


@tasks_group.command("show")
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

    def body() -> None:
        from metakd.jobs.tasks import view_collection

        view = view_collection(
            spec, shots=shots, anomaly_shots=anomaly_shots, query_size=query_size
        )
        print_collection(view)

    run_guarded(body)
