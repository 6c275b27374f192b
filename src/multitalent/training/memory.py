"""Peak memory of one training step, estimated before the first step, so that a run that cannot fit stops
with a clear message instead of being killed by the kernel.

The model: ``peak = base + 16 B x parameters + a x feature-map elements + b x head-map elements`` (4 bytes
each), where the feature-map elements are ``batch x sum over stages of (features x voxels)`` and the head-map
elements ``batch x heads x voxels summed over the deep-supervision outputs``. ``a`` and ``b`` (per
architecture) were fitted to measured peaks (``benchmarks/memory_calibration.py``; the measurements and the
fit are in ``docs/benchmarks.md``): host RAM of one CPU training process. On CUDA the same activations are
scaled by the ratio measured on an H200 at the paper config (mixed precision halves them); that estimate is
rougher, so on CUDA a run is warned, never refused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from multitalent.errors import UserInputError

# fitted by benchmarks/memory_calibration.py on 2 CPU cores, torch 2.13 (see docs/benchmarks.md)
BASE_BYTES = 0.45e9  # python, torch and the loader's state
CALIBRATION = {  # arch -> (a, b): bytes per 4-byte element of the feature maps and of the head maps
    "plain_unet": (4.6, 2.9),
    "resenc_unet": (6.3, 2.9),
}
CUDA_SCALE = {"off": 1.0, "mixed": 0.5}  # H200, paper config: bf16/fp16 peaks are half of fp32 (19.3 vs 37.5 GB)
REFUSE_ABOVE = 1.0  # refuse when the estimate exceeds the memory available
WARN_ABOVE = 0.75  # warn from this share of it


@dataclass
class MemoryEstimate:
    bytes: float
    available: float | None
    where: str  # "host RAM" or "GPU memory"
    certain: bool

    @property
    def share(self) -> float | None:
        return None if not self.available else self.bytes / self.available


def _gb(x: float) -> str:
    return f"{x / 1e9:.1f} GB"


def step_elements(features: list[int], strides: list[list[int]], patch: list[int], batch: int, heads: int,
                  ds_levels: int) -> tuple[float, float]:
    """(feature-map elements, head-map elements) of one step."""
    voxels, feat = [], 0.0
    shape = [float(p) for p in patch]
    for f, s in zip(features, strides, strict=True):
        shape = [a / b for a, b in zip(shape, s, strict=True)]
        v = math.prod(shape)
        voxels.append(v)
        feat += f * v
    head = heads * sum(voxels[: max(1, ds_levels)])
    return batch * feat, batch * head


def estimate_step_memory(arch: str, n_params: int, features: list[int], strides: list[list[int]],
                         patch: list[int], batch: int, heads: int, ds_levels: int, device: str,
                         amp: str = "off") -> float:
    """Estimated peak bytes of one training step (per process)."""
    a, b = CALIBRATION.get(arch, CALIBRATION["resenc_unet"])
    feat, head = step_elements(features, strides, patch, batch, heads, ds_levels)
    activations = 4 * (a * feat + b * head)
    if device.startswith("cuda"):
        return 16 * n_params + CUDA_SCALE["mixed" if amp != "off" else "off"] * activations
    return BASE_BYTES + 16 * n_params + activations


def available_memory(device: str, processes_on_node: int = 1) -> float | None:
    """Bytes available to one training process: MemAvailable / processes on CPU, free GPU memory on CUDA."""
    if device.startswith("cuda"):
        import torch

        try:
            free, _ = torch.cuda.mem_get_info(torch.device(device))
        except (RuntimeError, AssertionError):
            return None
        return float(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024 / max(1, processes_on_node)
    except OSError:
        return None
    return None


def check_step_memory(model, arch: str, plans, batch: int, heads: int, ds_levels: int, device: str,
                      amp: str, processes_on_node: int = 1, override: float | None = None) -> MemoryEstimate:
    """Estimate one step's peak and compare it with what is available: raises ``UserInputError`` (exit code
    2) when a CPU run cannot fit, returns the estimate otherwise (the caller warns when it is close)."""
    if arch not in CALIBRATION:  # SwinUNETR: not calibrated
        return MemoryEstimate(0.0, None, "memory", certain=False)
    features = list(model.backbone.encoder.output_channels)
    strides = [list(s) for s in plans.topology.strides[: len(features)]]
    n_params = sum(p.numel() for p in model.parameters())
    est = estimate_step_memory(arch, n_params, features, strides, list(plans.patch_size), batch, heads,
                               ds_levels, device, amp)
    avail = override if override is not None else available_memory(device, processes_on_node)
    cuda = device.startswith("cuda")
    result = MemoryEstimate(est, avail, "GPU memory" if cuda else "host RAM", certain=not cuda)
    if avail and result.certain and est > REFUSE_ABOVE * avail:
        per = f" per process ({processes_on_node} on this node)" if processes_on_node > 1 else ""
        raise UserInputError(
            f"one training step needs about {_gb(est)} of {result.where}{per} but {_gb(avail)} is available "
            f"(patch {list(plans.patch_size)}, batch {batch}, {arch} with {n_params / 1e6:.1f} M parameters); "
            "use a smaller --batch-size, `multitalent preprocess --preset small`, fewer features "
            "(--base-features, --max-features), or a GPU (--device cuda).")
    return result


def processes_on_node() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
