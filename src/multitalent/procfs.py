"""Other processes' state from Linux's ``/proc`` (no torch): the training processes watching their peers
(:mod:`multitalent.training.distributed`) and loader workers watching their training process
(:mod:`multitalent.data.loader`)."""

from __future__ import annotations

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


__all__ = ["stat_fields", "running"]
