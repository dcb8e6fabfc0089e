"""Progress: a live bar on a terminal; plain lines (start, every interval, end) anywhere else,
so a job whose output goes to a file says how far it is while it runs."""

from __future__ import annotations

import io

from rich.progress import Progress

from metakd.progress import PlainProgress, progress_bar
from metakd.tracking import progress_bar as tracking_progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_at_start_every_interval_and_at_the_end() -> None:
    clock, out = Clock(), io.StringIO()
    bar = PlainProgress(stream=out, interval=15.0, get_time=clock)
    with bar:
        job = bar.add_task("meta-train", total=100, completed=0, info="")
        for i in range(100):
            clock.now += 2.0  # 2 s per iteration: a line every 8 iterations
            bar.update(job, advance=1, info=f"loss {i}")
    lines = out.getvalue().splitlines()
    assert lines[0] == "meta-train 0/100 (0%) | elapsed 0:00:00"
    assert lines[1] == "meta-train 8/100 (8%) | 2.0 s/it | elapsed 0:00:16 | left 0:03:04 | loss 7"
    assert lines[-1] == "meta-train 100/100 (100%) | 2.0 s/it | elapsed 0:03:20 | done | loss 99"
    assert len(lines) == 1 + 12 + 1, "about one line per interval, not one per iteration"


def test_fast_jobs_say_their_rate_per_second_and_end_once() -> None:
    clock, out = Clock(), io.StringIO()
    bar = PlainProgress(stream=out, interval=15.0, get_time=clock)
    job = bar.add_task("distil student", total=300, info="")
    for _ in range(40):
        clock.now += 0.1
        bar.advance(job)
    bar.update(job, total=40, completed=40, info="fidelity 0.97")  # stopped early
    bar.update(job, info="again")  # finished jobs say nothing more
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("distil student 40/40 (100%) | 10.00 it/s | elapsed 0:00:04 | done")
    assert lines[1].endswith("fidelity 0.97")


def test_a_job_updated_without_advancing_still_says_what_it_does() -> None:
    clock, out = Clock(), io.StringIO()
    bar = PlainProgress(stream=out, interval=10.0, get_time=clock)
    job = bar.add_task("evaluate", total=4, info="")
    clock.now += 11.0
    bar.update(job, info="task-3 K=5 A=0 seed 0")
    assert out.getvalue().splitlines()[-1] == (
        "evaluate 0/4 (0%) | elapsed 0:00:11 | task-3 K=5 A=0 seed 0"
    )


def test_progress_bar_off_a_terminal_is_plain_and_disabled_is_silent(capsys) -> None:
    bar = progress_bar(enabled=True)  # pytest captures both streams: no terminal
    assert isinstance(bar, PlainProgress) and isinstance(bar, Progress)
    with bar:
        job = bar.add_task("adapt domains", total=2, info="")
        bar.update(job, completed=2, info="b")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[-1].startswith("adapt domains 2/2 (100%)")
    silent = progress_bar(enabled=False)
    assert not isinstance(silent, PlainProgress)
    with silent:
        silent.update(silent.add_task("x", total=1, info=""), advance=1)
    assert capsys.readouterr() == ("", "")
    assert tracking_progress_bar is progress_bar, "the old import path still works"
