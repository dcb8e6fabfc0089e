"""The kNN heads against scikit-learn's NearestNeighbors (an independent oracle), float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import knn_distances

from metakd.meta.inner import reference_scores
from metakd.models.teachers import ModelConfig, _masked_knn, build_teacher


def _oracle(query: np.ndarray, ref: np.ndarray, k: int, *, self_match: bool) -> np.ndarray:
    """Mean distance to the k nearest rows of ``ref``; with ``self_match`` query row i is
    ``ref`` row i and is left out."""
    return knn_distances(query, ref, k, leave_one_out=self_match).mean(axis=1)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_masked_knn_matches_sklearn(k: int) -> None:
    rng = np.random.default_rng(k)
    ref = rng.normal(size=(40, 6))
    valid = rng.random(40) < 0.7
    query = rng.normal(size=(25, 6)) * 1.5
    got = _masked_knn(
        torch.from_numpy(query), torch.from_numpy(ref), torch.from_numpy(valid.astype(float)), k
    )
    np.testing.assert_allclose(
        got.numpy(), _oracle(query, ref[valid], k, self_match=False), rtol=1e-9
    )
    # Rows of the reference itself score leave-one-out: never their own neighbour.
    own = ref[valid]
    loo = _masked_knn(
        torch.from_numpy(own), torch.from_numpy(own), torch.ones(len(own), dtype=torch.float64), k
    )
    np.testing.assert_allclose(loo.numpy(), _oracle(own, own, k, self_match=True), rtol=1e-9)


def test_knn_teacher_leave_one_out_matches_sklearn() -> None:
    """The ``knn`` teacher's support scores: each normal's k nearest among the other normals'
    embeddings (anomalous support rows are never neighbours)."""
    torch.manual_seed(0)
    config = ModelConfig(
        kind="knn", hidden=[8], embedding_dim=4, neighbours=3, pool_neighbours=False
    )
    teacher = build_teacher(5, config).double()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(20, 5)))
    y = torch.from_numpy((np.arange(20) >= 16).astype(float))  # the last 4 are anomalies
    _, support_scores, _ = reference_scores(
        teacher.stack_params(), teacher=teacher, support_x=x, support_y=y
    )
    with torch.no_grad():
        emb = teacher.embed(_stack_out(teacher, x), x).numpy()
    normals = emb[:16]
    expected_normals = _oracle(normals, normals, 3, self_match=True)
    expected_anomalies = _oracle(emb[16:], normals, 3, self_match=False)
    np.testing.assert_allclose(support_scores[:16].detach().numpy(), expected_normals, rtol=1e-7)
    np.testing.assert_allclose(support_scores[16:].detach().numpy(), expected_anomalies, rtol=1e-7)


def _stack_out(teacher, x: torch.Tensor) -> torch.Tensor:
    from metakd.models.stack import stack_forward

    out, _ = stack_forward(teacher.stack_params(), x, activation=teacher.activation)
    return out
