"""Resampling to the target spacing: images with cubic interpolation, labels per value (linear + 0.5).

Strongly anisotropic scans (coarsest/finest spacing > 3, as nnU-Net) are resampled in-plane with the
requested order and along the coarse axis with nearest neighbour, which avoids ringing across thick
slices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

ANISOTROPY_THRESHOLD = 3.0


def target_shape(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> tuple[int, ...]:
    """The shape that keeps the physical extent when going from ``spacing`` to ``target_spacing``."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing))


def _coarse_axis(spacing: Sequence[float]) -> int | None:
    sp = np.asarray(spacing, dtype=float)
    if sp.max() / sp.min() > ANISOTROPY_THRESHOLD:
        return int(np.argmax(sp))
    return None


def _zoom_to(array: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """Resize with spline interpolation, voxel boxes aligned (the physical extent is kept), one axis at a time.

    Axis-by-axis zooming is exact for separable splines and needs (order+1) taps per voxel and axis
    instead of (order+1)^3 for a joint 3D interpolation.
    """
    out = array.astype(np.float32, copy=False)
    for axis, (n, m) in enumerate(zip(array.shape, new_shape)):
        if n == m:
            continue
        factors = [1.0] * out.ndim
        factors[axis] = m / n
        out = ndimage.zoom(out, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
        assert out.shape[axis] == m, (out.shape, new_shape)
    return out


def resample_image(image: np.ndarray, spacing: Sequence[float], new_shape: Sequence[int], order: int = 3) -> np.ndarray:
    """Resample a (z, y, x) image to ``new_shape``; nearest neighbour along a coarse slice axis."""
    coarse = _coarse_axis(spacing)
    if coarse is None:
        return _zoom_to(image, new_shape, order)
    in_plane = list(new_shape)
    in_plane[coarse] = image.shape[coarse]
    out = _zoom_to(image, in_plane, order)
    return _zoom_to(out, new_shape, 0)


def resample_labels(seg: np.ndarray, spacing: Sequence[float], new_shape: Sequence[int]) -> np.ndarray:
    """Resample a label map: each value's mask linearly, then thresholded at 0.5, so thin structures survive."""
    if tuple(seg.shape) == tuple(new_shape):
        return seg.copy()
    out = np.zeros(new_shape, dtype=seg.dtype)
    coarse = _coarse_axis(spacing)
    for value in np.unique(seg):
        if value == 0:
            continue
        mask = (seg == value).astype(np.float32)
        if coarse is None:
            res = _zoom_to(mask, new_shape, 1)
        else:
            in_plane = list(new_shape)
            in_plane[coarse] = seg.shape[coarse]
            res = _zoom_to(_zoom_to(mask, in_plane, 1), new_shape, 0)
        out[res >= 0.5] = value
    return out
