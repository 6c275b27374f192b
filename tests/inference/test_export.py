"""The streamed export to the input's geometry (``multitalent.inference.export``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from multitalent.inference.export import MaskAssembler
from multitalent.preprocessing.pipeline import prepare_image, restore_channel
from tests.inference.helpers import scan


@pytest.mark.parametrize("code,spacing,target", [("RAS", (2.5, 0.8, 0.8), (1.5, 1.0, 1.0)),
                                                  ("LAS", (1.0, 1.0, 1.0), (4.0, 1.0, 1.0)),
                                                  ("LPS", (3.0, 2.0, 2.0), (1.0, 1.3, 1.3))])
def test_streamed_export_equals_restoring_whole_logit_volumes(code, spacing, target):
    """Chunk by chunk, one head at a time, the masks equal restore_channel(order=1) on the full volume > 0."""
    rng = np.random.default_rng(0)
    img, g = scan(shape=(24, 40, 36), spacing=spacing, code=code)
    resampled, props = prepare_image(img, g, target)
    noise = rng.normal(size=(2, *resampled.shape))
    logits = 20 * ndimage.gaussian_filter(noise, (0, 2, 2, 2)).astype(np.float32)
    asm = MaskAssembler(props, 2)
    z = 0
    while z < resampled.shape[0]:
        k = int(rng.integers(1, 5))
        asm(z, torch.from_numpy(logits[:, z : z + k].copy()))
        z += k
    asm.finish()
    for h in range(2):
        expected = restore_channel(logits[h], props, order=1, fill=-1.0) > 0
        assert np.array_equal(asm.mask(h).astype(bool), expected)
        assert asm.counts[h] == expected.sum()
