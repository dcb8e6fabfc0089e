"""User-facing errors.

Anything the user can fix (a bad file, key or value) raises :class:`MetakdError`; the CLI prints
its message on one line and exits non-zero without a traceback. Programming errors stay ordinary
exceptions so their tracebacks survive.
"""

from __future__ import annotations


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
