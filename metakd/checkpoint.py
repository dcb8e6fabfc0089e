"""Checkpoint files: plain data and tensors only, written atomically.

Files load with ``torch.load(weights_only=True)``, so opening one never runs code. Each carries a
``format`` tag and a version so a wrong or outdated file is a clear error, not a crash later.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from metakd.errors import DataError

FORMAT_VERSION = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def shareable(path: Path, *, directory: bool) -> None:
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would (``tempfile`` uses 0600/0700,
    which teammates and CI under another user could not read)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it over
    ``path``, so an interrupted run never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The name says what it is: a file left by a killed process is recognisable and safe to delete.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".metakd-tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        shareable(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically write ``text`` to ``path``."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: str | Path, kind: str, payload: dict[str, Any]) -> None:
    """Atomically save ``payload`` (tensors and plain data) tagged as ``kind``."""
    data = {"format": f"metakd.{kind}", "format_version": FORMAT_VERSION, **payload}
    atomic_write_bytes(Path(path), lambda f: torch.save(data, f))


def load_checkpoint(path: str | Path, kind: str | tuple[str, ...]) -> dict[str, Any]:
    """Load a checkpoint of the expected kind(s) without executing code."""
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    if not path.is_file():
        raise DataError(str(path), "checkpoint not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a valid checkpoint"
        raise DataError(
            str(path), f"not a loadable metakd checkpoint ({type(err).__name__})"
        ) from None
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt not in {f"metakd.{k}" for k in kinds}:
        expected = " or ".join(kinds)
        raise DataError(str(path), f"expected a metakd {expected} checkpoint, found format {fmt!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise DataError(
            str(path),
            f"checkpoint format version {data.get('format_version')!r} is not supported "
            f"(this metakd reads version {FORMAT_VERSION})",
        )
    return data


# -- teachers -----------------------------------------------------------------------------------


def save_teacher(
    path: str | Path,
    *,
    teacher: Any,
    model: dict[str, Any],
    inner: dict[str, Any],
    algorithm: str,
    rates: list[torch.Tensor],
    scaling: dict[str, Any],
    alignment: dict[str, Any],
    episode: dict[str, Any],
    info: dict[str, Any],
    window: dict[str, Any] | None = None,
) -> None:
    """Save a (meta-trained or adapted) teacher with everything needed to adapt and score.

    Args:
        teacher: the :class:`~metakd.models.teachers.Teacher`.
        model: its :class:`~metakd.models.teachers.ModelConfig` as a dict.
        inner: adaptation settings to reuse (resolved :class:`~metakd.meta.learners.InnerConfig`).
        algorithm: the meta-learning algorithm that produced it.
        rates: Meta-SGD's learned inner rates (empty otherwise).
        scaling: per-task scaling settings; alignment: feature alignment settings.
        episode: the episode shapes it was meta-trained with.
        info: provenance and metrics (plain data).
        window: the sliding windows of its meta-train tasks and the raw widths they were made
            from (``{"config": ..., "raw_widths": [...]}``), or ``None``.
    """
    from metakd import __version__

    save_checkpoint(
        path,
        "teacher",
        {
            "metakd_version": __version__,
            "input_dim": teacher.input_dim,
            "model": model,
            "state_dict": {k: v.detach().cpu() for k, v in teacher.state_dict().items()},
            "inner": inner,
            "algorithm": algorithm,
            "rates": [r.detach().cpu() for r in rates],
            "scaling": scaling,
            "alignment": alignment,
            "episode": episode,
            "window": window,
            "info": info,
        },
    )
