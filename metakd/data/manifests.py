"""Collection manifests: the YAML schema (:class:`CollectionSpec`), parsing, and where manifests
are looked up by name (``tasks/`` folders)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import metakd
from metakd.configio import from_dict
from metakd.data.builtin import BUILTIN_COLLECTIONS
from metakd.data.readers import ReadOptions
from metakd.data.splits import SplitConfig
from metakd.data.transforms import AlignmentConfig
from metakd.data.windows import WindowConfig
from metakd.errors import ConfigError, MetakdError
from metakd.yamlio import read_yaml

MANIFEST_SUFFIXES: tuple[str, ...] = (".yaml", ".yml")


def universal_alignment() -> AlignmentConfig:
    """What a collection without alignment settings gets: a fixed projection to 64 features.

    The ``profile`` teacher reads exact neighbour distances in each task's own space beside
    these 64 columns, so the projection costs it nothing on wide tasks, while any task, of any
    width, can be meta-trained on or adapted to. ``alignment: {kind: none}`` keeps features as
    they are (then every task must share one width).
    """
    return AlignmentConfig(kind="project", width=64, seed=0)


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


def manifest_entries(dirs: Sequence[Path] | None = None) -> list[tuple[str, str]]:
    """``(name, description)`` of every manifest in ``dirs`` (default: :func:`manifest_dirs`)
    that a built-in or an earlier folder does not shadow, as in ``load_collection``.

    A manifest that fails to parse is listed with the error as its description, so one bad
    file does not hide the others.
    """
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


def _same(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False
