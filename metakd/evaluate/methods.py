"""What an evaluated method is: the :class:`Detector` it builds, its declaration and a registry.

A method is a name, a report group and a factory that builds a :class:`Detector` for one
split, plus what it needs (labelled anomalies, an unlabelled pool, a distilled student) and an
optional one-off preparation run once per evaluation before any split (e.g. pretraining). Each
module that provides methods declares them as a ``METHODS`` tuple of :class:`Method` right
below the classes they build; :mod:`~metakd.evaluate.registry` lists those modules in its
:data:`~metakd.evaluate.registry.REGISTRY`, through which alone the run loop and the report
know methods.

This module imports no other module of ``metakd.evaluate`` but the config sections a factory
reads (:mod:`~metakd.evaluate.settings`): the providers import it, and it imports none of them.

Report order (tables, plot legend, ``results.csv`` rows of a run): by group (:data:`GROUPS`),
then in registration order within a group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np
from rich.progress import Progress

from metakd.data.collection import TaskCollection
from metakd.detect import AdaptConfig
from metakd.evaluate.settings import BaselineConfig, PretrainConfig
from metakd.persist import TeacherBundle


class Detector(ABC):
    """A few-shot detector: ``fit`` on support (+ pool), then score rows (higher = anomalous)."""

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray, unlabeled: np.ndarray | None = None) -> Detector:
        """Fit on support rows ``X [n, d]`` with labels ``y [n]`` (0/1) and optional unlabelled
        rows ``unlabeled [m, d]`` of the same task. Returns ``self``."""

    @abstractmethod
    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Anomaly scores ``[N]`` of rows ``X [N, d]`` (higher = more anomalous)."""


Group = Literal["ours", "ablation", "transfer", "support", "pool", "labelled"]
"""What a method builds on: ``ours`` (metakd), ``ablation`` (metakd with a part switched off),
``transfer`` (the teacher's network without meta-training), ``support`` / ``pool``
(unsupervised on the support normals / the unlabelled pool), ``labelled`` (supervised: needs
labelled anomalies)."""

#: Report order of the groups.
GROUPS: tuple[Group, ...] = get_args(Group)
#: Groups that use the meta-trained teacher; every other group holds baselines.
TEACHER_GROUPS: tuple[Group, ...] = ("ours", "ablation")


@dataclass(frozen=True)
class Setup:
    """What a method's one-off preparation may use (once per evaluation, before any split).

    Attributes:
        method: the method being prepared (for messages).
        pretrain: the config's ``pretrain:`` section.
        bundle: the meta-trained teacher.
        teacher_path: its ``teacher.pt``.
        collection: the collection of the evaluation tasks.
        out_dir: the output directory (for caches such as ``pooled_pretrain.pt``).
        progress: the evaluation's progress display, to add a job to.
    """

    method: str
    pretrain: PretrainConfig
    bundle: TeacherBundle
    teacher_path: Path
    collection: TaskCollection
    out_dir: Path
    progress: Progress


@dataclass(frozen=True)
class MethodContext:
    """What a method's factory may use to build its detector for one split.

    Attributes:
        bundle: the meta-trained teacher.
        adapt: the config's ``adapt:`` section (adaptation and distillation).
        baselines: the config's ``baselines:`` section.
        seed: seed of stochastic methods in this repetition: the config's ``seed`` plus
            ``repetition``.
        repetition: the split's seed index ``s``.
        selected: every method of this evaluation (in report order).
        prepared: what this method's ``prepare`` returned (``None`` without one).
        shared: per-split store for a fit that several methods share (one adaptation gives
            both the student's and the teacher's scores); keyed by the sharing module.
    """

    bundle: TeacherBundle
    adapt: AdaptConfig
    baselines: BaselineConfig
    seed: int
    repetition: int
    selected: tuple[Method, ...]
    prepared: Any = None
    shared: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class OwnFitTime(Protocol):
    """A detector that reports its own fitting time; every other one is timed around ``fit``.

    For fits shared between methods: the second method's ``fit`` reuses the first's, so the
    wall time around it says nothing.
    """

    def fit_seconds(self) -> float:
        """Seconds this method's fit took."""
        ...


Factory = Callable[[MethodContext], Detector]
Prepare = Callable[[Setup], Any]


@dataclass(frozen=True)
class Method:
    """One method's declaration.

    Attributes:
        name: the name in configs (``methods:``), ``results.csv`` and the report.
        group: report group (see :data:`Group`).
        build: makes the (unfitted) detector of one split.
        needs_anomalies: runs only in settings with labelled anomalies (``A > 0``).
        needs_pool: needs the unlabelled pool (not run by default when ``pool_size`` is 0).
        needs_student: needs a distilled student (``adapt.student``).
        headline: the method whose gap to the best baseline the report leads with.
        prepare: called once per evaluation before any split; its result reaches ``build``
            as :attr:`MethodContext.prepared`.
        needs: optional packages its detectors import (import names, keys of
            :data:`metakd.extras.OPTIONAL`): an evaluation that selects it checks them before
            any work and names the ``pip install "metakd[...]"`` command that adds them.

    Raises:
        ValueError: the name is empty or the group unknown.
    """

    name: str
    group: Group
    build: Factory
    needs_anomalies: bool = False
    needs_pool: bool = False
    needs_student: bool = False
    headline: bool = False
    prepare: Prepare | None = None
    needs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a method needs a name")
        if self.group not in GROUPS:
            raise ValueError(
                f"method {self.name!r}: unknown group {self.group!r} (known: {GROUPS})"
            )

    @property
    def is_baseline(self) -> bool:
        """Whether the method does without the meta-trained teacher."""
        return self.group not in TEACHER_GROUPS


class MethodRegistry:
    """Methods by name, listed in report order.

    Args:
        methods: the methods to start with, in registration order.

    Raises:
        ValueError: as :meth:`add`.
    """

    def __init__(self, methods: Iterable[Method] = ()) -> None:
        self._methods: dict[str, Method] = {}
        for method in methods:
            self.add(method)

    def add(self, method: Method) -> Method:
        """Add a declared method and return it.

        Raises:
            ValueError: the name is already taken, or a second method claims the headline.
        """
        if method.name in self._methods:
            raise ValueError(f"method {method.name!r} is registered twice")
        taken = [m.name for m in self._methods.values() if m.headline]
        if method.headline and taken:
            raise ValueError(f"method {method.name!r}: {taken[0]} is already the headline")
        self._methods[method.name] = method
        return method

    def register(
        self,
        name: str,
        *,
        group: Group,
        build: Factory,
        needs_anomalies: bool = False,
        needs_pool: bool = False,
        needs_student: bool = False,
        headline: bool = False,
        prepare: Prepare | None = None,
        needs: tuple[str, ...] = (),
    ) -> Method:
        """Declare and add a method (see :class:`Method` for the arguments) and return it.

        Raises:
            ValueError: the name is empty or already taken, the group is unknown, or a second
                method claims the headline.
        """
        return self.add(
            Method(
                name=name,
                group=group,
                build=build,
                needs_anomalies=needs_anomalies,
                needs_pool=needs_pool,
                needs_student=needs_student,
                headline=headline,
                prepare=prepare,
                needs=needs,
            )
        )

    def methods(self) -> tuple[Method, ...]:
        """Every method, in report order."""
        # sorted is stable: registration order is kept within a group.
        return tuple(sorted(self._methods.values(), key=lambda m: GROUPS.index(m.group)))

    def names(self) -> tuple[str, ...]:
        """Every method's name, in report order."""
        return tuple(m.name for m in self.methods())

    def baselines(self) -> tuple[str, ...]:
        """The methods that do without the meta-trained teacher ("best baseline" is over these)."""
        return tuple(m.name for m in self.methods() if m.is_baseline)

    def get(self, name: str) -> Method:
        """The method called ``name``.

        Raises:
            KeyError: no such method.
        """
        return self._methods[name]

    def headline(self) -> Method:
        """The method the report compares with the best baseline (metakd's student).

        Raises:
            LookupError: no method is registered as the headline.
        """
        for method in self._methods.values():
            if method.headline:
                return method
        raise LookupError("no method is registered as the headline")


__all__ = [
    "GROUPS",
    "TEACHER_GROUPS",
    "Detector",
    "Factory",
    "Group",
    "Method",
    "MethodContext",
    "MethodRegistry",
    "OwnFitTime",
    "Prepare",
    "Setup",
]
