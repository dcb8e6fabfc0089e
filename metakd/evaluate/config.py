"""The configuration of ``metakd evaluate``: :class:`EvaluateConfig`.

It sits above the method registry, against which it checks ``methods:``; the sections the
methods read when built (``baselines:``, ``pretrain:``) are defined below the registry, in
:mod:`~metakd.evaluate.settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from metakd import configio
from metakd.detect import AdaptConfig
from metakd.errors import MAX_SEED, ConfigError, check_seed
from metakd.evaluate.registry import REGISTRY
from metakd.evaluate.settings import BaselineConfig, PretrainConfig
from metakd.evaluate.tasks import TaskSplit
from metakd.tracking import TrackingConfig


@dataclass
class EvaluateConfig:
    """Everything ``metakd evaluate`` needs besides the teacher."""

    tasks: str | None = None
    """Task collection to evaluate on (built-in name, manifest, directory or file); null uses the
    teacher's own collection with its recorded split, i.e. its held-out meta-test tasks."""
    split: TaskSplit = "test"
    """Which tasks of the collection to evaluate on (``all``: every task)."""
    folds: int | None = None
    """Leave domains out (:mod:`~metakd.evaluate.domains`): deal ``tasks`` into this many folds
    and, per fold, meta-train a teacher on the other folds' tasks (``train_config``,
    ``train``) and evaluate it on the fold's; null: evaluate the given teacher."""
    train_config: str | None = None
    """With ``folds``: a ``metakd meta-train`` config file for each fold's teacher (null: the
    defaults; its tasks and split are the fold's)."""
    train: list[str] = field(default_factory=list)
    """With ``folds``: ``key=value`` overrides of that meta-train config."""
    shots: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    """Normal support sizes ``K``."""
    anomaly_shots: list[int] = field(default_factory=lambda: [0, 1, 5])
    """Labelled anomalous support sizes ``A``."""
    seeds: int = 5
    """Repetitions (independent splits) per task and shot setting."""
    seed: int = 0
    """Base seed: repetition ``s`` draws its splits from ``(seed, task, s)`` and seeds every
    stochastic method with ``seed + s`` (the student with ``adapt.seed + s``)."""
    pool_size: int = 64
    """Unlabelled rows per split, capped by availability (at most half the non-support rows)."""
    query_max: int = 1000
    """Largest query; bigger remainders are subsampled with the class ratio kept."""
    min_query_per_class: int = 5
    """A setting is skipped (with a warning) for a task whose query would hold fewer normal or
    anomalous rows than this: AUROC over fewer anomalies says little."""
    methods: list[str] | None = None
    """Methods to run (the names of :data:`~metakd.evaluate.registry.REGISTRY`); null runs all
    (without those needing a student when ``adapt.student`` is false, and without those needing
    the pool when ``pool_size`` is 0)."""
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    """Adaptation and distillation, exactly as ``metakd adapt``; also used by ``scratch``,
    ``pooled-finetune`` and ``teacher-no-adapt`` (without a student)."""
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    """Hyper-parameters of the classical baselines."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Pooled multi-task pretraining of ``pooled-finetune`` (cached as ``pooled_pretrain.pt``)."""
    threads: int | None = 1
    """Torch intra-op threads while evaluating (restored afterwards); null keeps torch's. The
    per-task networks are tiny, so extra threads mostly add synchronisation: on two busy cores
    distillation ran ten times slower with 2 threads than with 1."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Run tracking (W&B mode, project, ...); metrics.jsonl is always written."""

    def __post_init__(self) -> None:
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer or null, got {self.threads!r}")
        for key in ("shots", "anomaly_shots"):
            values = getattr(self, key)
            low = 1 if key == "shots" else 0
            if not values:
                raise ConfigError(f"{key} must list at least one value")
            if any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
                raise ConfigError(f"{key} must be integers >= {low}, got {values!r}")
            if len(set(values)) != len(values):
                raise ConfigError(f"{key} lists a value twice: {values!r}")
        if self.folds is not None:
            if isinstance(self.folds, bool) or self.folds < 2:
                raise ConfigError(f"folds must be an integer >= 2 or null, got {self.folds!r}")
            if self.tasks is None:
                raise ConfigError("folds (leave domains out) needs tasks: the collection to fold")
        minimum = {"seeds": 1, "pool_size": 0, "query_max": 2, "min_query_per_class": 1}
        for key, low in minimum.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")
        # Repetition s seeds its methods with seed + s and the student with adapt.seed + s.
        check_seed("seed", self.seed)
        for key, base in (("seed", self.seed), ("adapt.seed", self.adapt.seed)):
            if base + self.seeds - 1 > MAX_SEED:
                raise ConfigError(
                    f"{key} + seeds - 1 = {base + self.seeds - 1} must be at most {MAX_SEED} "
                    "(repetition s is seeded with it + s)"
                )
        if self.query_max < 2 * self.min_query_per_class:
            raise ConfigError(
                f"query_max ({self.query_max}) must be at least twice min_query_per_class "
                f"({self.min_query_per_class})"
            )
        if self.methods is not None:
            known = REGISTRY.names()
            unknown = [m for m in self.methods if m not in known]
            if unknown:
                raise ConfigError(
                    f"methods: unknown method '{unknown[0]}' (known: {', '.join(known)})"
                )
            if not self.methods:
                raise ConfigError("methods must list at least one method (or be null for all)")
            listed = [REGISTRY.get(m) for m in self.methods]
            students = [m.name for m in listed if m.needs_student]
            if students and not self.adapt.student:
                raise ConfigError(f"methods lists {students[0]} but adapt.student is false")
            pool_methods = [m.name for m in listed if m.needs_pool]
            if pool_methods and self.pool_size == 0:
                raise ConfigError(f"methods lists {pool_methods[0]}, which needs pool_size > 0")

    def resolved_methods(self) -> list[str]:
        """The methods to run, in report order."""
        if self.methods is not None:
            return [m for m in REGISTRY.names() if m in self.methods]
        return [
            m.name
            for m in REGISTRY.methods()
            if (self.adapt.student or not m.needs_student)
            and (self.pool_size > 0 or not m.needs_pool)
        ]


def load_evaluate_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> EvaluateConfig:
    """Load an :class:`EvaluateConfig` from optional YAML plus ``key=value`` overrides.

    Args:
        path: a YAML file, or ``None`` for the defaults.
        overrides: ``key=value`` strings applied on top (dotted keys reach into sections);
            ``train.KEY=VALUE`` adds ``KEY=VALUE`` to ``train``, after the entries the file and
            a ``train=[...]`` override give (so it wins over them for the same key).

    Raises:
        ConfigError: an unknown key, a wrong type or an invalid value (the message names it).
    """
    # ``train`` is a list of the fold teachers' meta-train overrides, not a section, but
    # ``--set train.iterations=10`` is how every other section's keys are reached.
    given = list(overrides or [])
    nested = [o.removeprefix("train.") for o in given if o.startswith("train.")]
    config = configio.load(EvaluateConfig, path, [o for o in given if not o.startswith("train.")])
    return replace(config, train=[*config.train, *nested]) if nested else config


__all__ = ["EvaluateConfig", "load_evaluate_config"]
