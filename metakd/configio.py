"""Strict conversion between nested config dataclasses, plain dicts and YAML.

Every config in metakd is a (nested) dataclass. YAML files and ``--set key=value`` overrides are
merged into a plain dict, then converted field by field; an unknown key or a value of the wrong
type raises :class:`~metakd.errors.ConfigError` naming the dotted key.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from metakd.errors import ConfigError
from metakd.yamlio import YAMLLimitError, parse_yaml, read_yaml

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

#: A config dataclass.
T = TypeVar("T", bound="DataclassInstance")
S = TypeVar("S")


#: Field metadata key of a config dataclass's field that holds plugin sections (its value: the
#: :class:`SectionRegistry`); see there.
SECTIONS = "metakd.sections"


class SectionRegistry:
    """Config sections that plugins add to a config dataclass, each under its own key.

    A registry of kinds (``model.kind``) lets each kind bring its settings: a dataclass
    registered here under the kind's name is a key of the owning config in YAML and ``--set``
    (``model.vae.beta``), checked like any section. The owner stores them in one ``dict`` field
    marked ``metadata={SECTIONS: registry}``; :func:`from_dict` fills it from the registered
    keys, :func:`to_dict` writes them back as keys of the owner, so files read and written stay
    flat. A new kind with settings is then its own module alone.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._types: dict[str, type] = {}

    def register(self, name: str, settings: type) -> None:
        """Make dataclass ``settings`` the section ``name`` of the owner.

        Raises:
            ValueError: ``name`` is taken, or ``settings`` is not a dataclass.
        """
        if name in self._types:
            raise ValueError(f"config section '{self.owner}.{name}' is registered twice")
        if not (isinstance(settings, type) and dataclasses.is_dataclass(settings)):
            raise ValueError(f"config section '{self.owner}.{name}' must be a dataclass")
        self._types[name] = settings

    def types(self) -> dict[str, type]:
        """Every section's name and dataclass, in registration order."""
        return dict(self._types)

    def complete(self, given: dict[str, Any]) -> dict[str, Any]:
        """``given`` sections (name -> instance) checked, every other one at its defaults."""
        unknown = sorted(set(given) - set(self._types))
        if unknown:
            raise ConfigError(
                f"unknown config section '{self.owner}.{unknown[0]}' "
                f"(known: {', '.join(self._types)})"
            )
        for name, value in given.items():
            if not isinstance(value, self._types[name]):
                raise ConfigError(
                    f"config section '{self.owner}.{name}' must be a "
                    f"{self._types[name].__name__}, got {_shown(value)}"
                )
        return {name: given[name] if name in given else cls() for name, cls in self._types.items()}

    def pick(self, sections: dict[str, Any], settings: type[S]) -> S:
        """The instance of dataclass ``settings`` among an owner's ``sections``."""
        for name, cls in self._types.items():
            if cls is settings:
                return typing.cast(S, sections[name])
        raise KeyError(f"{settings.__name__} is no registered section of {self.owner}:")


def _sections_field(cls: Any) -> tuple[str, SectionRegistry] | None:
    """The field of dataclass ``cls`` that holds plugin sections, and its registry."""
    for f in dataclasses.fields(cls):
        if SECTIONS in f.metadata:
            return f.name, f.metadata[SECTIONS]
    return None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-data (YAML/JSON/``torch.save``-safe) dict of a config dataclass; plugin sections
    (:class:`SectionRegistry`) are keys of their owner."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if SECTIONS in f.metadata:
            out.update({name: _plain(section) for name, section in value.items()})
        else:
            out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    """A copy of ``value`` with every config dataclass in it as a plain dict."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return copy.deepcopy(value)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for a message, cut to about ``limit`` characters (a long list, a number of
    hundreds of digits)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-3:]} ({len(text)} chars)"


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"config key '{key}': null is not allowed")
        candidates = [option for option in options if option is not type(None)]
        if len(candidates) == 1:
            # "X | None": report X's own, more specific error (e.g. a bad nested key).
            return _convert(value, candidates[0], key)
        for option in candidates:
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}': {_shown(value)} is not a {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(c) for c in get_args(tp))
            raise ConfigError(f"config key '{key}': {_shown(value)} is not one of {choices}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {_shown(value)}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {_shown(value)}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {_shown(value)}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(k, kt, key): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {_shown(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -(2**63) <= value < 2**63:
                raise ConfigError(
                    f"config key '{key}': {_shown(value)} is out of range (64-bit integers)"
                )
            return value
        raise ConfigError(f"config key '{key}': expected an integer, got {_shown(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer too large for a float
                raise ConfigError(f"config key '{key}': {_shown(value)} is out of range") from None
        raise ConfigError(f"config key '{key}': expected a number, got {_shown(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}': expected a string, got {_shown(value)}")
    raise TypeError(f"unsupported config field type {tp!r} for '{key}'")


def from_dict(cls: type[T], data: dict[str, Any], *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    sections: dict[str, type] = {}
    holder = _sections_field(cls)
    if holder is not None:
        # The field itself is no key: its sections are, each under its own name.
        del fields[holder[0]]
        sections = holder[1].types()
    unknown = sorted(set(data) - set(fields) - set(sections))
    if unknown:
        known = ", ".join(sorted([*fields, *sections]))
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (known here: {known})")
    kwargs: dict[str, Any] = {
        name: _convert(_over_field_default(fields[name], value), hints[name], f"{prefix}{name}")
        for name, value in data.items()
        if name in fields
    }
    if holder is not None:
        kwargs[holder[0]] = {
            name: _convert(value, sections[name], f"{prefix}{name}")
            for name, value in data.items()
            if name in sections
        }
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config '{prefix.rstrip('.') or cls.__name__}': {err}") from None


def _over_field_default(field: dataclasses.Field, value: Any) -> Any:
    """A partial mapping for a nested-config field, completed from that field's own default.

    A parent may default a section differently from the section class's defaults (e.g. the
    training episode shape); ``--set episode.meta_batch=4`` must change that one key of the
    parent's default, not reset the section's other keys to the class's defaults.
    """
    if not isinstance(value, dict) or field.default_factory is dataclasses.MISSING:
        return value
    default = field.default_factory()
    if not dataclasses.is_dataclass(default):
        return value
    return _deep_merge(to_dict(default), value)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b=value"`` into ``(["a", "b"], value)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = parse_yaml(raw)
    except YAMLLimitError as err:
        raise ConfigError(f"override '{key.strip()}=...': refused: the YAML {err}") from None
    except yaml.YAMLError:
        raise ConfigError(f"override '{text}': value is not valid YAML") from None
    return parts, value


def merge_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key=value`` override set (dotted keys nest)."""
    out = _deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _deepcopy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in data.items()}


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load config ``cls`` from an optional YAML file plus ``key=value`` overrides."""
    data = read_yaml(path) if path is not None else {}
    data = merge_overrides(data, overrides or [])
    return from_dict(cls, data)


def dump_yaml(config: Any) -> str:
    """YAML text of a config dataclass (round-trips through :func:`load`)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)
