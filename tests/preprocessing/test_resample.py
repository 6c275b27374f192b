"""Resampling (``multitalent.preprocessing.resample``): target shapes, thin structures, smooth images."""

import numpy as np
import pytest

from multitalent.preprocessing.resample import resample_image, resample_labels, target_shape


def test_target_shape_keeps_physical_extent():
    shape, spacing, target = (40, 100, 90), (5.0, 0.8, 0.8), (1.5, 1.0, 1.0)
    new = target_shape(shape, spacing, target)
    extent_before = np.array(shape) * spacing
    extent_after = np.array(new) * target
    assert np.all(np.abs(extent_after - extent_before) <= np.array(target) / 2 + 1e-9)


@pytest.mark.parametrize("offset", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("spacing, target", [((5.0, 0.8, 0.8), (1.5, 1.0, 1.0)), ((0.7, 0.7, 0.7), (1.5, 1.0, 1.0)),
                                             ((2.5, 0.6, 0.6), (1.5, 1.0, 1.0))])
def test_thin_structure_volume_survives_resampling(spacing, target, offset):
    """A vessel-like tube 6 mm thick keeps its physical volume within 10% (linear + 0.5 per label)."""
    shape = (target_shape((60, 60, 60), (1.0, 1.0, 1.0), spacing))
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    tube = ((yy - 30.3 - offset) ** 2 + (xx - 29.7) ** 2 <= 9) & (zz > 5) & (zz < 55)
    seg = tube.astype(np.int16) * 3
    new = target_shape(seg.shape, spacing, target)
    out = resample_labels(seg, spacing, new)
    assert set(np.unique(out)) <= {0, 3}
    vol_before = (seg > 0).sum() * np.prod(spacing)
    vol_after = (out > 0).sum() * np.prod(target)
    assert abs(vol_after / vol_before - 1) < 0.10
    assert out.shape == tuple(new)


def test_image_resampling_preserves_smooth_content():
    z, y, x = np.meshgrid(np.arange(20), np.arange(30), np.arange(30), indexing="ij")
    img = (np.sin(y / 5.0) * 100 + z * 2).astype(np.float32)
    out = resample_image(img, (1.0, 1.0, 1.0), (20, 60, 60))
    assert out.shape == (20, 60, 60)
    assert abs(out.mean() - img.mean()) < 2.0
