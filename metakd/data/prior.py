"""A synthetic prior of unlimited anomaly-detection tasks to meta-train on beside a user's own.

A user with ten datasets has ten tasks; meta-training on them alone memorises them. Like FoMo-0D
(Shen et al., 2024), which trains a detector on synthetic tasks only, every draw here is a new
task: normal rows from a Gaussian mixture (1-4 components, correlated features) in a latent space
of 1-8 dimensions, seen through a random map to ``d`` features that is linear or curved (a
manifold), with per-feature units; anomalies of one of ADBench's four types (Han et al., 2022,
§3.3: local, global, dependency, clustered) at a contamination drawn per task. Feature count,
size and contamination vary from task to task, so a teacher meta-trained on the prior meets
widths and units it has never seen. Tasks depend only on the generator they are drawn from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from metakd.data.builtin import ANOMALY_TYPES, _anomalies, _LatentMap, _Mixture
from metakd.data.task import Task
from metakd.errors import ConfigError


@dataclass
class PriorConfig:
    """The synthetic task prior mixed into meta-training."""

    weight: float = 0.5
    """Expected share of each meta-batch drawn from the prior (0: the collection only; 1: the
    prior only). Meta-validation and the held-out report always use the collection's tasks."""
    features: list[int] = field(default_factory=lambda: [2, 128])
    """``[low, high]``: each task's feature count, log-uniform in this range."""
    contamination: list[float] = field(default_factory=lambda: [0.01, 0.15])
    """``[low, high]``: the pool's anomaly fraction, uniform in this range."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ConfigError(f"prior.weight must be in [0, 1], got {self.weight!r}")
        if len(self.features) != 2 or not 1 <= self.features[0] <= self.features[1]:
            raise ConfigError(
                f"prior.features must be [low, high] with 1 <= low <= high, got {self.features!r}"
            )
        c = self.contamination
        if len(c) != 2 or not 0.0 <= c[0] <= c[1] < 0.5:
            raise ConfigError(
                f"prior.contamination must be [low, high] with 0 <= low <= high < 0.5, got "
                f"{self.contamination!r}"
            )


def prior_task(
    rng: np.random.Generator,
    config: PriorConfig,
    *,
    normals: int,
    anomalies: int,
    pool: int,
    name: str = "prior",
    width: int | None = None,
) -> Task:
    """One fresh task with exactly enough rows for an episode.

    Args:
        rng: the only source of randomness.
        config: ranges of width and contamination.
        normals: normal rows needed outside the pool (support + query).
        anomalies: anomalous rows needed outside the pool.
        pool: pool rows; ``round(pool · c)`` of them anomalous for the task's contamination ``c``.
        name: the task's name.
        width: the task's feature count; ``None`` draws it log-uniformly from
            ``config.features`` (tasks that are projected to a common width afterwards).
    """
    low, high = config.features
    if width is None:
        d = int(np.clip(np.round(np.exp(rng.uniform(np.log(low), np.log(high + 1)))), low, high))
    else:
        d = width
    c_low, c_high = config.contamination
    contamination = rng.uniform(c_low, c_high)
    pool_anomalies = int(np.floor(pool * contamination + 0.5))
    n_normal = normals + pool - pool_anomalies
    n_anomalous = anomalies + pool_anomalies
    latent_map = _LatentMap.draw(rng, d)
    latent = latent_map.latent_dim
    latent_keep = int(rng.integers(1, latent + 1))
    if latent_keep < latent:
        # A lower-dimensional manifold: only the first latent directions vary.
        latent_map = _LatentMap(latent_map.linear[:latent_keep], latent_map.nonlinear[:latent_keep])
    curvature = rng.uniform(0.0, 2.0)
    latent_map = _LatentMap(latent_map.linear, curvature * latent_map.nonlinear)
    mixture = _Mixture.draw(rng, latent_map.latent_dim)
    if rng.random() < 0.3:  # a single cluster
        mixture = _Mixture(
            np.ones(1), mixture.means[:1], mixture.stds[:1], mixture.rotation, mixture.axis_scale
        )
    normal = latent_map(mixture.sample(rng, n_normal), rng)
    kind = ANOMALY_TYPES[int(rng.integers(len(ANOMALY_TYPES)))]
    anomalous = _anomalies(kind, rng, n_anomalous, normal, mixture, latent_map)
    x = np.concatenate([normal, anomalous])
    # Per-feature units and offsets, as in real tables.
    x = x * np.exp(rng.normal(0.0, 1.0, size=d)) + rng.normal(0.0, 3.0, size=d)
    order = rng.permutation(len(x))
    y = np.repeat(np.array([0, 1], dtype=np.int64), [n_normal, n_anomalous])
    return Task(
        name=f"{name}-{kind}",
        X=x[order].astype(np.float32),
        y=y[order],
        feature_names=tuple(f"f{j}" for j in range(d)),
        source="builtin:prior",
    )


__all__ = ["PriorConfig", "prior_task"]
