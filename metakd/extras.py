"""Optional dependencies: which extra of ``pip install "metakd[...]"`` brings which package, and
the one-line error when a feature needs a package that is not installed.

The core install (``pip install metakd``) meta-trains, adapts and scores csv/tsv/txt and npz
files. Each heavy dependency that serves one feature is an extra, imported only when that
feature runs:

============  ======================  ==================================================
extra         packages                feature
============  ======================  ==================================================
tracking      wandb                   Weights & Biases tracking (``metrics.jsonl`` is
                                      always written; the default ``auto`` mode falls
                                      back to it alone, with a note)
evaluate      pyod, matplotlib        ``metakd evaluate``: the PyOD baselines and the plot
parquet       pyarrow                 reading ``.parquet`` files
onnx          onnx, onnxruntime       ``student.onnx`` (see :mod:`metakd.persist`)
all           every one of these
============  ======================  ==================================================
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Iterable
from types import ModuleType

from metakd.errors import MetakdError

#: The import name of each optional package -> (its distribution, the extra that installs it).
OPTIONAL: dict[str, tuple[str, str]] = {
    "wandb": ("wandb", "tracking"),
    "pyod": ("pyod", "evaluate"),
    "matplotlib": ("matplotlib", "evaluate"),
    "pyarrow": ("pyarrow", "parquet"),
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
}


#: The notes :func:`note_once` has given in this process.
NOTED: set[str] = set()


def note_once(key: str, message: str) -> None:
    """Warn ``message`` the first time in this process a note on ``key`` is given (a feature
    that goes on without an optional package says so once, not at every file it writes)."""
    if key not in NOTED:
        NOTED.add(key)
        warnings.warn(message, stacklevel=4)


class MissingExtra(MetakdError, ImportError):
    """A feature needs an optional package that is not installed; the message names the
    ``pip install`` command that adds it. Also an ``ImportError``, which it stands for."""


def install_hint(extra: str) -> str:
    """The command that installs ``extra`` (quoted: shells such as zsh expand brackets)."""
    return f'pip install "metakd[{extra}]"'


def is_installed(module: str) -> bool:
    """Whether the top-level package ``module`` can be imported, without importing it (a cheap
    check; a package set to ``None`` in ``sys.modules`` counts as missing, as Python's import
    then fails)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(modules: Iterable[str]) -> list[str]:
    """Those of ``modules`` that are not installed, in order, each once."""
    return [m for m in dict.fromkeys(modules) if not is_installed(m)]


def missing_message(modules: Iterable[str], feature: str) -> str:
    """``FEATURE needs PKG (not installed): pip install "metakd[EXTRA]"`` for ``modules`` (keys
    of :data:`OPTIONAL`), one command naming every extra they need."""
    modules = list(dict.fromkeys(modules))
    packages = [OPTIONAL[m][0] if m in OPTIONAL else m for m in modules]
    names = packages[0] if len(packages) == 1 else f"{', '.join(packages[:-1])} and {packages[-1]}"
    extras = dict.fromkeys(OPTIONAL[m][1] for m in modules if m in OPTIONAL)
    command = install_hint(",".join(extras)) if extras else f"pip install {' '.join(packages)}"
    verb = "is" if len(packages) == 1 else "are"
    return f"{feature} needs {names}, which {verb} not installed: {command}"


def require_installed(modules: Iterable[str], feature: str) -> None:
    """Raise :class:`MissingExtra` naming every one of ``modules`` that is not installed (and
    the command that installs them) before ``feature`` starts any work."""
    absent = missing(modules)
    if absent:
        raise MissingExtra(missing_message(absent, feature))


def require(module: str, feature: str) -> ModuleType:
    """Import the optional package ``module`` for ``feature``, or raise :class:`MissingExtra`
    with the ``pip install "metakd[EXTRA]"`` command. Import submodules after this call (a
    submodule already imported would otherwise hide a missing package)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtra(missing_message([module], feature)) from err


__all__ = [
    "OPTIONAL",
    "MissingExtra",
    "install_hint",
    "is_installed",
    "missing",
    "missing_message",
    "require",
    "require_installed",
]
