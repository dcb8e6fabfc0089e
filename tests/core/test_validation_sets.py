"""Meta-val at both anomaly-shot counts meta-training draws (``train.streams.validation_sets``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from metakd.config import TrainConfig
from metakd.data.transforms import AlignmentConfig
from metakd.episodes import EpisodeConfig
from metakd.train import files
from metakd.train.references import few_shot_auroc, validation_auroc
from metakd.train.streams import held_out, validation_sets

SHAPE = EpisodeConfig(shots=4, query_size=8, pool_size=8, pool_size_max=None, meta_batch=4)


def _config(**episode: object) -> TrainConfig:
    return TrainConfig(episode=dataclasses.replace(SHAPE, **episode))  # type: ignore[arg-type]


@pytest.fixture
def tasks(make_task):
    # query_anomalies = 2: "few" serves A = 0 only (3 anomalies), the others A = 3 as well.
    return [
        make_task("a", normals=30, anomalies=8, seed=1),
        make_task("b", normals=30, anomalies=8, seed=2),
        make_task("few", normals=30, anomalies=3, seed=3),
    ]


def test_a_set_per_anomaly_shot_count(tasks) -> None:
    config = _config(anomaly_shots=0, anomaly_shots_max=3)
    alignment = AlignmentConfig(kind="pad")
    sets = validation_sets(tasks, config, alignment, per_task=2, seed=7)
    assert sorted(sets) == [0, 3]
    # The A = 0 set is the fixed episodes validation always had, bit for bit.
    alone = held_out(tasks, config, alignment, per_task=2, seed=7)
    assert alone is not None
    assert sets[0].task_names == alone.task_names
    for name in ("support_x", "support_y", "query_x", "query_y", "pool_x"):
        assert torch.equal(getattr(sets[0], name), getattr(alone, name)), name
    # The second set holds A labelled anomalies after the K normals of every support, and
    # leaves out the task with too few anomalies for them.
    assert set(sets[0].task_names) == {"a", "b", "few"}
    assert set(sets[3].task_names) == {"a", "b"} and len(sets[3].task_names) == 4
    assert sets[3].support_y.shape == (4, 4 + 3)
    assert (sets[3].support_y[:, :4] == 0).all() and (sets[3].support_y[:, 4:] == 1).all()


def test_one_set_without_anomaly_shots_to_draw(tasks) -> None:
    alignment = AlignmentConfig(kind="pad")
    for config in (_config(anomaly_shots_max=None), _config(anomaly_shots=2, anomaly_shots_max=2)):
        sets = validation_sets(tasks, config, alignment, per_task=1, seed=0)
        assert list(sets) == [config.episode.anomaly_shots]
    # No task serves the larger count: its set is absent, validation runs on the other.
    few = [tasks[2]]
    assert list(
        validation_sets(few, _config(anomaly_shots_max=3), alignment, per_task=1, seed=0)
    ) == [0]
    assert validation_sets([], _config(), alignment, per_task=1, seed=0) == {}


def test_validation_auroc_is_the_mean_over_the_sets(tasks) -> None:
    config = _config(anomaly_shots=0, anomaly_shots_max=3)
    sets = validation_sets(tasks, config, AlignmentConfig(kind="pad"), per_task=2, seed=3)
    learner = files.init_learner(config, sets[0].support_x.shape[-1], seed=0)
    val, by_shots = validation_auroc(learner, sets, "cpu")
    for shots, batch in sets.items():
        assert by_shots[shots] == pytest.approx(
            np.mean(list(few_shot_auroc(learner, batch).values()))
        )
    assert val == pytest.approx((by_shots[0] + by_shots[3]) / 2)
