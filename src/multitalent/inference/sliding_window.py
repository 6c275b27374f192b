"""Sliding-window inference over all heads at once, streamed along z so that memory stays bounded.

Windows are visited in z order. Every window of one z position ("z group") writes into a ring buffer
that covers only the ``patch_z`` slices that windows can still touch; once the sweep moves to the
next z group, the slices it left behind can receive no further contribution: they are final (each
window is weighted by g / (sum of g over all windows), known in advance) and are handed to ``on_slab``
in chunks, then the ring slots are reused. Peak memory is therefore ``heads x patch_z x Y x X`` (plus
one batch of network outputs), never ``heads x Z x Y x X``. See ``docs/inference.md``.

MONAI's ``sliding_window_inference`` and nnU-Net's predictor both accumulate the whole volume for
every output channel; with 40+ heads that is tens of GB, which is why this is written here.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from multitalent.device import amp_dtype, autocast

#: on_slab(z_start, logits) receives finished slices [heads, k, Y, X] (float32, on the window's device)
#: in z order.
SlabCallback = Callable[[int, torch.Tensor], None]

DEFAULT_SLAB_BYTES = 64 * 2**20
FP32_RING_LIMIT = 2**30  # above this the CPU accumulator switches to float16


def _gaussian_1d(n: int, sigma_scale: float) -> np.ndarray:
    """A 1D Gaussian over ``n`` voxels, centred at (n-1)/2, max 1, zeros replaced by the min nonzero."""
    sigma = max(n * sigma_scale, 1e-6)
    g = np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2.0) / sigma) ** 2)
    g /= g.max()
    if np.any(g == 0):
        g[g == 0] = g[g > 0].min()
    return g


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 0.125,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """nnU-Net's importance map: a Gaussian with sigma = patch/8 per axis, max 1, no zeros.

    It is the outer product of per-axis profiles centred at (n-1)/2 (nnU-Net uses n//2): symmetric, so a
    mirrored window keeps the same weights.
    """
    gz, gy, gx = (_gaussian_1d(int(n), sigma_scale) for n in patch_size)
    return torch.from_numpy(np.einsum("i,j,k->ijk", gz, gy, gx)).to(dtype)


def window_starts(size: int, patch: int, step: float = 0.5) -> list[int]:
    """Window start positions along one axis: first at 0, last flush with the end, spaced at most
    ``step * patch`` apart (nnU-Net's rule). ``size`` must be >= ``patch``."""
    if size <= patch:
        return [0]
    n = math.ceil((size - patch) / (patch * step)) + 1
    actual = (size - patch) / (n - 1)
    return [int(round(actual * i)) for i in range(n)]


def weight_profile(size: int, patch: int, step: float = 0.5, sigma_scale: float = 0.125) -> np.ndarray:
    """Sum of the 1D Gaussian weights of every window along one axis (float64, length ``size``).

    Windows form a grid and the importance map is separable, so the summed weight of a voxel is the
    product of the three axes' profiles: no weight volume has to be accumulated.
    """
    g = _gaussian_1d(patch, sigma_scale)
    w = np.zeros(size)
    for s in window_starts(size, patch, step):
        w[s : s + patch] += g
    return w


def _mirror_sets(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    axes = sorted({int(a) for a in mirror_axes})
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    return autocast(device, amp_dtype("auto", device))  # bf16 where supported, on CUDA only


class _Ring:
    """The accumulator: a ring of ``pz`` padded z-slices [H, pz, y, x] of weighted window outputs.

    ``add`` puts one weighted window into it; ``emit`` hands finished slices over (cropped to the image,
    in chunks of at most ``max_slab_bytes`` float32) and clears their slots.
    """

    def __init__(self, nh: int, patch: tuple[int, int, int], padded: tuple[int, int, int], device: torch.device,
                 accum_dtype: torch.dtype | None, norm: list[dict], scale: float, shape: tuple[int, int, int],
                 pad_before: list[int], max_slab_bytes: int, st: dict) -> None:
        pz, _, _ = patch
        _, yp, xp = padded
        dtype = accum_dtype
        if dtype is None:
            small = device.type != "cuda" and nh * pz * yp * xp * 4 <= FP32_RING_LIMIT
            dtype = torch.float32 if small else torch.float16
        self.ring = torch.zeros((nh, pz, yp, xp), dtype=dtype, device=device)
        st["accumulator_bytes"] = self.ring.numel() * self.ring.element_size()
        st["accumulator_dtype"] = str(dtype).replace("torch.", "")
        self.patch, self.norm, self.scale, self.shape, self.pad_before = patch, norm, scale, shape, pad_before
        self.max_slab_bytes, self.st = max_slab_bytes, st
        self.collected: list[torch.Tensor] = []

    def window_weight(self, bz: int, by: int, bx: int) -> torch.Tensor:
        return torch.einsum("i,j,k->ijk", self.norm[0][bz] * self.scale, self.norm[1][by], self.norm[2][bx])

    def add(self, z: int, yy: int, xx: int, out: torch.Tensor) -> None:
        """Add one window output [H, pz, py, px] (float32), weighted, into the ring."""
        pz, py, px = self.patch
        weight = self.window_weight(z, yy, xx)
        r = z % pz
        pieces = [(r, 0, min(pz, pz - r))]
        if r:
            pieces.append((0, pz - r, pz))
        for ring_start, a, b in pieces:
            view = self.ring[:, ring_start : ring_start + (b - a), yy : yy + py, xx : xx + px]
            if view.dtype == torch.float32:
                view.addcmul_(out[:, a:b], weight[a:b])
            else:
                view.add_((out[:, a:b] * weight[a:b]).to(view.dtype))

    def emit(self, a: int, b: int, on_slab: SlabCallback | None) -> None:
        """Finish padded slices [a, b): crop the padding, hand over in chunks, clear the ring slots.

        Chunks never wrap around the ring, so a float32 ring on the CPU is handed over as a view (no copy);
        ``on_slab`` must not keep a reference after it returns (without ``on_slab`` the chunks are kept).
        """
        ring, pz = self.ring, self.patch[0]
        (y0, y1), (x0, x1) = ((self.pad_before[i], self.pad_before[i] + self.shape[i]) for i in (1, 2))
        lo, hi = max(a, self.pad_before[0]), min(b, self.pad_before[0] + self.shape[0])
        per_slice = ring.shape[0] * (y1 - y0) * (x1 - x0) * 4
        chunk = max(1, int(self.max_slab_bytes // max(per_slice, 1)))
        c0 = lo
        while c0 < hi:
            c1 = min(c0 + chunk, hi, c0 - c0 % pz + pz)  # stop at the ring's end
            r0 = c0 % pz
            out = ring[:, r0 : r0 + (c1 - c0), y0:y1, x0:x1].float()
            self.st["max_chunk_bytes"] = max(self.st["max_chunk_bytes"], out.numel() * 4)
            if on_slab is None:
                out = out.cpu()
                shared = out.untyped_storage().data_ptr() == ring.untyped_storage().data_ptr()
                self.collected.append(out.clone() if shared else out)
            else:
                on_slab(c0 - self.pad_before[0], out)
            c0 = c1
        for c0 in range(a, b, pz):
            r0, n = c0 % pz, min(b - c0, pz)
            ring[:, r0 : r0 + n].zero_()
            if r0 + n > pz:
                ring[:, : r0 + n - pz].zero_()


def _pad_to_patch(image: torch.Tensor, patch: tuple[int, int, int], pad_value: float,
                  device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """The image on ``device`` (float32), padded with ``pad_value`` where it is smaller than the patch
    (centred); and the padding before each axis."""
    shape = tuple(int(s) for s in image.shape[1:])
    pad_before = [max(p - s, 0) // 2 for s, p in zip(shape, patch)]
    pad_after = [max(p - s, 0) - b for s, p, b in zip(shape, patch, pad_before)]
    img = image.to(device=device, dtype=torch.float32)
    if any(pad_before) or any(pad_after):
        pads = [v for a in (2, 1, 0) for v in (pad_before[a], pad_after[a])]
        img = F.pad(img, pads, value=float(pad_value))
    return img, pad_before


def _window_norms(padded: Sequence[int], patch: Sequence[int], starts: Sequence[Sequence[int]], step: float,
                  device: torch.device) -> list[dict[int, torch.Tensor]]:
    """Per axis and window start, the window's 1-D Gaussian divided by the summed weight it overlaps.

    Each window's weight is g / W with W the summed Gaussian weight (separable, known in advance), so the
    ring holds the finished weighted average: no division afterwards and no tiny sums that would
    underflow a float16 accumulator near the volume's edges.
    """
    norm = []
    for n, p, axis_starts in zip(padded, patch, starts):
        g, w = _gaussian_1d(p, 0.125), weight_profile(n, p, step)
        norm.append({s: torch.from_numpy(g / w[s : s + p]).float().to(device) for s in axis_starts})
    return norm


def _forward_tta(net: nn.Module, x: torch.Tensor, flips: list[tuple[int, ...]], head_index: torch.Tensor | None,
                 st: dict, sync: bool, device: torch.device) -> torch.Tensor:
    """The sum over the mirror combinations of the network's (float32) logits for windows ``x``."""
    total = None
    for dims in flips:
        flip_dims = [d + 2 for d in dims]
        xin = torch.flip(x, flip_dims) if dims else x
        if sync:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = net(xin)
        if isinstance(out, (list, tuple)):
            out = out[0]
        if sync:
            torch.cuda.synchronize(device)
        st["forward_s"] += time.perf_counter() - t0
        st["forward_passes"] += 1
        if head_index is not None:
            out = out.index_select(1, head_index)
        out = out.float()
        if dims:
            out = torch.flip(out, flip_dims)
        total = out if total is None else total.add_(out)
    return total


def sliding_window(net: nn.Module, image: torch.Tensor, patch_size: Sequence[int], step: float = 0.5,
                   window_batch: int = 2, mirror_axes: Sequence[int] = (),
                   on_slab: SlabCallback | None = None, *, heads: Sequence[int] | None = None,
                   pad_value: float = 0.0,
                   device: str | torch.device | None = None, accum_dtype: torch.dtype | None = None,
                   max_slab_bytes: int = DEFAULT_SLAB_BYTES, progress: bool = False,
                   stats: dict | None = None) -> torch.Tensor | None:
    """Run ``net`` over ``image`` ([1, z, y, x], normalised) window by window and stream the logits.

    Args:
        net: returns logits [B, H, *patch] for input [B, 1, *patch] (a list: its first entry is used).
        step: window step as a fraction of the patch (0.5: half-overlapping windows).
        mirror_axes: axes (0=z, 1=y, 2=x) mirrored for test-time augmentation (all combinations).
        on_slab: receives ``(z_start, logits [H, k, y, x] float32 on the device)`` for consecutive z chunks of
            the (unpadded) image; the tensor may be a view of the accumulator, valid only during the call.
            When None, the whole logit volume [H, z, y, x] is returned instead.
        heads: output channels to keep (default all); the accumulator only holds these.
        pad_value: value for padding a volume smaller than the patch (normalised air).
        accum_dtype: accumulator dtype; default float16 on CUDA, float32 on CPU unless the float32 ring
            buffer would exceed 1 GiB (then float16).
        max_slab_bytes: upper bound on the float32 chunks handed to ``on_slab``.
        stats: if given, filled with ``windows``, ``forward_s``, ``total_s``, ``accumulator_bytes`` ...
    """
    t_start = time.perf_counter()
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be [1, z, y, x], got {tuple(image.shape)}")
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    patch = tuple(int(p) for p in patch_size)
    if device is None:
        param = next(net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    shape = tuple(int(s) for s in image.shape[1:])
    img, pad_before = _pad_to_patch(image, patch, pad_value, device)
    padded = tuple(int(s) for s in img.shape[1:])
    zs, ys, xs = (window_starts(s, p, step) for s, p in zip(padded, patch))
    flips = _mirror_sets(mirror_axes)
    norm = _window_norms(padded, patch, (zs, ys, xs), step, device)
    head_index = torch.as_tensor(list(heads), dtype=torch.long, device=device) if heads is not None else None
    st = {"windows": len(zs) * len(ys) * len(xs), "forward_passes": 0, "forward_s": 0.0,
          "accumulator_bytes": 0, "accumulator_dtype": None, "max_chunk_bytes": 0}
    sync = stats is not None and device.type == "cuda"
    ring: _Ring | None = None
    per_batch = max(1, int(window_batch))
    pz, py, px = patch
    bar = tqdm(total=st["windows"], desc="windows", unit="win", disable=not progress, leave=False)
    done_until = 0
    with torch.inference_mode(), _autocast(device):
        for gi, z in enumerate(zs):
            boxes = [(z, yy, xx) for yy in ys for xx in xs]
            for b0 in range(0, len(boxes), per_batch):
                batch_boxes = boxes[b0 : b0 + per_batch]
                x = torch.stack([img[:, bz : bz + pz, by : by + py, bx : bx + px] for bz, by, bx in batch_boxes])
                total = _forward_tta(net, x, flips, head_index, st, sync, device)
                if ring is None:
                    ring = _Ring(total.shape[1], patch, padded, device, accum_dtype, norm, 1.0 / len(flips), shape,
                                 pad_before, max_slab_bytes, st)
                for (bz, by, bx), o in zip(batch_boxes, total):
                    ring.add(bz, by, bx, o)
                del total, x
                bar.update(len(batch_boxes))
            nxt = zs[gi + 1] if gi + 1 < len(zs) else padded[0]
            ring.emit(done_until, nxt, on_slab)
            done_until = nxt
    bar.close()
    st["total_s"] = time.perf_counter() - t_start
    if stats is not None:
        stats.update(st)
    if on_slab is None:
        return torch.cat(ring.collected, dim=1)
    return None
