"""Compatibility: the detector's names where they were before :mod:`metakd.detect` held them."""

from metakd.detect import (
    MIN_NORMALS_WITHOUT_POOL,
    SCORE_BLOCK_ROWS,
    AdaptConfig,
    FewShotDetector,
    ScoreConfig,
    decision_scores,
    fit_many,
    score_rows,
)

__all__ = [
    "MIN_NORMALS_WITHOUT_POOL",
    "SCORE_BLOCK_ROWS",
    "AdaptConfig",
    "FewShotDetector",
    "ScoreConfig",
    "decision_scores",
    "fit_many",
    "score_rows",
]
