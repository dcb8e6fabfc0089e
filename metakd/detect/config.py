"""Adaptation and scoring settings (``adapt:``, ``score:``) and the detector's limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metakd.config import resolve_device
from metakd.data.readers import ReadOptions
from metakd.distill import DistillConfig
from metakd.errors import ConfigError, check_int, check_seed
from metakd.threshold import ThresholdConfig
from metakd.tracking import TrackingConfig

#: Without an unlabelled pool a support needs this many distinct normals: the threshold is
#: calibrated on their cross-fitted scores (``threshold.folds``), and below this a conformal
#: threshold is the highest of a handful of scores (with 2 rows every unseen normal scored above
#: both on their own scores; RESULTS.md §12).
MIN_NORMALS_WITHOUT_POOL = 5
#: Rows scored per forward pass (bounds the working memory of heads with a reference).
SCORE_BLOCK_ROWS = 4096


@dataclass
class AdaptConfig:
    """Settings of ``metakd adapt``."""

    inner: dict[str, Any] = field(default_factory=dict)
    """Overrides of the teacher's stored adaptation settings (e.g. ``{steps: 5}``)."""
    student: bool = True
    """Distil a student (else the adapted teacher is the detector)."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Student architecture and distillation."""
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    """Threshold calibration."""
    linear_mix: float = 1.0
    """With labelled anomalies, and a teacher whose profile holds the ``linear`` evidence (the
    labelled rows' ridge discriminant): that evidence's weight in the adapted teacher's score,
    both standardised by the support normals' median and spread (``score``'s weight is 1), so
    the student, the threshold and the saved teacher all read the mix. Meta-training leaves
    that evidence's trust near 0 where it wins (RESULTS.md §11). 0: the teacher's score alone."""
    anomaly_mix: float = 1.0
    """The same for the ``anomalies`` evidence, ``log(d_normal / d_anomaly)`` from a row's
    nearest support normal and nearest labelled anomaly: a third expert, of the labelled
    anomalies' neighbourhoods, standardised alike and added with this weight. Like ``linear``,
    meta-training trusts it little where it helps (RESULTS.md §11). 0: not mixed."""
    pool_share: float | None = None
    """With an unlabelled pool: the share ``λ`` of the pool's Gaussian in the adapted score,
    ``(1 − λ)`` times the score and ``λ`` times the Mahalanobis distance to the pool's
    cross-fitted Gaussians, both standardised over the pool
    (:class:`~metakd.models.experts.PoolGaussianMix`). Null: the share the teacher was fitted
    with after meta-training for supports like this one's, with labelled anomalies or without
    (``pool_share_episodes``; 0 for teachers saved before it), and the pool kNN expert's share
    fitted with it. A share set here is the Gaussian's alone, without the kNN expert. 0: the
    score alone."""
    max_support: int | None = 1024
    """Most labelled normal rows adapted on (a seeded subsample above it; every row is still
    scored): adapting costs memory and time linear in the support, as in the pool. ``None``:
    all."""
    unlabeled_support: int = 10
    """``fit(X)`` without labels (PyOD's unsupervised call): the support is this many rows of
    ``X``, those most typical of it; every row of ``X`` is scored and thresholded as the pool."""
    seed: int = 0
    """Seeds the student's initialisation and distillation batches."""
    device: str = "cpu"
    """Torch device adapting and distilling: ``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (CUDA
    when the machine has it). The fitted detector is returned and saved on the CPU."""
    threads: int | None = 1
    """Torch CPU threads while fitting (restored afterwards); null keeps torch's. The teacher's
    inner loop and the student are small, so a second thread mostly adds waiting: with one
    other CPU-bound process on 2 cores, an MVTec domain adapted in 2.5 s and distilled in
    1.5 s on one thread, 4.6-5.2 s and 9.4-15 s on two (same student, fidelity 0.983)."""
    read: ReadOptions = field(default_factory=ReadOptions)
    """How the support, unlabelled and eval files are read (label column, ignored columns, ...)."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Run tracking."""

    def __post_init__(self) -> None:
        check_seed("seed", self.seed)
        resolve_device(self.device)  # a machine without CUDA refuses `cuda` here, in one line
        if self.max_support is not None and (
            isinstance(self.max_support, bool) or self.max_support < MIN_NORMALS_WITHOUT_POOL
        ):
            raise ConfigError(
                f"max_support must be >= {MIN_NORMALS_WITHOUT_POOL} or null, got "
                f"{self.max_support!r}"
            )
        for key in ("linear_mix", "anomaly_mix"):
            weight = getattr(self, key)
            if not 0 <= weight < float("inf"):
                raise ConfigError(f"{key} must be a finite number >= 0, got {weight!r}")
        if self.pool_share is not None and not 0 <= self.pool_share <= 1:
            raise ConfigError(f"pool_share must be in [0, 1] or null, got {self.pool_share!r}")
        if isinstance(self.unlabeled_support, bool) or self.unlabeled_support < 1:
            raise ConfigError(f"unlabeled_support must be >= 1, got {self.unlabeled_support!r}")
        if self.threads is not None:
            check_int("threads", self.threads, low=1)


@dataclass
class ScoreConfig:
    """Settings of ``metakd score`` (its flags override them)."""

    label_column: str | None = None
    """Column ignored as labels (``None``: the one the model was adapted with)."""
    ignore_columns: list[str] = field(default_factory=list)
    """Columns that are not features, besides those the model was adapted with (ids, ...)."""
    id_column: str | None = None
    """A column copied to the output as its first column (not a feature), e.g. a row id."""
    device: str = "cpu"
    """Torch device scoring: ``cpu``, ``cuda`` (``cuda:N``) or ``auto``."""

    def __post_init__(self) -> None:
        resolve_device(self.device)
