"""One run across several processes: data-parallel training under ``torchrun`` (gloo on CPU, NCCL on GPUs).

    python -m torch.distributed.run --nproc-per-node N -m tiedlab.paradigms.cli paradigm=vision ...

The scheme is exact, not an approximation: every rank draws the same global batch from the epoch's generator
(``DataBundle.train_batches``), takes its contiguous 1/N of it (``shard``), and the gradients are averaged over
the ranks after backward (``average_gradients``, a plain all-reduce over ``p.grad``: no DistributedDataParallel
wrapper, so the block's forward hooks, the DEQ's custom backward and rank 0 evaluating alone need no care). A
paradigm may train this way only when its loss is the mean of per-sample losses over a batch of tensors
(``Paradigm.data_parallel``): then the mean of the slices' gradients is the global batch's, and N processes
compute what one process computes on the same global batch, up to the order of float sums.

Rank 0 holds ``run.lock`` and writes the run directory (config, history, metrics, checkpoints, tracker) and
evaluates alone; the other ranks never write and wait for it at their next collective. Every rank resumes from
rank 0's checkpoint, which also holds every rank's RNG state. The logged loss, metrics and block statistics are
means over the ranks; stopping (a signal on any rank, rank 0's time limit, a non-finite mean loss) is decided
from values all ranks share, so no rank is left waiting. Without ``torchrun`` (``WORLD_SIZE`` unset or 1)
nothing here does anything.
"""

from __future__ import annotations

import atexit
import datetime
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn, TypeVar

import torch
from torch import nn

T = TypeVar("T")
# Rank 0 evaluates alone while the others wait at their next collective: long evaluations must not time out.
TIMEOUT = datetime.timedelta(minutes=60)


class SameOnEveryRank(ValueError):
    """An error every rank raises alike (a config check, or rank 0's error passed on): only rank 0 prints it."""


@dataclass
class World:
    """This process's place among the processes that train one run (``torchrun``'s environment)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def parallel(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ set-up
    def join(self, device: torch.device) -> torch.device:
        """Join the process group (NCCL on CUDA, gloo on CPU; once per process, left at exit) and return the
        device this rank trains on (``cuda:LOCAL_RANK`` for a CUDA run)."""
        if not self.parallel:
            self.device = device
            return device
        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise SameOnEveryRank(f"torchrun started a process with LOCAL_RANK={self.local_rank} but this node "
                                      f"has {torch.cuda.device_count()} GPU(s); use --nproc-per-node <= that")
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
            atexit.register(_leave)
            _JOINED.append(True)
        if (dist.get_rank(), dist.get_world_size()) != (self.rank, self.size):
            raise RuntimeError(f"the process group has rank {dist.get_rank()} of {dist.get_world_size()}, the "
                               f"environment says {self.rank} of {self.size}")
        return device

    def main_first(self, fn: Callable[[], T], then_others: bool = True) -> T:
        """``fn()`` on rank 0, then (``then_others``) on the other ranks, rank 0 waiting meanwhile so that they
        read what it left and nothing it writes after. An error on rank 0 is raised on every rank (as
        ``SameOnEveryRank`` on the others); an error on another rank is raised there, and on the others as a
        ``SameOnEveryRank`` naming it. Returns None on the other ranks when not ``then_others``."""
        if not self.parallel:
            return fn()
        result: Any = None
        error: BaseException | None = None
        if self.is_main:
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 - passed on to the other ranks, then raised here
                error = err
        message = self._from_main(None if error is None else str(error))
        if error is not None:
            raise error
        if message is not None:
            raise SameOnEveryRank(message)
        if not then_others:
            return result
        if not self.is_main:
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001
                error = err
        failures = [m for m in self._gather_objects(None if error is None else f"rank {self.rank}: {error}") if m]
        if error is not None:
            raise error
        if failures:
            raise SameOnEveryRank(f"another process of this run failed to start ({'; '.join(failures)})")
        return result

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (they were built from the same seed: this makes sure)."""
        if not self.parallel:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, 0)

    # ------------------------------------------------------------------ training step
    def shard(self, batch: Any) -> Any:
        """This rank's contiguous 1/N of a global batch: a tensor, or a tuple, list or dict of tensors, all
        split along dim 0.

        Raises:
            ValueError: naming the batch's type, or its size when it does not split evenly.
        """
        if not self.parallel:
            return batch
        if isinstance(batch, torch.Tensor):
            n = batch.shape[0] if batch.dim() else 0
            if n == 0 or n % self.size:
                raise ValueError(f"a training batch of {n} samples does not split evenly over {self.size} processes")
            step = n // self.size
            return batch[self.rank * step:(self.rank + 1) * step]
        if isinstance(batch, (tuple, list)):
            sizes = {t.shape[0] for t in batch if isinstance(t, torch.Tensor) and t.dim()}
            if len(sizes) != 1:
                raise ValueError(f"a training batch of {len(batch)} items has leading sizes {sorted(sizes)}; data "
                                 "parallelism needs tensors that all split along one batch dimension")
            return type(batch)(self.shard(t) for t in batch)
        if isinstance(batch, dict):
            return {k: self.shard(v) for k, v in batch.items()}
        raise ValueError(f"a training batch of type {type(batch).__name__} cannot be split over processes; data "
                         "parallelism needs a tensor, or a tuple, list or dict of tensors")

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar tensor over the ranks (its own value in one process)."""
        if not self.parallel:
            return value.item()
        import torch.distributed as dist

        total = value.detach().to(self.device, torch.float64).reshape(1).clone()
        dist.all_reduce(total)
        return total.item() / self.size

    def average_gradients(self, module: nn.Module) -> None:
        """Every parameter's ``grad`` replaced by its mean over the ranks (one all-reduce per dtype)."""
        if not self.parallel:
            return
        import torch.distributed as dist

        grads = [p.grad for p in module.parameters() if p.grad is not None]
        for dtype in sorted({g.dtype for g in grads}, key=str):
            group = [g for g in grads if g.dtype == dtype]
            flat = torch.cat([g.reshape(-1) for g in group])
            dist.all_reduce(flat)
            flat /= self.size
            offset = 0
            for g in group:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def agree(self, values: dict[str, float], signal_name: str, train_s: float) -> tuple[dict[str, float], str, float]:
        """What every rank holds after a step: the mean of each of ``values`` over the ranks (the same keys on
        every rank), the first stop signal any rank received ("" for none) and rank 0's training time (which
        its time limit and its records use)."""
        if not self.parallel:
            return values, signal_name, train_s
        import torch.distributed as dist

        keys = sorted(values)
        number = int(signal.Signals[signal_name]) if signal_name else 0
        mine = torch.tensor([*(values[k] for k in keys), number, train_s], dtype=torch.float64, device=self.device)
        rows = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(rows, mine)
        table = torch.stack(rows).cpu()
        means = {k: float(v) for k, v in zip(keys, table[:, :len(keys)].mean(0).tolist())}
        numbers = [int(n) for n in table[:, len(keys)].tolist() if n]
        return means, signal.Signals(numbers[0]).name if numbers else "", float(table[0, -1])

    # ------------------------------------------------------------------ checkpoints
    def gather_rng(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """Every rank's RNG state (``rundir.rng_state``), in rank order (all_gather: NCCL has no gather of objects)."""
        if not self.parallel:
            return [state]
        return self._gather_objects(state)

    # ------------------------------------------------------------------ helpers
    def _from_main(self, obj: Any) -> Any:
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _gather_objects(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


_JOINED: list[bool] = []  # one entry once this process joined a process group (``World.join``)


def joined() -> bool:
    """Whether this process joined a process group: its exit then goes through ``_leave``'s barrier, so every
    rank has done its work (printed, written) before any leaves, and may leave through ``exit_process``."""
    return bool(_JOINED)


def _leave() -> None:
    """Tear the process group down together: without the barrier a rank could destroy its gloo context while a peer
    still finishes its last collective, and the peer aborts at exit ("terminate called without an active
    exception", seen in about one run in five of the two-process test). Run at exit (registered by ``join``);
    the command line's workers then leave through ``exit_process``."""
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def exit_process(code: int | str | None) -> NoReturn:
    """End a process of a multi-process run (one that ``joined``) with ``code`` (``SystemExit``'s: None is 0, a
    message is printed and is 1): the exit handlers run (``_leave``'s barrier and ``destroy_process_group``,
    logging's flush), then the process exits at once, without the interpreter's teardown. After a clean
    ``destroy_process_group`` that teardown still aborted a worker now and then ("terminate called without an
    active exception", SIGABRT after the run had completed: 2 of 52 two-process toy runs beside two busy
    processes, 0 of 80 leaving this way), and torchrun then reports the whole run as failed."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    atexit._run_exitfuncs()  # what a normal exit runs first (CPython's undocumented but long-standing function)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


def world_from_env() -> World:
    """This process's rank, world size and local rank from ``torchrun``'s ``RANK``, ``WORLD_SIZE`` and
    ``LOCAL_RANK`` (one process of one when they are unset)."""
    def read(name: str, default: int) -> int:
        raw = os.environ.get(name, "")
        try:
            return int(raw) if raw else default
        except ValueError:
            raise SameOnEveryRank(f"{name}={raw!r} must be an integer (it is set by torchrun)") from None

    return World(rank=read("RANK", 0), size=read("WORLD_SIZE", 1), local_rank=read("LOCAL_RANK", 0))


def check_supported(world: World, paradigm_name: str, batch_size: int) -> None:
    """Refuse data-parallel training of a paradigm that does not declare it (``Paradigm.data_parallel``) and a
    global batch that does not split evenly over the processes.

    Raises:
        SameOnEveryRank: one line naming the paradigm and why, or the batch size and the world size.
    """
    if not world.parallel:
        return
    from .base import get_paradigm

    paradigm = get_paradigm(paradigm_name)
    allowed = getattr(paradigm, "data_parallel", False)
    if allowed is not True:
        why = allowed if isinstance(allowed, str) and allowed else (
            "its adapter does not declare that its loss is a per-sample mean over a batch of tensors "
            "(Paradigm.data_parallel)")
        raise SameOnEveryRank(f"paradigm {paradigm.name!r} cannot train data-parallel over {world.size} processes: "
                              f"{why}; run it in one process")
    if batch_size % world.size:
        raise SameOnEveryRank(f"train.batch_size={batch_size} does not split evenly over {world.size} processes "
                              f"(WORLD_SIZE={world.size}); use a multiple of {world.size}")


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own random stream (dropout masks, Jacobian probes) in a run seeded ``seed``;
    rank 0 keeps the run's stream."""
    return seed if rank == 0 else seed * 1_000_003 + 7919 * rank
