"""Items made ahead in a worker process, handed out in order: meta-training's episodes.

Meta-training alternates drawing a meta-batch (NumPy and float64 torch work) and its
meta-gradient (float32 torch work on one thread). A :class:`Prefetch` draws the next meta-batches
in a ``torch.utils.data`` worker process while the meta-gradient runs: another core does the
sampling, and, unlike a thread, the worker never competes with the training loop for Python's
GIL (a prefetching *thread* slowed the meta-gradient by 1.7× on the MVTec collection). Items are
made strictly in index order by the one worker from whatever state the maker keeps (a seeded
generator, copied into the worker when it starts), always on one torch thread (in the worker,
or in the caller without one), so the stream is the same item for item, bit for bit, with or
without prefetching and whatever the caller's thread count.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

import torch
from torch.utils.data import DataLoader, IterableDataset

from metakd.threads import torch_threads

T = TypeVar("T")


class _Failed:
    """What the worker sends instead of item ``i`` when making it raised: the exception itself,
    raised again by the consumer as it was (not as DataLoader's re-wrapped ``RuntimeError``)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Items(IterableDataset[Any]):
    """``make(i)`` for ``i`` in ``start..stop``, as the worker's dataset."""

    def __init__(self, make: Callable[[int], Any], start: int, stop: int) -> None:
        self.make, self.start, self.stop = make, start, stop

    def __iter__(self) -> Iterator[Any]:
        torch.set_num_threads(1)  # as items made without a worker (see Prefetch.get)
        for index in range(self.start, self.stop + 1):
            try:
                yield self.make(index)
            except Exception as err:
                yield _Failed(err)
                return


def _worker_context() -> multiprocessing.context.BaseContext:
    """How the worker starts: forked on Linux (in milliseconds, the tasks shared copy-on-write),
    else spawned (a fresh interpreter that imports metakd and unpickles the maker, as
    DataLoader workers are on macOS and Windows; scripts then need ``if __name__ ==
    "__main__":``).

    The fork is safe because the worker runs torch on one thread only: it never waits for
    OpenMP threads of its parent that were not forked (a worker on two threads, forked from a
    process that had used two, hung in its first matrix product). The fork happens in the
    caller's thread, so never while another of its threads is inside torch.
    """
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _set_up_worker(worker: int) -> None:
    """In the worker, before its first item.

    Ctrl-C (SIGINT to the terminal's process group) and SIGTERM are for the training process,
    which stops the worker itself once it has checkpointed; a worker that died of them first
    would turn a clean interruption into a failure.

    The worker ends when the training process does, however that ends (SIGKILL included): the
    process's sentinel (``multiprocessing.parent_process``) closes then, even while the dead
    process waits to be reaped, which DataLoader's own check of the parent's pid does not see.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    owner = multiprocessing.parent_process()
    if owner is not None:

        def exit_with_owner() -> None:
            owner.join()
            os._exit(0)

        threading.Thread(target=exit_with_owner, name="metakd-owner-watch", daemon=True).start()


class Prefetch(Generic[T]):
    """``make(i)`` for ``i = start, start + 1, …, stop``, made up to ``depth`` items ahead.

    Args:
        make: builds item ``i``; called for consecutive ``i`` only, on one torch thread. With
            ``depth > 0`` it runs in the worker process on a copy of itself as it was when this
            was created (the caller must not draw from that state meanwhile); its items must
            pickle (tensors travel through shared memory), and where workers are spawned rather
            than forked, so must it.
        start: the first index; stop: the last (inclusive).
        depth: how many items may wait made; 0 makes each in :meth:`get`, in the caller's
            process (no worker at all).

    Use as a context manager (the worker stops on exit); :meth:`get` must be called with
    ``start``, ``start + 1``, … in turn. An exception raised by ``make(i)`` is raised by
    ``get(i)``.
    """

    def __init__(self, make: Callable[[int], T], *, start: int, stop: int, depth: int) -> None:
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self._make = make
        self._next = start
        self._stop = stop
        self._items: Iterator[Any] | None = None
        if depth > 0 and start <= stop:
            loader = DataLoader(
                _Items(make, start, stop),
                batch_size=None,
                num_workers=1,
                prefetch_factor=depth,
                multiprocessing_context=_worker_context(),
                worker_init_fn=_set_up_worker,
            )
            self._items = iter(loader)

    def get(self, index: int) -> T:
        """Item ``index`` (the one after the last returned)."""
        if index != self._next:
            raise ValueError(f"items are handed out in order: expected {self._next}, got {index}")
        if index > self._stop:
            raise IndexError(f"item {index} is past the last one, {self._stop}")
        self._next += 1
        if self._items is None:
            with torch_threads(1):  # as the worker makes them
                return self._make(index)
        item = next(self._items)
        if isinstance(item, _Failed):
            raise item.error
        return item  # type: ignore[no-any-return]  # make's item, through the worker

    def close(self) -> None:
        """Stop the worker (an item being made is dropped)."""
        # The DataLoader iterator's last reference: dropping it stops and joins its worker.
        self._items = None

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["Prefetch"]
