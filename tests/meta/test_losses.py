"""Inner and outer losses: definitions, and behaviour inside a few-step inner loop."""

from __future__ import annotations

import pytest
import torch

from metakd.meta.inner import adapt, task_scores
from metakd.meta.losses import (
    auroc,
    inner_loss_fn,
    one_class_loss,
    one_class_ranking_loss,
    ranking_loss,
)
from metakd.models.teachers import ModelConfig, build_teacher


def test_one_class_ranking_is_one_class_without_anomalies() -> None:
    scores = torch.rand(3, 10) + 0.1
    normals = torch.zeros(3, 10)
    for logit in (True, False):
        torch.testing.assert_close(
            one_class_ranking_loss(scores, normals, logit=logit),
            one_class_loss(scores, normals, logit=logit),
        )


def test_ranking_term_is_scale_free_for_distances() -> None:
    scores = torch.rand(12) + 0.05
    y = (torch.arange(12) < 3).float()
    rank = lambda s: one_class_ranking_loss(s, y, logit=False) - one_class_loss(s, y, logit=False)  # noqa: E731
    torch.testing.assert_close(rank(scores), rank(1e-3 * scores), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(rank(scores), ranking_loss(torch.log(scores + 1e-6), y))


@pytest.mark.parametrize("kind", ["svdd", "knn", "autoencoder"])
def test_labelled_anomalies_adapt_a_distance_teacher_without_diverging(kind: str) -> None:
    """Distances start small (a shrunk initialisation): Deep SAD's 1/s term diverges in three
    SGD steps there; the default semi-supervised loss must not, and must rank the labelled
    anomalies above the normals afterwards."""
    torch.manual_seed(0)
    config = ModelConfig(kind=kind, hidden=[32], embedding_dim=8, input_skip=False)
    teacher = build_teacher(16, config)
    with torch.no_grad():
        for layer in teacher.layers:
            layer.weight.mul_(0.3)
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(10, 16, generator=g), 2.0 + torch.randn(4, 16, generator=g)])
    y = torch.cat([torch.zeros(10), torch.ones(4)])

    def adapted_scores(name: str) -> torch.Tensor:
        loss = inner_loss_fn(name, has_anomalies=True, score_is_logit=False)
        params, _ = adapt(
            teacher.stack_params(),
            x,
            y,
            teacher=teacher,
            loss=loss,
            steps=3,
            lr=0.1,
            first_order=True,
        )
        return task_scores(params, x, teacher=teacher, support_x=x, support_y=y)[0].detach()

    scores = adapted_scores("auto")
    assert torch.isfinite(scores).all() and scores.max() < 1e3
    assert auroc(scores, y) > 0.9
    if kind == "svdd":  # the failure the default avoids
        assert not adapted_scores("sad").max() < 1e6
