"""Evaluation metrics (``multitalent.evaluation.metrics``): Dice and HD95 with known answers, against brute
force and MONAI, and the empty-mask rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from multitalent.evaluation import dice, hd95, surface_distances


def box(shape: tuple[int, int, int], *slices: slice) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[slices] = True
    return m


def blob(seed: int, shape: tuple[int, int, int] = (24, 32, 28)) -> np.ndarray:
    field = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 3)
    return field > np.percentile(field, 75)


# --- metrics ------------------------------------------------------------------------------------
def test_dice_of_half_overlapping_boxes_is_one_half():
    a = box((8, 8, 8), slice(0, 4), slice(0, 4), slice(0, 4))
    b = box((8, 8, 8), slice(0, 4), slice(0, 4), slice(2, 6))
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2])
def test_hd95_of_cubes_offset_by_k_voxels_is_k_times_the_spacing_of_that_axis(axis, k):
    spacing = (2.5, 0.8, 1.2)
    a = box((12, 12, 12), slice(3, 9), slice(3, 9), slice(3, 9))
    b = np.roll(a, k, axis=axis)
    # a whole face of each cube (over 5 % of the pooled surface) lies k voxels from the other's face
    assert hd95(a, b, spacing) == pytest.approx(k * spacing[axis])
    assert hd95(b, a, spacing) == pytest.approx(k * spacing[axis])


def test_hd95_of_two_single_voxels_is_their_distance_in_mm():
    spacing = (3.0, 0.5, 0.7)
    a = box((6, 6, 6), slice(1, 2), slice(1, 2), slice(1, 2))
    b = box((6, 6, 6), slice(2, 3), slice(3, 4), slice(4, 5))
    assert hd95(a, b, spacing) == pytest.approx(math.sqrt(3.0**2 + (2 * 0.5) ** 2 + (3 * 0.7) ** 2))


def test_hd95_of_identical_masks_is_zero_and_crop_does_not_change_it():
    a = blob(3)
    assert hd95(a, a, (1.0, 1.0, 1.0)) == 0.0
    big = np.zeros((60, 70, 80), dtype=bool)
    big[10:34, 20:52, 30:58] = a
    other = np.zeros_like(big)
    other[10:34, 20:52, 30:58] = blob(4)
    small = hd95(a, blob(4), (2.0, 1.0, 0.7))
    assert hd95(big, other, (2.0, 1.0, 0.7)) == pytest.approx(small)


def test_surface_distances_agree_with_brute_force():
    spacing = np.array([2.0, 0.9, 1.3])
    p, t = blob(5, (10, 12, 11)), blob(6, (10, 12, 11))

    def surface(m):  # independent: a voxel is on the surface if a 6-neighbour (or the border) is empty
        padded = np.pad(m, 1)
        inner = np.ones_like(m)
        for ax in range(3):
            for step in (-1, 1):
                inner &= np.roll(padded, step, axis=ax)[1:-1, 1:-1, 1:-1]
        return m & ~inner

    sp, st = np.argwhere(surface(p)) * spacing, np.argwhere(surface(t)) * spacing
    pairwise = np.linalg.norm(sp[:, None, :] - st[None, :, :], axis=-1)
    p_to_t, t_to_p = surface_distances(p, t, spacing)
    np.testing.assert_allclose(np.sort(p_to_t), np.sort(pairwise.min(axis=1)))
    np.testing.assert_allclose(np.sort(t_to_p), np.sort(pairwise.min(axis=0)))
    assert hd95(p, t, spacing) == pytest.approx(np.percentile(np.concatenate([p_to_t, t_to_p]), 95))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice inside get_mask_edges
def test_hd95_against_monai_on_a_random_blob():
    """MONAI takes max(directed 95th percentiles); we pool both directions (medpy, nnU-Net v1).

    Both use 6-connected surface voxels and exact Euclidean distances, so the directed values agree
    to float32 precision; the pooled percentile lies between the two directed ones, here within a voxel.
    """
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_hausdorff_distance

    spacing = (2.5, 0.8, 1.1)
    field = ndimage.gaussian_filter(np.random.default_rng(1).random((24, 32, 28)), 3)
    t = field > np.percentile(field, 75)
    p = np.roll(field > np.percentile(field, 80), 1, axis=2)  # a smaller, shifted "prediction"
    as_tensor = [torch.from_numpy(m)[None, None] for m in (p, t)]
    theirs = float(compute_hausdorff_distance(*as_tensor, percentile=95, spacing=spacing)[0, 0])
    p_to_t, t_to_p = surface_distances(p, t, spacing)
    directed = (np.percentile(p_to_t, 95), np.percentile(t_to_p, 95))
    assert max(directed) == pytest.approx(theirs, rel=1e-5)
    ours = hd95(p, t, spacing)
    assert min(directed) - 1e-9 <= ours <= max(directed) + 1e-9
    assert abs(ours - theirs) <= max(spacing)


def test_empty_mask_rules():
    empty = np.zeros((5, 5, 5), dtype=bool)
    full = box((5, 5, 5), slice(1, 3), slice(1, 3), slice(1, 3))
    assert dice(empty, empty) == 1.0 and hd95(empty, empty, (1, 1, 1)) == 0.0
    assert dice(full, empty) == 0.0 and math.isnan(hd95(full, empty, (1, 1, 1)))
    assert dice(empty, full) == 0.0 and math.isnan(hd95(empty, full, (1, 1, 1)))
