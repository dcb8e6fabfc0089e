"""What a command reads, so that its ``--out`` never is or holds any of it: the inputs of a
command as ``(flag, path)`` pairs, and the check :mod:`metakd.rundir` runs before it replaces a
folder."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

from metakd.errors import MetakdError

#: What a command reads, as ``(flag, path)``: ``--out`` may neither be nor hold any of them.
Inputs: TypeAlias = Sequence[tuple[str, str | Path | None]]


class OutputIsInputError(MetakdError):
    """``--out`` is, or holds, a file or folder the command reads."""


def real_path(path: str | Path) -> Path:
    """``path`` absolute, with every symlink and ``..`` resolved (it need not exist)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def check_not_input(out: Path, inputs: Inputs) -> None:
    """Refuse an ``--out`` that is, or holds (anywhere below it), one of ``inputs``: replacing it
    would delete what the command reads. Paths are compared resolved (symlinks, ``..``,
    relative or absolute); inputs given as ``None`` are skipped.

    Raises:
        OutputIsInputError: naming the flag and the path of the first such input.
    """
    target = real_path(out)
    for flag, path in inputs:
        if path is None or str(path) == "":
            continue
        real = real_path(path)
        if real == target:
            raise OutputIsInputError(
                f"--out {out} is {flag} {path}, an input of this command; choose another --out"
            )
        if real.is_relative_to(target):
            raise OutputIsInputError(
                f"--out {out} holds {flag} {path}, an input of this command; choose another --out"
            )


def folder_inputs(flag: str, folder: str | Path | None) -> list[tuple[str, str | Path | None]]:
    """A folder a command reads and every entry directly in it, as :data:`Inputs` (a symlinked
    file in it may live elsewhere, even inside ``--out``)."""
    if folder is None:
        return []
    found: list[tuple[str, str | Path | None]] = [(flag, folder)]
    with contextlib.suppress(OSError):  # missing or unreadable: the command reports it
        found += [(flag, entry) for entry in sorted(Path(folder).iterdir())]
    return found


def collection_inputs(flag: str, spec: str | Path | None) -> list[tuple[str, str | Path | None]]:
    """The files and folders the task collection ``spec`` reads, as :data:`Inputs`, found as
    :func:`~metakd.data.collection.load_collection` finds them: none for a built-in; a manifest
    and its task files (anywhere its ``files:`` point); a folder and its task files; a file.

    Best effort: a collection that does not load gives what was found of it (loading it reports
    the error, as ever)."""
    from metakd.data.builtin import BUILTIN_COLLECTIONS
    from metakd.data.collection import _directory_files, _expand_files, _is_bare_name
    from metakd.data.manifests import MANIFEST_SUFFIXES, find_manifest, read_manifest

    if spec is None:
        return []
    text = str(spec)
    path = Path(spec)
    if _is_bare_name(text):
        if text in BUILTIN_COLLECTIONS:
            return []
        manifest = find_manifest(text)
        if manifest is not None:
            path = manifest
    files: list[Path] = []
    with contextlib.suppress(MetakdError, OSError):
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            files = _expand_files(read_manifest(path).files, base=path.parent, where=str(path))
        elif path.is_dir():
            files = _directory_files(path)
    return [(flag, path), *((flag, file) for file in files)]


__all__ = [
    "Inputs",
    "OutputIsInputError",
    "check_not_input",
    "collection_inputs",
    "folder_inputs",
    "real_path",
]
