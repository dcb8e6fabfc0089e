"""The config sections the methods read when they are built: ``baselines:`` and ``pretrain:``.

They sit below the method registry (:mod:`~metakd.evaluate.methods`), whose contexts carry them
to every method's factory, and below :class:`~metakd.evaluate.config.EvaluateConfig`, which
holds them as sections. Each baseline takes its settings as its own ``__init__`` parameters;
its registration line maps these keys onto them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from metakd.errors import ConfigError, check_number, check_seed


@dataclass
class BaselineConfig:
    """Hyper-parameters of the classical baselines (fixed, not tuned per task: no labels exist
    to tune them on in the few-shot setting)."""

    knn_k: int = 5
    """Neighbours of PyOD's kNN (its default); capped by the rows it is fitted on:
    ``min(k, n - 1)``, as PyOD scores its training rows leave-one-out."""
    lof_k: int = 20
    """Neighbours of PyOD's LOF (its default); capped as ``knn_k``."""
    iforest_trees: int = 100
    """Trees of PyOD's Isolation Forest (its default)."""
    logreg_c: float = 1.0
    """Inverse L2 strength of the logistic regression."""
    devnet_hidden: int = 20
    """Hidden width of DevNet's network (the paper's default one-hidden-layer net)."""
    devnet_steps: int = 200
    """DevNet optimiser steps."""
    devnet_batch_size: int = 64
    """Rows per DevNet step, half of them labelled anomalies (DevNet's balanced batches)."""
    devnet_lr: float = 1e-3
    """DevNet RMSprop step size."""
    devnet_margin: float = 5.0
    """DevNet's deviation margin ``a``."""

    def __post_init__(self) -> None:
        for key in (
            "knn_k",
            "lof_k",
            "iforest_trees",
            "devnet_hidden",
            "devnet_steps",
            "devnet_batch_size",
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"baselines.{key} must be an integer >= 1, got {value!r}")
        for key in ("logreg_c", "devnet_lr", "devnet_margin"):
            check_number(f"baselines.{key}", getattr(self, key), low=0, low_open=True)


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


__all__ = ["BaselineConfig", "PretrainConfig"]
