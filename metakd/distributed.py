"""Data-parallel meta-training on torch.distributed, without DistributedDataParallel.

DDP's gradient hooks do not support double backward or ``torch.func`` transforms, which the
meta-learners use, so the few collectives meta-training needs are explicit here:

* rank 0 broadcasts the setup (config, resume state) and the initial meta-parameters;
* every iteration one all-reduce sums the ranks' meta-gradients (each the mean over an equal
  share of the meta-batch, so the sum over ranks divided by the world size is the mean over the
  whole meta-batch), the per-rank metrics, a failure flag per rank and a stop request (SIGINT or
  SIGTERM on any rank stops every rank after the same iteration);
* a final all-reduce of the failure flags ends every rank together.

A rank that raises still joins the next all-reduce with its flag set, so every rank stops there
with an error naming the failed rank and its error; a rank that dies outright breaks the
connection (gloo and NCCL report it at once), and one that hangs trips the process group's
timeout. Either way no rank waits forever.

Launch with torchrun, which sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``::

    torchrun --standalone --nproc_per_node 4 -m metakd meta-train ...
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from metakd.errors import ConfigError, MetakdError

#: Seconds a rank waits for the others in a collective before it gives up (the default of
#: ``metakd meta-train --dist-timeout``).
DEFAULT_TIMEOUT = 600.0


class DistributedError(MetakdError):
    """Another rank failed, died or timed out: this rank stops too."""


@dataclass(frozen=True)
class Launch:
    """This process's place in a torch.distributed job, as the launcher set it."""

    rank: int
    world_size: int
    local_rank: int


def launch_from_env(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch torchrun describes in the environment, or ``None`` for a single process
    (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``).

    Raises:
        ConfigError: ``WORLD_SIZE``, ``RANK`` or ``LOCAL_RANK`` is malformed or out of range.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    values: dict[str, int] = {}
    for name, default in (("WORLD_SIZE", None), ("RANK", None), ("LOCAL_RANK", "0")):
        text = env.get(name, default)
        if text is None or not text.strip().isdigit():
            raise ConfigError(f"environment variable {name}={text!r} is not a non-negative integer")
        values[name] = int(text)
    world, rank = values["WORLD_SIZE"], values["RANK"]
    if world < 1 or rank >= world:
        raise ConfigError(f"environment variables RANK={rank} and WORLD_SIZE={world} do not fit")
    if world == 1:
        return None
    return Launch(rank=rank, world_size=world, local_rank=values["LOCAL_RANK"])


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


class ProcessGroup:
    """The collectives of data-parallel meta-training (see the module docstring).

    Args:
        launch: this process's rank and the world size.
        timeout: seconds a collective waits for the other ranks.

    Attributes:
        rank, world_size, local_rank: as launched.
    """

    def __init__(self, launch: Launch, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.rank = launch.rank
        self.world_size = launch.world_size
        self.local_rank = launch.local_rank
        self.timeout = timeout
        # CPU tensors go through gloo, CUDA tensors through NCCL, whatever device a run uses.
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        try:
            dist.init_process_group(
                backend,
                init_method="env://",
                rank=self.rank,
                world_size=self.world_size,
                timeout=datetime.timedelta(seconds=timeout),
            )
        except (RuntimeError, ValueError) as err:
            raise DistributedError(
                f"rank {self.rank}: could not join the torch.distributed job of "
                f"{self.world_size} ranks ({_first_line(err)})"
            ) from None

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes files, metrics and W&B (rank 0 only)."""
        return self.rank == 0

    def device(self, device: str) -> torch.device:
        """This rank's torch device for the config's ``device``: ``cuda`` becomes
        ``cuda:LOCAL_RANK`` (one GPU per rank), anything else is kept."""
        resolved = torch.device(device)
        if resolved.type == "cuda" and resolved.index is None:
            resolved = torch.device("cuda", self.local_rank)
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        return resolved

    def close(self) -> None:
        """Leave the process group."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def _collective(self, what: str, run: Any) -> Any:
        """Run one collective; a broken connection or a timeout becomes one clear error."""
        try:
            return run()
        except (RuntimeError, ValueError) as err:  # gloo/NCCL errors are RuntimeErrors
            raise DistributedError(
                f"rank {self.rank}: lost contact with the other ranks during {what} (a rank "
                f"died, or hung past the {self.timeout:.0f} s timeout; see its log): "
                f"{_first_line(err)}"
            ) from None

    # -- setup ----------------------------------------------------------------------------------

    def share(self, payload: Any = None, *, error: BaseException | None = None) -> Any:
        """Rank 0 sends ``payload`` (or that it failed with ``error``); every rank returns it.

        Raises:
            DistributedError: on the other ranks, when rank 0 sent an error.
        """
        box: list[Any] = [None]
        if self.rank == 0:
            box = [{"error": _first_line(error)} if error is not None else {"payload": payload}]
        self._collective(
            "the setup", lambda: dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
        )
        message = box[0]
        assert isinstance(message, dict)
        if "error" in message:
            if self.rank == 0:
                return None
            raise DistributedError(f"rank {self.rank}: rank 0 could not start ({message['error']})")
        return message["payload"]

    def broadcast_(
        self, tensors: Sequence[Tensor], *, what: str = "the initial parameters"
    ) -> None:
        """Overwrite ``tensors`` in place with rank 0's (``what`` they are names them in errors)."""
        for tensor in tensors:
            self._collective(what, lambda t=tensor: dist.broadcast(t, src=0))

    # -- every iteration ------------------------------------------------------------------------

    def reduce_step(
        self,
        params: Sequence[Tensor],
        metrics: Tensor | None,
        *,
        n_metrics: int,
        error: BaseException | None,
        stop: bool,
        iteration: int,
    ) -> tuple[Tensor, bool]:
        """Average the ranks' meta-gradients (``params``' ``.grad``, in place) and ``metrics``.

        Args:
            params: the meta-parameters, in the same order on every rank; a ``None`` gradient
                stays ``None`` when it is ``None`` on every rank.
            metrics: this rank's ``n_metrics`` scalars (means over its share), or ``None`` when
                it failed before computing them.
            error: this rank's failure this iteration, if any.
            stop: whether this rank was asked to stop.
            iteration: for messages.

        Returns:
            ``(metrics averaged over ranks, whether any rank was asked to stop)``.

        Raises:
            DistributedError: another rank failed (this rank's own ``error`` is the caller's to
                raise).
        """
        device, dtype = params[0].device, params[0].dtype
        grads = [p.grad for p in params]
        flags = torch.zeros(self.world_size + 1, device=device, dtype=dtype)
        flags[self.rank] = float(error is not None)
        flags[-1] = float(stop)
        pieces = [
            (g if g is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
            for p, g in zip(params, grads, strict=True)
        ]
        has_grad = torch.tensor([g is not None for g in grads], device=device, dtype=dtype)
        local = metrics if metrics is not None else torch.zeros(n_metrics)
        buffer = torch.cat([*pieces, has_grad, local.to(device=device, dtype=dtype), flags])
        self._collective(
            f"the meta-gradient all-reduce of iteration {iteration}",
            lambda: dist.all_reduce(buffer, op=dist.ReduceOp.SUM),
        )
        flags = buffer[-(self.world_size + 1) :]
        self._raise_failures(flags[:-1], error, where=f"at iteration {iteration}")
        if error is not None:
            return local, False  # the caller raises its own error
        total = sum(piece.numel() for piece in pieces)
        present = buffer[total : total + len(params)].tolist()
        offset = 0
        for p, piece, has in zip(params, pieces, present, strict=True):
            summed = buffer[offset : offset + piece.numel()]
            offset += piece.numel()
            p.grad = (summed / self.world_size).view_as(p).to(p.dtype) if has > 0 else None
        start = total + len(params)
        return buffer[start : start + n_metrics] / self.world_size, bool(flags[-1] > 0)

    def finish(self, error: BaseException | None, *, what: str) -> None:
        """The last collective: every rank learns whether any failed in ``what``.

        Raises:
            DistributedError: another rank failed.
        """
        flags = torch.zeros(self.world_size)
        flags[self.rank] = float(error is not None)
        self._collective(what, lambda: dist.all_reduce(flags, op=dist.ReduceOp.SUM))
        self._raise_failures(flags, error, where=what)

    def _raise_failures(self, flags: Tensor, error: BaseException | None, *, where: str) -> None:
        """After a collective whose flags say some rank failed, share the errors' first lines
        (every rank saw the same flags, so every rank joins) and raise on the healthy ranks."""
        failed = [r for r, flag in enumerate(flags.tolist()) if flag > 0]
        if not failed:
            return
        messages: list[Any] = [None] * self.world_size
        own = None if error is None else _first_line(error)
        self._collective("reporting a failure", lambda: dist.all_gather_object(messages, own))
        if error is not None:
            return  # the caller raises its own error, with its traceback
        described = "; ".join(f"rank {r}: {messages[r] or 'failed'}" for r in failed)
        raise DistributedError(f"rank {self.rank} stops because {described} ({where})")


@contextlib.contextmanager
def process_group(
    launch: Launch | None, *, timeout: float = DEFAULT_TIMEOUT
) -> Iterator[ProcessGroup | None]:
    """Join the torch.distributed job ``launch`` describes for the duration of the block
    (``None`` for a single process: no group)."""
    if launch is None:
        yield None
        return
    group = ProcessGroup(launch, timeout=timeout)
    try:
        yield group
    finally:
        group.close()
