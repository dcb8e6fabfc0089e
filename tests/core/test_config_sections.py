"""Plugin sections of a config (:class:`metakd.configio.SectionRegistry`): a kind's settings are
keys of ``model:`` though they live in the kind's own module."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

from metakd import configio, yamlio
from metakd.config import TrainConfig, load_train_config
from metakd.errors import ConfigError
from metakd.models.teachers import (
    KIND_SETTINGS,
    ModelConfig,
    Reference,
    Teacher,
    VAEConfig,
    build_teacher,
    register_kind,
    teacher_kinds,
)
from metakd.models.teachers import base as teachers_base


@dataclass
class Colour:
    shade: str = "blue"
    depth: int = 2


@dataclass
class Size:
    width: float = 1.0


REGISTRY = configio.SectionRegistry("box")
REGISTRY.register("colour", Colour)
REGISTRY.register("size", Size)


@dataclass
class Box:
    name: str = "box"
    parts: dict[str, Any] = field(default_factory=dict, metadata={configio.SECTIONS: REGISTRY})

    def __post_init__(self) -> None:
        self.parts = REGISTRY.complete(self.parts)


def test_sections_are_keys_of_their_owner_and_round_trip() -> None:
    box = configio.from_dict(Box, {"name": "b", "colour": {"depth": 5}})
    assert box.parts == {"colour": Colour(depth=5), "size": Size()}
    data = configio.to_dict(box)
    assert data == {
        "name": "b",
        "colour": {"shade": "blue", "depth": 5},
        "size": {"width": 1.0},
    }
    assert configio.from_dict(Box, data) == box
    assert configio.from_dict(Box, yamlio.read_yaml_text(configio.dump_yaml(box))) == box


@pytest.mark.parametrize(
    "data, message",
    [
        ({"parts": {}}, "unknown config key 'parts'"),  # the holding field is no key
        ({"weight": {}}, "unknown config key 'weight' (known here: colour, name, size)"),
        ({"colour": {"hue": 1}}, "unknown config key 'colour.hue' (known here: depth, shade)"),
        ({"size": {"width": "wide"}}, "config key 'size.width': expected a number, got 'wide'"),
        ({"size": 3}, "config key 'size': expected a mapping, got 3"),
    ],
)
def test_bad_sections_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        configio.from_dict(Box, data)


def test_registry_refuses_a_name_twice_a_non_dataclass_and_a_wrong_instance() -> None:
    registry = configio.SectionRegistry("owner")
    registry.register("a", Colour)
    with pytest.raises(ValueError, match="'owner.a' is registered twice"):
        registry.register("a", Size)
    with pytest.raises(ValueError, match="must be a dataclass"):
        registry.register("b", dict)
    with pytest.raises(ConfigError, match="'owner.a' must be a Colour"):
        registry.complete({"a": Size()})
    with pytest.raises(ConfigError, match="unknown config section 'owner.z'"):
        registry.complete({"z": Size()})


def test_builtin_kind_sections_are_model_keys() -> None:
    assert {"gaussian", "vae", "ganomaly"} <= set(KIND_SETTINGS.types())
    config = load_train_config(None, ["model.kind=vae", "model.vae.beta=0.5"])
    assert config.model.section(VAEConfig) == VAEConfig(beta=0.5)
    stored = configio.to_dict(config)["model"]
    assert stored["vae"] == {"beta": 0.5, "samples": 8, "score": "elbo"}
    assert "sections" not in stored
    assert configio.from_dict(TrainConfig, configio.to_dict(config)) == config


def test_a_new_kind_with_settings_is_one_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a contributor writes in ``metakd/models/teachers/mine.py``: a settings dataclass and
    one decorator line; YAML, --set and the kinds table then know it."""
    monkeypatch.setattr(teachers_base, "_KINDS", dict(teachers_base._KINDS))
    monkeypatch.setattr(KIND_SETTINGS, "_types", KIND_SETTINGS.types())

    @dataclass
    class MineConfig:
        scale: float = 2.0

    @register_kind("mine", settings=MineConfig)
    class Mine(Teacher):
        use_when = "a test kind"

        def __init__(self, input_dim: int, config: ModelConfig) -> None:
            super().__init__([input_dim, 3], activation=config.activation)
            self.scale = config.section(MineConfig).scale

        def head(
            self, out: Tensor, x: Tensor, reference: Reference, *, leave_one_out: bool = False
        ) -> Tensor:
            return self.scale * out.pow(2).sum(-1)

    assert "mine" in teacher_kinds()
    config = load_train_config(None, ["model.kind=mine", "model.mine.scale=3"])
    teacher = build_teacher(4, config.model)
    assert isinstance(teacher, Mine) and teacher.scale == 3.0
    assert teacher(torch.zeros(2, 4)).shape == (2,)
    with pytest.raises(ConfigError, match=re.escape("unknown config key 'model.mine.size'")):
        load_train_config(None, ["model.kind=mine", "model.mine.size=3"])


def test_baseline_settings_are_sections_of_baselines() -> None:
    from metakd.evaluate import EvaluateConfig
    from metakd.evaluate.baselines.pyod import PyODSettings
    from metakd.evaluate.baselines.supervised import DevNetSettings

    config = configio.load(
        EvaluateConfig, overrides=["baselines.devnet.steps=7", "baselines.pyod.knn_k=3"]
    )
    assert config.baselines.section(DevNetSettings) == DevNetSettings(steps=7)
    assert config.baselines.section(PyODSettings).knn_k == 3
    assert configio.to_dict(config)["baselines"]["devnet"]["steps"] == 7
    # The flat keys of earlier releases are named as unknown, with the sections that replace them.
    with pytest.raises(ConfigError, match=r"'baselines.devnet_steps' \(known here: devnet, "):
        configio.load(EvaluateConfig, overrides=["baselines.devnet_steps=7"])
    with pytest.raises(ConfigError, match="baselines.devnet.batch_size must be an integer >= 1"):
        configio.load(EvaluateConfig, overrides=["baselines.devnet.batch_size=0"])
