"""Task collections: built-ins, YAML manifests, directories and single files, split by task.

A collection is a set of tasks plus a split of its *tasks* (never of rows) into meta-train,
validation and test. ``load_collection`` accepts, in this order of lookup:

1. a bare name (no path separator, no file suffix): a built-in (``digits``, ``synthetic``), then
   a manifest ``tasks/<name>.yaml`` (``tasks/`` under the current directory, then beside the
   installed package), then a file or directory of that name;
2. a ``.yaml``/``.yml`` manifest (schema: :class:`CollectionSpec`, documented in
   ``tasks/README.md``);
3. a directory: each supported file directly inside it is one task, named by its stem;
4. a single task file.
"""

from __future__ import annotations

import errno
import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from metakd.data.builtin import BUILTIN_COLLECTIONS
from metakd.data.manifests import (
    MANIFEST_SUFFIXES,
    CollectionSpec,
    find_manifest,
    manifest_dirs,
    manifest_entries,
    read_manifest,
    universal_alignment,
)
from metakd.data.readers import ReadOptions, read_task, supported_suffixes
from metakd.data.splits import SPLITS, SplitConfig, natural_key, split_tasks
from metakd.data.task import Task
from metakd.data.transforms import AlignmentConfig, check_feature_counts
from metakd.data.windows import WindowConfig, window_task
from metakd.errors import ConfigError, DataError

#: Share of a built-in collection's tasks held out for the report (when it has no fixed split).
BUILTIN_TEST_SHARE = 0.2
_GLOB_CHARS = re.compile(r"[*?\[]")

# Also the names now in splits.py and manifests.py: code importing them from here keeps working.
__all__ = [
    "BUILTIN_TEST_SHARE",
    "MANIFEST_SUFFIXES",
    "SPLITS",
    "CollectionSpec",
    "SplitConfig",
    "TaskCollection",
    "find_manifest",
    "list_collections",
    "load_collection",
    "manifest_dirs",
    "natural_key",
    "read_manifest",
    "split_tasks",
    "task_names",
    "universal_alignment",
]


@dataclass
class TaskCollection:
    """Tasks plus their split.

    Attributes:
        name: Collection name.
        tasks: The tasks, names unique.
        splits: ``"train"``, ``"val"``, ``"test"`` -> task names; every task is in exactly one
            split and train is not empty.
        alignment: Feature alignment to use when meta-training across these tasks.
        source: The manifest, directory or file, or ``"builtin:<name>"``.
        window: The sliding windows the tasks were made with (manifests with ``window:``), and
            ``raw_widths`` the feature counts of their rows before windowing: a teacher keeps
            both, so ``metakd adapt`` and ``score`` window a new domain's raw rows the same way.
    """

    name: str
    tasks: list[Task]
    splits: dict[str, list[str]]
    alignment: AlignmentConfig
    source: str
    window: WindowConfig | None = None
    raw_widths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        names = [task.name for task in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DataError(self.source, f"duplicate task names: {', '.join(duplicates)}")
        if set(self.splits) != set(SPLITS):
            raise DataError(
                self.source,
                f"splits must have exactly the keys {SPLITS}, got {sorted(self.splits)}",
            )
        assigned = [n for split in SPLITS for n in self.splits[split]]
        if sorted(assigned) != sorted(names):
            unknown = sorted(set(assigned) - set(names))
            missing = sorted(set(names) - set(assigned))
            twice = sorted({n for n in assigned if assigned.count(n) > 1})
            raise DataError(
                self.source,
                f"every task must be in exactly one split (unknown: {unknown}, "
                f"unassigned: {missing}, repeated: {twice})",
            )
        if not self.splits["train"]:
            raise DataError(self.source, "the train split is empty")

    def split(self, which: Literal["train", "val", "test"]) -> list[Task]:
        """The tasks of one split, in collection order."""
        if which not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {which!r}")
        members = set(self.splits[which])
        return [task for task in self.tasks if task.name in members]

    def task(self, name: str) -> Task:
        """The task called ``name``."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise DataError(self.source, f"no task named '{name}'")

    def split_of(self, name: str) -> str:
        """The split (``"train"``, ``"val"`` or ``"test"``) holding task ``name``."""
        for split in SPLITS:
            if name in self.splits[split]:
                return split
        raise DataError(self.source, f"no task named '{name}'")

    @property
    def feature_counts(self) -> dict[str, int]:
        """Task name -> number of features."""
        return {task.name: task.n_features for task in self.tasks}

    def check_alignment(self) -> None:
        """Raise :class:`DataError` if the tasks cannot share one network under ``alignment``.

        With ``kind="none"`` all tasks must have the same feature count (the error lists each
        count with its tasks); with ``kind="pad"`` none may exceed ``alignment.width``.
        """
        check_feature_counts(self.feature_counts, self.alignment, where=self.source)


def load_collection(
    spec: str | Path,
    *,
    split: SplitConfig | None = None,
    alignment: AlignmentConfig | None = None,
) -> TaskCollection:
    """Load a task collection.

    Args:
        spec: Built-in name, manifest name or path, directory, or task file (lookup order in
            the module docstring).
        split: Replaces the collection's own split settings.
        alignment: Replaces the collection's own alignment settings.

    Returns:
        The tasks in natural name order, with their split.

    Raises:
        DataError: A file is bad, a glob matches nothing or task names collide.
        ConfigError: The manifest is invalid or ``spec`` names nothing.
    """
    text = str(spec)
    path = Path(spec)
    if _is_bare_name(text):
        if text in BUILTIN_COLLECTIONS:
            return _load_builtin(text, split=split, alignment=alignment)
        manifest = find_manifest(text)
        if manifest is not None:
            return _load_manifest(manifest, split=split, alignment=alignment)
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        return _load_manifest(path, split=split, alignment=alignment)
    if path.is_dir() or path.is_file():
        # Plain files carry no manifest: default read options, no windows.
        return _from_files(
            _directory_files(path) if path.is_dir() else [path],
            name=path.resolve().name if path.is_dir() else path.stem,
            source=str(path),
            read=ReadOptions(),
            window=None,
            split=split or SplitConfig(),
            alignment=alignment or universal_alignment(),
        )
    manifests = ", ".join(name for name, _ in manifest_entries()) or "none"
    raise ConfigError(
        f"'{text}' is not a built-in collection ({', '.join(BUILTIN_COLLECTIONS)}), a manifest "
        f"in tasks/ ({manifests}), or an existing file or directory"
    )


def list_collections(tasks_dir: Path | None = None) -> list[tuple[str, str]]:
    """``(name, description)`` of every built-in collection, then every manifest.

    Args:
        tasks_dir: Folder of manifests; defaults to :func:`manifest_dirs`.

    A manifest that fails to parse is listed with the error as its description, so one bad
    file does not hide the others.
    """
    entries = [(name, builtin.description) for name, builtin in BUILTIN_COLLECTIONS.items()]
    dirs = manifest_dirs() if tasks_dir is None else [tasks_dir]
    return entries + [(name, description) for name, description in manifest_entries(dirs)]


def _load_builtin(
    name: str, *, split: SplitConfig | None, alignment: AlignmentConfig | None
) -> TaskCollection:
    builtin = BUILTIN_COLLECTIONS[name]
    tasks = builtin.load()
    source = f"builtin:{name}"
    if split is None and builtin.split is not None:
        splits = {key: list(names) for key, names in builtin.split.items()}
    else:
        # A built-in holds tasks out by default: the main job reports on them.
        default = SplitConfig(test=BUILTIN_TEST_SHARE)
        splits = split_tasks([t.name for t in tasks], split or default, where=source)
    return TaskCollection(
        name=name,
        tasks=tasks,
        splits=splits,
        alignment=alignment or universal_alignment(),
        source=source,
    )


def _load_manifest(
    path: Path, *, split: SplitConfig | None, alignment: AlignmentConfig | None
) -> TaskCollection:
    spec = read_manifest(path)
    files = _expand_files(spec.files, base=path.parent, where=str(path))
    return _from_files(
        files,
        name=spec.name or path.stem,
        source=str(path),
        read=spec.read,
        window=spec.window,
        split=split or spec.split,
        alignment=alignment or spec.alignment,
    )


def _from_files(
    files: Sequence[Path],
    *,
    name: str,
    source: str,
    read: ReadOptions,
    window: WindowConfig | None,
    split: SplitConfig,
    alignment: AlignmentConfig,
) -> TaskCollection:
    names = task_names(files)
    tasks = []
    raw_widths: set[int] = set()
    for path, task_name in sorted(zip(files, names, strict=True), key=lambda p: natural_key(p[1])):
        task = read_task(path, read, name=task_name)
        raw_widths.add(task.n_features)
        tasks.append(window_task(task, window) if window is not None else task)
    return TaskCollection(
        name=name,
        tasks=tasks,
        splits=split_tasks([t.name for t in tasks], split, where=source),
        alignment=alignment,
        source=source,
        window=window,
        raw_widths=tuple(sorted(raw_widths)) if window is not None else (),
    )


def task_names(files: Sequence[Path]) -> list[str]:
    """Task names for files: the path relative to their common folder, without suffix.

    Files in one folder are named by stem (``14_glass``); files across subfolders keep the
    subfolder (``valve1/1``, ``other/1``), which keeps same-named files apart.

    Raises:
        DataError: Two files would get the same name (same path, different suffix).
    """
    resolved = [Path(os.path.abspath(f)) for f in files]
    root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    names = [p.relative_to(root).with_suffix("").as_posix() for p in resolved]
    seen: dict[str, Path] = {}
    for file, name in zip(files, names, strict=True):
        if name in seen:
            raise DataError(str(file), f"task name '{name}' is also the name of {seen[name]}")
        seen[name] = file
    return names


def _expand_files(patterns: Sequence[str], *, base: Path, where: str) -> list[Path]:
    files: list[Path] = []
    seen: set[str] = set()
    for pattern in patterns:
        full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        if _GLOB_CHARS.search(pattern):
            matches = sorted(glob.glob(full, recursive=True), key=natural_key)
            suffixes = supported_suffixes()
            _check_task_files([Path(m) for m in matches if Path(m).suffix.lower() in suffixes])
            matched = [Path(m) for m in matches if os.path.isfile(m)]
            if not matched:
                raise DataError(where, f"files: '{pattern}' matches no file (in {base})")
        elif os.path.isdir(full):
            matched = _directory_files(Path(full))
        elif os.path.isfile(full):
            matched = [Path(full)]
        else:
            raise DataError(where, f"files: '{pattern}' not found (in {base})")
        for path in matched:
            key = os.path.realpath(path)
            if key not in seen:  # the same file through two patterns is one task
                seen.add(key)
                files.append(path)
    return files


def _not_a_task_file(path: Path) -> str | None:
    """Why ``path``, named like a task file, cannot be read as one (``None``: a regular file,
    or a symlink to one)."""
    if path.is_symlink():
        try:
            path.stat()
        except RuntimeError:  # pathlib's "Symlink loop" on some Python versions
            return "is a symlink loop"
        except OSError as err:
            return "is a symlink loop" if err.errno == errno.ELOOP else "is a broken symlink"
    if path.is_dir():
        return "is a folder, not a task file"
    if not path.is_file():
        return "is not a regular file (a FIFO, socket or device)"
    return None


def _check_task_files(paths: Sequence[Path]) -> None:
    """Raise :class:`DataError` naming the first path named like a task file that is not one:
    a task is never skipped without a word."""
    for path in paths:
        problem = _not_a_task_file(path)
        if problem is not None:
            raise DataError(
                str(path), f"{problem}; remove it or give it another suffix to leave it out"
            )


def _directory_files(folder: Path) -> list[Path]:
    suffixes = supported_suffixes()
    named = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in suffixes),
        key=lambda p: natural_key(p.name),
    )
    _check_task_files(named)
    files = named
    if not files:
        raise DataError(
            str(folder),
            f"no task files ({', '.join(suffixes)}) directly in this directory; for "
            "files in subdirectories write a manifest with a glob such as '**/*.csv'",
        )
    return files


def _is_bare_name(text: str) -> bool:
    return (
        "/" not in text
        and os.sep not in text
        and not Path(text).suffix
        and text
        not in (
            ".",
            "..",
        )
    )
