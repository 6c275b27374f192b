"""Overlap and surface-distance metrics on binary (z, y, x) masks.

Rules for empty masks (also in ``docs/evaluation.md``):

* both empty: Dice 1.0 and HD95 0.0 (the prediction is exactly right);
* exactly one empty: Dice 0.0 and HD95 NaN (undefined); the evaluation counts such a NaN as the
  image diagonal in mm when it averages HD95, so a missed or hallucinated structure is penalised.

HD95 is the 95th percentile (linear interpolation) of the pooled surface distances in both
directions, prediction->truth and truth->prediction, as medpy's ``hd95`` and nnU-Net v1 define it.
MONAI's ``compute_hausdorff_distance(percentile=95)`` instead takes the larger of the two directed
95th percentiles; :func:`surface_distances` returns both directions so either can be formed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import KDTree


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient 2|P∩T| / (|P| + |T|) in 0..1; 1.0 when both masks are empty."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {truth.shape}")
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & truth)) / total


def bounding_box(*masks: np.ndarray) -> tuple[slice, ...] | None:
    """Smallest box (slices) holding every foreground voxel of all ``masks``; None if all are empty."""
    union = np.logical_or.reduce([np.asarray(m, dtype=bool) for m in masks])
    if not union.any():
        return None
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(union.any(axis=other))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a 6-neighbour in the background (outside the array counts as background)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(pred: np.ndarray, truth: np.ndarray,
                      spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of ``pred`` to the nearest of ``truth``, and back.

    Both masks must be non-empty. Only the bounding box around both masks is examined: outside it
    both masks are background, so cropping changes neither the surfaces nor the distances.
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {truth.shape}")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {pred.ndim}D mask")
    if not pred.any() or not truth.any():
        raise ValueError("surface distances need two non-empty masks")
    box = bounding_box(pred, truth)
    scale = np.asarray(spacing, dtype=np.float64)
    p = np.argwhere(surface_voxels(pred[box])) * scale
    t = np.argwhere(surface_voxels(truth[box])) * scale
    # A KD-tree over the surface points (as MONAI does on CPU) costs O(surface) rather than a dense
    # distance transform over the whole box, which matters when a stray blob stretches the box.
    p_to_t = KDTree(t).query(p, k=1)[0]
    t_to_p = KDTree(p).query(t, k=1)[0]
    return p_to_t, t_to_p


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile of the symmetric (pooled) surface distances in mm; (z, y, x) spacing.

    Both masks empty: 0.0; exactly one empty: NaN (see the module docstring).
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return 0.0
    if has_pred != has_truth:
        return float("nan")
    p_to_t, t_to_p = surface_distances(pred, truth, spacing)
    return float(np.percentile(np.concatenate([p_to_t, t_to_p]), 95))


def diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the image's diagonal (its extent ``shape * spacing``)."""
    return float(np.linalg.norm(np.asarray(shape, dtype=float) * np.asarray(spacing, dtype=float)))
