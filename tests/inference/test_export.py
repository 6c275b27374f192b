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
                                                  ("LPS", (3.0, 2.0, 2.0), (1.0, 1.3, 1.3)),
                                                  ("RAS", (1.0, 0.7, 0.7), (1.0, 3.0, 1.0))])
@pytest.mark.parametrize("small", [False, True])
def test_streamed_export_equals_restoring_whole_logit_volumes(code, spacing, target, small):
    """Chunk by chunk, one head at a time, the masks equal restore_channel(order=1) on the full volume > 0;
    ``small``: a few small structures in a negative volume (only their in-plane box is interpolated)."""
    rng = np.random.default_rng(0)
    img, g = scan(shape=(24, 40, 36), spacing=spacing, code=code)
    resampled, props = prepare_image(img, g, target)
    noise = rng.normal(size=(2, *resampled.shape))
    logits = 20 * ndimage.gaussian_filter(noise, (0, 2, 2, 2)).astype(np.float32)
    if small:  # lower the field until only its highest peaks stay positive
        logits -= np.quantile(logits, 0.995, axis=(1, 2, 3), keepdims=True)
        assert 0 < (logits > 0).sum() < 0.01 * logits.size
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_export_on_cuda_equals_the_host_export():
    """Slabs on the GPU: thresholding and interpolation stay there; the masks equal those made on the host."""
    rng = np.random.default_rng(1)
    img, g = scan(shape=(24, 40, 36), spacing=(2.5, 0.8, 0.8), code="LPS")
    resampled, props = prepare_image(img, g, (1.5, 1.0, 1.0))
    logits = 20 * ndimage.gaussian_filter(rng.normal(size=(3, *resampled.shape)), (0, 2, 2, 2)).astype(np.float32)
    logits[2] -= np.quantile(logits[2], 0.995)
    host, gpu = MaskAssembler(props, 3), MaskAssembler(props, 3)
    for z in range(0, resampled.shape[0], 3):
        host(z, torch.from_numpy(logits[:, z : z + 3].copy()))
        gpu(z, torch.from_numpy(logits[:, z : z + 3].copy()).cuda())
    host.finish()
    gpu.finish()
    assert np.array_equal(host.packed, gpu.packed) and np.array_equal(host.counts, gpu.counts)
