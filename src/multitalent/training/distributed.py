"""torchrun / DistributedDataParallel set-up: rank, world size, process group, gradient-keeping sums.

One process per GPU (or per CPU worker with gloo). Each process builds its own share of the global batch
(:class:`multitalent.data.loader.PatchBatches`), so no data is sent between processes; only gradients
(DDP) and the per-head Dice sums (:func:`all_reduce_sum`) are.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

#: environment variable that overrides the collective timeout (seconds)
TIMEOUT_ENV = "MULTITALENT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
#: timeout of the one barrier after set-up, when rank 0 may still be unpacking case files
SETUP_TIMEOUT_S = 4 * 3600.0


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


def collective_timeout_s() -> float:
    """The timeout of every collective: ``$MULTITALENT_DIST_TIMEOUT`` seconds, 600 by default."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if value <= 0:
        from multitalent.errors import UserInputError

        raise UserInputError(f"${TIMEOUT_ENV}={raw!r}: give the collective timeout in seconds (> 0).")
    return value


def init_distributed(device: str, timeout_s: float | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (no-op for one process).

    Uses nccl on CUDA and gloo on CPU. ``timeout_s`` (default :func:`collective_timeout_s`) bounds every
    collective, so a rank that died or hangs ends the others with an error instead of a hang. Under torchrun
    a rank that exits with an error makes the agent stop the other ranks at once (it polls every 0.1 s).
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
        timeout = datetime.timedelta(seconds=timeout_s if timeout_s is not None else collective_timeout_s())
        dist.init_process_group(backend=backend, timeout=timeout)
    return DistInfo(rank, world, local)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is again the sum over ranks of the incoming gradients.

    Written here because ``torch.distributed.nn.functional.all_reduce`` is deprecated and the functional
    collectives that replace it offer no differentiable all-reduce.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Differentiable sum across ranks: the gradient flows back to every rank's contribution.

    With a loss per rank of ``world_size * local_terms - f(all_reduce_sum(sums))``, DDP's averaging of the
    gradients gives exactly the gradient of one process that sees the global batch.
    """
    return _AllReduceSum.apply(t)


def reduce_detached(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of a metric tensor over ranks (no gradient)."""
    if info.enabled:
        t = t.detach().clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class _KeepOutputs(torch.nn.Module):
    """Returns only the first ``n`` outputs of a deep-supervision network (the ones the loss uses)."""

    def __init__(self, model: torch.nn.Module, n: int) -> None:
        super().__init__()
        self.model = model
        self.n = n

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x)[: self.n])


def wrap_ddp(model: torch.nn.Module, info: DistInfo, device: torch.device,
             keep_outputs: int | None = None) -> torch.nn.Module:
    """``model`` in DistributedDataParallel (``model`` itself for one process).

    DDP synchronises only the parameters that require a gradient when it is built: wrap again whenever that
    set changes (the fine-tuning phases). ``keep_outputs``: forward returns only that many (deep-supervision)
    outputs; the parameters that feed only the dropped ones (the zero-weighted lowest output) get no
    gradient, so DDP is told to look for unused parameters, and it finds exactly those.
    """
    if not info.enabled:
        return model
    if keep_outputs is not None:
        model = _KeepOutputs(model, keep_outputs)
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=keep_outputs is not None)


def setup_barrier(info: DistInfo, timeout_s: float = SETUP_TIMEOUT_S) -> None:
    """Wait for every rank, allowing ``timeout_s`` (long: rank 0 may be unpacking a large collection).

    Runs on a separate gloo group with its own timeout, so the short timeout of the training collectives
    stays in force; ``monitored_barrier`` names the ranks that did not arrive.
    """
    if not info.enabled:
        return
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
    try:
        dist.monitored_barrier(group=group, timeout=datetime.timedelta(seconds=timeout_s))
    finally:
        dist.destroy_process_group(group)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
