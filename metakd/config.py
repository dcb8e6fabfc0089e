"""Run configuration: typed dataclasses that YAML files in ``configs/`` load into.

Each section is defined next to the code it configures and assembled here. Load with
:func:`load_train_config`; unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from metakd import configio
from metakd.data.collection import SplitConfig
from metakd.data.prior import PriorConfig
from metakd.data.transforms import AlignmentConfig, ScalingConfig
from metakd.episodes import EpisodeConfig
from metakd.errors import ConfigError, check_int, check_seed
from metakd.meta.learners import InnerConfig, MetaConfig, learner_class
from metakd.models.teachers import ModelConfig, check_kind
from metakd.tracking import TrackingConfig


@dataclass
class TrainConfig:
    """Everything ``metakd meta-train`` needs."""

    tasks: str = "synthetic"
    """Task collection: a built-in name, a manifest (path or name under ``tasks/``), a directory
    of task files, or a single file."""
    seed: int = 0
    """Seed for initialisation, episode sampling and splits."""
    iterations: int = 400
    """Outer-loop steps (meta-batches)."""
    val_every: int = 25
    """Validate on the meta-val tasks every this many iterations (and at the end); the best
    checkpoint is kept, which is the main guard against meta-overfitting."""
    patience: int | None = None
    """Early stopping: end the run once this many validations in a row found no meta-val AUROC
    above the best so far (e.g. 4: 100 iterations at ``val_every: 25``). The best iterate is the
    teacher either way, so stopping changes it only where a later iterate would have beaten it,
    and saves the rest of the run. Null (the default): every one of ``iterations``, because a
    meta-val AUROC can dip for longer and then climb past its best (on SKAB folds 4 keeps
    iterate 25–100 where the whole run keeps 275–400, with validation at
    ``episode.anomaly_shots`` or at 5 as well: benchmarks/RESULTS.md §10, early stopping)."""
    val_episodes: int = 4
    """Fixed episodes per meta-val task (the same ones at every validation)."""
    test_episodes: int = 5
    """Episodes per held-out meta-test task for the final report."""
    pool_share_episodes: int = 16
    """After meta-training: episodes of the meta-train domains (adapted from the
    initialisation), and as many of the meta-val ones (from the teacher), at adapt-time sizes
    (``shots`` normals, the rest of a domain as its pool) on which the share of the pool's
    Gaussian in adapted scores is fitted (the two groups' curves averaged:
    :mod:`metakd.detect.pool_share`), stored in ``teacher.pt`` for ``metakd adapt``; 0: share
    0, the teacher's score alone."""
    checkpoint_every: int = 50
    """Write the resume checkpoint (``resume.pt`` in the run's staging folder) every this many
    iterations, so a run killed outright loses at most that many; 0 writes none periodically.
    SIGINT/SIGTERM always write one before the run stops. Resume with ``metakd meta-train
    --resume OUT``."""
    episode_streams: int | None = None
    """Independent episode streams each meta-batch is drawn from, ``episode.meta_batch /
    episode_streams`` episodes each. Null: one per rank (under torch.distributed each rank draws
    only its own streams), so a single process draws the one sequential stream of earlier
    versions. Runs with the same number of streams draw the same episodes at any world size that
    divides it (one process with ``episode_streams: 2`` == two ranks)."""
    threads: int | None = None
    """Torch's CPU threads while meta-training (``torch.set_num_threads``, restored after);
    null: 1. A meta-batch's tensors are small, so a second thread per operation gained 1.2× on
    an idle 2-core machine and lost 3-4× as soon as another process shared the cores (its
    threads wait for each other); the other core draws the next meta-batches instead
    (``prefetch``). More threads pay off for wide models on many idle cores."""
    prefetch: int = 2
    """Meta-batches drawn ahead by a background thread while the meta-gradient runs; 0 draws
    each in turn. The episodes, and so the teacher, are the same either way."""
    device: str = "cpu"
    """Torch device for meta-training: ``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (CUDA when the
    machine has it; stored resolved). Results equal the CPU's to float tolerance."""
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    """Episode shapes: shots, anomaly shots, query size and anomaly fraction, pool, meta-batch
    (defaults: :class:`~metakd.episodes.EpisodeConfig`'s, the one default episode shape)."""
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    """Per-task feature scaling, fitted on each episode's support (and pool)."""
    alignment: AlignmentConfig | None = None
    """Feature alignment across tasks with different feature counts; null uses the collection's."""
    split: SplitConfig | None = None
    """Task split into meta-train/val/test; null uses the collection's."""
    prior: PriorConfig = field(default_factory=PriorConfig)
    """The synthetic task prior mixed into meta-batches (``prior.weight: 0`` turns it off)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Teacher architecture."""
    inner: InnerConfig = field(default_factory=InnerConfig)
    """Adaptation (inner loop); stored in the checkpoint for ``metakd adapt``."""
    meta: MetaConfig = field(default_factory=MetaConfig)
    """Outer loop."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Run tracking (W&B mode, project, ...); metrics.jsonl is always written."""

    def __post_init__(self) -> None:
        check_kind(self.model.kind)
        try:
            learner_class(self.meta.algorithm)
        except ConfigError as err:
            raise ConfigError(f"config 'meta': {err}") from None
        if not self.tasks:
            raise ConfigError("tasks must name a task collection, got an empty string")
        check_seed("seed", self.seed)
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}")
        if self.val_every < 1:
            raise ConfigError(f"val_every must be >= 1, got {self.val_every}")
        if self.patience is not None:
            check_int("patience", self.patience, low=1)
        check_int("val_episodes", self.val_episodes, low=1)
        check_int("test_episodes", self.test_episodes, low=1)
        check_int("pool_share_episodes", self.pool_share_episodes, low=0)
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"checkpoint_every must be >= 0 (0: no periodic checkpoints), got "
                f"{self.checkpoint_every}"
            )
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer or null, got {self.threads!r}")
        if isinstance(self.prefetch, bool) or self.prefetch < 0:
            raise ConfigError(
                f"prefetch must be an integer >= 0 (0: no prefetching), got {self.prefetch!r}"
            )
        if self.episode_streams is not None and (
            isinstance(self.episode_streams, bool)
            or self.episode_streams < 1
            or self.episode.meta_batch % self.episode_streams
        ):
            raise ConfigError(
                f"episode_streams={self.episode_streams} must be >= 1 and divide "
                f"episode.meta_batch={self.episode.meta_batch}"
            )
        self.device = resolve_device(self.device)


def resolve_device(device: str) -> str:
    """``device`` checked, with ``auto`` resolved to ``cuda`` when this machine has CUDA, else
    ``cpu``; raises :class:`ConfigError` naming it when torch cannot use it here."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    return device


def check_device(device: str) -> None:
    """Raise ``ValueError`` naming ``device`` when torch cannot use it on this machine."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ConfigError(
            f"device {device!r} is not a torch device (cpu, cuda, cuda:0, ..., or auto)"
        ) from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: this machine has no CUDA device (use device=cpu)")


def load_train_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """Load a :class:`TrainConfig` from optional YAML plus ``key=value`` overrides."""
    return configio.load(TrainConfig, path, overrides)
