"""User-facing errors.

Anything the user can fix (a bad file, key or value) raises :class:`MetakdError`; the CLI prints
its message on one line and exits non-zero without a traceback. Programming errors stay ordinary
exceptions so their tracebacks survive.
"""

from __future__ import annotations

import math


class MetakdError(Exception):
    """An error caused by user input (file, column, key or value); the message names the culprit."""


class DataError(MetakdError):
    """Bad data in a task file or collection. ``where`` is the file (or task) at fault."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem

    def __reduce__(self) -> tuple[type[DataError], tuple[str, str]]:
        # Rebuilt from its two parts when it crosses a process (an episode-prefetching worker).
        return type(self), (self.where, self.problem)


class ConfigError(MetakdError, ValueError):
    """Bad configuration: unknown key, wrong type, invalid value or a combination of settings
    that cannot work together. Also a ``ValueError``, as invalid arguments are in Python APIs."""


class InputError(MetakdError, ValueError):
    """Bad arrays or labels passed to a Python API (empty, NaN, sparse, wrong shape or label).
    A ``ValueError``, as scikit-learn and PyOD raise for invalid input."""


# -- range checks of config values, one message form for every section ----------------------------

#: Largest seed a config accepts: seeds reach NumPy, torch and scikit-learn's ``random_state``,
#: which takes at most ``2**32 - 1``; NumPy refuses negative seeds.
MAX_SEED = 2**32 - 1


def first_line(err: BaseException) -> str:
    """The first line of an error's message (or its type's name), for a one-line message."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_seed(key: str, value: object) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``value`` is an integer seed in
    ``[0, MAX_SEED]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{key} must be an integer in [0, {MAX_SEED}], got {value!r}")


def check_int(key: str, value: object, *, low: int) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``value`` is an integer ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")


def check_number(
    key: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``value`` is a finite number within the
    bounds (``low_open``/``high_open``: the bound itself excluded). NaN and infinities are
    refused: a comparison with NaN is false, so a NaN would pass every ``value < low`` check."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    try:
        x = float(value) if ok else math.nan  # type: ignore[arg-type]
    except OverflowError:  # an integer beyond any float
        x = math.inf
    if ok and math.isfinite(x):
        ok = (low is None or (x > low if low_open else x >= low)) and (
            high is None or (x < high if high_open else x <= high)
        )
    else:
        ok = False
    if ok:
        return
    if low is not None and high is not None:
        span = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        span = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        span = f"{'<' if high_open else '<='} {high:g}"
    else:
        span = "a finite number"
    raise ConfigError(f"{key} must be {span}, got {value!r}")
