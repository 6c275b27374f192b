"""Other processes' state from Linux's ``/proc`` (no torch): the training processes watching their peers
(:mod:`multitalent.training.distributed`), and worker processes that end with the process that started them
(the loader workers of :mod:`multitalent.data.loader`, the reproduction's training workers)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path


def stat_fields(pid: int) -> list[str] | None:
    """Fields 3... of ``/proc/PID/stat`` (state first), or None when there is no such process (or no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie, dead but not yet reaped, has)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


#: prctl(2) option: the signal a process receives when its parent dies
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """End this worker process (SIGKILL) as soon as the process ``parent`` that started it dies, however it dies.

    A parent killed outright cannot stop its workers, and an orphaned worker goes on with whatever it was doing.
    Call it at the worker's start. Linux only, and only for a worker started by ``parent`` itself (a fork, or
    multiprocessing's spawn), not one started by a forkserver; elsewhere it does nothing. Writes that must survive
    the kill (checkpoints) have to be atomic."""
    if not sys.platform.startswith("linux"):
        return
    if os.getppid() != parent:
        if not running(parent):  # it died while this worker was starting
            os.kill(os.getpid(), signal.SIGKILL)
        return  # started by a forkserver: its parent is not ``parent``
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        zero = ctypes.c_ulong(0)  # prctl is variadic: every argument as the unsigned long the kernel reads
        if libc.prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL), zero, zero, zero) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died between the check above and the request
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["stat_fields", "running", "die_with_parent"]
