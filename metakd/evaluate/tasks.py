"""Which tasks an evaluation uses: the held-out tasks it scores and the teacher's own tasks.

A teacher checkpoint records the collection it was meta-trained on and its split; by default
an evaluation runs on that collection's held-out meta-test tasks, and the ``pooled-finetune``
baseline pretrains on its meta-train tasks.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Literal

from metakd.data.collection import TaskCollection, load_collection
from metakd.data.task import Task
from metakd.errors import ConfigError, DataError, MetakdError
from metakd.persist import TeacherBundle

TaskSplit = Literal["test", "val", "train", "all"]
"""Which tasks of a collection an evaluation runs on (``all``: every task)."""


def teacher_collection_spec(bundle: TeacherBundle) -> str | None:
    """The collection the teacher was meta-trained on, as ``load_collection`` takes it, or
    ``None`` when the checkpoint records none."""
    source = bundle.info.get("tasks")
    if not isinstance(source, str) or not source:
        return None
    return source.removeprefix("builtin:")


def load_tasks(spec: str | None, bundle: TeacherBundle, *, what: str) -> TaskCollection:
    """Load collection ``spec`` with the teacher's feature alignment.

    Args:
        spec: the collection; ``None`` when the checkpoint records none.
        bundle: the teacher.
        what: what the collection is for (for the message when ``spec`` is ``None``).

    Raises:
        ConfigError: ``spec`` is ``None``.
        MetakdError: the collection does not load.
    """
    if spec is None:
        raise ConfigError(
            f"the teacher checkpoint {bundle.path} records no task collection; pass the {what} "
            "explicitly (tasks: / --tasks)"
        )
    return load_collection(spec, alignment=bundle.alignment)


def same_source(a: str, b: str) -> bool:
    """Whether two collection sources are the same (built-ins by name, others by real path)."""
    if a.startswith("builtin:") or b.startswith("builtin:"):
        return a == b
    return os.path.realpath(a) == os.path.realpath(b)


def evaluation_tasks(
    bundle: TeacherBundle,
    collection: TaskCollection,
    *,
    split: TaskSplit,
    teachers_own: bool,
) -> list[Task]:
    """The tasks to evaluate on, checked against the teacher's input width and training tasks.

    Warns (attributed to the caller of ``run_evaluation``) when some were meta-trained or
    validated on.

    Args:
        bundle: the teacher.
        collection: the evaluation's collection.
        split: which of its tasks.
        teachers_own: ``collection`` is the one the teacher's checkpoint records (the config
            names no ``tasks``): its split is the one recorded there.

    Raises:
        DataError: no task in the chosen split, or a task's width the teacher cannot take.
    """
    recorded = bundle.info.get("splits") or {}
    if teachers_own:
        # The teacher's own collection: use its recorded split, not today's split settings.
        if split == "all":
            names = [t.name for t in collection.tasks]
        else:
            names = list(recorded.get(split, []))
        tasks = [collection.task(name) for name in names]
    else:
        tasks = collection.tasks if split == "all" else collection.split(split)
    if not tasks:
        raise DataError(
            collection.source,
            f"no tasks in the '{split}' split to evaluate on (set split: or pass other tasks)",
        )
    teacher_source = str(bundle.info.get("tasks", ""))
    if teacher_source and same_source(collection.source, teacher_source):
        seen = set(recorded.get("train", [])) | set(recorded.get("val", []))
        leaked = [t.name for t in tasks if t.name in seen]
        if leaked:
            warnings.warn(
                f"{collection.source}: evaluating on tasks the teacher was meta-trained or "
                f"validated on ({', '.join(leaked)}); their scores are not held-out results",
                stacklevel=4,  # the caller of run_evaluation
            )
    if bundle.alignment.kind == "none":
        width = bundle.teacher.input_dim - bundle.teacher.profile_width
        for task in tasks:
            if task.n_features != width:
                raise DataError(
                    task.name,
                    f"{task.n_features} features but the teacher takes {width} "
                    "(it was meta-trained without feature alignment)",
                )
    return tasks


@dataclass(frozen=True)
class MetaTrainTasks:
    """The teacher's meta-train tasks.

    Attributes:
        collection: the collection they come from.
        names: their names, as the checkpoint records them.
        tasks: the tasks, in that order.
    """

    collection: TaskCollection
    names: list[str]
    tasks: list[Task]


def meta_train_tasks(
    bundle: TeacherBundle, collection: TaskCollection, *, needed_by: str
) -> MetaTrainTasks:
    """The tasks the teacher was meta-trained on, from ``collection`` when it is the teacher's
    own (so it is not loaded twice), else from the collection the checkpoint records.

    Args:
        bundle: the teacher.
        collection: the evaluation's collection.
        needed_by: the method that needs them (for messages).

    Raises:
        DataError: the teacher's collection does not load, or records no meta-train tasks.
    """
    spec = teacher_collection_spec(bundle)
    if spec is not None and same_source(collection.source, str(bundle.info.get("tasks"))):
        source = collection
    else:
        try:
            source = load_tasks(spec, bundle, what=f"meta-train tasks of {needed_by}")
        except MetakdError as err:
            raise DataError(
                needed_by,
                f"needs the teacher's meta-train tasks, which failed to load ({err}); run from "
                "the directory the teacher was trained in, or drop it from methods",
            ) from None
    names = list((bundle.info.get("splits") or {}).get("train", []))
    if not names:
        raise DataError(
            bundle.path, f"the teacher records no meta-train tasks (needed by {needed_by})"
        )
    return MetaTrainTasks(
        collection=source, names=names, tasks=[source.task(name) for name in names]
    )


__all__ = [
    "MetaTrainTasks",
    "TaskSplit",
    "evaluation_tasks",
    "load_tasks",
    "meta_train_tasks",
    "same_source",
    "teacher_collection_spec",
]
