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

import fnmatch
import glob
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

import metakd
from metakd.configio import from_dict, read_yaml
from metakd.data.builtin import BUILTIN_COLLECTIONS
from metakd.data.readers import SUPPORTED_SUFFIXES, ReadOptions, read_task
from metakd.data.task import Task
from metakd.data.transforms import AlignmentConfig, check_feature_counts
from metakd.data.windows import WindowConfig, window_task
from metakd.errors import ConfigError, DataError, MetakdError

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Share of a built-in collection's tasks held out for the report (when it has no fixed split).
BUILTIN_TEST_SHARE = 0.2
MANIFEST_SUFFIXES: tuple[str, ...] = (".yaml", ".yml")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass
class SplitConfig:
    """How tasks are divided into meta-train / validation / test.

    Attributes:
        seed: Seed of the shuffle behind the fraction split.
        val: Fraction of tasks for validation (at least one when positive): the best
            meta-training iterate is chosen on them.
        test: Fraction of tasks held out for meta-train's closing report (and ``metakd
            evaluate``'s default tasks). 0 by default: a user's folder or manifest is
            meta-trained on every domain but the validation ones; set it to hold some out
            (the report names them). The built-in collections keep their own held-out tasks.
        train_tasks: Task names or globs for meta-train. Explicit lists replace the fractions:
            each list takes its matching tasks, the remaining tasks go to train when
            ``train_tasks`` is not given and are an error otherwise.
        val_tasks: Task names or globs for validation.
        test_tasks: Task names or globs for test.
    """

    seed: int = 0
    val: float = 0.2
    test: float = 0.0
    train_tasks: list[str] | None = None
    val_tasks: list[str] | None = None
    test_tasks: list[str] | None = None

    def __post_init__(self) -> None:
        for key in ("val", "test"):
            value = getattr(self, key)
            if not 0 <= value < 1:
                raise ConfigError(f"split.{key} must be in [0, 1), got {value!r}")
        if self.val + self.test >= 1:
            raise ConfigError(
                f"split.val + split.test must be below 1 (got {self.val} + {self.test}): "
                "meta-training needs tasks"
            )

    @property
    def explicit(self) -> bool:
        """Whether task lists, not fractions, define the split."""
        return any(
            patterns is not None for patterns in (self.train_tasks, self.val_tasks, self.test_tasks)
        )


@dataclass
class CollectionSpec:
    """A task collection manifest (the YAML schema, see ``tasks/README.md``).

    Attributes:
        name: Collection name; defaults to the manifest's file name.
        description: One line shown by ``metakd tasks list``.
        files: Task files or globs (``**`` recurses), relative to the manifest's folder.
        read: How each file is read.
        window: Sliding windows applied to every task (time series), or ``None``.
        split: Task split.
        alignment: Feature alignment to the teacher's input width; by default the universal
            one (:func:`universal_alignment`), so tasks of any width mix and the teacher
            adapts later to tasks of any width.
    """

    name: str = ""
    description: str = ""
    files: list[str] = field(default_factory=list)
    read: ReadOptions = field(default_factory=ReadOptions)
    window: WindowConfig | None = None
    split: SplitConfig = field(default_factory=SplitConfig)
    alignment: AlignmentConfig = field(default_factory=lambda: universal_alignment())


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
    manifests = ", ".join(name for name, _ in _manifest_entries()) or "none"
    raise ConfigError(
        f"'{text}' is not a built-in collection ({', '.join(BUILTIN_COLLECTIONS)}), a manifest "
        f"in tasks/ ({manifests}), or an existing file or directory"
    )


def read_manifest(path: str | Path) -> CollectionSpec:
    """Parse a manifest into a :class:`CollectionSpec`; errors name the file and the key."""
    path = Path(path)
    data = read_yaml(path)
    # Converted on its own: through the Optional field, configio would report only that the
    # value is "not a WindowConfig | None" and drop the key at fault.
    window = data.pop("window", None)
    try:
        spec = from_dict(CollectionSpec, data)
        if window is not None:
            if not isinstance(window, dict):
                raise ConfigError(f"config key 'window': expected a mapping, got {window!r}")
            spec.window = from_dict(WindowConfig, window, prefix="window.")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if not spec.files:
        raise ConfigError(f"{path}: 'files' lists no task files")
    return spec


def manifest_dirs() -> list[Path]:
    """Existing ``tasks/`` folders searched for manifests: the current directory's, then the one
    beside the installed package (a source checkout)."""
    candidates = [Path.cwd() / "tasks", Path(metakd.__file__).resolve().parent.parent / "tasks"]
    found: list[Path] = []
    for candidate in candidates:
        if candidate.is_dir() and all(not _same(candidate, f) for f in found):
            found.append(candidate)
    return found


def find_manifest(name: str, tasks_dirs: Sequence[Path] | None = None) -> Path | None:
    """The manifest ``<name>.yaml`` (or ``.yml``) in the first tasks folder holding one."""
    for folder in manifest_dirs() if tasks_dirs is None else tasks_dirs:
        for suffix in MANIFEST_SUFFIXES:
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def list_collections(tasks_dir: Path | None = None) -> list[tuple[str, str]]:
    """``(name, description)`` of every built-in collection, then every manifest.

    Args:
        tasks_dir: Folder of manifests; defaults to :func:`manifest_dirs`.

    A manifest that fails to parse is listed with the error as its description, so one bad
    file does not hide the others.
    """
    entries = [(name, builtin.description) for name, builtin in BUILTIN_COLLECTIONS.items()]
    dirs = manifest_dirs() if tasks_dir is None else [tasks_dir]
    return entries + [(name, description) for name, description in _manifest_entries(dirs)]


def _manifest_entries(dirs: Sequence[Path] | None = None) -> list[tuple[str, str]]:
    entries: dict[str, str] = {}
    for folder in manifest_dirs() if dirs is None else dirs:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in MANIFEST_SUFFIXES)
        for path in paths:
            if path.stem in entries or path.stem in BUILTIN_COLLECTIONS:
                continue  # shadowed by an earlier folder or a built-in, as in load_collection
            try:
                entries[path.stem] = read_manifest(path).description
            except MetakdError as err:
                entries[path.stem] = f"invalid manifest: {err}"
    return list(entries.items())


def universal_alignment() -> AlignmentConfig:
    """What a collection without alignment settings gets: a fixed projection to 64 features.

    The ``profile`` teacher reads exact neighbour distances in each task's own space beside
    these 64 columns, so the projection costs it nothing on wide tasks, while any task, of any
    width, can be meta-trained on or adapted to. ``alignment: {kind: none}`` keeps features as
    they are (then every task must share one width).
    """
    return AlignmentConfig(kind="project", width=64, seed=0)


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


def split_tasks(names: Sequence[str], config: SplitConfig, *, where: str) -> dict[str, list[str]]:
    """Divide task names into train/val/test.

    By fractions: the naturally sorted names are shuffled with ``default_rng(config.seed)``;
    the first ``round(test * n)`` go to test, the next ``round(val * n)`` to val (each at least
    one when its fraction is positive), the rest to train. With fewer than 3 tasks all go to
    train, with a warning. Explicit lists: see :class:`SplitConfig`.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each in natural order.
    """
    ordered = sorted(names, key=natural_key)
    if config.explicit:
        splits = _explicit_split(ordered, config, where=where)
    elif len(ordered) < 3:
        if config.val > 0 or config.test > 0:
            warnings.warn(
                f"{where}: only {len(ordered)} task(s), all used for meta-training (no val/test)",
                stacklevel=2,
            )
        splits = {"train": list(ordered), "val": [], "test": []}
    else:
        n = len(ordered)
        n_test = _split_count(config.test, n)
        n_val = _split_count(config.val, n)
        if n_test + n_val >= n:
            raise DataError(
                where,
                f"split.val = {config.val} and split.test = {config.test} leave no meta-training "
                f"task out of {n}",
            )
        shuffled = [ordered[i] for i in np.random.default_rng(config.seed).permutation(n)]
        splits = {
            "test": shuffled[:n_test],
            "val": shuffled[n_test : n_test + n_val],
            "train": shuffled[n_test + n_val :],
        }
    if not splits["train"]:
        raise DataError(where, "no task is assigned to the train split")
    return {key: sorted(splits[key], key=natural_key) for key in SPLITS}


def _explicit_split(
    names: Sequence[str], config: SplitConfig, *, where: str
) -> dict[str, list[str]]:
    lists = {"train": config.train_tasks, "val": config.val_tasks, "test": config.test_tasks}
    owner: dict[str, str] = {}
    splits: dict[str, list[str]] = {key: [] for key in SPLITS}
    for key, patterns in lists.items():
        for pattern in patterns or []:
            matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                raise DataError(where, f"split.{key}_tasks: '{pattern}' matches no task")
            for n in matched:
                if owner.get(n, key) != key:
                    raise DataError(
                        where,
                        f"task '{n}' is listed in both split.{owner[n]}_tasks and "
                        f"split.{key}_tasks",
                    )
                if n not in owner:
                    owner[n] = key
                    splits[key].append(n)
    rest = [n for n in names if n not in owner]
    if rest and config.train_tasks is not None:
        raise DataError(
            where,
            f"tasks in no split list: {', '.join(rest)}; list them or drop split.train_tasks "
            "so the rest go to train",
        )
    splits["train"].extend(rest)
    return splits


def _split_count(fraction: float, n: int) -> int:
    if fraction == 0:
        return 0
    return max(1, int(np.floor(fraction * n + 0.5)))


def _expand_files(patterns: Sequence[str], *, base: Path, where: str) -> list[Path]:
    files: list[Path] = []
    seen: set[str] = set()
    for pattern in patterns:
        full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        if _GLOB_CHARS.search(pattern):
            matches = sorted(glob.glob(full, recursive=True), key=natural_key)
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


def _directory_files(folder: Path) -> list[Path]:
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES),
        key=lambda p: natural_key(p.name),
    )
    if not files:
        raise DataError(
            str(folder),
            f"no task files ({', '.join(SUPPORTED_SUFFIXES)}) directly in this directory; for "
            "files in subdirectories write a manifest with a glob such as '**/*.csv'",
        )
    return files


def natural_key(text: str) -> list[int | str]:
    """Sort key ordering embedded numbers numerically: ``2_x`` before ``10_x``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


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


def _same(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False
