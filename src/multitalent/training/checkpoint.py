"""Checkpoints: everything needed to resume training or to predict, written atomically."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from multitalent.errors import UserInputError, atomic_path

FORMAT = "multitalent-checkpoint/1"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` (with the format tag) to a temporary name, fsync, rename."""
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)


def _cpu_snapshot(obj: object) -> object:
    """``obj`` with every tensor in its dicts, lists and tuples copied to the CPU (training may go on
    changing the originals in place)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_cpu_snapshot(v) for v in obj)
    return obj


class BackgroundSaver:
    """Writes checkpoints in a background thread, so that training goes on while the file is written.

    :meth:`save` copies the payload's tensors to the CPU (a snapshot: the run keeps changing the weights)
    and returns; the thread then writes the file atomically with ``writer``. One write at a time: a new
    :meth:`save` first waits for the previous one. A failed write is raised by the next :meth:`save` or
    :meth:`wait`, so it stops the run at the next epoch end at the latest; the previous checkpoint is
    intact in the meantime (atomic rename).
    """

    def __init__(self, writer: Callable[[str | os.PathLike, dict], None] = save_checkpoint) -> None:
        self.writer = writer
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, path: str | os.PathLike, payload: dict,
             writer: Callable[[str | os.PathLike, dict], None] | None = None) -> None:
        self.wait()
        snapshot = _cpu_snapshot(payload)
        write = writer or self.writer

        def run() -> None:
            try:
                write(path, snapshot)
            except BaseException as e:  # noqa: BLE001 - handed to the training thread
                self._error = e

        self._thread = threading.Thread(target=run, name="checkpoint-writer")
        self._thread.start()

    def __enter__(self) -> BackgroundSaver:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.wait()
        else:  # the run failed: let the pending write finish, but report the run's own error
            try:
                self.wait()
            except Exception:  # noqa: BLE001, S110 - secondary to the error being raised
                pass

    def wait(self) -> None:
        """Block until the pending write is on disk; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


CHECKPOINT_CHOICES = ("final", "best")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    which: str = "final") -> dict:
    """Load and check a multitalent checkpoint; a foreign or truncated file is a user error.

    For a run folder, ``which`` picks ``checkpoint_final.pt`` (falling back to ``checkpoint_latest.pt`` of an
    unfinished run) or ``checkpoint_best.pt`` (best moving average of the validation pseudo-Dice).
    """
    path = Path(path)
    if which not in CHECKPOINT_CHOICES:
        raise UserInputError(f"--checkpoint {which}: choose one of {', '.join(CHECKPOINT_CHOICES)}.")
    if path.is_dir():
        names = ("checkpoint_final.pt", "checkpoint_latest.pt") if which == "final" else ("checkpoint_best.pt",)
        for name in names:
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise UserInputError(f"{path}: no {' or '.join(names)} in this folder"
                                 + (" (a run validated with --val-iterations 0 has none; use --checkpoint final)."
                                    if which == "best" else "."))
    if not path.is_file():
        raise UserInputError(f"{path}: checkpoint not found.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means a bad file
        raise UserInputError(f"{path}: cannot read the checkpoint (truncated or not a PyTorch file: "
                             f"{type(e).__name__}).") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserInputError(f"{path}: not a multitalent checkpoint (no '{FORMAT}' tag).")
    for key in ("model_config", "state_dict", "plans", "heads"):
        if key not in ckpt:
            raise UserInputError(f"{path}: checkpoint lacks '{key}'; it is incomplete.")
    ckpt["path"] = str(path)
    return ckpt
