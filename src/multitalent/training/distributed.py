"""torchrun / DistributedDataParallel set-up: rank, world size, process group, gradient-keeping sums.

One process per GPU (or per CPU worker with gloo). Each process builds its own share of the global batch
(:class:`multitalent.data.loader.PatchBatches`), so no data is sent between processes; only gradients
(DDP) and the per-head Dice sums (:func:`all_reduce_sum`) are.

A process that is killed (the kernel's out-of-memory killer sends SIGKILL; a crash in native code) prints
nothing. The others then fail in their next collective, or torchrun ends them with SIGTERM; either way they
stop with :class:`RankFailure`, whose one-line message names the dead rank (docs/reliability.md).
"""

from __future__ import annotations

import atexit
import datetime
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from multitalent.errors import TrainingError, UserInputError
from multitalent.procfs import stat_fields

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
        raise UserInputError(f"${TIMEOUT_ENV}={raw!r}: give the collective timeout in seconds (> 0).")
    return value


def init_distributed(device: str, timeout_s: float | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (no-op for one process).

    Uses nccl on CUDA and gloo on CPU. ``timeout_s`` (default :func:`collective_timeout_s`) bounds every
    collective, so a rank that died or hangs ends the others with an error instead of a hang. Under torchrun
    a rank that exits with an error makes the agent stop the other ranks at once (it polls every 0.1 s).
    Every rank records the others' process ids, so that a rank that dies without a word is named
    (:class:`RankFailure`).
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
    info = DistInfo(rank, world, local)
    _watch_peers(info)
    return info


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
    """Leave the process group. Called while an error ends the run (the loop's ``finally``), it raises
    :class:`RankFailure` instead when that error came from another training process dying without a word."""
    if not (info.enabled and dist.is_initialized()):
        return
    error = sys.exc_info()[1]
    if error is None:  # a normal end: no rank tears the group (and rank 0 the store) down under another
        try:
            dist.barrier()
        except Exception as e:  # noqa: BLE001 - a peer is gone: reported below
            error = e
    failure = explain_failure(error, info)
    _mark_ended(info.rank)
    _unwatch(reporting=failure is not None)
    dist.destroy_process_group()
    if failure is not None:
        raise failure from error
    if error is not None and sys.exc_info()[1] is None:
        raise error


# ------------------------------------------------------------------------------------ a rank that died
# When a rank is killed (SIGKILL from the out-of-memory killer, a crash in native code), nobody prints why:
# torchrun's report lists its exit code among pages of traceback, and the surviving ranks either fail in a
# collective with a message that names no rank ("Connection closed by peer") or are ended by torchrun with
# SIGTERM and print nothing. So every rank records the host, process id and start time of every other rank
# at start-up, and a rank that ends in an orderly way (any Python exit, including an error it reports
# itself, or a SIGTERM it received) marks that in the job's store. A survivor then tells a peer that
# vanished unmarked -- killed -- from one that ended on purpose, and names it.

#: the store key prefix marking a rank that ended in an orderly way
_ENDED_KEY = "multitalent/ended/"


class RankFailure(TrainingError):
    """Another training process of the job ended without an error of its own (killed by a signal, e.g. by
    the kernel's out-of-memory killer); the message names it. The CLI prints it in one line (exit code 1)."""


@dataclass(frozen=True)
class _Peer:
    rank: int
    host: str  # host name and PID namespace: where ``pid`` means this process
    pid: int
    start: str | None  # start time in clock ticks after boot: tells a reused pid apart


# "reported": the RankFailure this process raised, if any
_state: dict = {"info": None, "peers": [], "owner": None, "reported": None, "sigterm": None}


def _here() -> str:
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return f"{socket.gethostname()}/{ns}"


def _start_time(pid: int) -> str | None:
    fields = stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _gone(peer: _Peer) -> tuple[bool, int | None]:
    """(whether the peer's process has ended, the signal that ended it where the kernel still tells)."""
    fields = stat_fields(peer.pid)
    if fields is None or (peer.start is not None and len(fields) > 19 and fields[19] != peer.start):
        return True, None  # reaped by torchrun already (or the pid was reused)
    if fields[0] in ("Z", "X"):  # a zombie: its wait status (field 52, Linux >= 3.5) is still there
        status = int(fields[49]) if len(fields) > 49 and fields[49].lstrip("-").isdigit() else 0
        return True, (status & 0x7F) or None
    return False, None


def _store():
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no process group (any more): nothing to mark
        return None


def _key(rank: int) -> str:
    return f"{_ENDED_KEY}{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{rank}"


def _mark_ended(rank: int) -> None:
    store = _store()
    if store is not None:
        try:
            store.set(_key(rank), "1")
        except Exception:  # noqa: BLE001 - the store's host is gone: the job is ending anyway
            pass


def _marked_ended(rank: int) -> bool:
    store = _store()
    if store is None:
        return False
    try:
        return bool(store.check([_key(rank)]))
    except Exception:  # noqa: BLE001
        return False


def failed_ranks(wait_s: float = 0.0) -> list[tuple[int, int, int | None]]:
    """The ranks on this node whose process ended without marking it: ``(rank, pid, signal or None)``.

    ``wait_s``: keep looking that long (a collective can fail a moment before the dead process is gone).
    Ranks on other nodes are not seen here; their node's torchrun names them.
    """
    peers: list[_Peer] = _state["peers"]
    here, me = _here(), os.getpid()
    deadline = time.monotonic() + wait_s
    while True:
        dead = []
        for p in peers:
            if p.host != here or p.pid == me:
                continue
            ended, sig = _gone(p)
            if ended and not _marked_ended(p.rank):
                dead.append((p.rank, p.pid, sig))
        if dead or time.monotonic() >= deadline:
            return dead
        time.sleep(0.05)


def failure_message(dead: list[tuple[int, int, int | None]], rank: int) -> str:
    """One line naming the dead ranks, what probably killed them and what to do."""
    names = " and ".join(f"rank {r} (pid {pid})" for r, pid, _ in dead)
    sigs = sorted({s for _, _, s in dead if s})
    how = " and ".join(f"killed by signal {s} ({signal.Signals(s).name})" for s in sigs) or "killed by a signal?"
    if not sigs or signal.SIGKILL in sigs:
        how += " SIGKILL usually comes from the kernel's out-of-memory killer"
    return (f"training process {names} ended unexpectedly without an error message ({how}); rank {rank} stops "
            f"too. See `dmesg` or `journalctl -k` for an out-of-memory kill and torchrun's report for the exit "
            f"code; continue with --resume, with less memory per process if it ran out (--batch-size, "
            f"--num-workers).")


def explain_failure(exc: BaseException | None, info: DistInfo | None = None) -> RankFailure | None:
    """The :class:`RankFailure` behind ``exc`` when it ended the run because a peer died without a word
    (a collective error, gloo's "Connection closed by peer", a timeout), else None."""
    info = info or _state["info"]
    if exc is None or info is None or not info.enabled or isinstance(exc, TrainingError):
        return None
    if _state["reported"] is not None:
        # the SIGTERM handler raised it, and an error of the shutdown took its place (a loader worker
        # that torchrun's SIGTERM to the process group ended: "DataLoader worker ... is killed by signal")
        return RankFailure(str(_state["reported"]))
    if not isinstance(exc, (RuntimeError, OSError)):
        return None
    dead = failed_ranks(wait_s=2.0)
    if not dead:
        return None
    _state["reported"] = failure = RankFailure(failure_message(dead, info.rank))
    return failure


def _on_sigterm(signum: int, frame: object) -> None:
    """torchrun ends the surviving ranks with SIGTERM when one died: name the dead one instead of dying
    silently. Any other SIGTERM (the job was stopped) keeps its default effect."""
    info: DistInfo | None = _state["info"]
    mine = os.getpid() == _state["owner"]
    if mine and _state["reported"] is not None:  # already stopping with a RankFailure: let it finish (torchrun
        return  # waits 30 s); also after cleanup, which may run before torchrun's SIGTERM arrives
    if not mine or info is None:  # a forked loader worker
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _mark_ended(info.rank)
    dead = failed_ranks()
    if dead:
        _state["reported"] = failure = RankFailure(failure_message(dead, info.rank))
        raise failure
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _at_exit() -> None:
    info = _state["info"]
    if info is not None and dist.is_initialized():
        _mark_ended(info.rank)


def _watch_peers(info: DistInfo) -> None:
    """Record every rank's host, pid and start time; mark an orderly exit; name a killed peer on SIGTERM."""
    if not info.enabled or _state["info"] is not None:
        return
    me = _Peer(info.rank, _here(), os.getpid(), _start_time(os.getpid()))
    peers: list = [None] * info.world_size
    dist.all_gather_object(peers, me)
    _state.update(info=info, peers=list(peers), owner=os.getpid(), reported=None)
    atexit.register(_at_exit)
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        if _state["sigterm"] is None:  # else still the one before a reported failure's quiet handler
            _state["sigterm"] = previous


def _unwatch(reporting: bool = False) -> None:
    """Stop watching the peers. ``reporting``: a :class:`RankFailure` is on its way to the user; torchrun's
    SIGTERM, which follows a dead rank within moments, must not end this process before it is printed, so
    the handler stays and ignores it (torchrun still sends SIGKILL after 30 s)."""
    atexit.unregister(_at_exit)
    if reporting:
        _state.update(info=None, peers=[])
        return
    if _state["sigterm"] is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _state["sigterm"])
    _state.update(info=None, peers=[], owner=None, sigterm=None)
