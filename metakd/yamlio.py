"""Reading YAML safely: plain data only, within a nesting depth and a node count (aliases
expanded), numbers as YAML 1.2 reads them; every error names the file and what is wrong."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from metakd.errors import ConfigError

#: Deepest nesting of mappings and lists a YAML config may hold (the configs nest 4 deep): a
#: deeper document is refused before PyYAML's recursive composer overflows the stack.
YAML_MAX_DEPTH = 64
#: Most nodes a YAML config may hold once its aliases (``*name``) are expanded: a few hundred
#: bytes of nested aliases ("billion laughs") expand to billions of nodes, which every walk of
#: the config (conversion, messages, copies) would visit.
YAML_MAX_NODES = 100_000


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class YAMLLimitError(yaml.YAMLError):
    """A YAML document beyond :data:`YAML_MAX_DEPTH` or :data:`YAML_MAX_NODES`, or a recursive
    alias; its message says which."""


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with limits: nesting depth while composing (PyYAML composes
    recursively), then the node count with aliases expanded and no alias inside itself."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > YAML_MAX_DEPTH:
                raise YAMLLimitError(f"is nested more than {YAML_MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _check_expanded(node)
        return node


# PyYAML reads YAML 1.1, where a float needs a dot and a signed exponent: ``1e-4`` and ``1.0e4``
# were strings, and ``--set inner.eps=1e-4`` failed with "expected a number". YAML 1.2 (and
# every JSON reader) takes them as numbers; so does this loader.
_LimitedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _check_expanded(root: yaml.Node) -> None:
    """Raise :class:`YAMLLimitError` when ``root`` with its aliases expanded holds more than
    :data:`YAML_MAX_NODES` nodes, nests deeper than :data:`YAML_MAX_DEPTH` or holds itself.
    Each distinct node is visited once (sizes memoised), so the check is linear in the text."""
    done: dict[int, tuple[int, int]] = {}  # node id -> (expanded nodes, expanded depth)
    active: set[int] = set()

    def visit(node: yaml.Node, level: int) -> tuple[int, int]:
        key = id(node)
        if key in done:
            return done[key]
        if level > YAML_MAX_DEPTH:
            raise YAMLLimitError(
                f"is nested more than {YAML_MAX_DEPTH} levels deep once its aliases are expanded"
            )
        if key in active:
            raise YAMLLimitError(
                "has an alias (*name) inside the node it names (a recursive alias)"
            )
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [item for pair in node.value for item in pair]
        else:
            children = []
        active.add(key)
        count, depth = 1, 1
        for child in children:
            n, d = visit(child, level + 1)
            count, depth = count + n, max(depth, d + 1)
            if count > YAML_MAX_NODES:
                raise YAMLLimitError(
                    f"holds more than {YAML_MAX_NODES} values once its aliases (*name) are expanded"
                )
            if depth > YAML_MAX_DEPTH:
                raise YAMLLimitError(
                    f"is nested more than {YAML_MAX_DEPTH} levels deep once its aliases are expanded"
                )
        active.discard(key)
        done[key] = (count, depth)
        return count, depth

    visit(root, 1)


def parse_yaml(text: str) -> Any:
    """Parse YAML text safely (plain data only) within :data:`YAML_MAX_DEPTH` and
    :data:`YAML_MAX_NODES`; raises ``yaml.YAMLError`` otherwise."""
    try:
        return yaml.load(text, Loader=_LimitedLoader)  # noqa: S506 - a SafeLoader subclass
    except ValueError as err:  # PyYAML reads integers with int(): at most 4300 digits
        raise YAMLLimitError(f"holds a value that cannot be read ({err})") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file (not found, not UTF-8 text, invalid YAML,
    nested too deep, too many values once aliases are expanded, not a mapping)."""
    path = Path(path)
    if not path.is_file():
        missing = "config file not found" if not path.exists() else "not a regular file"
        raise ConfigError(f"{path}: {missing}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        hint = "; it starts with a UTF-16 byte-order mark" if raw[:2] in _UTF16_BOMS else ""
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte {err.start} is "
            f"{raw[err.start : err.start + 1]!r}{hint}); save it as UTF-8 YAML"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"{path}: not a text file (it holds NUL bytes); save it as UTF-8 YAML")
    return _mapping(text, where=f"{path}: ", empty=True)


def read_yaml_text(text: str) -> dict[str, Any]:
    """Parse YAML text that must hold a mapping."""
    return _mapping(text, where="", empty=False)


def _mapping(text: str, *, where: str, empty: bool) -> dict[str, Any]:
    """The mapping ``text`` holds (``empty``: an empty document is an empty mapping); errors
    start with ``where``."""
    try:
        data = parse_yaml(text)
    except YAMLLimitError as err:
        raise ConfigError(f"{where}refused: the YAML {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}invalid YAML ({err.__class__.__name__})") from None
    if data is None and empty:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}expected a mapping at the top level")
    return data


__all__ = [
    "YAML_MAX_DEPTH",
    "YAML_MAX_NODES",
    "YAMLLimitError",
    "parse_yaml",
    "read_yaml",
    "read_yaml_text",
]
