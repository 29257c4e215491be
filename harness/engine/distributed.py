"""Data-parallel training over `torch.distributed`, launched by `torchrun`.

`torchrun --nproc_per_node G ...` sets RANK, WORLD_SIZE and LOCAL_RANK; `setup(device)` reads
them and joins the process group: NCCL on GPUs (rank r uses cuda:LOCAL_RANK), gloo on CPU (used
by the tests, two processes on one machine). Without those variables (or WORLD_SIZE=1) training
runs in one process and every helper here is a no-op, so the same code path serves both.

The training batch size is the GLOBAL batch: each of the W ranks takes its contiguous 1/W slice
of every global batch, and DistributedDataParallel averages gradients, so W ranks compute the same
update as one process on the whole batch (up to floating-point summation order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from harness.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank, world size and local rank from the torchrun environment (defaults: one process)."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as error:
        raise UserError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({error}); launch "
                        f"multi-process training with torchrun") from error
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def setup(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun; returns this process's place in it.

    An already initialised group (e.g. by a caller or a test) is used as it is. The group is left
    initialised on return: the caller owns it (`teardown()` when done).
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                        local_rank=env_info().local_rank)
    info = env_info()
    if not info.enabled:
        return info
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run one "
                        "process or install a build with distributed support")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend)
    return info


def current() -> DistInfo:
    """This process's place in the initialised process group; one process when there is none
    (evaluation shards over the ranks of a group that the runner or trainer has set up)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                        local_rank=env_info().local_rank)
    return DistInfo()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place sum over ranks (identity in one process)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's value of a small picklable object, on every rank."""
    if not info.enabled:
        return obj
    holder = [obj if info.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's value of a small picklable object, in rank order."""
    if not info.enabled:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def local_slice(global_batch: int, info: DistInfo) -> slice:
    """This rank's contiguous share of a global batch (the batch must divide evenly)."""
    assert global_batch % info.world_size == 0, (global_batch, info.world_size)
    per_rank = global_batch // info.world_size
    return slice(info.rank * per_rank, (info.rank + 1) * per_rank)
