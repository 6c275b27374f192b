"""Checkpoints: everything needed to resume training or to predict, written atomically."""

from __future__ import annotations

import os
import random
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


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and check a multitalent checkpoint; a foreign or truncated file is a user error."""
    path = Path(path)
    if path.is_dir():
        for name in ("checkpoint_final.pt", "checkpoint_latest.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise UserInputError(f"{path}: no checkpoint_final.pt or checkpoint_latest.pt in this folder.")
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
