"""Built-in collections: digits one-vs-rest tasks and the synthetic ADBench-type family."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from metakd.data.builtin import ANOMALY_TYPES, DIGITS_SPLIT, digits_collection, synthetic_collection
from metakd.data.collection import SplitConfig, load_collection


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_digits_tasks(digits):
    tasks = digits_collection()
    assert [t.name for t in tasks] == [f"digit-{k}" for k in range(10)]
    pixels = digits.data / 16.0
    for k, task in enumerate(tasks):
        assert task.n_features == 64 and task.source == "builtin:digits"
        assert 0.0 <= task.X.min() and task.X.max() <= 1.0
        n_normal = int(np.sum(digits.target == k))
        assert task.n_normals == n_normal
        assert task.n_anomalies == int(np.floor(0.1 * n_normal / 0.9 + 0.5))
        # Normal rows are exactly the images of digit k, in dataset order.
        np.testing.assert_allclose(task.X[task.y == 0], pixels[digits.target == k], rtol=1e-6)


def test_digits_anomalies_come_from_other_digits(digits):
    task = digits_collection(contamination=0.2, seed=5)[3]
    assert abs(task.n_anomalies / task.n_rows - 0.2) < 0.01
    pixels = (digits.data / 16.0).astype(np.float32)
    own = {row.tobytes() for row in pixels[digits.target == 3]}
    assert all(row.tobytes() not in own for row in task.X[task.y == 1])


def test_digits_seeded():
    a, b, c = digits_collection(seed=0), digits_collection(seed=0), digits_collection(seed=1)
    np.testing.assert_array_equal(a[0].X, b[0].X)
    assert not np.array_equal(a[0].y, c[0].y) or not np.array_equal(a[0].X, c[0].X)


def test_synthetic_family_shapes_names_and_contamination():
    tasks = synthetic_collection(n_tasks=8, n_features=6, n_rows=100, contamination=0.1, seed=0)
    assert [t.name for t in tasks][:5] == [
        "synthetic-00-local",
        "synthetic-01-global",
        "synthetic-02-dependency",
        "synthetic-03-clustered",
        "synthetic-04-local",
    ]
    for task in tasks:
        assert task.X.shape == (100, 6) and task.n_anomalies == 10 and task.n_unlabelled == 0


def test_synthetic_is_deterministic_and_prefix_stable():
    short = synthetic_collection(n_tasks=3, seed=4)
    long = synthetic_collection(n_tasks=6, seed=4)
    for a, b in zip(short, long, strict=False):
        np.testing.assert_array_equal(a.X, b.X)
        np.testing.assert_array_equal(a.y, b.y)
    other = synthetic_collection(n_tasks=3, seed=5)
    assert not np.array_equal(short[0].X, other[0].X)


def test_synthetic_anomaly_types_have_their_defining_property():
    tasks = synthetic_collection(n_tasks=4, n_features=8, n_rows=600, contamination=0.1, seed=2)
    by_type = {t.name.rsplit("-", 1)[1]: t for t in tasks}
    assert set(by_type) == set(ANOMALY_TYPES)

    local = by_type["local"]
    # Covariance x5 around the same mixture: wider spread (diluted by the between-cluster spread).
    spread = [local.X[local.y == c].std(axis=0).mean() for c in (0, 1)]
    assert spread[1] > 1.2 * spread[0]

    glob = by_type["global"]
    normal, anomalous = glob.X[glob.y == 0], glob.X[glob.y == 1]
    low, high = normal.min(axis=0), normal.max(axis=0)
    margin = 0.05 * (high - low) + 1e-5
    assert np.all(anomalous >= low - margin) and np.all(anomalous <= high + margin)

    dep = by_type["dependency"]
    normal, anomalous = dep.X[dep.y == 0], dep.X[dep.y == 1]
    # Every anomalous value is some normal row's value of the same feature ...
    assert all(np.isin(anomalous[:, j], normal[:, j]).all() for j in range(normal.shape[1]))
    # ... but rows are not copies of normal rows (the features were drawn independently).
    assert not any((anomalous[i] == normal).all(axis=1).any() for i in range(len(anomalous)))

    clustered = by_type["clustered"]
    normal, anomalous = clustered.X[clustered.y == 0], clustered.X[clustered.y == 1]
    assert anomalous.std(axis=0).mean() < 0.5 * normal.std(axis=0).mean()


def test_builtin_collection_splits():
    digits = load_collection("digits")
    assert digits.splits == DIGITS_SPLIT and digits.source == "builtin:digits"
    assert [t.name for t in digits.split("val")] == ["digit-5", "digit-6"]
    custom = load_collection("digits", split=SplitConfig(seed=1, val=0.1, test=0.2))
    assert [len(custom.splits[k]) for k in ("train", "val", "test")] == [7, 1, 2]

    synthetic = load_collection("synthetic")
    assert len(synthetic.tasks) == 40
    assert [len(synthetic.splits[k]) for k in ("train", "val", "test")] == [24, 8, 8]
    synthetic.check_alignment()


def test_digits_held_out_digits_never_appear_in_meta_train_tasks() -> None:
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = {
        row.tobytes(): int(t)
        for row, t in zip((data.data / 16.0).astype(np.float32), data.target, strict=True)
    }
    for task in digits_collection():
        k = int(task.name.split("-")[1])
        seen = {pixels[row.tobytes()] for row in task.X}
        group = next(g for g in ({0, 1, 2, 3, 4}, {5, 6}, {7, 8, 9}) if k in g)
        assert seen <= group and k in seen, (task.name, seen)
