"""Scoring rows with a fitted scorer: in blocks, a non-finite score an error."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from metakd.detect.config import SCORE_BLOCK_ROWS
from metakd.detect.validation import as_rows
from metakd.errors import InputError, MetakdError
from metakd.models.deploy import DeployedScorer


def check_width(x: np.ndarray | Tensor, width: int, *, source: str | None = None) -> None:
    """An error where rows ``x [N, d]`` are not the model's ``width``, naming ``source`` (the
    file the rows came from) when given."""
    if x.shape[1] != width:
        where = f"{source}: the rows have" if source else "the data has"
        raise InputError(f"{where} {x.shape[1]} features but the model takes {width}")


def decision_scores(
    scorer: DeployedScorer, X: np.ndarray | Tensor, *, source: str | None = None
) -> np.ndarray:
    """Scores ``[N]`` of rows ``X [N, d]`` under a scorer (higher = more anomalous); a NaN or
    infinite score is an error, never a row called normal. ``source``: the rows' file, for
    the messages."""
    x = as_rows("data", X)
    check_width(x, scorer.preprocess.input_dim, source=source)
    with torch.no_grad():
        # Row blocks: a reference head's distance matrix is block x reference, never N x reference.
        device = scorer.preprocess.center.device  # where the scorer was moved (score --device)
        blocks = x.split(SCORE_BLOCK_ROWS)
        scores = torch.cat([scorer(block.to(device)).cpu() for block in blocks]).numpy()
    bad = ~np.isfinite(scores)
    if bad.any():
        # A NaN compares as "not above the threshold": it would silently pass as normal.
        raise MetakdError(
            f"{int(bad.sum())} rows score NaN or infinite (first: row {int(np.argmax(bad))}); "
            "their values are beyond what the model's scaling handles (was it meta-trained with "
            "scaling.clip: null?)"
        )
    return scores


def score_rows(
    scorer: DeployedScorer, X: np.ndarray | Tensor, *, source: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [N], is_anomaly [N])`` of rows under a loaded scorer (``source``: as
    :func:`decision_scores`)."""
    scores = decision_scores(scorer, X, source=source)
    return scores, (scores > scorer.threshold).astype(np.int64)
