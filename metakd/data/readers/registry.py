"""File suffix -> :class:`~metakd.data.readers.base.TaskFormat`: the one place a task file's
type is looked up.

A format registers itself with ``@register_format(".suffix", ...)`` on its class, in a module of
this package (the package imports them all).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from metakd.data.readers.base import TaskFormat
from metakd.errors import DataError

#: Lower-case suffix -> the format reading it, in registration order (filled by
#: :func:`register_format`).
FORMATS: dict[str, TaskFormat] = {}

F = TypeVar("F", bound=type[TaskFormat])


def register_format(*suffixes: str) -> Callable[[F], F]:
    """Class decorator: read files with these suffixes (``".csv"``, lower case) with this
    :class:`~metakd.data.readers.base.TaskFormat` subclass.

    Raises:
        ValueError: No suffix is given, one is given twice or is not ``"."`` plus lower-case
            text, or one is already registered (then nothing is registered).
    """
    if not suffixes:
        raise ValueError("register_format needs at least one suffix")
    if len(set(suffixes)) < len(suffixes):
        raise ValueError(f"register_format got a suffix twice: {suffixes}")
    for suffix in suffixes:
        if not suffix.startswith(".") or len(suffix) < 2 or suffix != suffix.lower():
            # Lookups lower-case the file's suffix, so any other spelling could never match.
            raise ValueError(f"a format suffix is '.' plus lower-case text, got {suffix!r}")

    def add(cls: F) -> F:
        for suffix in suffixes:
            if suffix in FORMATS:
                owner = type(FORMATS[suffix]).__name__
                raise ValueError(f"file suffix {suffix!r} is already registered (by {owner})")
        reader = cls()
        for suffix in suffixes:
            FORMATS[suffix] = reader
        return cls

    return add


def supported_suffixes() -> tuple[str, ...]:
    """Every registered suffix (lower case), in registration order."""
    return tuple(FORMATS)


def format_for(suffix: str, *, where: str) -> TaskFormat:
    """The format reading files with ``suffix`` (any case, as the file spells it).

    Raises:
        DataError: No format reads it (the message lists the supported suffixes).
    """
    try:
        return FORMATS[suffix.lower()]
    except KeyError:
        raise DataError(
            where,
            f"unsupported file type '{suffix}' (supported: {', '.join(supported_suffixes())})",
        ) from None
