"""``metakd tasks``: read the task collections and say which can serve episodes."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from metakd.config import TrainConfig
from metakd.data.collection import TaskCollection
from metakd.episodes import EpisodeConfig
from metakd.errors import ConfigError, MetakdError


@dataclass
class Catalogue:
    """What ``metakd tasks list`` shows."""

    collections: list[tuple[str, str, str]]
    """``(name, kind, description)`` per collection; kind is ``built-in`` or ``manifest``."""
    teachers: dict[str, str]
    """Teacher kind -> when to use it; the first is the default."""
    learners: dict[str, str]
    """``meta.algorithm`` -> the first paragraph of its class's docstring (``maml`` first: the
    default)."""
    optimizers: tuple[str, ...]
    """``inner.optimizer`` choices, the default first."""


@dataclass
class CollectionView:
    """What ``metakd tasks show`` shows: a collection and its tasks' fitness for episodes."""

    collection: TaskCollection
    episode: EpisodeConfig
    """The episode shape the tasks are checked against."""
    shortfalls: list[str | None]
    """Per task of the collection, in order: why it cannot serve such episodes (``None``: it
    can)."""
    note: str | None
    """Why meta-training across these tasks would fail (their feature counts), or ``None``."""


def _plain(text: str) -> str:
    """A docstring's reStructuredText roles and literals as the plain text a terminal shows
    (``:class:`~a.B``` → ``B``, ````x```` → ``x``)."""
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("``", "")


def catalogue() -> Catalogue:
    """The built-in collections, the manifests in tasks/ and the teacher kinds."""
    from metakd.data.builtin import BUILTIN_COLLECTIONS
    from metakd.data.collection import list_collections
    from metakd.meta.learners import LEARNERS, MetaConfig
    from metakd.meta.optim import INNER_OPTIMIZERS
    from metakd.models.teachers import teacher_kinds

    collections = [
        (name, "built-in" if name in BUILTIN_COLLECTIONS else "manifest", description)
        for name, description in list_collections()
    ]
    default = MetaConfig().algorithm
    learners = {
        name: _plain(" ".join((cls.__doc__ or "").split("\n\n")[0].split()))
        for name, cls in sorted(LEARNERS.items(), key=lambda item: (item[0] != default, item[0]))
    }
    return Catalogue(
        collections=collections,
        teachers=dict(teacher_kinds()),
        learners=learners,
        optimizers=INNER_OPTIMIZERS,
    )


def as_train_config(spec: str) -> TrainConfig | None:
    """The meta-train config ``spec`` names, if it is one (a YAML file with a ``tasks`` key and
    none of a manifest's ``files``), else ``None``."""
    from metakd.config import load_train_config
    from metakd.yamlio import read_yaml

    path = Path(spec)
    if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
        return None
    try:
        data = read_yaml(path)
    except ConfigError:
        return None  # the manifest reader reports it
    if not isinstance(data, dict) or "tasks" not in data or "files" in data:
        return None
    return load_train_config(path)


def view_collection(
    spec: str, *, shots: int | None, anomaly_shots: int | None, query_size: int | None
) -> CollectionView:
    """Read the collection ``spec`` names and check its tasks against an episode shape.

    Args:
        spec: a built-in, a manifest name or path, a directory of task files, one task file, or
            a meta-train config (its own collection, split and episode shape).
        shots, anomaly_shots, query_size: the episode shape; ``None`` keeps the default's
            (meta-train's, or the config's).
    """
    from metakd.data.collection import load_collection
    from metakd.data.transforms import check_feature_counts
    from metakd.episodes import episode_shortfall

    # EpisodeConfig's defaults are meta-train's episode shape: "usable" means usable there. A
    # meta-train config (a YAML with `tasks:`) shows its own collection, split and episodes.
    train_config = as_train_config(spec)
    if train_config is not None:
        collection = load_collection(
            train_config.tasks, split=train_config.split, alignment=train_config.alignment
        )
        default = train_config.episode
    else:
        collection = load_collection(spec)
        default = EpisodeConfig()
    episode = dataclasses.replace(
        default,
        shots=default.shots if shots is None else shots,
        anomaly_shots=default.anomaly_shots if anomaly_shots is None else anomaly_shots,
        query_size=default.query_size if query_size is None else query_size,
    )
    shortfalls = [episode_shortfall(task, episode) for task in collection.tasks]
    note = None
    try:
        check_feature_counts(collection.feature_counts, collection.alignment, where=collection.name)
    except MetakdError as err:
        # Fine for inspection, but meta-training across these tasks would fail: say so.
        note = str(err)
    return CollectionView(collection=collection, episode=episode, shortfalls=shortfalls, note=note)
