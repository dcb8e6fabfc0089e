"""Built-in task collections that need no files: ``digits`` and ``synthetic``.

``digits`` turns scikit-learn's bundled handwritten digits (offline) into ten one-vs-rest tasks.
``synthetic`` is a seeded procedural family of tasks that share structure, with the four
anomaly types of ADBench (Han et al., 2022, "ADBench: Anomaly Detection Benchmark", §3.3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from metakd.data.task import Task

#: Anomaly types of :func:`synthetic_collection`, cycled over tasks in this order.
ANOMALY_TYPES: tuple[str, ...] = ("local", "global", "dependency", "clustered")

#: Fixed split of ``digits``: digits 0-4 meta-train, 5-6 validation, 7-9 test.
DIGITS_SPLIT: dict[str, list[str]] = {
    "train": [f"digit-{k}" for k in range(5)],
    "val": ["digit-5", "digit-6"],
    "test": [f"digit-{k}" for k in range(7, 10)],
}
#: Digits per split group. A task's anomalies come only from the other digits of its own group,
#: so no image of a held-out digit is ever seen during meta-training (as normal or anomaly):
#: otherwise a teacher can memorise "7, 8 and 9 are anomalies", which inverts on held-out tasks.
_DIGIT_GROUPS: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3, 4), (5, 6), (7, 8, 9))

# ADBench §3.3 constants: local anomalies scale the covariance by 5, global anomalies are
# uniform over the normal range widened by 1.1. The clustered shift is ADBench's alpha = 5.
_LOCAL_COVARIANCE_SCALE = 5.0
_GLOBAL_RANGE_SCALE = 1.1
_CLUSTER_SHIFT = 5.0
_CLUSTER_TIGHTNESS = 0.1  # std of the anomalous cluster relative to a normal component's
_LATENT_DIM = 8
_FEATURE_NOISE = 0.1


def digits_collection(*, contamination: float = 0.1, seed: int = 0) -> list[Task]:
    """Ten one-vs-rest tasks from scikit-learn's 8x8 digits (1797 images, 64 features).

    Task ``digit-k`` holds every image of digit ``k`` as normal rows plus anomalies sampled
    without replacement from the other digits of the same split group (0-4, 5-6, 7-9), as many as make ``anomalies / rows`` equal
    ``contamination`` (rounded). Rows keep the dataset's order; pixels are scaled to ``[0, 1]``.

    Args:
        contamination: Fraction of anomalous rows per task, in ``(0, 1)``.
        seed: Seeds the anomaly sampling; task ``k`` uses ``(seed, k)``.

    Returns:
        Tasks ``digit-0`` ... ``digit-9``, ``X`` float32 ``[n_k, 64]``.
    """
    if not 0 < contamination < 1:
        raise ValueError(f"contamination must be in (0, 1), got {contamination}")
    # Imported here: scikit-learn takes about a second to import and only this built-in uses it.
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    target = digits.target
    names = tuple(digits.feature_names)
    tasks = []
    for k in range(10):
        normal = np.flatnonzero(target == k)
        group = next(g for g in _DIGIT_GROUPS if k in g)
        others = np.flatnonzero(np.isin(target, [j for j in group if j != k]))
        n_anomalies = _round_half_up(contamination * len(normal) / (1 - contamination))
        rng = np.random.default_rng([seed, k])
        anomalous = rng.choice(others, size=n_anomalies, replace=False)
        rows = np.sort(np.concatenate([normal, anomalous]))
        tasks.append(
            Task(
                name=f"digit-{k}",
                X=X[rows],
                y=np.isin(rows, anomalous).astype(np.int64),
                feature_names=names,
                source="builtin:digits",
            )
        )
    return tasks


def synthetic_collection(
    *,
    n_tasks: int = 40,
    n_features: int = 32,
    n_rows: int = 500,
    contamination: float = 0.1,
    seed: int = 0,
) -> list[Task]:
    """A seeded family of related tasks with ADBench's four anomaly types.

    All tasks share a latent-to-feature map ``g(z) = z A + 0.5 tanh(z B)`` (``A, B`` random,
    latent dimension ``min(8, n_features)``) plus feature noise. Each task has its own Gaussian
    mixture in latent space (2-4 components) seen through a small task-specific rotation and
    scaling. Task ``i`` gets anomaly type ``ANOMALY_TYPES[i % 4]``:

    * ``local``: the task's own mixture with covariance scaled by 5;
    * ``global``: uniform over each feature's normal range widened by 1.1 about its midpoint;
    * ``dependency``: every feature drawn independently from the normal rows' marginal, which
      keeps each feature's distribution and breaks the correlations between them;
    * ``clustered``: a small tight cluster centred at the mixture mean scaled by 5.

    Task ``i`` depends only on ``(seed, i, n_features, n_rows, contamination)``, so a longer
    collection extends a shorter one. Rows are shuffled.

    Args:
        n_tasks: Number of tasks.
        n_features: Features per task ``d`` (at least 2).
        n_rows: Rows per task ``n``.
        contamination: Fraction of anomalous rows, in ``(0, 0.5]``.
        seed: Seed of the whole family.

    Returns:
        Tasks named like ``"synthetic-07-dependency"``, ``X`` float32 ``[n_rows, n_features]``.
    """
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    if n_features < 2:
        raise ValueError(f"n_features must be >= 2, got {n_features}")
    if not 0 < contamination <= 0.5:
        raise ValueError(f"contamination must be in (0, 0.5], got {contamination}")
    n_anomalies = _round_half_up(contamination * n_rows)
    if n_anomalies < 1 or n_rows - n_anomalies < 2:
        raise ValueError(f"n_rows = {n_rows} is too small for contamination {contamination}")

    shared_seq, *task_seqs = np.random.SeedSequence(seed).spawn(n_tasks + 1)
    latent_map = _LatentMap.draw(np.random.default_rng(shared_seq), n_features)
    digits = max(2, len(str(n_tasks - 1)))
    names = tuple(f"f{j:0{len(str(n_features - 1))}d}" for j in range(n_features))
    tasks = []
    for i, task_seq in enumerate(task_seqs):
        kind = ANOMALY_TYPES[i % len(ANOMALY_TYPES)]
        rng = np.random.default_rng(task_seq)
        mixture = _Mixture.draw(rng, latent_map.latent_dim)
        normal = latent_map(mixture.sample(rng, n_rows - n_anomalies), rng)
        anomalous = _anomalies(kind, rng, n_anomalies, normal, mixture, latent_map)
        order = rng.permutation(n_rows)
        tasks.append(
            Task(
                name=f"synthetic-{i:0{digits}d}-{kind}",
                X=np.concatenate([normal, anomalous])[order].astype(np.float32),
                y=np.repeat(np.array([0, 1], dtype=np.int64), [len(normal), n_anomalies])[order],
                feature_names=names,
                source="builtin:synthetic",
            )
        )
    return tasks


@dataclass(frozen=True)
class _LatentMap:
    """The shared map from latent ``[m, L]`` to feature space ``[m, d]``."""

    linear: np.ndarray  # [L, d]
    nonlinear: np.ndarray  # [L, d]

    @property
    def latent_dim(self) -> int:
        return self.linear.shape[0]

    @classmethod
    def draw(cls, rng: np.random.Generator, n_features: int) -> _LatentMap:
        latent = min(_LATENT_DIM, n_features)
        scale = 1.0 / np.sqrt(latent)
        return cls(
            linear=rng.normal(0.0, scale, size=(latent, n_features)),
            nonlinear=rng.normal(0.0, scale, size=(latent, n_features)),
        )

    def __call__(self, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.normal(0.0, _FEATURE_NOISE, size=(len(z), self.linear.shape[1]))
        return z @ self.linear + 0.5 * np.tanh(z @ self.nonlinear) + noise


@dataclass(frozen=True)
class _Mixture:
    """A task's latent Gaussian mixture, seen through its own rotation and scaling."""

    weights: np.ndarray  # [C]
    means: np.ndarray  # [C, L]
    stds: np.ndarray  # [C, L], diagonal in the unrotated latent space
    rotation: np.ndarray  # [L, L], close to the identity
    axis_scale: np.ndarray  # [L]

    @classmethod
    def draw(cls, rng: np.random.Generator, latent_dim: int) -> _Mixture:
        n_components = int(rng.integers(2, 5))
        # QR of a perturbed identity: a rotation near the identity (signs fixed so that it is).
        q, r = np.linalg.qr(np.eye(latent_dim) + 0.2 * rng.normal(size=(latent_dim, latent_dim)))
        return cls(
            weights=rng.dirichlet(np.full(n_components, 2.0)),
            means=rng.normal(0.0, 1.5, size=(n_components, latent_dim)),
            stds=rng.uniform(0.3, 0.8, size=(n_components, latent_dim)),
            rotation=q * np.sign(np.diag(r)),
            axis_scale=np.exp(rng.normal(0.0, 0.15, size=latent_dim)),
        )

    def sample(self, rng: np.random.Generator, n: int, *, std_scale: float = 1.0) -> np.ndarray:
        """``n`` latent points ``[n, L]``; ``std_scale`` widens every component."""
        component = rng.choice(len(self.weights), size=n, p=self.weights)
        eps = rng.normal(size=(n, self.means.shape[1]))
        return self.transform(self.means[component] + std_scale * self.stds[component] * eps)

    def transform(self, z: np.ndarray) -> np.ndarray:
        """The task's rotation and axis scaling of latent points ``[m, L]``."""
        return (z @ self.rotation.T) * self.axis_scale

    @property
    def mean(self) -> np.ndarray:
        """Mixture mean ``[L]`` before the task transform."""
        return self.weights @ self.means


def _anomalies(
    kind: str,
    rng: np.random.Generator,
    n: int,
    normal: np.ndarray,
    mixture: _Mixture,
    latent_map: _LatentMap,
) -> np.ndarray:
    """``n`` anomalous rows ``[n, d]`` of the given ADBench type for a task with ``normal`` rows."""
    if kind == "local":
        z = mixture.sample(rng, n, std_scale=np.sqrt(_LOCAL_COVARIANCE_SCALE))
        return latent_map(z, rng)
    if kind == "global":
        low, high = normal.min(axis=0), normal.max(axis=0)
        middle, half = (low + high) / 2, _GLOBAL_RANGE_SCALE * (high - low) / 2
        return rng.uniform(middle - half, middle + half, size=(n, normal.shape[1]))
    if kind == "dependency":
        rows = rng.integers(0, len(normal), size=(n, normal.shape[1]))
        return normal[rows, np.arange(normal.shape[1])]
    if kind == "clustered":
        spread = _CLUSTER_TIGHTNESS * mixture.stds.mean(axis=0)
        z = _CLUSTER_SHIFT * mixture.mean + spread * rng.normal(size=(n, len(spread)))
        return latent_map(mixture.transform(z), rng)
    raise ValueError(f"unknown anomaly type {kind!r}")


def _round_half_up(x: float) -> int:
    # round() rounds halves to even, which would make 2.5 anomalies 2 but 3.5 anomalies 4.
    return int(np.floor(x + 0.5))


@dataclass(frozen=True)
class BuiltinCollection:
    """A collection available by name.

    Attributes:
        name: The name used in place of a path (``"digits"``).
        description: One line for ``metakd tasks list``.
        load: Builds the tasks with default parameters.
        split: A fixed default split (split name -> task names), or ``None`` for a seeded split
            by fractions.
    """

    name: str
    description: str
    load: Callable[[], list[Task]]
    split: dict[str, list[str]] | None


BUILTIN_COLLECTIONS: dict[str, BuiltinCollection] = {
    "digits": BuiltinCollection(
        name="digits",
        description="scikit-learn 8x8 digits, 10 one-vs-rest tasks, 64 features, 10% anomalies; "
        "train 0-5, val 6, test 7-9",
        load=digits_collection,
        split=DIGITS_SPLIT,
    ),
    "synthetic": BuiltinCollection(
        name="synthetic",
        description="40 procedural tasks sharing a latent structure, 32 features, 10% anomalies "
        "of ADBench's four types",
        load=synthetic_collection,
        split=None,
    ),
}
