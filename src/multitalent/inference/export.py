"""Export: logit slabs on the target grid -> binary masks and label maps on the input's original grid.

:class:`MaskAssembler` is the ``on_slab`` consumer of
:func:`~multitalent.inference.sliding_window.sliding_window`. For each chunk of target-grid slices
and one head at a time it does what
:func:`~multitalent.preprocessing.pipeline.restore_channel` does with ``order=1`` on the whole volume --
resample the logits to the crop box of the canonical scan (in-plane with ``resample_image``, along z
by linear interpolation between neighbouring target slices, nearest neighbour along a coarse axis),
threshold at 0 (probability 0.5) -- and keeps only the bits: one bit-packed mask per head on the
canonical crop grid. The last target slice of every chunk is kept as the halo for the next one.
Memory: ``heads x crop volume / 8`` bytes plus one head's chunk in float32.

The masks are then brought to the original grid (placed into the crop box, canonical -> original
orientation, which only permutes and flips axes) one head or one dataset at a time.
"""

from __future__ import annotations

import csv
import io as _pyio
import json
import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from multitalent import io
from multitalent.errors import atomic_path
from multitalent.preprocessing.resample import resample_image
from multitalent.registry import HeadRegistry

CT_WINDOW = (-160.0, 240.0)  # soft-tissue window: level 40, width 400 HU


class MaskAssembler:
    """Streams logit slabs (target grid, z order) into bit-packed per-head masks on the canonical crop grid.

    Args:
        props: the case properties from ``prepare_image``.
        num_heads: channels of the slabs it will receive.
        probabilities: optional writable array [heads, *target shape] (e.g. a float16 memmap) that
            receives the sigmoid of every slab.
    """

    def __init__(self, props: dict, num_heads: int, probabilities: np.ndarray | None = None) -> None:
        self.props = props
        self.num_heads = int(num_heads)
        self.target_shape = tuple(int(v) for v in props["resampled_shape"])
        self.box = tuple(slice(int(a), int(b)) for a, b in props["crop_box"])
        self.crop_shape = tuple(s.stop - s.start for s in self.box)
        self.spacing = tuple(float(v) for v in props["spacing"])
        self.canonical = io.Geometry.from_dict(props["canonical_geometry"])
        self.original = io.Geometry.from_dict(props["original_geometry"])
        self.probabilities = probabilities
        # Where each output voxel of the crop sits along each target axis: (lo, hi, frac) per axis
        self._lo, self._hi, self._frac = _axis_taps(self.target_shape[0], self.crop_shape[0], 0, self.spacing)
        self._taps_y = _axis_taps(self.target_shape[1], self.crop_shape[1], 1, self.spacing)
        self._taps_x = _axis_taps(self.target_shape[2], self.crop_shape[2], 2, self.spacing)
        self._taps_on: dict[torch.device, tuple] = {}
        m = self.crop_shape[0]
        self._plane = self.crop_shape[1] * self.crop_shape[2]
        self.packed = np.zeros((self.num_heads, m, math.ceil(self._plane / 8)), dtype=np.uint8)
        self.counts = np.zeros(self.num_heads, dtype=np.int64)
        self._next_j = 0
        self._next_z = 0
        self._halo: torch.Tensor | None = None  # last target slice received, [heads, y, x]

    @property
    def nbytes(self) -> int:
        return int(self.packed.nbytes)

    def __call__(self, z0: int, logits: torch.Tensor | np.ndarray) -> None:
        """Receive target slices ``z0 .. z0 + k`` of every head (``[heads, k, y, x]``, on any device).

        The work stays on the tensor's device: thresholding, the crop of each head's positive box and its
        interpolation; only finished masks (bool, the head's box) and a few per-row flags reach the host.
        """
        t = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.asarray(logits))
        t = t.float()
        if t.shape[0] != self.num_heads or tuple(t.shape[2:]) != self.target_shape[1:]:
            raise ValueError(f"slab shape {tuple(t.shape)} does not fit {self.num_heads} heads on "
                             f"{self.target_shape}")
        if z0 != self._next_z:
            raise ValueError(f"slabs must arrive in z order: expected z={self._next_z}, got {z0}")
        k = t.shape[1]
        if self.probabilities is not None:
            dtype = torch.float16 if self.probabilities.dtype == np.float16 else torch.float32
            for h in range(self.num_heads):
                self.probabilities[h, z0 : z0 + k] = torch.sigmoid(t[h]).to(dtype).cpu().numpy()
        last = z0 + k - 1
        j0 = self._next_j
        j1 = int(np.searchsorted(self._hi, last, side="right"))
        if j1 > j0:
            lo, hi, frac = self._lo[j0:j1], self._hi[j0:j1], self._frac[j0:j1]
            first = int(lo[0])  # lowest target slice needed; z0 - 1 at most (the halo)
            src = t[:, max(first - z0, 0) :]
            if first < z0:
                src = torch.cat([self._halo[:, None], src], dim=1)
            src = src[:, : int(hi[-1]) - first + 1]
            pos = src > 0
            rows, cols = pos.any(dim=(1, 3)).cpu().numpy(), pos.any(dim=(1, 2)).cpu().numpy()  # [heads, y | x]
            del pos
            for h in np.flatnonzero(rows.any(axis=1)):
                mask = self._slab_mask(src[h], lo - first, hi - first, frac, rows[h], cols[h])
                if mask is None:
                    continue
                self.packed[h, j0:j1] = np.packbits(mask.reshape(j1 - j0, -1), axis=1)
                self.counts[h] += int(np.count_nonzero(mask))
        self._halo = t[:, -1].clone()
        self._next_j = j1
        self._next_z = z0 + k

    def _device_taps(self, device: torch.device) -> tuple:
        """The in-plane taps as tensors on ``device`` (made once per device)."""
        if device not in self._taps_on:
            self._taps_on[device] = tuple(
                (torch.from_numpy(lo).to(device), torch.from_numpy(hi).to(device), torch.from_numpy(f).to(device))
                for lo, hi, f in (self._taps_y, self._taps_x))
        return self._taps_on[device]

    def _slab_mask(self, src: torch.Tensor, lo: np.ndarray, hi: np.ndarray, frac: np.ndarray,
                   rows: np.ndarray, cols: np.ndarray) -> np.ndarray | None:
        """One head's mask (host, bool) for output slices with z taps ``lo``/``hi``/``frac`` into ``src``
        [k, y, x] (logits on the target grid, any device), or None when it is empty. ``rows``/``cols``: which
        target rows and columns hold a positive logit.

        Linear interpolation is a convex combination of its taps, so an output voxel can be > 0 only where
        one of its taps is: only the in-plane box of positive logits (and the output voxels whose taps reach
        it) is interpolated, axis by axis with the same taps as ``resample_image`` (order 1). Small
        structures cost their own extent instead of the whole plane.
        """
        ry, rx = np.flatnonzero(rows), np.flatnonzero(cols)
        (jy, sy), (jx, sx) = _reach(self._taps_y, ry[0], ry[-1]), _reach(self._taps_x, rx[0], rx[-1])
        if jy.stop <= jy.start or jx.stop <= jx.start:  # a coarser output grid may skip every positive voxel
            return None
        taps_y, taps_x = self._device_taps(src.device)
        a = src[:, sy, sx]
        a = _interpolate(a, taps_y, jy, sy.start, axis=1)
        a = _interpolate(a, taps_x, jx, sx.start, axis=2)
        dev = a.device
        vals = a.index_select(0, torch.from_numpy(lo).to(dev))
        if np.any(frac > 0):
            f = torch.from_numpy(frac).to(dev)[:, None, None]
            vals = vals * (1 - f) + a.index_select(0, torch.from_numpy(hi).to(dev)) * f
        mask = np.zeros((len(lo),) + self.crop_shape[1:], dtype=bool)
        mask[:, jy, jx] = (vals > 0).cpu().numpy()
        return mask

    def finish(self) -> None:
        """Check that every slice arrived."""
        if self._next_z != self.target_shape[0] or self._next_j != self.crop_shape[0]:
            raise RuntimeError(f"incomplete sweep: {self._next_z}/{self.target_shape[0]} target slices, "
                               f"{self._next_j}/{self.crop_shape[0]} output slices")

    # --- reading the masks back -----------------------------------------------------------------
    def crop_mask(self, h: int) -> np.ndarray:
        """Head ``h``'s mask on the canonical crop grid (bool)."""
        bits = np.unpackbits(self.packed[h], axis=1, count=self._plane)
        return bits.view(bool).reshape(self.crop_shape)

    def to_original(self, crop: np.ndarray) -> np.ndarray:
        """An array on the canonical crop grid -> the original grid (zero outside the crop box)."""
        full = np.zeros(self.canonical.shape, dtype=crop.dtype)
        full[self.box] = crop
        return io.from_canonical(full, self.canonical, self.original)

    def mask(self, h: int) -> np.ndarray:
        """Head ``h``'s binary mask (uint8) on the input's original grid."""
        return self.to_original(self.crop_mask(h).view(np.uint8))

    def voxel_ml(self) -> float:
        return float(np.prod(self.original.spacing)) / 1000.0

    def labelmap(self, registry: HeadRegistry, dataset_id: str, local: dict[int, int]) -> np.ndarray:
        """``dataset_id``'s label map on the original grid, as :meth:`HeadRegistry.labelmap` writes it.

        ``local`` maps registry head indices to this assembler's channels; heads not in it are empty.
        Same order rule as the registry: regions in ``regions_class_order``; plain labels largest first
        (voxel counts are exact, the crop grid and the original grid differ only by a permutation).
        """
        heads = registry.indices_of(dataset_id)
        rco = registry.datasets[dataset_id].get("regions_class_order")
        values = list(rco) if rco else [registry.heads[i].labels[0] for i in heads]
        order = list(range(len(heads)))
        if not rco:
            size = [int(self.counts[local[g]]) if g in local else 0 for g in heads]
            order = sorted(order, key=lambda i: -size[i])
        dtype = np.uint8 if max(values) <= 255 else np.int16
        out = np.zeros(self.crop_shape, dtype=dtype)
        for i in order:
            if heads[i] in local:
                out[self.crop_mask(local[heads[i]])] = values[i]
        return self.to_original(out)

    def keep_largest_component(self, h: int) -> None:
        """Postprocessing: reduce head ``h``'s mask to its largest connected component (counts follow)."""
        from multitalent.inference.postprocess import largest_component

        mask = largest_component(self.crop_mask(h))
        self.packed[h] = np.packbits(mask.reshape(mask.shape[0], -1), axis=1)
        self.counts[h] = int(np.count_nonzero(mask))

    def merged(self) -> np.ndarray:
        """Every channel in one label map on the original grid, channel k painted with value k + 1. Larger
        predicted structures are painted first, so a smaller one overlapping them stays on top (ties: channel
        order); the volumes are this case's, so the order is per case."""
        dtype = np.uint8 if self.num_heads <= 255 else np.int16
        out = np.zeros(self.crop_shape, dtype=dtype)
        for k in sorted(range(self.num_heads), key=lambda k: -int(self.counts[k])):
            out[self.crop_mask(k)] = k + 1
        return self.to_original(out)


def merged_label_table(registry: HeadRegistry, selected: list[int]) -> list[dict]:
    """The values of :meth:`MaskAssembler.merged` for the heads ``selected`` (registry indices, channel order)."""
    return [{"value": k + 1, "head": registry.heads[g].id, "dataset": registry.heads[g].dataset,
             "class": registry.heads[g].name} for k, g in enumerate(selected)]


def write_merged_labels(out: Path, table: list[dict]) -> None:
    """``merged_labels.json`` and ``merged_labels.csv`` (value, head, dataset, class) for ``merged.nii.gz``."""
    from multitalent.errors import write_json

    write_json(out / "merged_labels.json", table)
    with atomic_path(out / "merged_labels.csv", suffix=".tmp") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["value", "head", "dataset", "class"])
        w.writeheader()
        w.writerows(table)


def _axis_taps(n: int, m: int, axis: int, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, frac) of each of ``m`` output positions along ``axis`` of a target axis of ``n`` voxels.

    Taken from the resampling function itself: resampling the index ramp 0..n-1 gives the interpolation
    coordinate (linear is exact on a ramp; along a coarse axis ``resample_image`` uses nearest neighbour and
    the ramp gives whole indices)."""
    shape, out_shape = [1, 1, 1], [1, 1, 1]
    shape[axis], out_shape[axis] = n, m
    ramp = np.arange(n, dtype=np.float32).reshape(shape)
    coord = resample_image(ramp, spacing, tuple(out_shape), order=1).reshape(-1).astype(np.float64)
    coord = np.clip(coord, 0, n - 1)
    lo = np.floor(coord)
    frac = coord - lo
    up = frac > 1 - 1e-5
    lo[up] += 1
    frac[up | (frac < 1e-5)] = 0
    lo = np.minimum(lo.astype(np.int64), n - 1)
    hi = np.where(frac > 0, np.minimum(lo + 1, n - 1), lo)
    return lo, hi, frac.astype(np.float32)


def _reach(taps: tuple[np.ndarray, np.ndarray, np.ndarray], first: int, last: int) -> tuple[slice, slice]:
    """The output positions whose taps touch source positions ``first..last`` (a contiguous range: the taps
    are monotone) and the source positions those outputs read."""
    lo, hi, _ = taps
    j0 = int(np.searchsorted(hi, first, side="left"))
    j1 = int(np.searchsorted(lo, last, side="right"))
    if j1 <= j0:
        return slice(j0, j0), slice(0, 0)
    return slice(j0, j1), slice(int(lo[j0]), int(hi[j1 - 1]) + 1)


def _interpolate(a: torch.Tensor, taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor], out: slice, start: int,
                 axis: int) -> torch.Tensor:
    """Linear interpolation of ``a`` (its ``axis`` starting at source position ``start``) at the outputs ``out``."""
    lo, hi, frac = (t[out] for t in taps)
    shape = [1] * a.dim()
    shape[axis] = len(frac)
    f = frac.reshape(shape)
    return a.index_select(axis, lo - start) * (1 - f) + a.index_select(axis, hi - start) * f


def open_probabilities(folder: Path, num_heads: int, shape: Sequence[int]) -> np.ndarray:
    """A float16 memmap [heads, *shape] in ``folder`` that :func:`pack_probabilities` zips up later."""
    return np.lib.format.open_memmap(folder / "probabilities.npy", mode="w+", dtype=np.float16,
                                     shape=(int(num_heads), *(int(s) for s in shape)))


def restore_probabilities(folder: Path, memmap: np.ndarray, props: dict) -> np.ndarray:
    """The network-grid memmap -> a float16 memmap [heads, *original shape] on the input's own grid (linear
    interpolation, 0 outside the body crop), one head in memory at a time; the network-grid file is removed."""
    from multitalent.preprocessing.pipeline import restore_channel

    shape = io.Geometry.from_dict(props["original_geometry"]).shape
    out = np.lib.format.open_memmap(folder / "probabilities_original.npy", mode="w+", dtype=np.float16,
                                    shape=(memmap.shape[0], *shape))
    for h in range(memmap.shape[0]):
        out[h] = restore_channel(np.asarray(memmap[h], dtype=np.float32), props, order=1).astype(np.float16)
    source = Path(memmap.filename)
    del memmap
    os.unlink(source)
    return out


def pack_probabilities(folder: Path, memmap: np.ndarray, head_ids: list[str], props: dict,
                       grid: str = "network") -> Path:
    """Zip the memmap into ``folder/probabilities.npz`` (keys ``probabilities``, ``heads``, ``properties``,
    ``grid``) without loading it, then remove the ``.npy``."""
    memmap.flush()
    npy = Path(memmap.filename)
    del memmap
    final = folder / "probabilities.npz"
    with atomic_path(final) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED,
                                                     compresslevel=1, allowZip64=True) as zf:
        zf.write(npy, "probabilities.npy")
        for name, value in (("heads", np.array(head_ids)), ("properties", np.array(json.dumps(props))),
                            ("grid", np.array(grid))):
            buf = _pyio.BytesIO()
            np.lib.format.write_array(buf, value, allow_pickle=False)
            zf.writestr(f"{name}.npy", buf.getvalue())
    os.unlink(npy)
    return final


def write_statistics(out: Path, volumes: dict[str, dict[str, float]]) -> None:
    """``statistics.json`` ({case: {head: ml}}) and ``statistics.csv`` (one row per case)."""
    from multitalent.errors import write_json

    write_json(out / "statistics.json", volumes)
    heads: list[str] = []
    for v in volumes.values():
        heads += [h for h in v if h not in heads]
    with atomic_path(out / "statistics.csv", suffix=".tmp") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case"] + [f"{h}_ml" for h in heads])
        for case, v in volumes.items():
            w.writerow([case] + [f"{v[h]:.3f}" if h in v else "" for h in heads])


def write_preview(path: Path, image_slices: dict, assembler: MaskAssembler, head_ids: list[str]) -> None:
    """Three orthogonal slices (canonical orientation, CT window) with one coloured outline per head.

    ``image_slices``: ``{"index": (z, y, x) in canonical coordinates, "axial", "coronal", "sagittal"}``.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    cz, cy, cx = image_slices["index"]
    oz, oy, ox = (s.start for s in assembler.box)
    sz, sy, sx = assembler.canonical.spacing
    views = [("axial", sy / sx, "upper"), ("coronal", sz / sx, "lower"), ("sagittal", sz / sy, "lower")]
    contours: dict[str, list[tuple[int, np.ndarray]]] = {v[0]: [] for v in views}
    for h in range(assembler.num_heads):
        if assembler.counts[h] == 0:
            continue
        m = assembler.crop_mask(h)
        for name, sl in (("axial", _slice_in(m, 0, cz - oz)), ("coronal", _slice_in(m, 1, cy - oy)),
                         ("sagittal", _slice_in(m, 2, cx - ox))):
            if sl is not None and sl.any():
                full = np.zeros(image_slices[name].shape, dtype=np.uint8)
                full[_placement(name, assembler.box)] = sl
                contours[name].append((h, full))
    fig = Figure(figsize=(13, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    cmap = colormaps["tab20"]
    colours = [cmap(i % 20) for i in range(assembler.num_heads)]
    shown: set[int] = set()
    for k, (name, aspect, origin) in enumerate(views):
        ax = fig.add_subplot(1, 4, k + 1)
        ax.imshow(image_slices[name], cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], aspect=aspect,
                  origin=origin, interpolation="nearest")
        for h, m in contours[name]:
            ax.contour(m, levels=[0.5], colors=[colours[h]], linewidths=0.8)  # pixel centres as imshow
            shown.add(h)
        ax.set_title(name)
        ax.axis("off")
    lax = fig.add_subplot(1, 4, 4)
    lax.axis("off")
    handles = [Line2D([0], [0], color=colours[h], lw=2) for h in sorted(shown)][:30]
    if handles:
        lax.legend(handles, [head_ids[h] for h in sorted(shown)][:30], loc="center left", fontsize=7,
                   frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _slice_in(mask: np.ndarray, axis: int, index: int) -> np.ndarray | None:
    if not 0 <= index < mask.shape[axis]:
        return None
    return np.take(mask, index, axis=axis)


def _placement(view: str, box: tuple[slice, slice, slice]) -> tuple[slice, slice]:
    bz, by, bx = box
    return {"axial": (by, bx), "coronal": (bz, bx), "sagittal": (bz, by)}[view]


def preview_centre(assembler: MaskAssembler) -> tuple[int, int, int]:
    """Canonical voxel through which the preview cuts: the centre of mass of the largest predicted
    structure, or the centre of the body box when nothing was found."""
    if assembler.num_heads and assembler.counts.max() > 0:
        mask = assembler.crop_mask(int(np.argmax(assembler.counts)))
        centre = np.rint(ndimage.center_of_mass(mask)).astype(int)
        return tuple(int(c) + s.start for c, s in zip(centre, assembler.box))
    return tuple((s.start + s.stop) // 2 for s in assembler.box)


def preview_slices(image: np.ndarray, geometry: io.Geometry, index: tuple[int, int, int]) -> dict:
    """The three orthogonal slices through canonical voxel ``index`` of a scan, in canonical orientation."""
    canon, _ = io.to_canonical(image, geometry)
    cz, cy, cx = index
    return {"index": (cz, cy, cx), "axial": canon[cz].copy(), "coronal": canon[:, cy].copy(),
            "sagittal": canon[:, :, cx].copy()}
