"""Inner (support) and outer (query) losses.

Every loss takes one task's ``scores [n]`` and float labels ``y [n]`` (1 anomaly, 0 normal) and
returns a scalar. Classes are selected with masks, never boolean indexing, so the losses run
unchanged under ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from metakd.errors import ConfigError

LossFn = Callable[[Tensor, Tensor], Tensor]
InnerLossName = Literal["auto", "one_class", "ranking", "bce", "deviation", "sad"]
OuterLossName = Literal["ranking", "bce"]


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def one_class_loss(scores: Tensor, y: Tensor, *, logit: bool) -> Tensor:
    """ "These are normal" loss over the normal rows.

    For logit scores it is the mean BCE against label 0, ``softplus(s)`` (OC-MAML, Frikha et al.
    2021). For distance scores it is the log of the mean distance (Deep SVDD's compactness, or
    the reconstruction error, on a log scale): its gradient does not grow with the scale of the
    embedding, which meta-training changes, so a fixed inner step size stays stable. With the
    plain mean, 6-8 % of meta-steps on MVTec and SKAB diverged in the inner loop.
    """
    if logit:
        return _masked_mean(F.softplus(scores), 1.0 - y)
    return torch.log(_masked_mean(scores, 1.0 - y) + 1e-6)


def balanced_bce_loss(scores: Tensor, y: Tensor) -> Tensor:
    """Class-balanced BCE on logits: the mean of the per-class mean losses present."""
    per_row = F.binary_cross_entropy_with_logits(scores, y, reduction="none")
    has_pos = (y.sum(-1) > 0).to(scores.dtype)
    pos = _masked_mean(per_row, y)
    neg = _masked_mean(per_row, 1.0 - y)
    return (neg + has_pos * pos) / (1.0 + has_pos)


def deviation_loss(scores: Tensor, y: Tensor, *, margin: float = 5.0) -> Tensor:
    """DevNet deviation loss (Pang et al. 2019, Eq. 4) with an N(0, 1) reference score prior.

    ``dev = (s - μ_R) / σ_R = s``; normals are pulled to 0, anomalies pushed beyond ``margin``.
    """
    per_row = (1.0 - y) * scores.abs() + y * F.relu(margin - scores)
    return per_row.mean(-1)


def sad_loss(scores: Tensor, y: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Deep SAD loss for distance scores (Ruff et al. 2020, Eq. 6 with η = 1).

    Normals minimise their distance; labelled anomalies minimise its inverse. Not scale-free:
    the gradient of ``1 / s`` grows as ``1 / s²``, so a few SGD steps from an initialisation with
    small distances can diverge; ``ranking`` is the robust choice for the inner loop.
    """
    per_row = (1.0 - y) * scores + y / (scores + eps)
    return per_row.mean(-1)


def one_class_ranking_loss(scores: Tensor, y: Tensor, *, logit: bool) -> Tensor:
    """The one-class loss of the normals plus the pairwise ranking loss of labelled anomalies
    above normals, on the logit scale (log-distances for distance scores).

    Equal to :func:`one_class_loss` without anomalies. The ranking term is bounded and invariant
    to the scale of distances, so labelled anomalies cannot blow up a few-step inner loop the way
    Deep SAD's ``1 / s`` can.
    """
    logits = scores if logit else torch.log(scores + 1e-6)
    return one_class_loss(scores, y, logit=logit) + ranking_loss(logits, y)


def ranking_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Pairwise logistic AUROC surrogate over all (anomaly, normal) pairs of the task.

    ``mean_{a, n} softplus(-(l_a - l_n))``; it is scale-free in the sense that only score order
    matters at convergence, which suits distance scores as well as logits.
    """
    diff = logits.unsqueeze(-1) - logits.unsqueeze(-2)  # [n, n]: l_i - l_j
    pair = y.unsqueeze(-1) * (1.0 - y).unsqueeze(-2)  # i anomaly, j normal
    return (F.softplus(-diff) * pair).sum((-1, -2)) / pair.sum((-1, -2)).clamp_min(1.0)


def inner_loss_fn(name: InnerLossName, *, has_anomalies: bool, score_is_logit: bool) -> LossFn:
    """Resolve an inner-loss name for a teacher; ``auto`` picks one-class without anomaly shots,
    else BCE for logit scores and the one-class ranking loss for distance scores."""
    if name == "auto":
        if not has_anomalies:
            name = "one_class"
        else:
            name = "bce" if score_is_logit else "ranking"
    if name in ("bce", "deviation") and not score_is_logit:
        raise ConfigError(
            f"inner.loss={name} needs a teacher with logit scores (model.kind mlp or profile); "
            "use ranking, sad or one_class"
        )
    if name == "sad" and score_is_logit:
        raise ConfigError(
            "inner.loss=sad needs a distance teacher (svdd, knn, autoencoder, gaussian, vae, "
            "ganomaly); use bce or deviation"
        )
    if name == "one_class":
        return lambda s, y: one_class_loss(s, y, logit=score_is_logit)
    if name == "ranking":
        return lambda s, y: one_class_ranking_loss(s, y, logit=score_is_logit)
    return {"bce": balanced_bce_loss, "deviation": deviation_loss, "sad": sad_loss}[name]


def outer_loss_fn(name: OuterLossName) -> LossFn:
    """Outer loss on the labelled query, applied to logit-scale scores."""
    return {"ranking": ranking_loss, "bce": balanced_bce_loss}[name]


def auroc(scores: Tensor, y: Tensor) -> Tensor:
    """AUROC per task from ``scores [..., n]``, ``y [..., n]`` (ties count one half)."""
    diff = scores.unsqueeze(-1) - scores.unsqueeze(-2)
    pair = y.unsqueeze(-1) * (1.0 - y).unsqueeze(-2)
    wins = (diff > 0).to(scores.dtype) + 0.5 * (diff == 0).to(scores.dtype)
    return (wins * pair).sum((-1, -2)) / pair.sum((-1, -2)).clamp_min(1.0)


__all__ = [
    "InnerLossName",
    "LossFn",
    "OuterLossName",
    "auroc",
    "balanced_bce_loss",
    "deviation_loss",
    "inner_loss_fn",
    "one_class_loss",
    "one_class_ranking_loss",
    "outer_loss_fn",
    "ranking_loss",
    "sad_loss",
]
