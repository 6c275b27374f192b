"""Peak memory of one training step, estimated before the first step, so that a run that cannot fit stops at
once with the remedies instead of being killed by the kernel (or the GPU's allocator) minutes later.

The model (one training process, its share of the global batch ``B``)::

    peak = 16 B x parameters                              (weights, gradients, SGD momentum, one temporary)
         + a[arch] x B x sum over stages s of m_s x f_s x v_s    (feature maps saved for backward)
         + b_out x B x heads x sum over outputs l of v_l        (the network's output maps)
         + b_pair x pairs x sum over outputs l of v_l           (the loss on the annotated (sample, head) pairs)
         + c

``f_s`` are the features of stage ``s``, ``v_s`` its voxels (the patch divided by the cumulative stride) and
``m_s`` the number of feature maps the network computes at that stage (convolutions of the encoder and the
decoder, the transposed convolution, the concatenation), all taken from the plans' topology exactly as
:mod:`multitalent.models.unet` builds the network. ``pairs`` is at most ``B x heads`` (every head annotated in
every sample: a one-dataset collection), the estimate's assumption unless told otherwise. ``a``, ``b``, ``c``
were fitted to peaks measured in fresh processes (``benchmarks/memory_calibration.py``), stored in
``memory_calibration.json`` beside this module with the measurements and the estimate's largest error on them,
which is the uncertainty the check allows. On CUDA the same bytes are used (the earlier H200 measurements in
``docs/distributed.md`` agree, see ``docs/benchmarks.md``); mixed precision halves the feature maps.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from multitalent.errors import UserInputError
from multitalent.preprocessing.plans import Plans

log = logging.getLogger("multitalent")

CALIBRATION_FILE = Path(__file__).with_name("memory_calibration.json")
#: bytes per parameter: fp32 weight, gradient, SGD momentum buffer and the optimiser's temporary
PARAMETER_BYTES = 16
#: overrides what is available (bytes), e.g. in a container whose /proc/meminfo shows the host's memory
AVAILABLE_ENV = "MULTITALENT_MEMORY_AVAILABLE"
#: "off" skips the check (the estimate is still logged)
CHECK_ENV = "MULTITALENT_MEMORY_CHECK"


@lru_cache(maxsize=1)
def calibration() -> dict:
    """The fitted coefficients, the measurements and the error margin (``memory_calibration.json``)."""
    return json.loads(CALIBRATION_FILE.read_text(encoding="utf-8"))


def calibrated_architectures() -> list[str]:
    return sorted(calibration()["coefficients"]["activation_bytes"])


@dataclass(frozen=True)
class Estimate:
    """Peak bytes of one training step of one process, by component."""

    arch: str
    device_type: str
    batch_per_process: int
    parameters: int
    parameter_bytes: float
    activation_bytes: float
    output_bytes: float
    overhead_bytes: float
    margin: float  # relative uncertainty: the calibration's largest error

    @property
    def total(self) -> float:
        return self.parameter_bytes + self.activation_bytes + self.output_bytes + self.overhead_bytes

    @property
    def low(self) -> float:
        return self.total * (1 - self.margin)

    @property
    def high(self) -> float:
        return self.total * (1 + self.margin)


def _gb(x: float) -> str:
    return f"{x / 1e9:.1f} GB"


def stage_maps(arch: str, n_stages: int, model_kwargs: Mapping[str, Any]) -> list[int]:
    """Per stage, the number of feature maps of that stage's width and resolution one forward pass computes
    (``m_s``), following the builders in :mod:`multitalent.models.unet`."""
    from multitalent.models.unet import RESENC_BLOCKS_PER_STAGE

    if arch == "plain_unet":
        enc = [int(model_kwargs.get("n_conv_per_stage", 2))] * n_stages
        dec = int(model_kwargs.get("n_conv_per_stage_decoder", 2))
    elif arch == "resenc_unet":
        blocks = [RESENC_BLOCKS_PER_STAGE[min(i, len(RESENC_BLOCKS_PER_STAGE) - 1)] for i in range(n_stages)]
        # stage 0: the stem convolution; later stages: the strided block's projected skip; two convs per block
        enc = [2 * b + 1 for b in blocks]
        dec = int(model_kwargs.get("n_conv_per_stage_decoder", 1))
    else:
        raise KeyError(arch)
    # every stage but the lowest has a decoder stage: transposed conv, concatenation (2 maps) and its convs
    return [e + (dec + 3 if s < n_stages - 1 else 0) for s, e in enumerate(enc)]


def step_elements(arch: str, plans: Plans, model_kwargs: Mapping[str, Any], deep_supervision: bool = True
                  ) -> tuple[float, float]:
    """Per sample: (feature-map elements ``sum m_s f_s v_s``, output voxels ``sum_l v_l`` per head)."""
    from multitalent.models.unet import _topology

    kw = dict(model_kwargs)
    features, _, strides = _topology(plans, kw.get("n_stages"), kw.get("base_features"),
                                     kw.get("max_features", 320))
    maps = stage_maps(arch, len(features), kw)
    shape = [float(p) for p in plans.patch_size]
    voxels = []
    for s in strides:
        shape = [a / b for a, b in zip(shape, s, strict=True)]
        voxels.append(math.prod(shape))
    feat = sum(m * f * v for m, f, v in zip(maps, features, voxels, strict=True))
    # deep supervision: one output per decoder stage (n - 1); without it the full-resolution one
    outputs = voxels[: len(voxels) - 1] if deep_supervision else voxels[:1]
    return feat, sum(outputs)


def count_parameters(arch: str, plans: Plans, num_outputs: int, model_kwargs: Mapping[str, Any],
                     deep_supervision: bool = True) -> int:
    """Parameters of the network, built on the meta device (no memory, no initialisation cost)."""
    from multitalent.models import create_model

    with torch.device("meta"):
        model = create_model(arch, plans, num_outputs, deep_supervision=deep_supervision, **dict(model_kwargs))
    return sum(p.numel() for p in model.parameters())


def estimate_step_memory(arch: str, plans: Plans, num_outputs: int, batch_size: int,
                         model_kwargs: Mapping[str, Any] | None, device_type: str,
                         amp_dtype: torch.dtype | None = None, deep_supervision: bool = True, world_size: int = 1,
                         *, parameters: int | None = None, pairs: int | None = None) -> Estimate:
    """Peak bytes of one training step of one of ``world_size`` processes (global batch ``batch_size``).

    ``parameters``: the network's parameter count if known (else counted on the meta device); ``pairs``:
    annotated (sample, head) pairs of the process's batch, at most (and by default) batch x outputs.
    Raises ``KeyError`` for an architecture without calibration (``swin_unetr``).
    """
    cal = calibration()
    coef = cal["coefficients"]
    a = coef["activation_bytes"][arch]  # KeyError: not calibrated
    kw = dict(model_kwargs or {})
    batch = max(1, int(batch_size) // max(1, int(world_size)))
    feat, out_voxels = step_elements(arch, plans, kw, deep_supervision)
    if parameters is None:
        parameters = count_parameters(arch, plans, num_outputs, kw, deep_supervision)
    pairs = batch * num_outputs if pairs is None else min(int(pairs), batch * num_outputs)
    # mixed precision (CUDA): the saved feature maps are 16-bit; the loss promotes its pairs to float32
    half = 0.5 if amp_dtype is not None and torch.empty((), dtype=amp_dtype).element_size() == 2 else 1.0
    return Estimate(
        arch=arch, device_type=device_type, batch_per_process=batch, parameters=int(parameters),
        parameter_bytes=float(PARAMETER_BYTES * parameters),
        activation_bytes=half * a * batch * feat,
        output_bytes=half * coef["output_bytes"] * batch * num_outputs * out_voxels
        + coef["pair_bytes"] * pairs * out_voxels,
        overhead_bytes=float(coef["overhead_bytes"]),
        margin=float(cal["margin"] if device_type == "cpu" else cal["cuda_margin"]))


def available_memory(device: torch.device | str, local_world_size: int = 1) -> float | None:
    """Bytes one training process may use: ``MemAvailable`` shared among the node's processes (CPU), the free
    memory of its GPU (CUDA); ``$MULTITALENT_MEMORY_AVAILABLE`` (bytes, for the whole node) overrides both."""
    device = torch.device(device)
    override = os.environ.get(AVAILABLE_ENV)
    share = max(1, int(local_world_size)) if device.type == "cpu" else 1
    if override:
        try:
            return float(override) / share
        except ValueError:
            raise UserInputError(f"${AVAILABLE_ENV}={override!r}: give the available memory in bytes.") from None
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except (RuntimeError, AssertionError):
            return None
        return float(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024 / share
    except OSError:
        return None
    return None


def check_step_memory(estimate: Estimate, device: torch.device | str, world_size: int = 1,
                      local_world_size: int = 1, available: float | None = None) -> str | None:
    """Compare the estimate with what is available to this process.

    Raises :class:`UserInputError` (one line: estimate, available, remedies) when even the estimate's lower
    bound (``total x (1 - margin)``) does not fit; returns a warning when its upper bound does not; else None.
    ``available`` (bytes for this process) defaults to :func:`available_memory`.
    """
    device = torch.device(device)
    if available is None:
        available = available_memory(device, local_world_size)
    if not available:
        return None
    where = "GPU memory" if device.type == "cuda" else "RAM"
    per = f" per process ({local_world_size} on this node)" if local_world_size > 1 and device.type == "cpu" else ""
    what = (f"one training step needs about {_gb(estimate.total)} of {where}{per} "
            f"(+/- {100 * estimate.margin:.0f} %: {estimate.arch}, {estimate.parameters / 1e6:.1f} M parameters, "
            f"batch {estimate.batch_per_process}{' per process' if world_size > 1 else ''})")
    if estimate.low > available:
        gpu = "" if device.type == "cuda" else ", or a GPU (--device cuda)"
        raise UserInputError(
            f"{what} but only {_gb(available)} is available; use a smaller --batch-size, a smaller patch "
            f"(multitalent preprocess --preset small), fewer features (--base-features, --max-features){gpu}. "
            f"Set {CHECK_ENV}=off to try anyway.")
    if estimate.high > available:
        return f"{what} and {_gb(available)} is available: it may not fit."
    return None


def preflight_memory(model: torch.nn.Module | str, cfg: Any, plans: Plans, batch_size: int,
                     device: torch.device | str, dinfo: Any = None, num_outputs: int | None = None
                     ) -> Estimate | None:
    """The check the training loop runs before its first step: estimate, compare, refuse or warn.

    ``model``: the built network (its architecture, output count and parameters are read from it) or an
    architecture name with ``num_outputs``; ``cfg``: the :class:`~multitalent.training.config.TrainConfig`
    (``arch``, ``model_kwargs()``, ``deep_supervision``, ``amp``); ``batch_size``: the global batch;
    ``dinfo``: the :class:`~multitalent.training.distributed.DistInfo` (None: one process). Raises
    :class:`UserInputError` when the step cannot fit; logs a warning (local rank 0) when it may not; returns
    the estimate, or None for an architecture without calibration.
    """
    device = torch.device(device)
    world = getattr(dinfo, "world_size", 1)
    local_rank = getattr(dinfo, "local_rank", 0)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if world > 1 else 1
    if isinstance(model, str):
        arch, parameters = model, None
        if num_outputs is None:
            raise ValueError("preflight_memory(arch_name, ...) needs num_outputs")
    else:
        arch = getattr(model, "arch", cfg.arch)
        num_outputs = int(getattr(model, "num_heads", num_outputs or 1))
        parameters = sum(p.numel() for p in model.parameters())
    if arch not in calibrated_architectures():
        log.debug("no memory calibration for %s: the step's memory is not checked", arch)
        return None
    amp = None
    if device.type == "cuda" and getattr(cfg, "amp", "off") != "off":
        amp = torch.bfloat16  # bf16 and fp16 are both 2 bytes
    est = estimate_step_memory(arch, plans, num_outputs, batch_size, cfg.model_kwargs(), device.type, amp,
                               deep_supervision=cfg.deep_supervision, world_size=world, parameters=parameters)
    if os.environ.get(CHECK_ENV, "").lower() == "off":
        log.info("memory check off ($%s): one step needs about %s", CHECK_ENV, _gb(est.total))
        return est
    warning = check_step_memory(est, device, world, local_world)
    if warning and local_rank == 0:
        log.warning(warning)
    return est
