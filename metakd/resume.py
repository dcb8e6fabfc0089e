"""Exact resume of meta-training: what the resume checkpoint holds and when it may be used.

``metakd meta-train`` writes ``resume.pt`` into its staging folder every ``checkpoint_every``
iterations and when SIGINT/SIGTERM stop it (see :mod:`metakd.rundir` for where that folder goes).
It holds everything the loop carries from one iteration to the next, so a resumed run ends with
the same weights, bit for bit on the same machine, as one that was never interrupted: the
meta-learner's and optimiser's state, the episode sampler's generator, torch's and Python's
global generators, the best meta-val state so far and the ``metrics.jsonl`` lines written so
far. NumPy's legacy global generator is not used by meta-training and is not saved.

The file is plain tensors and data (``torch.load(weights_only=True)``) written atomically.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metakd.checkpoint import load_checkpoint, save_checkpoint
from metakd.errors import ConfigError, DataError

#: The resume checkpoint's file name in a run (or staging) folder.
RESUME_FILE = "resume.pt"
#: Config keys a resumed run may change (a key, or a section ending in ``.``): everything else
#: changes the trajectory, so a difference is an error. ``iterations`` may grow (an
#: uninterrupted run of the new length ends the same), ``patience`` only decides where the run
#: ends, ``checkpoint_every``, ``prefetch`` and ``tracking`` do not touch the numbers.
MAY_CHANGE_ON_RESUME = ("iterations", "patience", "checkpoint_every", "prefetch", "tracking.")


@dataclass
class ResumeState:
    """The state of an interrupted meta-training run at the end of an iteration."""

    config: dict[str, Any]
    """The run's :class:`~metakd.config.TrainConfig` as plain data."""
    streams: int
    """The episode streams it drew from (``episode_streams`` resolved for its world size)."""
    iteration: int
    """Iterations done; the resumed run starts with the next."""
    learner: dict[str, Tensor]
    """The meta-learner's ``state_dict`` (teacher and learned inner rates)."""
    optimiser: dict[str, Any]
    """The outer optimiser's ``state_dict``."""
    sampler_rng: dict[str, Any] | None
    """The episode sampler's NumPy generator state (one stream); ``None`` with several streams,
    which are seeded per iteration and carry no state."""
    torch_rng: Tensor
    """``torch.get_rng_state()``."""
    python_rng: Any
    """``random.getstate()``."""
    skipped: int
    """Outer steps skipped so far for a non-finite meta-gradient."""
    best_iteration: int
    best_val_auroc: float | None
    best_state: dict[str, Tensor]
    """The meta-learner's ``state_dict`` at its best meta-val AUROC so far."""
    metrics: list[str]
    """The ``metrics.jsonl`` lines written so far (JSON, no newline)."""
    seconds: float
    """Wall-clock seconds meta-training has taken so far."""
    wandb_id: str | None
    """The W&B run to continue (``None`` without W&B)."""
    source: Path | None = field(default=None, compare=False)
    """The file it was loaded from (not saved)."""

    def save(self, path: Path) -> None:
        """Write atomically to ``path`` (a kill mid-write leaves the previous file intact)."""
        payload = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"}
        save_checkpoint(path, "resume", payload)

    @classmethod
    def load(cls, path: Path) -> ResumeState:
        """Load a resume checkpoint (no code runs).

        Raises:
            DataError: not a loadable metakd resume checkpoint, naming ``path``.
        """
        data = load_checkpoint(path, "resume")
        names = [f.name for f in fields(cls) if f.name != "source"]
        missing = [name for name in names if name not in data]
        if missing:
            raise DataError(str(path), f"resume checkpoint lacks {', '.join(missing)}")
        return cls(**{name: data[name] for name in names}, source=Path(path))

    def restore_global_rngs(self) -> None:
        """Set torch's and Python's global generators to their saved states."""
        torch.set_rng_state(self.torch_rng)
        version, internal, gauss = self.python_rng
        random.setstate((version, tuple(internal), gauss))

    def check_config(self, config: dict[str, Any], *, streams: int) -> None:
        """Refuse to resume under a config that would change the run.

        Args:
            config: the resumed run's config, as plain data.
            streams: the episode streams it would draw from.

        Raises:
            ConfigError: a key outside :data:`MAY_CHANGE_ON_RESUME` differs (all are named); the
                episode streams differ; or ``iterations`` is below the iterations done.
        """
        where = str(self.source or "resume state")
        old, new = flatten(self.config), flatten(config)
        changed = [
            key
            for key in sorted(old.keys() | new.keys())
            # episode_streams may be spelt differently as long as it resolves the same (below).
            if old.get(key) != new.get(key) and not may_change(key) and key != "episode_streams"
        ]
        if changed:
            listing = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
            allowed = ", ".join(k.replace(".", ".*") for k in MAY_CHANGE_ON_RESUME)
            raise ConfigError(
                f"{where}: cannot resume with a changed config ({listing}); only {allowed} may "
                "change on resume"
            )
        if streams != self.streams:
            raise ConfigError(
                f"{where}: the interrupted run drew each meta-batch from {self.streams} episode "
                f"stream(s), this one would draw from {streams} (episode_streams; null is one "
                f"per rank): resume with --set episode_streams={self.streams} on a world size "
                "that divides it"
            )
        if new["iterations"] < self.iteration:
            raise ConfigError(
                f"{where}: iterations={new['iterations']} is below the {self.iteration} "
                "iterations the interrupted run has done"
            )


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict as ``{"section.key": value}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def may_change(key: str) -> bool:
    """Whether config key ``key`` (dotted) may differ on resume."""
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in MAY_CHANGE_ON_RESUME)
