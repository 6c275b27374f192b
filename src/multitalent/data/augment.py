"""nnU-Net's augmentation set, built from batchgeneratorsv2 transforms.

Deviations: the label map is resampled with nearest neighbour rather than once per label value
(bilinear + argmax): a third of the data-loading time at the paper configuration went into that per-label
resampling, and label edges move by at most half a voxel.
Mirroring is off along the left-right axis by default, because the collection has
lateral heads (kidney_left/right, lung_left/right) whose identity a left-right flip would swap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform

ROTATION = math.radians(30)
SCALING = (0.7, 1.4)


def initial_patch_size(patch_size: Sequence[int], rotation: float = ROTATION) -> tuple[int, ...]:
    """The larger patch to cut before rotation so that the rotated final patch stays inside real data."""
    p = np.asarray(patch_size, dtype=float)
    c, s = math.cos(rotation), math.sin(rotation)
    out = p.copy()
    for axis in range(3):  # rotating about `axis` mixes the two other axes
        a, b = [i for i in range(3) if i != axis]
        out[a] = max(out[a], c * p[a] + s * p[b])
        out[b] = max(out[b], s * p[a] + c * p[b])
    return tuple(int(math.ceil(v)) for v in np.minimum(out, p * 1.5))


def training_transforms(patch_size: Sequence[int], pad_value: float, mirror_axes: Sequence[int] = (0, 1),
                        ds_scales: Sequence[Sequence[float]] | None = None) -> ComposeTransforms:
    """Spatial (rotation/scaling, crop to patch), noise, blur, brightness, contrast, low resolution,
    gamma (inverted and plain) and mirroring, with nnU-Net's probabilities."""
    t = [
        SpatialTransform(tuple(patch_size), patch_center_dist_from_border=0, random_crop=False,
                         p_elastic_deform=0, p_rotation=0.2, rotation=(-ROTATION, ROTATION), p_scaling=0.2,
                         scaling=SCALING, p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False,
                         mode_seg="nearest", padding_mode_image="constant", padding_value_image=pad_value),
        RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True),
                        apply_probability=0.1),
        RandomTransform(GaussianBlurTransform(blur_sigma=(0.5, 1.0), synchronize_channels=False,
                                              synchronize_axes=False, p_per_channel=0.5), apply_probability=0.2),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.75, 1.25)),
                                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=0.15),
        RandomTransform(ContrastTransform(contrast_range=BGContrast((0.75, 1.25)), preserve_range=True,
                                          synchronize_channels=False, p_per_channel=1), apply_probability=0.15),
        RandomTransform(SimulateLowResolutionTransform(scale=(0.5, 1), synchronize_channels=False,
                                                       synchronize_axes=True, ignore_axes=None,
                                                       allowed_channels=None, p_per_channel=0.5),
                        apply_probability=0.25),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=1, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=0.1),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=0, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=0.3),
    ]
    if mirror_axes:
        t.append(MirrorTransform(allowed_axes=tuple(mirror_axes)))
    return ComposeTransforms(t)
