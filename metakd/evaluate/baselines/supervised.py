"""Supervised baselines, which need labelled anomalies in the support: class-balanced logistic
regression (``logreg-support``) and DevNet (``devnet``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from metakd.data.transforms import ScalingConfig
from metakd.errors import check_int, check_number
from metakd.evaluate.baselines.common import (
    FittedScaling,
    checked_inputs,
    checked_rows,
    require_anomalies,
    scaling_rows,
)
from metakd.evaluate.methods import Detector, Method
from metakd.evaluate.settings import baseline_settings
from metakd.meta.losses import deviation_loss


@baseline_settings("logreg")
@dataclass
class LogRegSettings:
    """``baselines.logreg``: the logistic regression."""

    c: float = 1.0
    """Inverse L2 strength."""

    def __post_init__(self) -> None:
        check_number("baselines.logreg.c", self.c, low=0, low_open=True)


@baseline_settings("devnet")
@dataclass
class DevNetSettings:
    """``baselines.devnet``: DevNet's network and training."""

    hidden: int = 20
    """Hidden width (the paper's default one-hidden-layer net)."""
    steps: int = 200
    """Optimiser steps."""
    batch_size: int = 64
    """Rows per step, half of them labelled anomalies (DevNet's balanced batches)."""
    lr: float = 1e-3
    """RMSprop step size."""
    margin: float = 5.0
    """The deviation margin ``a``."""

    def __post_init__(self) -> None:
        for key in ("hidden", "steps", "batch_size"):
            check_int(f"baselines.devnet.{key}", getattr(self, key), low=1)
        for key in ("lr", "margin"):
            check_number(f"baselines.devnet.{key}", getattr(self, key), low=0, low_open=True)


class LogRegDetector(Detector):
    """Class-balanced logistic regression on the scaled support (needs labelled anomalies).

    Args:
        c: inverse L2 regularisation strength (the config's ``baselines.logreg.c``).
        scaling: per-feature scaling fitted on support + pool.
        seed: solver seed (for reproducibility; lbfgs is deterministic).
    """

    def __init__(self, *, scaling: ScalingConfig, seed: int, c: float = 1.0) -> None:
        self.c = c
        self.scaling = scaling
        self.seed = seed

    def fit(
        self, X: np.ndarray, y: np.ndarray, unlabeled: np.ndarray | None = None
    ) -> LogRegDetector:
        X, y, pool = checked_inputs(X, y, unlabeled)
        require_anomalies("logreg-support", y)
        self.scale_ = FittedScaling(scaling_rows(X, pool, "support"), self.scaling)
        self.model_ = LogisticRegression(
            C=self.c, class_weight="balanced", max_iter=1000, random_state=self.seed
        ).fit(self.scale_(X), y)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.model_.decision_function(self.scale_(checked_rows(X)))


class DevNetDetector(Detector):
    """Deviation network (Pang et al. 2019, "Deep Anomaly Detection with Deviation Networks").

    A one-hidden-layer MLP trained with the deviation loss against an N(0, 1) reference score
    prior; as in DevNet, unlabelled rows (the pool) are treated as normal next to the labelled
    normals, and every batch is half labelled anomalies. Needs labelled anomalies.

    Not PyOD's ``DevNet`` (PyOD 3.6): its deviation loss multiplies labels ``[B]`` with scores
    ``[B, 1]``, which broadcasts to ``[B, B]``, so loss and gradients depend only on the share of
    anomalies in a batch, not on which rows they are (same loss and gradients with the labels
    permuted; AUROC 0.0 where ours gets 1.0 on 4 features with shifted anomalies); its
    ``random_seed`` is unused (two fits with the same seed differ), its batches are not
    balanced, and it prints every epoch.

    The defaults are the config's (``baselines.devnet``).

    Args:
        scaling: per-feature scaling fitted on support + pool.
        seed: seeds initialisation and batches.
        hidden: hidden width (the paper's default one-hidden-layer net).
        steps: optimiser steps.
        batch_size: rows per step, half of them labelled anomalies (DevNet's balanced batches).
        lr: RMSprop step size.
        margin: the deviation margin ``a``.
    """

    def __init__(
        self,
        *,
        scaling: ScalingConfig,
        seed: int,
        hidden: int = 20,
        steps: int = 200,
        batch_size: int = 64,
        lr: float = 1e-3,
        margin: float = 5.0,
    ) -> None:
        self.scaling = scaling
        self.seed = seed
        self.hidden = hidden
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.margin = margin

    def fit(
        self, X: np.ndarray, y: np.ndarray, unlabeled: np.ndarray | None = None
    ) -> DevNetDetector:
        X, y, pool = checked_inputs(X, y, unlabeled)
        require_anomalies("devnet", y)
        self.scale_ = FittedScaling(scaling_rows(X, pool, "support"), self.scaling)
        normal = self.scale_(X[y == 0] if pool is None else np.concatenate([X[y == 0], pool]))
        anomalous = self.scale_(X[y == 1])
        normal_t, anomalous_t = torch.from_numpy(normal), torch.from_numpy(anomalous)
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(self.seed)
            net = nn.Sequential(
                nn.Linear(X.shape[1], self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1)
            )
        # DevNet's L2 penalty (0.01) expressed as weight decay of its RMSprop optimiser.
        optimiser = torch.optim.RMSprop(net.parameters(), lr=self.lr, weight_decay=0.01)
        n_anom = self.batch_size // 2
        n_norm = self.batch_size - n_anom
        labels = torch.cat([torch.zeros(n_norm), torch.ones(n_anom)])
        for _ in range(self.steps):
            # Sampling with replacement: a few-shot support has far fewer anomalies than n_anom.
            batch = torch.cat(
                [
                    normal_t[torch.randint(normal_t.shape[0], (n_norm,), generator=gen)],
                    anomalous_t[torch.randint(anomalous_t.shape[0], (n_anom,), generator=gen)],
                ]
            )
            loss = deviation_loss(net(batch).squeeze(-1), labels, margin=self.margin)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        self.net_ = net.eval()
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.net_(torch.from_numpy(self.scale_(checked_rows(X)))).squeeze(-1).numpy()


def _devnet(settings: DevNetSettings, scaling: ScalingConfig, seed: int) -> DevNetDetector:
    return DevNetDetector(
        scaling=scaling,
        seed=seed,
        hidden=settings.hidden,
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        margin=settings.margin,
    )


METHODS: tuple[Method, ...] = (
    Method(
        "logreg-support",
        group="labelled",
        needs_anomalies=True,
        build=lambda c: LogRegDetector(
            c=c.baselines.section(LogRegSettings).c, scaling=c.bundle.scaling, seed=c.seed
        ),
    ),
    Method(
        "devnet",
        group="labelled",
        needs_anomalies=True,
        build=lambda c: _devnet(c.baselines.section(DevNetSettings), c.bundle.scaling, c.seed),
    ),
)


__all__ = ["METHODS", "DevNetDetector", "DevNetSettings", "LogRegDetector", "LogRegSettings"]
