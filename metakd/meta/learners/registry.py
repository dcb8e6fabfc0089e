"""The meta-learners by algorithm name: the one place a config's ``meta.algorithm`` is read."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from metakd.errors import ConfigError
from metakd.meta.learners.base import InnerConfig, MetaConfig, MetaLearner
from metakd.models.teachers import Teacher

#: Algorithm name -> meta-learner class, filled by :func:`register`.
LEARNERS: dict[str, type[MetaLearner]] = {}

L = TypeVar("L", bound=type[MetaLearner])


def register(name: str) -> Callable[[L], L]:
    """Class decorator: make a :class:`MetaLearner` subclass the one for ``meta.algorithm: name``.

    Raises:
        ValueError: ``name`` is taken.
    """

    def add(cls: L) -> L:
        if name in LEARNERS:
            raise ValueError(f"meta-learner {name!r} is registered twice")
        cls.algorithm = name
        LEARNERS[name] = cls
        return cls

    return add


def learner_class(name: str) -> type[MetaLearner]:
    """The meta-learner registered as ``name``.

    Raises:
        ConfigError: no meta-learner has that name (the message lists those that do).
    """
    try:
        return LEARNERS[name]
    except KeyError:
        known = ", ".join(repr(n) for n in sorted(LEARNERS))
        raise ConfigError(f"unknown meta-learning algorithm {name!r}; known: {known}") from None


def build_learner(
    teacher: Teacher, *, inner: InnerConfig, meta: MetaConfig, anomaly_shots: int
) -> MetaLearner:
    """The meta-learner of ``meta.algorithm`` around ``teacher`` (arguments as
    :class:`MetaLearner`'s)."""
    cls = learner_class(meta.algorithm)
    return cls(teacher, inner=inner, meta=meta, anomaly_shots=anomaly_shots)


def resolve_inner(inner: InnerConfig, algorithm: str) -> InnerConfig:
    """The adaptation settings ``algorithm`` implies (e.g. FOMAML: first order; ANIL: head only)."""
    return learner_class(algorithm).resolve(inner)
