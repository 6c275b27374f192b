"""torchrun / DistributedDataParallel set-up: rank, world size, process group, gradient-keeping sums."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def init_distributed(device: str, timeout_s: int = 600) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (no-op for one process).

    Uses nccl on CUDA and gloo on CPU; ``timeout_s`` bounds every collective so that a failed rank ends
    the others with an error instead of a hang.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Differentiable sum across ranks: the gradient flows back to every rank's contribution."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t, op=dist.ReduceOp.SUM)


def reduce_detached(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of a metric tensor over ranks (no gradient)."""
    if info.enabled:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
