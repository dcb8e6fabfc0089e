"""What meta-training measures: few-shot AUROC of a learner on fixed episodes, the simple kNN
references beside it, the held-out report and the per-iteration metrics."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from metakd.config import TrainConfig
from metakd.data.task import Task
from metakd.data.transforms import AlignmentConfig
from metakd.episodes import EpisodeBatch
from metakd.meta.learners import MetaLearner, MetaStats
from metakd.meta.losses import auroc
from metakd.train.files import init_learner
from metakd.train.streams import held_out

#: Old keys of :func:`held_out_report` -> their current names, for results written before the
#: rename (``test_auroc/random_init`` in a ``metrics.jsonl`` summary, ``train_test_auroc`` of a
#: benchmark's ``run.json``): the row was never a random network for the ``profile`` teacher,
#: whose initialisation is the kNN hedge.
LEGACY_REPORT_KEYS = {"random_init": "untrained"}


def report_key(key: str) -> str:
    """The current name of a :func:`held_out_report` key (old names map to new ones)."""
    return LEGACY_REPORT_KEYS.get(key, key)


#: The per-iteration metrics of a meta-step (averaged over ranks in a distributed run).
STEP_METRICS = ("outer_loss", "support_loss_before", "support_loss_after", "query_auroc")


def few_shot_auroc(learner: MetaLearner, batch: EpisodeBatch) -> dict[str, float]:
    """Mean query AUROC per task after adapting to each episode's support."""
    scores = learner.adapted_scores(batch.support_x, batch.support_y, batch.query_x, batch.pool_x)
    per_episode = auroc(scores, batch.query_y).tolist()
    by_task: dict[str, list[float]] = {}
    for name, value in zip(batch.task_names, per_episode, strict=True):
        by_task.setdefault(name, []).append(value)
    return {name: float(np.mean(values)) for name, values in by_task.items()}


def knn_auroc(
    batch: EpisodeBatch, *, k: int = 5, width: int | None = None, pool: bool = False
) -> dict[str, float]:
    """Reference detector on the same episodes: mean distance to the ``k`` nearest support
    normals (``pool``: the ``k`` nearest unlabelled pool rows, a density) in the episode's scaled
    features (the first ``width`` columns, before any profile), mean query AUROC per task."""
    width = batch.support_x.shape[-1] if width is None else width
    if pool:
        if batch.pool_x is None:
            raise ValueError("knn_auroc(pool=True) needs episodes with a pool")
        reference = batch.pool_x[..., :width]
        excluded = torch.zeros(reference.shape[:-1], dtype=reference.dtype)
    else:
        reference, excluded = batch.support_x[..., :width], batch.support_y
    distance = torch.cdist(batch.query_x[..., :width], reference)  # [B, q, n]
    distance = distance + 1e12 * excluded.unsqueeze(1)  # only normals are neighbours
    k = min(k, int((excluded == 0).sum(-1).min()))
    scores = distance.topk(k, dim=-1, largest=False).values.mean(-1)
    by_task: dict[str, list[float]] = {}
    for name, value in zip(batch.task_names, auroc(scores, batch.query_y).tolist(), strict=True):
        by_task.setdefault(name, []).append(value)
    return {name: float(np.mean(values)) for name, values in by_task.items()}


def held_out_report(
    learner: MetaLearner, baseline: MetaLearner, batch: EpisodeBatch, *, k: int, width: int
) -> dict[str, float]:
    """Mean held-out AUROC of the meta-trained ``learner``, ``baseline`` (the same teacher
    kind at its initialisation, from another seed, not meta-trained, adapted the same way: what
    meta-training adds; for the ``profile`` teacher that initialisation is already the kNN
    hedge, not a random network) and kNN with the teacher's own ``k`` on the first ``width``
    columns (the scaled features), on the same episodes.

    Keys: ``metakd``, ``untrained`` (``random_init`` in runs written before it was renamed, see
    :data:`LEGACY_REPORT_KEYS`), ``knn_support`` and, with a pool, ``knn_pool``."""

    def mean(per_task: dict[str, float]) -> float:
        return float(np.mean(list(per_task.values())))

    report = {
        "metakd": mean(few_shot_auroc(learner, batch)),
        "untrained": mean(few_shot_auroc(baseline, batch)),
        "knn_support": mean(knn_auroc(batch, k=k, width=width, pool=False)),
    }
    if batch.pool_x is not None:
        report["knn_pool"] = mean(knn_auroc(batch, k=k, width=width, pool=True))
    return report


def step_metrics(stats: MetaStats, batch: EpisodeBatch) -> dict[str, Tensor]:
    """The per-iteration means of :data:`STEP_METRICS` over this rank's episodes."""
    return {
        "outer_loss": stats.outer_loss.mean(),
        "support_loss_before": stats.support_loss_before.mean(),
        "support_loss_after": stats.support_loss_after.mean(),
        "query_auroc": auroc(stats.query_scores, batch.query_y).mean(),
    }


def mean_inner_lr(learner: MetaLearner) -> float:
    """The inner step size, averaged over Meta-SGD's learned per-parameter rates."""
    if len(learner.rates) == 0:
        return learner.inner.lr
    return float(torch.cat([r.detach().flatten() for r in learner.rates]).mean())


def meta_test_report(
    learner: MetaLearner,
    *,
    config: TrainConfig,
    tasks: list[Task],
    alignment: AlignmentConfig,
    input_dim: int,
    width: int,
    device: torch.device | str,
) -> tuple[EpisodeBatch | None, dict[str, float]]:
    """The end of a run's report: ``config.test_episodes`` fixed episodes of each held-out
    ``task`` and :func:`held_out_report` on them, the initialisation being that of a fresh
    learner (seed ``config.seed + 10 000``); ``(None, {})`` without usable held-out tasks."""
    batch = held_out(tasks, config, alignment, per_task=config.test_episodes, seed=config.seed + 2)
    if batch is None:
        return None, {}
    baseline = init_learner(config, input_dim, seed=config.seed + 10_000).to(device)
    k = config.model.neighbours
    return batch, held_out_report(learner, baseline, batch.to(device), k=k, width=width)


__all__ = [
    "LEGACY_REPORT_KEYS",
    "STEP_METRICS",
    "few_shot_auroc",
    "held_out_report",
    "knn_auroc",
    "mean_inner_lr",
    "meta_test_report",
    "report_key",
    "step_metrics",
]
