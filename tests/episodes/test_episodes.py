"""Episode sampling: shapes, disjointness, leakage-free scaling, usability and determinism."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from metakd.data.task import Task
from metakd.data.transforms import AlignmentConfig, Scaler, ScalingConfig, align_features
from metakd.episodes import EpisodeBatch, EpisodeConfig, EpisodeSampler, episode_shortfall
from metakd.errors import ConfigError, DataError

CONFIG = EpisodeConfig(
    shots=5,
    anomaly_shots=2,
    query_size=8,
    query_anomaly_fraction=0.25,
    pool_size=6,
    meta_batch=3,
    pool_size_max=None,
    anomaly_shots_max=None,
)


def sampler(
    tasks: list[Task],
    config: EpisodeConfig = CONFIG,
    *,
    seed: int = 0,
    alignment: AlignmentConfig | None = None,
) -> EpisodeSampler:
    return EpisodeSampler(
        tasks, config, scaling=ScalingConfig(), alignment=alignment or AlignmentConfig(), seed=seed
    )


def assert_batches_equal(a: EpisodeBatch, b: EpisodeBatch) -> None:
    assert a.task_names == b.task_names
    for name in ("support_x", "support_y", "query_x", "query_y", "pool_x"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for name in ("support_index", "query_index", "pool_index"):
        for x, y in zip(getattr(a, name), getattr(b, name), strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.fixture
def tasks(make_task) -> list[Task]:
    return [
        make_task(f"t{i}", normals=30, anomalies=8, unlabelled=5, features=4, seed=i)
        for i in range(5)
    ]


def test_batch_shapes_labels_and_dtypes(tasks):
    batch = sampler(tasks).sample()
    assert batch.batch_size == 3
    assert batch.support_x.shape == (3, 7, 4) and batch.support_y.shape == (3, 7)
    assert batch.query_x.shape == (3, 8, 4) and batch.query_y.shape == (3, 8)
    assert batch.pool_x is not None and batch.pool_x.shape == (3, 6, 4)
    assert batch.support_x.dtype == batch.query_y.dtype == torch.float32
    # Normals first, then the labelled anomalies; the query holds round(8 * 0.25) anomalies.
    assert torch.equal(batch.support_y, torch.tensor([[0.0] * 5 + [1.0] * 2] * 3))
    assert torch.equal(batch.query_y.sum(dim=1), torch.full((3,), 2.0))
    assert len(set(batch.task_names)) == 3  # without replacement while B <= tasks


def test_rows_match_labels_and_never_overlap(tasks):
    s = sampler(tasks)
    by_name = {t.name: t for t in tasks}
    for _ in range(20):
        batch = s.sample()
        for b, name in enumerate(batch.task_names):
            task = by_name[name]
            support, query, pool = batch.support_index[b], batch.query_index[b], batch.pool_index[b]
            combined = np.concatenate([support, query, pool])
            assert len(np.unique(combined)) == len(combined)
            # Unlabelled rows may only be in the pool.
            assert np.all(task.y[support] >= 0) and np.all(task.y[query] >= 0)
            np.testing.assert_array_equal(task.y[support], batch.support_y[b].numpy())
            np.testing.assert_array_equal(task.y[query], batch.query_y[b].numpy())


def test_features_are_scaled_on_support_and_pool_only(tasks):
    task = tasks[0]
    episode = sampler(tasks).episode(task, np.random.default_rng(7))
    support, query, pool = episode.support_index[0], episode.query_index[0], episode.pool_index[0]
    raw = torch.from_numpy(task.X[np.concatenate([support, pool])])
    scaler = Scaler.fit(raw, ScalingConfig())
    torch.testing.assert_close(episode.support_x[0], scaler(torch.from_numpy(task.X[support])))
    torch.testing.assert_close(episode.query_x[0], scaler(torch.from_numpy(task.X[query])))

    # Changing the query rows changes nothing else: the query never feeds the statistics.
    X = task.X.copy()
    X[query] *= 100.0
    changed = dataclasses.replace(task, X=X)
    again = sampler(tasks).episode(changed, np.random.default_rng(7))
    np.testing.assert_array_equal(again.query_index[0], query)
    assert torch.equal(again.support_x, episode.support_x)
    assert torch.equal(again.pool_x, episode.pool_x)
    assert not torch.equal(again.query_x, episode.query_x)


def test_same_seed_same_batches_different_seed_different(tasks):
    a, b, c = sampler(tasks, seed=1), sampler(tasks, seed=1), sampler(tasks, seed=2)
    for _ in range(3):
        batch_a, batch_b, batch_c = a.sample(), b.sample(), c.sample()
        assert_batches_equal(batch_a, batch_b)
    assert not torch.equal(batch_a.support_x, batch_c.support_x)
    first = sampler(tasks).episode(tasks[1], np.random.default_rng(3))
    assert_batches_equal(first, sampler(tasks).episode(tasks[1], np.random.default_rng(3)))


def test_meta_batch_larger_than_task_count_repeats_tasks(tasks):
    batch = sampler(tasks).sample(batch_size=12)
    assert batch.batch_size == 12 and set(batch.task_names) <= {t.name for t in tasks}


def test_no_pool(tasks):
    config = dataclasses.replace(CONFIG, pool_size=0)
    batch = sampler(tasks, config).sample()
    assert batch.pool_x is None
    assert all(len(index) == 0 for index in batch.pool_index)


def test_unusable_tasks_are_left_out_with_a_warning(make_task, tasks):
    small = make_task("small", normals=30, anomalies=2, features=4)
    with pytest.warns(UserWarning, match=r"task 'small' left out .*2 anomalous rows, needs 4"):
        s = sampler([*tasks, small])
    assert [t.name for t in s.tasks] == [t.name for t in tasks]
    assert "small" in s.left_out
    with pytest.raises(DataError, match="small: cannot serve an episode"):
        s.episode(small, np.random.default_rng(0))


def test_pool_needs_enough_further_rows(make_task):
    # 15 rows, all taken by support and query (5 + 2 + 8): nothing left for a pool row.
    task = make_task("tight", normals=11, anomalies=4, unlabelled=0, features=2)
    config = dataclasses.replace(CONFIG, pool_size=1)
    assert episode_shortfall(task, config) == "15 rows, needs 16 with a pool of 1"


def test_no_usable_task_is_an_error(make_task):
    tiny = [make_task(f"tiny{i}", normals=3, anomalies=1) for i in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(
            DataError,
            match=r"episodes: no task can serve .*tiny0: 3 normal rows, "
            r"needs 11 .*; tiny1: ",
        ):
            sampler(tiny)


def test_differing_feature_counts(make_task):
    mixed = [make_task("a", features=3), make_task("b", features=7), make_task("c", features=3)]
    with pytest.raises(DataError, match=r"tasks differ in feature count \(3: a, c; 7: b\)"):
        sampler(mixed)
    projected = sampler(mixed, alignment=AlignmentConfig(kind="project", width=16))
    assert projected.n_features == 16
    batch = projected.sample(batch_size=3)
    assert batch.support_x.shape == (3, 7, 16)
    # Alignment is applied after scaling with the task's own support+pool statistics.
    b = batch.task_names.index("b")
    task = mixed[1]
    rows = np.concatenate([batch.support_index[b], batch.pool_index[b]])
    scaler = Scaler.fit(torch.from_numpy(task.X[rows]), ScalingConfig())
    expected = align_features(
        scaler(torch.from_numpy(task.X[batch.support_index[b]])), projected.alignment
    )
    torch.testing.assert_close(batch.support_x[b], expected)


def test_batch_is_ready_for_vmap_and_device_moves(tasks):
    batch = sampler(tasks).sample().to("cpu")

    def nearest_support_distance(support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return torch.cdist(query, support).min(dim=-1).values

    scores = torch.func.vmap(nearest_support_distance)(batch.support_x, batch.query_x)
    assert scores.shape == batch.query_y.shape


def test_episode_config_validation():
    with pytest.raises(ConfigError, match="episode.shots must be an integer >= 1"):
        EpisodeConfig(shots=0)
    with pytest.raises(ConfigError, match="query_anomaly_fraction"):
        EpisodeConfig(query_anomaly_fraction=1.5)
    # round(5 * 0.5) = 3: halves round up.
    half = EpisodeConfig(query_size=5, query_anomaly_fraction=0.5)
    assert (half.query_anomalies, half.query_normals) == (3, 2)


@pytest.mark.parametrize("alignment", ["project", "pad"])
def test_batched_features_equal_each_episode_built_alone_in_float64(make_task, alignment):
    """A meta-batch's episodes are scaled, aligned and profiled together (zero-padded to the
    widest task of a width group); each must equal the same episode computed alone, the way
    ``metakd adapt`` fits one task, in float64: Scaler, alignment, NeighbourProfile.fit_task."""
    from metakd.models.profile import NeighbourProfile, ProfileConfig

    widths = [3, 7, 7, 12, 40]
    tasks = [
        make_task(f"w{d}-{i}", normals=40, anomalies=10, unlabelled=8, features=d, seed=i)
        for i, d in enumerate(widths)
    ]
    profile = ProfileConfig(neighbours=3)
    config = dataclasses.replace(CONFIG, pool_size=9, meta_batch=5)
    aligned = AlignmentConfig(kind=alignment, width=48)
    s = EpisodeSampler(
        tasks, config, scaling=ScalingConfig(), alignment=aligned, seed=4, profile=profile
    )
    plans = s.draw()
    batch = s.build(plans)
    assert batch.support_x.shape == (5, 7, 48 + profile.width)
    for b, plan in enumerate(plans):
        x = torch.from_numpy(plan.task.X.copy()).double()
        support, query, pool = (x[torch.from_numpy(i)] for i in plan.rows)
        scaler = Scaler.fit(torch.cat([support, pool]), ScalingConfig())
        normal = torch.from_numpy(plan.task.y[plan.support] == 0)
        reference = NeighbourProfile.fit_task(
            support, normal, pool, scale=scaler, config=profile, seed=plan.seed
        )
        parts = ("support_x", "query_x", "pool_x")
        for part, rows in zip(parts, (support, query, pool), strict=True):
            z = scaler(rows)
            expected = torch.cat([align_features(z, aligned), reference(rows, z).double()], -1)
            got = getattr(batch, part)[b].double()
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=f"{part} {b}")
        alone = s.build([plan])
        for part in ("support_x", "query_x", "pool_x"):
            torch.testing.assert_close(getattr(alone, part)[0], getattr(batch, part)[b])


def test_draw_then_build_is_sample(tasks):
    """The random choices are all in draw (from the sampler's generator); build has none."""
    a, b = sampler(tasks, seed=3), sampler(tasks, seed=3)
    plans = a.draw()
    assert_batches_equal(a.build(plans), b.sample())
    assert_batches_equal(a.build(plans), a.build(plans))
