"""CT normalisation: clip to the 0.5/99.5 percentiles of the collection's labelled foreground, then
subtract the mean and divide by the standard deviation of the clipped foreground (nnU-Net's scheme)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from multitalent.preprocessing.plans import Normalization


def sample_foreground(image: np.ndarray, seg: np.ndarray, rng: np.random.Generator, n: int = 10000) -> np.ndarray:
    """Up to ``n`` intensities drawn uniformly from the labelled voxels (seg > 0) of one case."""
    values = image[seg > 0]
    if values.size > n:
        values = rng.choice(values, size=n, replace=False)
    return values.astype(np.float32, copy=False)


def compute_normalization(samples: Sequence[np.ndarray]) -> Normalization:
    """Statistics over the pooled foreground samples of all cases."""
    pooled = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in samples]) if samples else np.zeros(0)
    if pooled.size == 0:
        return Normalization()
    lower, upper = np.percentile(pooled, [0.5, 99.5])
    clipped = np.clip(pooled, lower, upper)
    std = float(clipped.std())
    return Normalization(lower=float(lower), upper=float(upper), mean=float(clipped.mean()), std=max(std, 1e-8))


def normalize(image: np.ndarray, norm: Normalization, inplace: bool = False) -> np.ndarray:
    """Apply the CT normalisation; returns float32 (``image`` itself if ``inplace`` and it is float32)."""
    if inplace and image.dtype == np.float32:
        out = np.clip(image, norm.lower, norm.upper, out=image)
    else:
        out = np.clip(image.astype(np.float32, copy=False), norm.lower, norm.upper)
    out -= np.float32(norm.mean)
    out /= np.float32(norm.std)
    return out


AIR_HU = -1024.0  # what a CT scanner reports for air


def normalized_air(norm: Normalization) -> float:
    """Air after the normalisation: the value patches and volumes are padded with beyond the scan."""
    return float(normalize(np.array([AIR_HU], np.float32), norm)[0])
