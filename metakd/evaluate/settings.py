"""The config sections the methods read when they are built: ``baselines:`` and ``pretrain:``.

They sit below the method registry (:mod:`~metakd.evaluate.methods`), whose contexts carry them
to every method's factory, and below :class:`~metakd.evaluate.config.EvaluateConfig`, which
holds them as sections. Each baseline declares its settings in its own module
(:func:`baseline_settings`) and takes them as ``__init__`` parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from metakd.configio import SECTIONS, SectionRegistry
from metakd.errors import ConfigError, check_number, check_seed

#: The sections of ``baselines:``: each baseline with settings registers its own, in its module.
BASELINE_SETTINGS = SectionRegistry("baselines")

C = TypeVar("C", bound=type)
S = TypeVar("S")


def baseline_settings(name: str) -> Callable[[C], C]:
    """Class decorator: make a baseline's settings dataclass the section ``baselines.<name>``
    (YAML, ``--set``); its factory reads it with ``context.baselines.section(cls)``."""

    def add(cls: C) -> C:
        BASELINE_SETTINGS.register(name, cls)
        return cls

    return add


@dataclass
class BaselineConfig:
    """Every baseline's settings, a section each (fixed, not tuned per task: no labels exist to
    tune them on in the few-shot setting)."""

    sections: dict[str, Any] = field(default_factory=dict, metadata={SECTIONS: BASELINE_SETTINGS})
    """By baseline module's name (``pyod``, ``logreg``, ``devnet``; those not given
    at their defaults). In YAML and ``--set`` each is a key of ``baselines:`` itself
    (``baselines.devnet.steps``)."""

    def section(self, settings: type[S]) -> S:
        """The settings of type ``settings`` (a baseline's section)."""
        return BASELINE_SETTINGS.pick(self.sections, settings)

    def __post_init__(self) -> None:
        self.sections = BASELINE_SETTINGS.complete(self.sections)


@dataclass
class PretrainConfig:
    """Pooled (non-meta) multi-task pretraining behind the ``pooled-finetune`` baseline."""

    iterations: int = 300
    """Optimiser steps, each on one batch of episodes of the meta-train tasks."""
    lr: float = 1e-3
    """Adam step size."""
    loss: Literal["ranking", "bce"] = "ranking"
    """Loss on the episodes' labelled query rows: the pairwise ranking loss (the default outer
    loss of meta-training, so only the inner loop differs) or class-balanced BCE on logit-scale
    scores. BCE on a distance teacher's log-distances keeps inflating the anomalies' distances;
    on MVTec its fine-tuned SVDD scores overflowed in 1 of 9 one-class runs, ranking in none."""
    seed: int = 0
    """Seeds the initialisation and the episode sampling."""

    def __post_init__(self) -> None:
        if (
            isinstance(self.iterations, bool)
            or not isinstance(self.iterations, int)
            or self.iterations < 1
        ):
            raise ConfigError(
                f"pretrain.iterations must be an integer >= 1, got {self.iterations!r}"
            )
        check_number("pretrain.lr", self.lr, low=0, low_open=True)
        check_seed("pretrain.seed", self.seed)


__all__ = ["BASELINE_SETTINGS", "BaselineConfig", "PretrainConfig", "baseline_settings"]
