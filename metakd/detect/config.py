"""Adaptation and scoring settings (``adapt:``, ``score:``) and the detector's limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metakd.config import resolve_device
from metakd.data.readers import ReadOptions
from metakd.distill import DistillConfig
from metakd.threshold import ThresholdConfig
from metakd.tracking import TrackingConfig

#: Without an unlabelled pool a support needs this many normals: each is scored leave-one-out
#: against the others, and one normal alone has no other to be compared with.
MIN_NORMALS_WITHOUT_POOL = 2
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
    seed: int = 0
    """Seeds the student's initialisation and distillation batches."""
    device: str = "cpu"
    """Torch device adapting and distilling: ``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (CUDA
    when the machine has it). The fitted detector is returned and saved on the CPU."""
    read: ReadOptions = field(default_factory=ReadOptions)
    """How the support, unlabelled and eval files are read (label column, ignored columns, ...)."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Run tracking."""

    def __post_init__(self) -> None:
        resolve_device(self.device)  # a machine without CUDA refuses `cuda` here, in one line


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
