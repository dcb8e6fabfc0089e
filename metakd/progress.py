"""Progress of long jobs: a live bar on a terminal, plain log lines anywhere else.

A live bar redraws one line in place, which only a terminal can show: written to a file or a
pipe (a scheduler's log, ``metakd meta-train > train.log 2>&1``) it would print nothing until
the job ends. So :func:`progress_bar` draws rich's bar when standard output (or, failing that,
standard error) is a terminal, and otherwise writes a plain line to standard error when a job
starts, every :data:`PLAIN_INTERVAL` seconds while it runs, and when it ends::

    meta-train 120/1000 (12%) | 2.10 it/s | elapsed 0:00:57 | left 0:06:59 | loss 0.412

rich's own terminal detection decides, so ``FORCE_COLOR`` and ``TTY_COMPATIBLE`` apply.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Seconds between two plain progress lines of a job (its first and last line aside).
PLAIN_INTERVAL = 15.0


def _columns() -> tuple[Any, ...]:
    return (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )


class _Silent(Progress):
    """A progress display that shows nothing, not even the empty line rich 13.0 prints when a
    disabled display stops off a terminal."""

    def __init__(self, **options: Any) -> None:
        super().__init__(*_columns(), disable=True, **options)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(max(0.0, seconds))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


class PlainProgress(_Silent):
    """rich's :class:`~rich.progress.Progress` (the same calls and the same bookkeeping) with
    no live display: a plain line per job when it starts, at most every ``interval`` seconds
    while it is updated, and when it completes.

    Args:
        stream: where lines go (``None``: standard error as it is when a line is written).
        interval: seconds between two lines of one job.
        get_time: the clock (seconds), for tests; ``None``: rich's monotonic clock.
    """

    def __init__(
        self,
        *,
        stream: TextIO | None = None,
        interval: float = PLAIN_INTERVAL,
        get_time: Callable[[], float] | None = None,
    ) -> None:
        # A rate over the last minute: a few lines' worth, steadier than rich's 30 s.
        super().__init__(get_time=get_time, speed_estimate_period=60.0)
        self._stream = stream
        self._interval = interval
        self._last_line: dict[TaskID, float] = {}
        self._start: dict[TaskID, tuple[float, float]] = {}
        self._ended: set[TaskID] = set()

    def add_task(
        self,
        description: str,
        start: bool = True,
        total: float | None = 100.0,
        completed: int = 0,
        visible: bool = True,
        **fields: Any,
    ) -> TaskID:
        task_id = super().add_task(
            description, start=start, total=total, completed=completed, visible=visible, **fields
        )
        self._start[task_id] = (self.get_time(), float(completed))
        self._say(task_id)
        return task_id

    def update(
        self,
        task_id: TaskID,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        description: str | None = None,
        visible: bool | None = None,
        refresh: bool = False,
        **fields: Any,
    ) -> None:
        super().update(
            task_id,
            total=total,
            completed=completed,
            advance=advance,
            description=description,
            visible=visible,
            refresh=refresh,
            **fields,
        )
        self._maybe_say(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_say(task_id)

    def _maybe_say(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        if task.finished:
            if task_id not in self._ended:
                self._say(task_id)
        elif self.get_time() - self._last_line.get(task_id, -math.inf) >= self._interval:
            self._say(task_id)

    def line(self, task_id: TaskID) -> str:
        """The plain line of job ``task_id`` as it stands."""
        task = self._tasks[task_id]
        now = self.get_time()
        parts = [f"{task.description} {_count(task.completed)}"]
        if task.total is not None:
            share = 100.0 * task.completed / task.total if task.total else 100.0
            parts[0] += f"/{_count(task.total)} ({share:.0f}%)"
        started, completed_at_start = self._start.get(task_id, (now, 0.0))
        elapsed = now - started
        rate = task.speed
        if rate is None and elapsed > 0 and task.completed > completed_at_start:
            rate = (task.completed - completed_at_start) / elapsed
        if rate:
            parts.append(f"{rate:.2f} it/s" if rate >= 1 else f"{1 / rate:.1f} s/it")
        parts.append(f"elapsed {_clock(elapsed)}")
        if task.finished:
            parts.append("done")
        elif task.total is not None and rate:
            parts.append(f"left {_clock((task.total - task.completed) / rate)}")
        info = str(task.fields.get("info") or "").strip()
        if info:
            parts.append(info)
        return " | ".join(parts)

    def _say(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        if not task.visible:
            return
        self._last_line[task_id] = self.get_time()
        if task.finished:
            self._ended.add(task_id)
        stream = self._stream if self._stream is not None else sys.stderr
        stream.write(self.line(task_id) + "\n")
        stream.flush()


def progress_bar(*, enabled: bool) -> Progress:
    """The progress display of long jobs: per job its counts, rate, elapsed and remaining time
    and a free ``info`` field (e.g. the current loss), set with ``update(job, info=...)``.

    A live bar on standard output when it is a terminal, else on standard error when that is
    one; with neither, a :class:`PlainProgress` writing lines to standard error. Disabled: no
    output at all.
    """
    if not enabled:
        return _Silent()
    if Console().is_terminal:
        return Progress(*_columns(), transient=False)
    errors = Console(stderr=True)
    if errors.is_terminal:
        # Standard output is a file or a pipe: keep what is printed there out of the bar.
        return Progress(*_columns(), console=errors, transient=False, redirect_stdout=False)
    return PlainProgress()


__all__ = ["PLAIN_INTERVAL", "PlainProgress", "progress_bar"]
