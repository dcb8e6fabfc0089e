"""Checkpoint files: plain data and tensors only, written atomically.

Files load with ``torch.load(weights_only=True)``, so opening one never runs code. Each carries a
``format`` tag and a version so a wrong or outdated file is a clear error, not a crash later.
"""

from __future__ import annotations

import math
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
    if not isinstance(fmt, str) or fmt not in {f"metakd.{k}" for k in kinds}:
        expected = " or ".join(kinds)
        found = repr(fmt) if fmt is None or isinstance(fmt, str) else _describe(fmt)
        raise DataError(str(path), f"expected a metakd {expected} checkpoint, found format {found}")
    version = data.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise DataError(
            str(path),
            f"checkpoint format version "
            f"{repr(version) if isinstance(version, (int, str)) else _describe(version)} "
            "is not supported "
            f"(this metakd reads version {FORMAT_VERSION})",
        )
    return data


# -- teachers -----------------------------------------------------------------------------------


def fitted_shares(fit: dict[str, Any] | None) -> dict[str, float]:
    """The shares a pool-share ``fit`` (``{"share", ..., "with_anomalies"}``) gives a teacher,
    as ``teacher.pt`` and a run's summary record them: ``pool_share`` and ``pool_knn`` (the
    kNN expert's share), and ``pool_share_anomalies`` and ``pool_knn_anomalies`` where that fit
    had episodes (where no domain had anomalies to spare, none: adapt reads the first two);
    none without a fit."""
    if fit is None:
        return {}
    shares = {"pool_share": fit["share"], "pool_knn": fit.get("knn_share", 0.0)}
    if (with_anomalies := fit.get("with_anomalies")) and with_anomalies["episodes"]:
        shares["pool_share_anomalies"] = with_anomalies["share"]
        shares["pool_knn_anomalies"] = with_anomalies.get("knn_share", 0.0)
    return shares


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
    pool_share: dict[str, Any] | None = None,
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
        pool_share: the share of the pool's Gaussian fitted for it (``{"share", "episodes",
            "auroc", "with_anomalies"}``), stored as ``pool_share`` (the share),
            ``pool_share_anomalies`` (the share fitted with labelled anomalies in the support,
            where it had episodes) and ``pool_share_fit`` (all of it); ``None``: none (adapt
            reads 0).
    """
    from metakd import __version__

    shared = (
        {} if pool_share is None else fitted_shares(pool_share) | {"pool_share_fit": pool_share}
    )

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
        }
        | shared,
    )


# -- typed reads of a loaded checkpoint's fields --------------------------------------------------


def one_line(err: BaseException) -> str:
    """An exception's message on one line (torch's ``load_state_dict`` lists each mismatch on a
    line of its own), or its type's name when it has none."""
    parts = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(parts) or type(err).__name__


def _describe(value: Any) -> str:
    """A short description of a stored value for a message: its type, and its value when short
    (never a tensor's or a long list's contents)."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    kind = type(value).__name__
    return f"{kind} {text}" if len(text) <= 40 else f"a {kind}"


class Fields:
    """Typed access to the fields of a loaded checkpoint (or of one of its sections): a field
    that is missing or holds the wrong type or value is a :class:`DataError` naming the file and
    the field (``preprocess.center``), never a crash later.

    Args:
        data: the loaded mapping.
        where: the file, as messages name it.
        prefix: the section's dotted name (``"preprocess."``), for messages.
    """

    def __init__(self, data: Any, where: str, prefix: str = "") -> None:
        if not isinstance(data, dict):
            name = prefix.rstrip(".") or "the checkpoint"
            raise DataError(where, f"field '{name}' must be a mapping, got {_describe(data)}")
        self.data = data
        self.where = where
        self.prefix = prefix

    def bad(self, key: str, problem: str) -> DataError:
        """The error for field ``key``: ``problem`` says what is wrong with it."""
        return DataError(self.where, f"field '{self.prefix}{key}' {problem}")

    def _get(self, key: str) -> Any:
        if key not in self.data:
            raise DataError(
                self.where,
                f"field '{self.prefix}{key}' is missing (the checkpoint is incomplete or not "
                "written by metakd)",
            )
        return self.data[key]

    def has(self, key: str) -> bool:
        """Whether field ``key`` is present and not ``None``."""
        return self.data.get(key) is not None

    def section(self, key: str) -> Fields:
        """The mapping in field ``key``, as :class:`Fields`."""
        return Fields(self._get(key), self.where, f"{self.prefix}{key}.")

    def mapping(self, key: str) -> dict[str, Any]:
        """The mapping (with string keys) in field ``key``."""
        value = self._get(key)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise self.bad(key, f"must be a mapping, got {_describe(value)}")
        return value

    def optional_mapping(self, key: str) -> dict[str, Any] | None:
        """The mapping in field ``key``, or ``None`` when it is absent or null."""
        return self.mapping(key) if self.has(key) else None

    def string(self, key: str, *, choices: tuple[str, ...] = ()) -> str:
        """The string in field ``key`` (one of ``choices`` when given)."""
        value = self._get(key)
        if not isinstance(value, str):
            raise self.bad(key, f"must be a string, got {_describe(value)}")
        if choices and value not in choices:
            raise self.bad(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def strings(self, key: str) -> list[str]:
        """The list of strings in field ``key``."""
        value = self._get(key)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise self.bad(key, f"must be a list of strings, got {_describe(value)}")
        return list(value)

    def integer(self, key: str, *, low: int | None = None) -> int:
        """The integer in field ``key`` (``>= low`` when given)."""
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(key, f"must be an integer, got {_describe(value)}")
        if low is not None and value < low:
            raise self.bad(key, f"must be >= {low}, got {value}")
        return value

    def integers(self, key: str, *, low: int | None = None) -> list[int]:
        """The list of integers in field ``key`` (each ``>= low`` when given)."""
        value = self._get(key)
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and (low is None or v >= low)
            for v in value
        ):
            what = "integers" if low is None else f"integers >= {low}"
            raise self.bad(key, f"must be a list of {what}, got {_describe(value)}")
        return list(value)

    def number(self, key: str, *, finite: bool = True, positive: bool = False) -> float:
        """The real number in field ``key``: not NaN, finite unless ``finite`` is false
        (``inf`` allowed), ``> 0`` with ``positive``."""
        value = self._get(key)
        if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.bad(key, f"must be a number, got {_describe(value)}")
        x = float(value)
        if math.isnan(x) or (finite and math.isinf(x)):
            raise self.bad(key, f"must be a {'finite ' if finite else ''}number, got {x}")
        if positive and not x > 0:
            raise self.bad(key, f"must be > 0, got {x}")
        return x

    def tensor(
        self,
        key: str,
        *,
        ndim: int | None = None,
        finite: bool = False,
        positive: bool = False,
    ) -> torch.Tensor:
        """The floating-point tensor in field ``key``: with ``ndim`` dimensions, all finite with
        ``finite``, all ``> 0`` with ``positive``; never NaN."""
        value = self._get(key)
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise self.bad(key, f"must be a floating-point tensor, got {_describe(value)}")
        if ndim is not None and value.ndim != ndim:
            raise self.bad(key, f"must be a {ndim}-D tensor, got shape {tuple(value.shape)}")
        _check_values(self, key, value, finite=finite, positive=positive)
        return value

    def tensors(self, key: str) -> dict[str, torch.Tensor]:
        """The ``name -> tensor`` mapping (a state dict) in field ``key``; no tensor holds NaN."""
        value = self.mapping(key)
        for name, tensor in value.items():
            if not isinstance(tensor, torch.Tensor):
                raise self.bad(f"{key}.{name}", f"must be a tensor, got {_describe(tensor)}")
            _check_values(self, f"{key}.{name}", tensor, finite=False, positive=False)
        return value

    def tensor_list(self, key: str) -> list[torch.Tensor]:
        """The list of floating-point tensors in field ``key``; none holds NaN."""
        value = self._get(key)
        if not isinstance(value, (list, tuple)):
            raise self.bad(key, f"must be a list of tensors, got {_describe(value)}")
        for i, tensor in enumerate(value):
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                raise self.bad(
                    f"{key}[{i}]", f"must be a floating-point tensor, got {_describe(tensor)}"
                )
            _check_values(self, f"{key}[{i}]", tensor, finite=False, positive=False)
        return list(value)


def _check_values(
    fields: Fields, key: str, tensor: torch.Tensor, *, finite: bool, positive: bool
) -> None:
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    if torch.isnan(tensor).any():
        raise fields.bad(key, "holds NaN values")
    if finite and not torch.isfinite(tensor).all():
        raise fields.bad(key, "holds infinite values")
    if positive and not (tensor > 0).all():
        raise fields.bad(key, "holds values <= 0")
