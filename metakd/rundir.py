"""Run folders that appear only when their run succeeded.

A command that writes a folder (``meta-train``, ``adapt``, ``evaluate``) works in a fresh staging
folder beside ``--out``, named ``.NAME.metakd-partial-PID-XXXX``, and moves it into place only
when it finished. So:

* a failed or interrupted run leaves an existing ``--out`` exactly as it was;
* a finished run folder holds the files of one run, and ``run.json`` says so (``status:
  finished``, the command, start and end time, the metakd version and the list of files);
* two processes writing the same ``--out`` never share a file: each has its own staging folder;
* a run killed outright (SIGKILL, power loss) leaves only its named staging folder, which the next
  run into the same ``--out`` removes once its process is gone.

An existing ``--out`` is replaced only with ``overwrite=True`` and only when it is empty or a
metakd run folder; any other folder is never deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from metakd import __version__
from metakd.checkpoint import shareable
from metakd.errors import MetakdError

#: The marker file of a finished run folder.
RUN_FILE = "run.json"
_PARTIAL = ".metakd-partial-"
_REPLACED = ".metakd-replaced-"
# Files that mark a folder as written by metakd (older versions wrote no run.json).
_RUN_MARKERS = (RUN_FILE, "metrics.jsonl")


class OutputExistsError(MetakdError):
    """``--out`` already holds something and ``--overwrite`` was not given (or cannot apply)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _remove_orphans(out: Path) -> None:
    """Delete staging folders of ``out`` left by processes that no longer exist."""
    if not out.parent.is_dir():
        return
    for entry in out.parent.glob(f".{out.name}{_PARTIAL}*"):
        pid_text = entry.name[len(f".{out.name}{_PARTIAL}") :].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def check_output_dir(out: Path, *, overwrite: bool) -> None:
    """Refuse an ``--out`` that cannot receive a run folder, before any work starts.

    Raises:
        OutputExistsError: ``out`` is a file; or a non-empty folder without ``overwrite``; or a
            non-empty folder metakd did not write (never replaced, even with ``overwrite``).
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"--out {out} exists and is not a folder; choose another path")
    if not any(out.iterdir()):
        return
    if not any((out / name).is_file() for name in _RUN_MARKERS):
        raise OutputExistsError(
            f"--out {out} is a non-empty folder that is not a metakd run folder; metakd never "
            "replaces it (choose another --out)"
        )
    if not overwrite:
        raise OutputExistsError(
            f"--out {out} already holds a run; pass --overwrite to replace it, or choose another "
            "--out"
        )


@contextlib.contextmanager
def staged_run_dir(
    out: Path, *, command: str, overwrite: bool, carry: tuple[str, ...] = ()
) -> Iterator[Path]:
    """Yield a fresh staging folder; on success move it to ``out`` with a ``run.json``.

    Args:
        out: the run folder to create or (with ``overwrite``) replace.
        command: the command name recorded in ``run.json``.
        overwrite: replace an existing metakd run folder at ``out``.
        carry: file names copied from an existing ``out`` into the staging folder first
            (caches a run may reuse, such as ``evaluate``'s pooled pre-training).

    Raises:
        OutputExistsError: see :func:`check_output_dir`; also raised at the end when another
            process created ``out`` meanwhile and ``overwrite`` is off.
    """
    check_output_dir(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(out)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}{_PARTIAL}{os.getpid()}-", dir=out.parent))
    shareable(stage, directory=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        for name in carry:
            if (out / name).is_file():
                shutil.copy2(out / name, stage / name)
        yield stage
        record = {
            "status": "finished",
            "command": command,
            "started": started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "metakd_version": __version__,
            "files": sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file()),
        }
        (stage / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")
        shareable(stage / RUN_FILE, directory=False)
        _move_into_place(stage, out, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _move_into_place(stage: Path, out: Path, *, overwrite: bool) -> None:
    """Rename ``stage`` to ``out``; an existing ``out`` is first renamed aside, then deleted."""
    if out.exists():
        # Checked again: another process may have finished into ``out`` while this one ran.
        check_output_dir(out, overwrite=overwrite)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}{_REPLACED}", dir=out.parent))
            os.replace(out, aside / out.name)
            try:
                os.rename(stage, out)
            except BaseException:
                os.replace(aside / out.name, out)  # put the old run back
                raise
            shutil.rmtree(aside, ignore_errors=True)
            return
    try:
        # rename (not replace): fails if another process created a non-empty ``out`` meanwhile.
        os.rename(stage, out)
    except OSError:
        if out.exists():
            raise OutputExistsError(
                f"--out {out} was created by another process while this run worked; its files "
                "are kept and this run's are discarded"
            ) from None
        raise
