"""Stopping meta-training early: cleanly on SIGINT and SIGTERM (the current iteration ends
first), and once validation stops improving (``patience``)."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from metakd.config import TrainConfig
    from metakd.distributed import ProcessGroup


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped meta-training at the end of an iteration, after it wrote its
    resume checkpoint (``resume.pt``).

    A ``KeyboardInterrupt``, so whatever handles Ctrl-C (run folders, tracking) handles it too.

    Attributes:
        iteration: the iterations done (the checkpoint's).
        signum: the signal that asked to stop.
    """

    def __init__(self, iteration: int, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name} at iteration {iteration}")
        self.iteration = iteration
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's status for death by this signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class StopSignals:
    """While active, SIGINT and SIGTERM only ask the loop to stop (it does at the end of the
    iteration, writing a checkpoint); a second signal raises ``KeyboardInterrupt`` at once.
    Outside the main thread, where Python cannot set handlers, signals keep their defaults."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def early_stop(
    iteration: int, best_iteration: int, *, config: TrainConfig, group: ProcessGroup | None
) -> bool:
    """Whether the run ends at ``iteration`` (early stopping, as Lightning's ``EarlyStopping``):
    it is a validation, and it and the ``config.patience - 1`` before it found no meta-val AUROC
    above the best, found at ``best_iteration``. Every rank of a distributed run gets rank 0's
    answer, so they all stop at the same iteration."""
    if config.patience is None or iteration % config.val_every:
        return False
    stale = iteration - best_iteration >= config.patience * config.val_every
    if group is None:
        return stale
    flag = torch.tensor([float(stale)], device=group.device(config.device))
    group.broadcast_([flag], what="the early-stopping decision")
    return bool(flag.item())


__all__ = ["StopSignals", "TrainingInterrupted", "early_stop"]
