"""Checkpoints (atomic, code-free loading) and strict config loading."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from metakd import configio, yamlio
from metakd.checkpoint import load_checkpoint, save_checkpoint
from metakd.episodes import EpisodeConfig
from metakd.errors import ConfigError, DataError


def test_checkpoint_roundtrip_loads_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    save_checkpoint(path, "teacher", {"w": torch.ones(2), "meta": {"a": [1, 2]}})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "metakd.teacher"
    data = load_checkpoint(path, "teacher")
    assert torch.equal(data["w"], torch.ones(2)) and data["meta"] == {"a": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"], "no temporary files left behind"


def test_interrupted_write_leaves_previous_checkpoint_intact(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    save_checkpoint(path, "teacher", {"w": torch.ones(2)})

    class Boom:
        def __reduce__(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, "teacher", {"w": Boom()})
    assert torch.equal(load_checkpoint(path, "teacher")["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt", "teacher")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pt: not a loadable"):
        load_checkpoint(junk, "teacher")
    other = tmp_path / "other.pt"
    save_checkpoint(other, "detector", {})
    with pytest.raises(DataError, match="other.pt: expected a metakd teacher"):
        load_checkpoint(other, "teacher")


@dataclass
class Inner:
    steps: int = 1
    lr: float = 0.1
    """step size"""


@dataclass
class Outer:
    name: str = "x"
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    maybe: float | None = None


def test_config_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: y\ninner: {steps: 3}\n")
    cfg = configio.load(Outer, path, ["inner.lr=0.5", "tags=[a, b]", "maybe=2"])
    assert cfg == Outer(name="y", tags=["a", "b"], inner=Inner(steps=3, lr=0.5), maybe=2.0)
    assert configio.from_dict(Outer, yamlio.read_yaml_text(configio.dump_yaml(cfg))) == cfg


@pytest.mark.parametrize(
    "text, value",
    [("1e-4", 1e-4), ("1E5", 1e5), ("1.0e4", 1e4), ("-2e3", -2e3), ("+3e+2", 300.0), ("1.5", 1.5)],
)
def test_exponent_floats_are_numbers_in_overrides_and_files(
    tmp_path: Path, text: str, value: float
) -> None:
    """``1e-4`` is a number (YAML 1.2, JSON), not YAML 1.1's string."""
    assert configio.load(Outer, None, [f"inner.lr={text}"]).inner.lr == value
    path = tmp_path / "c.yaml"
    path.write_text(f"inner: {{lr: {text}}}\n")
    assert configio.load(Outer, path).inner.lr == value
    assert yamlio.parse_yaml("1e") == "1e" and yamlio.parse_yaml("10") == 10


@dataclass
class Tuned:
    inner: Inner = field(default_factory=lambda: Inner(steps=7, lr=0.5))


def test_partial_section_keeps_the_parents_default_for_other_keys() -> None:
    """A parent that defaults a section differently from the section class keeps those
    defaults for every key an override does not name."""
    assert Tuned().inner != Inner()  # the case that matters
    assert configio.load(Tuned, None, ["inner.lr=0.2"]).inner == Inner(steps=7, lr=0.2)


def test_training_uses_the_one_default_episode_shape() -> None:
    from metakd.config import TrainConfig, load_train_config

    assert TrainConfig().episode == EpisodeConfig()
    episode = load_train_config(None, ["episode.meta_batch=4"]).episode
    assert episode == dataclasses.replace(EpisodeConfig(), meta_batch=4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.stepz=3", "unknown config key 'inner.stepz'"),
        ("inner.steps=three", "config key 'inner.steps': expected an integer"),
        ("inner.steps=1.5", "config key 'inner.steps': expected an integer"),
        ("name=3", "config key 'name': expected a string"),
        ("inner=3", "config key 'inner': expected a mapping"),
        ("noequals", "not of the form key=value"),
    ],
)
def test_config_errors_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        configio.load(Outer, None, [override])


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        configio.load(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml: expected a mapping"):
        configio.load(Outer, bad)
