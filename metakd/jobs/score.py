"""``metakd score``: score a file's rows with an adapted detector into a CSV, chunk by chunk.

Rows are read and scored in chunks (:func:`~metakd.data.readers.read_row_chunks`), so memory
stays bounded whatever the size of a csv or parquet input; a model meta-trained on windows of a
time series scores the windows of the whole series instead. The model is a detector checkpoint
(``teacher.pt``, ``student.pt``) or an ONNX export (``student.onnx``, run by ONNX Runtime, its
columns, threshold and windows read from its metadata); a TorchScript archive is refused: it is a
program, and loading a model never runs a file's code.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from metakd.checkpoint import atomic_write_bytes
from metakd.config import resolve_device
from metakd.configio import load
from metakd.data.readers import ReadOptions, read_row_chunks, read_task
from metakd.data.windows import WindowConfig, window_starts, window_task
from metakd.detect import ScoreConfig, score_rows
from metakd.detect.config import SCORE_BLOCK_ROWS
from metakd.detect.scoring import check_width
from metakd.detect.validation import as_rows
from metakd.errors import MetakdError
from metakd.exports import OnnxScorer, is_torchscript_archive, load_onnx_scorer
from metakd.models.deploy import DeployedScorer
from metakd.persist import (
    InputSchema,
    load_detector_window,
    load_input_schema,
    load_scorer,
    windowing,
)

__all__ = ["ScoreJob", "check_score_output", "open_score", "save_scores", "stream_scores"]

#: A block of model input rows and the leading output cells of each (ids, window rows) or None.
Block = tuple[np.ndarray, list[list[str]] | None]


@dataclass
class ScoreJob:
    """A scoring run, ready to write: the model, the output header and the input in blocks."""

    scorer: DeployedScorer | OnnxScorer
    """A detector checkpoint's scorer, or an ONNX export's."""
    header: list[str]
    blocks: Iterator[Block]
    """Read lazily: a bad chunk stops the output where it is."""
    source: str
    """The file the blocks are read from, named in their errors."""
    window: WindowConfig | None = None
    """The windows scored (a model of windowed series), or ``None``: rows are scored."""
    series_rows: int = 0
    """Rows of the series that were windowed (with ``window``)."""
    windows: int = 0
    """Windows scored (with ``window``)."""
    scored: int = 0
    """Output rows written so far."""
    flagged: int = 0
    """Output rows flagged as anomalous so far."""

    def write_csv(self, handle: BinaryIO) -> None:
        """Score every block and write the CSV (header first) to ``handle``, left open."""
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="", write_through=True)
        rows = csv.writer(text, lineterminator="\n")
        rows.writerow(self.header)
        for X, lead in self.blocks:
            scores, flags = _score_block(self.scorer, X, self.source)
            cells = [[f"{s:.9g}", str(int(f))] for s, f in zip(scores, flags, strict=True)]
            if lead is not None:
                cells = [[*a, *c] for a, c in zip(lead, cells, strict=True)]
            rows.writerows(cells)
            self.scored += len(scores)
            self.flagged += int(flags.sum())
        # Detach, not close: the caller owns ``handle`` (a temp file or standard output).
        text.detach()


def open_score(
    *,
    model_path: Path,
    data_path: Path,
    out_path: Path | None,
    config_path: str | None,
    overrides: list[str],
    overwrite: bool,
    chunk_rows: int | None,
) -> ScoreJob:
    """Load the config (``--config``, ``--set``), check ``out_path``, load the model and open
    the data for :meth:`ScoreJob.write_csv`.

    Args:
        chunk_rows: rows read and scored at a time (``None``: sized by the input's width, see
            :data:`metakd.data.readers.CHUNK_VALUES`).
    """
    config = load(ScoreConfig, config_path, overrides)
    id_column = config.id_column
    if out_path is not None:
        inputs: list[tuple[str, Path | str | None]] = [
            ("--model", model_path),
            ("--data", data_path),
            ("--config", config_path),
        ]
        check_score_output(out_path, inputs=inputs, overwrite=overwrite)
    scorer, schema, record = _open_model(model_path, config.device)
    options = schema.read_options(
        label_column=config.label_column, ignore_columns=config.ignore_columns
    )
    window, options = _score_window(record, data_path, options)
    if window is None:
        chunks = read_row_chunks(data_path, options, rows=chunk_rows, id_column=id_column)
        blocks = ((c.X, None if c.ids is None else [[i] for i in c.ids]) for c in chunks)
        header = ([id_column] if id_column else []) + ["score", "is_anomaly"]
        return ScoreJob(scorer=scorer, header=header, blocks=blocks, source=str(data_path))
    # A model of windowed time series scores windows: the whole series is read at once.
    if id_column is not None:
        raise MetakdError(
            "--id-column: this model scores windows of rows (it was meta-trained on "
            "windows), so output rows are windows, named by first_row and last_row"
        )
    series = read_task(data_path, options)
    starts = window_starts(series.n_rows, window)
    spans = [[str(a), str(a + window.size - 1)] for a in starts.tolist()]
    return ScoreJob(
        scorer=scorer,
        header=["first_row", "last_row", "score", "is_anomaly"],
        blocks=iter([(window_task(series, window).X, spans)]),
        source=str(data_path),
        window=window,
        series_rows=series.n_rows,
        windows=len(starts),
    )


def stream_scores(job: ScoreJob) -> bool:
    """Write the scores to standard output as they are scored.

    Returns:
        ``False`` when the reader stopped (``| head``): not an error, but the output is cut.
    """
    try:
        job.write_csv(sys.stdout.buffer)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python's documented recipe: point stdout at devnull so the interpreter's final flush
        # does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False
    return True


def save_scores(job: ScoreJob, out_path: Path) -> None:
    """Write the scores to ``out_path``, which appears only once every row is scored."""
    atomic_write_bytes(out_path, job.write_csv)


def _open_model(
    path: Path, device: str
) -> tuple[DeployedScorer | OnnxScorer, InputSchema, dict[str, Any] | None]:
    """The scorer of ``path``, the columns it reads and its window record: a detector checkpoint
    moved to ``device``, or an ONNX export with its contract (run on the CPU)."""
    if path.suffix.lower() == ".onnx":
        if device != "auto" and resolve_device(device) != "cpu":
            raise MetakdError(
                f"device {device!r}: an ONNX model is scored on the CPU (ONNX Runtime's CPU "
                "provider); score the detector's student.pt to use another device"
            )
        onnx_scorer = load_onnx_scorer(path)
        return onnx_scorer, onnx_scorer.input_schema, onnx_scorer.contract["window"]
    if is_torchscript_archive(path):
        raise MetakdError(
            f"{path} is a TorchScript archive, a program: metakd score never runs a file's code; "
            "score student.pt beside it (the same student, loaded as data) or student.onnx"
        )
    scorer = load_scorer(path).to(resolve_device(device))
    return scorer, load_input_schema(path), load_detector_window(path)


def _score_block(
    scorer: DeployedScorer | OnnxScorer, X: np.ndarray, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [N], is_anomaly [N])`` of a block of rows read from the file ``source``, alike
    for both kinds of model: rows checked, scored in row blocks, a NaN or infinite score an
    error."""
    if isinstance(scorer, DeployedScorer):
        return score_rows(scorer, X, source=source)
    x = as_rows("data", X).numpy()
    check_width(x, scorer.input_dim, source=source)
    scores = np.concatenate(
        [scorer(x[a : a + SCORE_BLOCK_ROWS]) for a in range(0, len(x), SCORE_BLOCK_ROWS)]
    )
    bad = ~np.isfinite(scores)
    if bad.any():
        raise MetakdError(
            f"{int(bad.sum())} rows score NaN or infinite (first: row {int(np.argmax(bad))}); "
            "their values are beyond what the model's scaling handles"
        )
    return scores, (scores > scorer.threshold).astype(np.int64)


def _score_window(
    record: dict[str, Any] | None, data_path: Path, options: ReadOptions
) -> tuple[WindowConfig | None, ReadOptions]:
    """The windows ``score`` applies (the model's, ``record``, when the data has its raw series'
    width) and the options to read the data with: rows already windowed are taken as they are,
    in order (the stored columns are the raw series')."""
    if record is None:
        return None, options
    loose = dataclasses.replace(options, columns=None)
    first = next(iter(read_row_chunks(data_path, loose, rows=1)))  # the width, one row read
    window = windowing(record, first.X.shape[1])
    return window, (options if window is not None else loose)


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: resolved alike (symlinks, ``..``), or hard links."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


#: Suffixes of model files, which ``score --out`` never overwrites (any case).
MODEL_SUFFIXES = (".pt", ".pth", ".onnx")


def check_score_output(
    out: Path, *, inputs: Sequence[Path | tuple[str, Path | str | None]], overwrite: bool
) -> None:
    """Refuse an output path that is one of the inputs (``(flag, path)``, or bare paths) or
    holds a model (never overwritten), or any other existing file unless ``overwrite``."""
    for item in inputs:
        flag, path = item if isinstance(item, tuple) else ("", item)
        if path is None or str(path) == "":
            continue
        if _same_file(out, Path(path)):
            named = f" ({flag} {path})" if flag else ""
            raise MetakdError(
                f"--out {out} is also an input of this command{named}; choose another file"
            )
    if out.is_file() and out.suffix.lower() in MODEL_SUFFIXES:
        raise MetakdError(f"--out {out} is a model file; metakd score never overwrites models")
    if (out.exists() or out.is_symlink()) and not out.is_file():
        raise MetakdError(f"--out {out} exists and is not a file; choose another path")
    if out.exists() and not overwrite:
        raise MetakdError(f"--out {out} exists; pass --overwrite to replace it")
