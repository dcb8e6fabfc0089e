"""Windowing, per-task scaling and feature alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metakd.data.task import Task
from metakd.data.transforms import (
    AlignmentConfig,
    Scaler,
    ScalingConfig,
    align_features,
    check_feature_counts,
    projection_matrix,
)
from metakd.data.windows import WindowConfig, window_starts, window_task
from metakd.errors import ConfigError, DataError


def series(values: np.ndarray, labels: list[int]) -> Task:
    values = np.asarray(values, dtype=np.float32).reshape(len(labels), -1)
    names = tuple(f"c{j}" for j in range(values.shape[1]))
    return Task("s", values, np.array(labels, dtype=np.int64), names, "series.csv")


# ----------------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("n", "size", "stride", "starts"),
    [
        (20, 5, 5, [0, 5, 10, 15]),
        (20, 5, 4, [0, 4, 8, 12, 15]),  # a last window ending at row 19 keeps the tail
        (5, 5, 3, [0]),
        (10, 2, 4, [0, 4, 8]),
    ],
)
def test_window_starts(n, size, stride, starts):
    assert window_starts(n, WindowConfig(size=size, stride=stride)).tolist() == starts


def test_stats_features_and_names():
    values = np.stack([np.arange(6.0), 10 * np.arange(6.0) ** 2], axis=1)
    task = series(values, [0] * 6)
    out = window_task(task, WindowConfig(size=3, stride=3, features="stats"))
    assert out.X.shape == (2, 10) and out.name == "s" and out.source == "series.csv"
    assert out.feature_names[:4] == ("c0.mean", "c1.mean", "c0.std", "c1.std")
    assert out.feature_names[-2:] == ("c0.delta", "c1.delta")
    first = values[:3]
    expected = np.concatenate(
        [first.mean(0), first.std(0), first.min(0), first.max(0), first[-1] - first[0]]
    )
    np.testing.assert_allclose(out.X[0], expected, rtol=1e-6)


def test_flatten_features_time_major():
    task = series(np.arange(8.0).reshape(4, 2), [0, 0, 0, 0])
    out = window_task(task, WindowConfig(size=2, stride=2, features="flatten"))
    np.testing.assert_array_equal(out.X, [[0, 1, 2, 3], [4, 5, 6, 7]])
    assert out.feature_names == ("c0.t0", "c1.t0", "c0.t1", "c1.t1")


# Windows of 4 rows, each probing one rule (-1 = unlabelled row).
LABELLED_WINDOWS = [
    [0, 1, 0, 0],  # one anomaly in four
    [0, 1, 1, -1],  # 2 of 3 labelled rows anomalous, last labelled row anomalous
    [-1, -1, -1, -1],  # nothing labelled
    [0, 0, -1, -1],  # normal
    [1, 0, 0, 1],  # exactly half anomalous, last row anomalous
    [1, 1, 0, -1],  # 2 of 3 anomalous, last labelled row normal
]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("any", [1, 1, -1, 0, 1, 1]),
        ("majority", [0, 1, -1, 0, 0, 1]),
        ("last", [0, 1, -1, 0, 1, 0]),
    ],
)
def test_window_label_rules(rule, expected):
    labels = [label for window in LABELLED_WINDOWS for label in window]
    task = series(np.zeros(len(labels)), labels)
    out = window_task(task, WindowConfig(size=4, stride=4, label=rule))
    assert out.y.tolist() == expected


def test_window_errors():
    with pytest.raises(DataError, match=r"series\.csv: 3 rows, fewer than the window size 5"):
        window_task(series(np.zeros(3), [0, 0, 0]), WindowConfig(size=5, stride=1))
    with pytest.raises(ConfigError, match="window.stride"):
        WindowConfig(size=4, stride=0)
    with pytest.raises(ConfigError, match="window.label"):
        WindowConfig(size=4, stride=1, label="all")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- scaling


def test_robust_scaler_uses_median_and_iqr():
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0], [100.0]])
    scaler = Scaler.fit(x, ScalingConfig(kind="robust", clip=None))
    assert scaler.center.shape == (1, 1)
    assert scaler.center.item() == pytest.approx(3.0)
    assert scaler.scale.item() == pytest.approx((4.0 - 2.0) / 1.349)
    assert scaler(torch.tensor([[3.0]])).item() == pytest.approx(0.0)


def test_scaler_fallbacks_for_constant_features():
    # Column 0: IQR 0 but std > 0 -> std. Column 1: constant -> scale 1.
    x = torch.tensor([[0.0, 5.0], [0.0, 5.0], [0.0, 5.0], [0.0, 5.0], [10.0, 5.0]])
    scaler = Scaler.fit(x, ScalingConfig(kind="robust"))
    assert scaler.scale[0, 0].item() == pytest.approx(4.0)
    assert scaler.scale[0, 1].item() == 1.0
    # A query value far off the constant support is clipped instead of exploding.
    assert scaler(torch.tensor([[0.0, 1e6]]))[0, 1].item() == 10.0


def test_standard_and_none_scalers():
    x = torch.randn(50, 3) * 4 + 2
    z = Scaler.fit(x, ScalingConfig(kind="standard", clip=None))(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, correction=0), torch.ones(3), atol=1e-5, rtol=0)
    assert torch.equal(Scaler.fit(x, ScalingConfig(kind="none"))(x * 1e3), x * 1e3)


def test_batched_fit_matches_per_task_fits():
    x = torch.randn(3, 20, 4) * torch.tensor([1.0, 5.0, 0.1, 2.0])
    batched = Scaler.fit(x, ScalingConfig())
    assert batched.center.shape == (3, 1, 4)
    for b in range(3):
        single = Scaler.fit(x[b], ScalingConfig())
        torch.testing.assert_close(batched(x)[b], single(x[b]))


def test_scaling_config_validation():
    with pytest.raises(ConfigError, match="scaling.clip"):
        ScalingConfig(clip=0.0)
    with pytest.raises(ConfigError, match="scaling.kind"):
        ScalingConfig(kind="minmax")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------- alignment


def test_project_is_deterministic_and_depends_on_seed_and_d():
    config = AlignmentConfig(kind="project", width=16, seed=3)
    x = torch.randn(5, 10)
    first = align_features(x, config)
    assert first.shape == (5, 16)
    assert torch.equal(first, align_features(x.clone(), config))
    assert torch.equal(first, x @ projection_matrix(10, 16, 3))
    assert not torch.equal(projection_matrix(10, 16, 3), projection_matrix(10, 16, 4))
    assert not torch.equal(projection_matrix(10, 16, 3)[:9], projection_matrix(9, 16, 3))
    batched = align_features(x.expand(2, 5, 10), config)
    assert batched.shape == (2, 5, 16) and torch.equal(batched[1], first)


def test_projection_preserves_distances_and_unit_variance():
    d, width = 300, 2048
    x = torch.randn(40, d, generator=torch.Generator().manual_seed(0))
    y = align_features(x, AlignmentConfig(kind="project", width=width))
    assert y.var().item() == pytest.approx(1.0, abs=0.1)
    ratio = torch.pdist(y) / torch.pdist(x) * (d / width) ** 0.5
    assert ratio.min().item() > 0.85 and ratio.max().item() < 1.15


@pytest.mark.parametrize("d", [8, 60, 64, 70, 1000])
def test_orthonormal_projection_is_well_conditioned_where_gaussian_is_not(d: int) -> None:
    """Orthonormal columns (d >= width) or rows scaled by sqrt(width / d) (d < width): singular
    values all equal, so distances keep their ratios; unit-variance outputs either way."""
    width = 64
    matrix = projection_matrix(d, width, 0).double()
    singular = torch.linalg.svdvals(matrix)
    expected = max(1.0, (width / d) ** 0.5)
    torch.testing.assert_close(singular, torch.full_like(singular, expected))
    x = torch.randn(500, d, generator=torch.Generator().manual_seed(d))
    assert align_features(x, AlignmentConfig(kind="project", width=width)).var().item() == (
        pytest.approx(1.0, abs=0.15)
    )
    if d == width:  # the plain Gaussian matrix of teachers saved before: condition ~870
        gaussian = torch.linalg.svdvals(projection_matrix(d, width, 0, orthonormal=False))
        assert gaussian.max() / gaussian.min() > 100


def test_pad_and_none():
    x = torch.randn(4, 3)
    padded = align_features(x, AlignmentConfig(kind="pad", width=5))
    assert padded.shape == (4, 5)
    assert torch.equal(padded[:, :3], x) and torch.all(padded[:, 3:] == 0)
    assert align_features(x, AlignmentConfig()) is x
    with pytest.raises(ConfigError, match="3 features do not fit alignment.width = 2"):
        align_features(x, AlignmentConfig(kind="pad", width=2))


def test_check_feature_counts():
    counts = {"14_glass": 7, "17_InternetAds": 1555, "2_thyroid": 6, "x": 7}
    with pytest.raises(
        DataError,
        match=r"coll: tasks differ in feature count \(6: 2_thyroid; 7: 14_glass, x; "
        r"1555: 17_InternetAds\); set alignment: project or pad",
    ):
        check_feature_counts(counts, AlignmentConfig(), where="coll")
    assert check_feature_counts(counts, AlignmentConfig(kind="project", width=32), where="c") == 32
    assert check_feature_counts({"a": 5, "b": 5}, AlignmentConfig(), where="c") == 5
    with pytest.raises(DataError, match=r"\(1555: 17_InternetAds\)"):
        check_feature_counts(counts, AlignmentConfig(kind="pad", width=64), where="c")
