"""The registry of evaluated methods: each registers by name beside the detector it builds.

A method is a name, a report group and a factory that builds a
:class:`~metakd.baselines.Detector` for one split, plus what it needs (labelled anomalies, an
unlabelled pool, a distilled student) and an optional one-off preparation run once per
evaluation before any split (e.g. pretraining). The run loop and the report know methods only
through :data:`REGISTRY`, so adding a baseline is one detector class and one
:func:`register_method` line beside it, in :mod:`metakd.baselines` or in a new module of this
package (every module of ``metakd.evaluate`` is imported before the registry is first read).

Report order (tables, plot legend, ``results.csv`` rows of a run): by group (:data:`GROUPS`),
then in registration order within a group.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args, runtime_checkable

if TYPE_CHECKING:
    from rich.progress import Progress

    from metakd.baselines import Detector
    from metakd.data.collection import TaskCollection
    from metakd.evaluate.config import EvaluateConfig
    from metakd.persist import TeacherBundle

Group = Literal["ours", "ablation", "transfer", "support", "pool", "labelled"]
"""What a method builds on: ``ours`` (metakd), ``ablation`` (metakd with a part switched off),
``transfer`` (the teacher's network without meta-training), ``support`` / ``pool``
(unsupervised on the support normals / the unlabelled pool), ``labelled`` (supervised: needs
labelled anomalies)."""

#: Report order of the groups.
GROUPS: tuple[Group, ...] = get_args(Group)
#: Groups that use the meta-trained teacher; every other group holds baselines.
TEACHER_GROUPS: tuple[Group, ...] = ("ours", "ablation")

#: Modules whose import registers methods. They are imported on the registry's first use, not
#: by this package's ``__init__``: the baselines import this module to register, and an import
#: in the other direction at load time would be a cycle.
PROVIDERS: tuple[str, ...] = ("metakd.evaluate.ours", "metakd.baselines")


@dataclass(frozen=True)
class Setup:
    """What a method's one-off preparation may use (once per evaluation, before any split).

    Attributes:
        method: the method being prepared (for messages).
        config: the evaluation config.
        bundle: the meta-trained teacher.
        teacher_path: its ``teacher.pt``.
        collection: the collection of the evaluation tasks.
        out_dir: the output directory (for caches such as ``pooled_pretrain.pt``).
        progress: the evaluation's progress display, to add a job to.
    """

    method: str
    config: EvaluateConfig
    bundle: TeacherBundle
    teacher_path: Path
    collection: TaskCollection
    out_dir: Path
    progress: Progress


@dataclass(frozen=True)
class MethodContext:
    """What a method's factory may use to build its detector for one split.

    Attributes:
        config: the evaluation config.
        bundle: the meta-trained teacher.
        repetition: the split's seed index ``s``.
        selected: the names of every method of this evaluation (in report order).
        prepared: what this method's ``prepare`` returned (``None`` without one).
        shared: per-split store for a fit that several methods share (one adaptation gives
            both the student's and the teacher's scores); keyed by the sharing module.
    """

    config: EvaluateConfig
    bundle: TeacherBundle
    repetition: int
    selected: tuple[str, ...]
    prepared: Any = None
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        """Seed of stochastic methods in this repetition: ``config.seed + repetition``."""
        return self.config.seed + self.repetition


@runtime_checkable
class OwnFitTime(Protocol):
    """A detector that reports its own fitting time; every other one is timed around ``fit``.

    For fits shared between methods: the second method's ``fit`` reuses the first's, so the
    wall time around it says nothing.
    """

    def fit_seconds(self) -> float:
        """Seconds this method's fit took."""
        ...


Factory = Callable[[MethodContext], "Detector"]
Prepare = Callable[[Setup], Any]


@dataclass(frozen=True)
class Method:
    """One registered method.

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
    """

    name: str
    group: Group
    build: Factory
    needs_anomalies: bool = False
    needs_pool: bool = False
    needs_student: bool = False
    headline: bool = False
    prepare: Prepare | None = None

    @property
    def is_baseline(self) -> bool:
        """Whether the method does without the meta-trained teacher."""
        return self.group not in TEACHER_GROUPS


class MethodRegistry:
    """Methods by name, listed in report order.

    Args:
        providers: modules imported on first use, whose import registers their methods.
    """

    def __init__(self, providers: tuple[str, ...]) -> None:
        self._providers = providers
        self._loaded = False
        self._methods: dict[str, Method] = {}

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
    ) -> Method:
        """Register a method (see :class:`Method` for the arguments) and return it.

        Raises:
            ValueError: the name is empty or already taken, the group is unknown, or a second
                method claims the headline.
        """
        if not name:
            raise ValueError("a method needs a name")
        if name in self._methods:
            raise ValueError(f"method {name!r} is registered twice")
        if group not in GROUPS:
            raise ValueError(f"method {name!r}: unknown group {group!r} (known: {GROUPS})")
        taken = [m.name for m in self._methods.values() if m.headline]
        if headline and taken:
            raise ValueError(f"method {name!r}: {taken[0]} is already the headline")
        method = Method(
            name=name,
            group=group,
            build=build,
            needs_anomalies=needs_anomalies,
            needs_pool=needs_pool,
            needs_student=needs_student,
            headline=headline,
            prepare=prepare,
        )
        self._methods[name] = method
        return method

    def _load(self) -> None:
        if self._loaded:
            return
        # Set first: a provider's import may consult the registry.
        self._loaded = True
        for module in self._providers:
            importlib.import_module(module)
        import metakd.evaluate as package  # a new baseline module here registers itself

        for found in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{found.name}")

    def methods(self) -> tuple[Method, ...]:
        """Every method, in report order."""
        self._load()
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
        self._load()
        return self._methods[name]

    def headline(self) -> Method:
        """The method the report compares with the best baseline (metakd's student).

        Raises:
            LookupError: no method is registered as the headline.
        """
        self._load()
        for method in self._methods.values():
            if method.headline:
                return method
        raise LookupError("no method is registered as the headline")


#: The methods of ``metakd evaluate``.
REGISTRY = MethodRegistry(PROVIDERS)
#: Register a method in :data:`REGISTRY` (see :meth:`MethodRegistry.register`).
register_method = REGISTRY.register


__all__ = [
    "GROUPS",
    "PROVIDERS",
    "REGISTRY",
    "TEACHER_GROUPS",
    "Group",
    "Method",
    "MethodContext",
    "MethodRegistry",
    "OwnFitTime",
    "Setup",
    "register_method",
]
