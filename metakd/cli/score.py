"""``metakd score``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from metakd.cli.guard import run_guarded
from metakd.cli.options import (
    as_overrides,
    config_option,
    device_option,
    overwrite_option,
    set_option,
)
from metakd.cli.render import note_scored, note_windows

if TYPE_CHECKING:
    from metakd.data.readers.options import ColumnFlags


def _score_flags() -> ColumnFlags:
    """What messages about columns tell a ``metakd score`` user to type."""
    from metakd.data.readers.options import ColumnFlags

    return ColumnFlags(
        ignore_flag="--ignore-column",
        id_flag="--id-column",
        label_flag="--label-column",
        ignore_key="ignore_columns",
        label_key="label_column",
    )


def build_score_command(*, chunk_rows: Callable[[], int | None]) -> click.Command:
    """The ``score`` command.

    Args:
        chunk_rows: the rows read and scored at a time, asked for at each run (``None``: sized
            by the input's width); :data:`metakd.cli.SCORE_CHUNK_ROWS` by default.
    """

    @click.command("score")
    @click.option(
        "--model",
        "model_path",
        required=True,
        type=click.Path(dir_okay=False),
        help=(
            "teacher.pt or student.pt written by metakd adapt, or its student.onnx (needs the "
            "onnx extra; columns and threshold read from its metadata). student.torchscript.pt "
            "is refused (a program): score student.pt, the same student."
        ),
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
    @overwrite_option()
    @config_option()
    @set_option("label_column=target")
    @device_option()
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
        missing or renamed column is an error naming it. The columns the model was adapted with
        as ignored (ids, timestamps) are ignored here too. An ONNX model is read alike, its
        columns, threshold and windows taken from its metadata, and scored on the CPU."""
        every = [*overrides]
        every += as_overrides(
            {
                "device": device,
                "label_column": label_column,
                "id_column": id_column,
                "ignore_columns": list(ignore_columns) or None,
            }
        )

        def body() -> None:
            from metakd.data.readers.options import column_flags

            # Messages about columns name this command's flags (rows are read as they are
            # scored, so the whole run is inside).
            with column_flags(_score_flags()):
                scored()

        def scored() -> None:
            from metakd.jobs.score import open_score, save_scores, stream_scores

            job = open_score(
                model_path=Path(model_path),
                data_path=Path(data_path),
                out_path=None if out_path is None else Path(out_path),
                config_path=config_path,
                overrides=every,
                overwrite=overwrite,
                chunk_rows=chunk_rows(),
            )
            if job.window is not None:
                note_windows(job)
            if out_path is None:
                # Rows reach standard output as they are scored; an error stops the stream
                # (exit 2), and a reader that stops early (`| head`) ends it with status 1.
                if not stream_scores(job):
                    sys.exit(1)
            else:
                save_scores(job, Path(out_path))
                note_scored(job, out=out_path)

        run_guarded(body)

    return score_command
