"""How a command body ends: user errors become one line on stderr and an exit status."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import TextIO, TypeVar

import click

from metakd.errors import MetakdError

T = TypeVar("T")

#: Exit status for user errors (the same as click's usage errors).
USER_ERROR_EXIT = 2
#: Exit status after SIGINT (128 + 2, the shell convention).
INTERRUPTED_EXIT = 130


def run_guarded(body: Callable[[], T]) -> T:
    """Run a command body, turning user errors into one line on stderr and exit status 2.

    Warnings raised inside ``body`` are printed as ``warning: <message>`` on stderr as they
    occur. Anything that is not a :class:`MetakdError` is a bug and keeps its traceback.
    """

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        click.echo(f"warning: {message}", err=True)

    # catch_warnings restores the original showwarning (and filters) on exit.
    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            return body()
        except MetakdError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(USER_ERROR_EXIT)
        except OSError as err:
            # A path that cannot be read or written (permissions, a file where a folder must
            # go, a full disk): the user's environment, named by the OS message.
            click.echo(f"error: {err}", err=True)
            sys.exit(USER_ERROR_EXIT)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(INTERRUPTED_EXIT)
