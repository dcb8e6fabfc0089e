"""The episode prefetcher: items in order, errors as raised, and meta-training's stream (so its
teacher) the same with prefetching on or off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metakd.config import load_train_config
from metakd.errors import DataError
from metakd.prefetch import Prefetch
from metakd.train import meta_train


class _Counter:
    """A maker with state, like the episode sampler's generator: item ``i`` depends on every
    item made before it."""

    def __init__(self) -> None:
        self.made = 0

    def __call__(self, index: int) -> tuple[int, int, torch.Tensor]:
        self.made += 1
        if index == 4:
            raise DataError("tasks/x.npz", "no usable rows")
        return index, self.made, torch.full((2,), float(index))


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_items_in_order_and_errors_as_raised(depth: int) -> None:
    with Prefetch(_Counter(), start=1, stop=6, depth=depth) as items:
        for i in (1, 2, 3):
            index, made, tensor = items.get(i)
            assert (index, made) == (i, i) and torch.equal(tensor, torch.full((2,), float(i)))
        with pytest.raises(DataError, match="tasks/x.npz: no usable rows") as raised:
            items.get(4)
        assert raised.value.where == "tasks/x.npz"
    with Prefetch(_Counter(), start=1, stop=2, depth=depth) as items:
        with pytest.raises(ValueError, match="in order"):
            items.get(2)


def test_meta_training_is_the_same_with_and_without_prefetching(tmp_path: Path) -> None:
    """Same seed, same teacher and metrics, whether the episodes are drawn in turn or ahead by a
    worker process (deeper or shallower)."""
    tiny = [
        "tracking.mode=disabled",
        "iterations=8",
        "val_every=4",
        "checkpoint_every=3",
        "model.hidden=[16]",
        "model.embedding_dim=4",
        "episode.meta_batch=4",
    ]
    results = {}
    for depth in (0, 1, 3):
        out = tmp_path / f"prefetch{depth}"
        config = load_train_config(None, [*tiny, f"prefetch={depth}"])
        meta_train(config, out_dir=out, progress=False)
        state = torch.load(out / "teacher.pt", weights_only=True)["state_dict"]
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        for line in lines:
            line.pop("tasks_per_second", None)
            line.get("summary", {}).pop("seconds", None)
        results[depth] = (state, lines)
    for depth in (1, 3):
        state, lines = results[depth]
        assert lines == results[0][1]
        assert state.keys() == results[0][0].keys()
        for key, value in state.items():
            assert torch.equal(value, results[0][0][key]), key
