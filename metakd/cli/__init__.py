"""The ``metakd`` command line: the group :func:`main` and one module per command.

The layers: a command module here declares its flags, turns them into config overrides
(:func:`~metakd.cli.options.as_overrides`), calls its job in :mod:`metakd.jobs` (which reads
and writes the files) and prints what the job returned (:mod:`metakd.cli.render`). Nothing in
this package reads or writes a file.

Every command body runs through :func:`run_guarded`: a :class:`~metakd.errors.MetakdError`
(bad file, key or value) prints ``error: <message>`` on stderr and exits with status 2, without a
traceback; warnings print as ``warning: <message>``. Add a command in its own module,
``metakd/cli/mine.py``::

    @click.command("mine")
    @config_option()
    def mine_command(config_path: str | None) -> None:
        run_guarded(lambda: print_mine(run_mine(config_path)))

and register it below with ``main.add_command(mine_command)``.
"""

from __future__ import annotations

import click

from metakd import __version__
from metakd.cli.adapt import adapt_command
from metakd.cli.evaluate import evaluate_command
from metakd.cli.guard import INTERRUPTED_EXIT, USER_ERROR_EXIT, run_guarded
from metakd.cli.meta_train import meta_train_command
from metakd.cli.score import build_score_command
from metakd.cli.tasks import tasks_group

__all__ = ["INTERRUPTED_EXIT", "SCORE_CHUNK_ROWS", "USER_ERROR_EXIT", "main", "run_guarded"]

#: Rows read and scored at a time by ``metakd score`` (``None``: sized by the input's width, see
#: :data:`metakd.data.readers.CHUNK_VALUES`).
SCORE_CHUNK_ROWS: int | None = None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="metakd")
def main() -> None:
    """metakd: meta-learned few-shot anomaly detection."""


def _score_chunk_rows() -> int | None:
    # Read at each run, not at import: a test sets SCORE_CHUNK_ROWS small to exercise chunking.
    return SCORE_CHUNK_ROWS


main.add_command(tasks_group)
main.add_command(meta_train_command)
main.add_command(adapt_command)
main.add_command(build_score_command(chunk_rows=_score_chunk_rows))
main.add_command(evaluate_command)
