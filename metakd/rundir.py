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
metakd run folder: one whose ``run.json`` is metakd's record (status ``finished`` or
``interrupted``) and lists every file in it. A folder holding any other file (a ``notes.txt``
beside a run's files, a folder that only looks like a run) is never deleted. Nor is an ``--out``
that is or holds an input of the running command (``inputs``: a teacher, a data file, a config),
with or without ``overwrite``.

Resumable runs (``meta-train``, whose staging folder holds a resume checkpoint, ``resume.pt``):

* a staging folder holding one is never removed as an orphan: a killed, pre-empted or failed run
  stays resumable (``metakd meta-train --resume OUT``), and a fresh run into the same ``--out``
  refuses to start until it is resumed, or discarded with ``--overwrite``;
* interrupted (Ctrl-C, SIGTERM) when ``--out`` did not exist (or was empty) at the start, the
  staging folder becomes ``--out`` with ``run.json`` status ``interrupted``; otherwise it stays
  staged, so an existing ``--out`` is still never changed by a run that did not finish;
* a resumed run replaces the interrupted run folder it continues (a finished one only with
  ``overwrite``), and removes the staging folder it continued once it has its own checkpoint.
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
from metakd.inputs import Inputs, check_not_input, real_path
from metakd.resume import RESUME_FILE

#: The marker file of a finished run folder.
RUN_FILE = "run.json"
_PARTIAL = ".metakd-partial-"
_REPLACED = ".metakd-replaced-"
# The statuses of the run folders metakd writes (``run.json``), the only ones it replaces.
_RUN_STATUSES = ("finished", "interrupted")

# What a resumed run keeps of the folder it continues, besides its checkpoint: W&B's offline runs
# of the interrupted part (everything else is rewritten from the checkpoint).
_RESUME_CARRY = ("wandb",)


# Staging folders this process is writing now: a stage named with this process's id that is not
# among them was left by an earlier run in this process (a notebook, a test) and is resumable.
_ACTIVE: set[Path] = set()


class OutputExistsError(MetakdError):
    """``--out`` already holds something and ``--overwrite`` was not given (or cannot apply)."""


class ResumeError(MetakdError):
    """``--resume`` names nothing that can be resumed."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _stages(out: Path) -> list[tuple[Path, int]]:
    """The staging folders of ``out`` with the id of the process that made each."""
    if not out.parent.is_dir():
        return []
    found = []
    for entry in out.parent.glob(f".{out.name}{_PARTIAL}*"):
        pid_text = entry.name[len(f".{out.name}{_PARTIAL}") :].split("-", 1)[0]
        if pid_text.isdigit() and entry.is_dir():
            found.append((entry, int(pid_text)))
    return found


def _in_use(stage: Path, pid: int) -> bool:
    return stage in _ACTIVE if pid == os.getpid() else _pid_alive(pid)


def _has_checkpoint(folder: Path) -> bool:
    return (folder / RESUME_FILE).is_file()


def _remove_orphans(out: Path) -> None:
    """Delete staging folders of ``out`` left by processes that no longer exist, except those
    holding a resume checkpoint."""
    for entry, pid in _stages(out):
        if not _pid_alive(pid) and not _has_checkpoint(entry):
            shutil.rmtree(entry, ignore_errors=True)


def resumable_stages(out: Path) -> list[Path]:
    """Staging folders of ``out`` that hold a resume checkpoint and that no running process is
    writing, the newest checkpoint first."""
    found = [
        stage for stage, pid in _stages(out) if _has_checkpoint(stage) and not _in_use(stage, pid)
    ]
    return sorted(found, key=lambda stage: -(stage / RESUME_FILE).stat().st_mtime_ns)


def _status(folder: Path) -> str | None:
    """The ``status`` in ``folder``'s ``run.json`` (``None``: none, or unreadable)."""
    try:
        record = json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record.get("status") if isinstance(record, dict) else None


def _is_interrupted(folder: Path) -> bool:
    """Whether ``folder`` is an interrupted run folder with a resume checkpoint."""
    return folder.is_dir() and _status(folder) == "interrupted" and _has_checkpoint(folder)


def resume_source(out: Path) -> Path:
    """The folder holding the newest resume checkpoint of the run ``out``: ``out`` itself (an
    interrupted run folder) or one of its staging folders (a run killed, or stopped while
    ``out`` held another run).

    Raises:
        ResumeError: a running process is still writing ``out``; or there is nothing to resume
            (``out`` finished, or holds no interrupted run and has no resumable staging folder).
    """
    for stage, pid in _stages(out):
        if _has_checkpoint(stage) and _in_use(stage, pid):
            raise ResumeError(
                f"--resume {out}: process {pid} is still running it ({stage.name}); stop it "
                "first (SIGTERM writes a checkpoint)"
            )
    candidates = resumable_stages(out) + ([out] if _is_interrupted(out) else [])
    if not candidates:
        if _status(out) == "finished":
            raise ResumeError(f"--resume {out}: that run finished; there is nothing to resume")
        raise ResumeError(
            f"--resume {out}: nothing to resume (neither an interrupted run folder nor a "
            f"staging folder .{out.name}{_PARTIAL}* holding {RESUME_FILE})"
        )
    return max(candidates, key=lambda folder: (folder / RESUME_FILE).stat().st_mtime_ns)


def _entries(folder: Path) -> list[str]:
    """Every entry under ``folder`` that is not a folder (files, symlinks of any kind, ...), by
    its path relative to ``folder``, sorted; symlinked folders are entries, not descended."""
    found: list[str] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        with os.scandir(current) as scan:
            for entry in scan:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                else:
                    found.append(str(Path(entry.path).relative_to(folder)))
    return sorted(found)


def not_a_run_folder(folder: Path) -> str | None:
    """Why the non-empty folder ``folder`` is not a metakd run folder, or ``None`` when it is:
    its ``run.json`` is metakd's record (a JSON object, status ``finished`` or ``interrupted``,
    a ``files`` list) and lists every file in the folder."""
    try:
        record = json.loads((folder / RUN_FILE).read_text())
    except FileNotFoundError:
        return f"it has no {RUN_FILE}"
    except (OSError, ValueError):
        return f"its {RUN_FILE} is not a metakd run record"
    if not isinstance(record, dict) or record.get("status") not in _RUN_STATUSES:
        return f"its {RUN_FILE} is not a metakd run record"
    files = record.get("files", [])
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        return f"its {RUN_FILE} is not a metakd run record"
    listed = {*files, RUN_FILE}
    for name in _entries(folder):
        if name not in listed and not _inner_folder_link(folder, name):
            return f"it holds {name}, which its {RUN_FILE} does not list"
    return None


def _inner_folder_link(folder: Path, name: str) -> bool:
    """Whether ``folder/name`` is a symlink to a folder inside ``folder`` (W&B's
    ``wandb/latest-run``, which earlier ``run.json`` files did not list): removing it removes
    nothing else, and what it points to is checked on its own."""
    link = folder / name
    return link.is_symlink() and link.is_dir() and real_path(link).is_relative_to(real_path(folder))


def check_output_dir(out: Path, *, overwrite: bool, inputs: Inputs = ()) -> None:
    """Refuse an ``--out`` that cannot receive a run folder, before any work starts.

    Raises:
        OutputIsInputError: ``out`` is or holds one of ``inputs`` (:func:`check_not_input`).
        OutputExistsError: ``out`` is a file; or a non-empty folder without ``overwrite``; or a
            non-empty folder that is not a metakd run folder (:func:`not_a_run_folder`: never
            replaced, even with ``overwrite``).
    """
    check_not_input(out, inputs)
    if out.is_symlink():
        raise OutputExistsError(
            f"--out {out} is a symlink (to {os.readlink(out)}); metakd replaces a run folder "
            "whole, never a link: give the folder itself or another path"
        )
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"--out {out} exists and is not a folder; choose another path")
    if not any(out.iterdir()):
        return
    why = not_a_run_folder(out)
    if why is not None:
        raise OutputExistsError(
            f"--out {out} is not a metakd run folder ({why}); metakd never replaces it, even "
            "with --overwrite: choose another --out"
        )
    if not overwrite:
        raise OutputExistsError(
            f"--out {out} already holds a run; pass --overwrite to replace it, or choose another "
            "--out"
        )


@contextlib.contextmanager
def staged_run_dir(
    out: Path,
    *,
    command: str,
    overwrite: bool,
    carry: tuple[str, ...] = (),
    resume_from: Path | None = None,
    inputs: Inputs = (),
) -> Iterator[Path]:
    """Yield a fresh staging folder; on success move it to ``out`` with a ``run.json``.

    A run whose staging folder holds a resume checkpoint when it stops is kept (see the module
    docstring): interrupted (``KeyboardInterrupt``) it becomes ``out`` with status
    ``interrupted`` where ``out`` was free at the start or is the interrupted run it resumes;
    otherwise it stays staged, resumable.

    Args:
        out: the run folder to create or (with ``overwrite``) replace.
        command: the command name recorded in ``run.json``.
        overwrite: replace an existing metakd run folder at ``out``; a fresh run also discards
            resumable staging folders of ``out``.
        carry: file names copied from an existing ``out`` into the staging folder first
            (caches a run may reuse, such as ``evaluate``'s pooled pre-training).
        resume_from: the folder whose checkpoint this run continues (:func:`resume_source`).
        inputs: what the command reads, ``(flag, path)``: ``out`` may neither be nor hold any
            (checked first, and again before ``out`` is replaced).

    Raises:
        OutputIsInputError: ``out`` is or holds one of ``inputs``.
        OutputExistsError: see :func:`check_output_dir`; a fresh run into an ``out`` with a
            resumable staging folder, without ``overwrite``; also raised at the end when another
            process created ``out`` meanwhile and ``overwrite`` is off.
    """
    resuming = resume_from is not None
    replace = overwrite or (resuming and _is_interrupted(out))
    check_output_dir(out, overwrite=replace, inputs=inputs)
    stale = [] if resuming else resumable_stages(out)
    if stale and not overwrite:
        raise OutputExistsError(
            f"--out {out}: an interrupted run can be resumed from {stale[0]}; continue it with "
            f"--resume {out}, or pass --overwrite to discard it"
        )
    free_at_start = not out.exists() or (out.is_dir() and not any(out.iterdir()))
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(out)
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}{_PARTIAL}{os.getpid()}-", dir=out.parent))
    shareable(stage, directory=True)
    _ACTIVE.add(stage)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    superseded = False  # whether this run made ``resume_from`` obsolete
    try:
        for name in carry:
            if (out / name).is_file():
                shutil.copy2(out / name, stage / name)
        for name in _RESUME_CARRY:
            if resume_from is not None and (resume_from / name).is_dir():
                shutil.copytree(resume_from / name, stage / name, symlinks=True)
        yield stage
        _write_record(stage, status="finished", command=command, started=started)
        _move_into_place(stage, out, overwrite=replace, inputs=inputs)
        superseded = True
    except KeyboardInterrupt:
        superseded = _has_checkpoint(stage)
        if not superseded:
            shutil.rmtree(stage, ignore_errors=True)
        elif free_at_start or (resuming and _is_interrupted(out)):
            how = f"metakd {command} --resume {out}"
            _write_record(stage, status="interrupted", command=command, started=started, resume=how)
            with contextlib.suppress(OSError, MetakdError):  # out taken meanwhile: stays staged
                _move_into_place(stage, out, overwrite=_is_interrupted(out))
        raise
    except BaseException:
        superseded = _has_checkpoint(stage)
        if not superseded:
            shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        _ACTIVE.discard(stage)
        if superseded and resume_from is not None and resume_from != out:
            shutil.rmtree(resume_from, ignore_errors=True)


def _write_record(
    stage: Path, *, status: str, command: str, started: str, resume: str | None = None
) -> None:
    """Write ``run.json``: the status, the command, times, version, the files and (interrupted)
    the command that resumes it."""
    record: dict[str, object] = {
        "status": status,
        "command": command,
        "started": started,
        "finished" if status == "finished" else "stopped": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "metakd_version": __version__,
        # Every entry but folders (symlinks too): what a later --overwrite may replace.
        "files": [name for name in _entries(stage) if name != RUN_FILE],
    }
    if resume is not None:
        record["resume"] = resume
    (stage / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")
    shareable(stage / RUN_FILE, directory=False)


def _move_into_place(stage: Path, out: Path, *, overwrite: bool, inputs: Inputs = ()) -> None:
    """Rename ``stage`` to ``out``; an existing ``out`` is first renamed aside, then deleted."""
    if out.exists():
        # Checked again: another process may have finished into ``out`` while this one ran.
        check_output_dir(out, overwrite=overwrite, inputs=inputs)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}{_REPLACED}", dir=out.parent))
            os.replace(out, aside / out.name)
            try:
                # Checked once more where nothing else writes: a file added to ``out`` since
                # the check above keeps it (and the folder) where it was.
                why = not_a_run_folder(aside / out.name)
                if why is not None:
                    raise OutputExistsError(
                        f"--out {out} is no longer a metakd run folder ({why}); it is kept and "
                        "this run's files are discarded"
                    )
                os.rename(stage, out)
            except BaseException:
                os.replace(aside / out.name, out)  # put the old run back
                with contextlib.suppress(OSError):
                    aside.rmdir()
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
