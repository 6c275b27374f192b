"""Devices and numeric precision, decided in one place for training, prediction and the benchmarks.

- :func:`resolve_device`: ``cpu``, ``cuda`` or ``cuda:N`` checked against this machine (a missing GPU or
  an index beyond the GPUs present is a user error, for ``train`` and ``predict`` alike);
- :func:`amp_dtype`: the mixed-precision dtype for an ``--amp`` choice on a device;
- :func:`usable_cores`: the CPU cores this process may run on (its affinity: ``taskset``, a cpuset);
- :func:`strip_wrapper_prefixes`: parameter names without the ``module.`` (DDP) and ``_orig_mod.``
  (``torch.compile``) prefixes that wrappers put in front of them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Literal, TypeVar

import torch

from multitalent.errors import UserInputError

AmpMode = Literal["auto", "bf16", "fp16", "off"]
AMP_MODES: tuple[str, ...] = ("auto", "bf16", "fp16", "off")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

V = TypeVar("V")


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity (``taskset``, a container's cpuset) where the system
    reports one, else every core."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def resolve_device(name: str | torch.device) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; a CUDA device that is not there is a user error."""
    text = str(name)
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise UserInputError(f"--device {text!r}: not a device; use cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(f"--device {text}: CUDA is not available on this machine; use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserInputError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here.")
    elif device.type != "cpu":
        raise UserInputError(f"--device {text}: use cpu, cuda or cuda:N.")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp mode`` on ``device``. CUDA: ``auto`` is bfloat16 where the GPU supports it,
    else float16. CPU: bfloat16 only when asked (``bf16``: about 2.2x faster training steps on a CPU with
    AMX, docs/benchmarks.md), float32 for ``auto`` and ``off``; float16 is refused (slow and without a gradient
    scaler there)."""
    if mode not in AMP_MODES:
        raise UserInputError(f"--amp {mode}: choose one of {', '.join(AMP_MODES)}.")
    if device.type != "cuda":
        if mode == "fp16":
            raise UserInputError("--amp fp16 needs a CUDA device; on the CPU use --amp bf16 or off.")
        return torch.bfloat16 if mode == "bf16" else None
    if mode == "off":
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``, or nothing when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def strip_wrapper_prefixes(key: str) -> str:
    """A parameter name without any DDP / ``torch.compile`` wrapper prefixes."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def strip_wrappers(state: Mapping[str, V]) -> dict[str, V]:
    """A state dict with every key passed through :func:`strip_wrapper_prefixes`."""
    return {strip_wrapper_prefixes(k): v for k, v in state.items()}
