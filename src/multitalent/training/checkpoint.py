"""Checkpoints: one typed record (:class:`Checkpoint`) holding everything needed to resume training or
to predict, saved atomically (optionally in the background) and loaded with its format checked."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multitalent.errors import UserInputError, atomic_path

FORMAT_NAME = "multitalent-checkpoint"
FORMAT_VERSION = 2
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"


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
    """Write ``payload`` (a :meth:`Checkpoint.payload`; the format tag is added) to a temporary name,
    fsync, rename."""
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save({**payload, "format": FORMAT}, tmp)


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


@dataclass
class Checkpoint:
    """A training run's state at the end of an epoch.

    ``model_config``: :func:`multitalent.models.create_model` keyword arguments (``name`` + options);
    ``plans`` and ``heads``: the plans and head registry as dicts; ``config``: the run's training options
    (``TrainConfig`` / ``FinetuneConfig`` as a dict, stored once); ``run``: the rest of the run's record
    (batch size, processes, cases, phases, preprocessed folder, provenance); ``optimizer``, ``phase``,
    ``scaler`` and ``rng``: what an exact resume needs. ``path``: where it was loaded from (not saved).
    """

    model_config: dict
    state_dict: dict
    plans: dict
    heads: dict
    config: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    iteration: int = 0
    epoch: int = 0
    optimizer: dict | None = None
    phase: int = 0
    scaler: dict | None = None
    rng: dict | None = None
    path: str = ""

    def payload(self) -> dict[str, Any]:
        """What is written to disk (everything but ``path``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}

    def save(self, path: str | os.PathLike) -> None:
        save_checkpoint(path, self.payload())

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu",
             which: str = "final") -> Checkpoint:
        return load_checkpoint(path, map_location, which)


def _migrate(raw: dict, path: Path) -> dict:
    """The fields of a format-2 record from a file of any readable format version."""
    tag = raw.get("format") if isinstance(raw, dict) else None
    if not isinstance(tag, str) or not tag.startswith(FORMAT_NAME + "/"):
        raise UserInputError(f"{path}: not a multitalent checkpoint (no '{FORMAT_NAME}' tag).")
    version = tag.rsplit("/", 1)[1]
    if version == "1":  # the config was stored twice: as train_config and inside meta
        meta = dict(raw.get("meta") or {})
        config = raw.get("train_config") or meta.get("config") or {}
        meta.pop("config", None)
        raw = {**{k: v for k, v in raw.items() if k not in ("train_config", "meta")}, "config": config, "run": meta}
    elif version != str(FORMAT_VERSION):
        raise UserInputError(f"{path}: checkpoint format version {version}; this multitalent (format "
                             f"{FORMAT_VERSION}) reads versions 1-{FORMAT_VERSION}. Use the multitalent "
                             "version that wrote it.")
    for key in ("model_config", "state_dict", "plans", "heads"):
        if key not in raw:
            raise UserInputError(f"{path}: checkpoint lacks '{key}'; it is incomplete.")
    names = {f.name for f in fields(Checkpoint)}
    return {k: v for k, v in raw.items() if k in names}


def _checkpoint_file(path: Path, which: str) -> Path:
    """The checkpoint file of ``path`` (a file, or a run folder and ``which`` of its checkpoints)."""
    if which not in CHECKPOINT_CHOICES:
        raise UserInputError(f"--checkpoint {which}: choose one of {', '.join(CHECKPOINT_CHOICES)}.")
    if path.is_dir():
        names = ("checkpoint_final.pt", "checkpoint_latest.pt") if which == "final" else ("checkpoint_best.pt",)
        for name in names:
            if (path / name).is_file():
                return path / name
        raise UserInputError(f"{path}: no {' or '.join(names)} in this folder"
                             + (" (a run validated with --val-iterations 0 has none; use --checkpoint final)."
                                if which == "best" else "."))
    if not path.is_file():
        raise UserInputError(f"{path}: checkpoint not found.")
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    which: str = "final") -> Checkpoint:
    """Load and check a multitalent checkpoint; a foreign, truncated or newer file is a user error.

    For a run folder, ``which`` picks ``checkpoint_final.pt`` (falling back to ``checkpoint_latest.pt`` of an
    unfinished run) or ``checkpoint_best.pt`` (best moving average of the validation pseudo-Dice).
    """
    path = _checkpoint_file(Path(path), which)
    try:
        raw = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means a bad file
        raise UserInputError(f"{path}: cannot read the checkpoint (truncated or not a PyTorch file: "
                             f"{type(e).__name__}).") from None
    return Checkpoint(**_migrate(raw, path), path=str(path))
