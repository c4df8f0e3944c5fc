"""Multi-process training on `torch.distributed`: process-group setup from torchrun's environment,
the rank / world-size view the training loops use, and the few collectives they need.

Launch with `torchrun --nproc-per-node N -m sparsecircuits train ...` (or `train-dict`). torchrun
sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_from_env` starts the process
group from them (NCCL for CUDA devices, gloo for the CPU). Without them (or with WORLD_SIZE=1)
nothing here communicates and training is the single-process code path, unchanged. A process group
the caller started itself (e.g. a test that spawns workers) is used as it is.

The rules the training loops (`weight_sparse/run.py`, `dictionaries/train.py`) follow:
1. batch sizes in the configs are *global*; each rank takes its contiguous slice of the rows of the
   step's global batch (`DistContext.shard_rows`). Batches are a pure function of (seed, step), so
   the data position is the global step and a run can resume at another world size;
2. gradients are averaged across ranks (DDP for the transformer, `average_grads_` for dictionaries)
   before anything reads them, so every rank computes the same gradient rescaling, Adam update, top-k
   weight projection and weight decay: the replicas stay bitwise identical. `check_replicas`
   verifies it (at every checkpoint) rather than trusting it;
3. rank 0 alone writes files and reports progress; every rank waits at a barrier after a write.
Resuming and writing assume the run folder is on a filesystem every node sees.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job; the defaults describe a single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shard_rows(self, global_batch: int, field: str = "batch_size") -> slice:
        """This rank's rows of a global batch; the batch must split evenly over the ranks."""
        if global_batch % self.world_size:
            raise ValueError(
                f"{field} ({global_batch}) is the global batch and must be divisible by the number of "
                f"processes ({self.world_size})"
            )
        per = global_batch // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (any picklable object; in memory only, never from a file)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def agree(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only and hand its result to every rank; a ValueError it raises is
        raised on every rank (instead of leaving the others waiting in a collective)."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except ValueError as e:
                if not self.enabled:
                    raise
                error = str(e)
        result, error = self.broadcast((result, error))
        if error is not None:
            raise ValueError(error)
        return result  # type: ignore[return-value]

    def mean(self, values: Iterable[float]) -> list[float]:
        """Each value averaged over the ranks (float64 all-reduce)."""
        values = list(values)
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def any_(self, flags: Tensor) -> Tensor:
        """Element-wise OR of a boolean tensor over the ranks."""
        if not self.enabled:
            return flags
        t = flags.to(_comm_device(), torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.to(flags.device).bool()

    def gather_rows(self, x: Tensor) -> Tensor:
        """Concatenate every rank's `x` along dim 0, in rank order (equal shapes on every rank)."""
        if not self.enabled:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)


def _comm_device() -> torch.device:
    """Where small tensors must live for the process group's backend (NCCL needs CUDA)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def context() -> DistContext:
    """The running job: the initialised process group's view, or single-process."""
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        return DistContext(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))
    return DistContext()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: str = "auto") -> DistContext:
    """Start the process group from torchrun's variables if there are several processes and no group
    yet; `device` ("auto", "cpu", "cuda", ...) picks the backend: NCCL when it means CUDA, else gloo."""
    if dist.is_available() and dist.is_initialized():
        return context()
    if not launched_by_torchrun():
        return DistContext()
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return context()


def shutdown() -> None:
    """Destroy the process group if one is running (end of a torchrun'd command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def process_device(ctx: DistContext, device: torch.device) -> torch.device:
    """The device of this rank: with several processes, a bare "cuda" becomes cuda:LOCAL_RANK."""
    if not ctx.enabled or device.type != "cuda":
        return device
    if device.index is not None and os.environ.get("SPARSECIRCUITS_ALLOW_SHARED_GPU") != "1":
        raise ValueError(
            f"TrainConfig.device is {str(device)!r}, but with {ctx.world_size} processes each must take its "
            "own GPU: use 'auto' or 'cuda' (process i uses cuda:LOCAL_RANK)"
        )
    return torch.device("cuda", ctx.local_rank if device.index is None else device.index)


@torch.no_grad()
def average_grads_(ctx: DistContext, params: Iterable[Tensor]) -> None:
    """Average the gradients of `params` over the ranks in one coalesced all-reduce (what DDP does,
    for models whose step does not run through `forward`). A missing gradient counts as zero."""
    if not ctx.enabled:
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


@torch.no_grad()
def average_buffers_(ctx: DistContext, module: torch.nn.Module) -> None:
    """Average floating-point buffers (running statistics such as BatchTopK's threshold) over ranks."""
    if not ctx.enabled:
        return
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b /= ctx.world_size


@torch.no_grad()
def check_replicas(ctx: DistContext, tensors: dict[str, Tensor]) -> None:
    """Raise RuntimeError naming every tensor that is not identical on all ranks.

    Compares a fingerprint per tensor (sum, position-weighted sum, nonzero count, in float64), so a
    differing top-k mask or a drifted weight shows up without moving whole models between ranks.
    """
    if not ctx.enabled or not tensors:
        return
    rows = []
    for t in tensors.values():
        x = t.detach().reshape(-1).double()
        pos = torch.arange(1, x.numel() + 1, device=x.device, dtype=torch.float64)
        rows.append(torch.stack([x.sum(), (x * pos).sum(), (x != 0).sum().double()]))
    fp = torch.stack(rows).to(_comm_device())
    parts = [torch.empty_like(fp) for _ in range(ctx.world_size)]
    dist.all_gather(parts, fp)
    bad = sorted({name for other in parts for name, a, b in zip(tensors, parts[0], other) if not torch.equal(a, b)})
    if bad:
        raise RuntimeError(f"replicas diverged across ranks in: {', '.join(bad)}")
