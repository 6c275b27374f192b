"""The streaming sliding window (``multitalent.inference.sliding_window``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from multitalent.inference.sliding_window import (
    gaussian_importance,
    sliding_window,
    weight_profile,
    window_starts,
)
from tests.inference.helpers import PATCH, ConstNet, ThresholdNet

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("shape", [(10, 20, 20), PATCH, (37, 70, 45)])
def test_every_voxel_is_covered_with_positive_weight(shape):
    for size, p in zip(shape, PATCH):
        size = max(size, p)  # smaller volumes are padded to the patch
        starts = window_starts(size, p, 0.5)
        assert starts[0] == 0 and starts[-1] + p == size
        assert all(b - a <= p // 2 for a, b in zip(starts, starts[1:]))
        assert np.all(weight_profile(size, p, 0.5) > 0)


def test_gaussian_importance_is_normalised_symmetric_and_without_zeros():
    g = gaussian_importance(PATCH)
    assert g.shape == PATCH and float(g.max()) == pytest.approx(1.0, abs=1e-3) and float(g.min()) > 0
    assert torch.equal(g, torch.flip(g, (0, 1, 2)))


@pytest.mark.parametrize("shape", [(10, 20, 20), PATCH, (37, 70, 45)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_constant_logits_come_back_unchanged(shape, dtype):
    img = torch.randn(1, *shape)
    out = sliding_window(ConstNet(3, 2.5), img, PATCH, 0.5, 3, (0, 1), accum_dtype=dtype)
    assert out.shape == (3, *shape)
    np.testing.assert_allclose(out.numpy(), 2.5, atol=1e-5 if dtype == torch.float32 else 5e-3)


def test_identity_net_with_mirroring_returns_the_input():
    """Flips are undone and the Gaussian weights sum to one at every voxel."""

    class Identity(nn.Module):
        def forward(self, x):
            return x.repeat(1, 2, 1, 1, 1)

    img = torch.randn(1, 30, 50, 41)
    out = sliding_window(Identity(), img, PATCH, 0.5, 2, (0, 1, 2))
    np.testing.assert_allclose(out[1].numpy(), img[0].numpy(), atol=1e-5)


def test_slabs_arrive_in_z_order_and_the_accumulator_is_one_patch_deep():
    seen, stats = [], {}
    img = torch.randn(1, 64, 40, 40)
    sliding_window(ConstNet(40, 1.0), img, PATCH, on_slab=lambda z, s: seen.append((z, s.shape[1])),
                   max_slab_bytes=40 * 40 * 40 * 4 * 5, stats=stats)
    assert [z for z, _ in seen] == list(np.cumsum([0] + [k for _, k in seen])[:-1])
    assert sum(k for _, k in seen) == 64 and max(k for _, k in seen) <= 5
    assert stats["accumulator_bytes"] == 40 * PATCH[0] * 40 * 40 * 4  # 1/4 of heads x volume here
    assert stats["windows"] == 7 * 2 * 2 and stats["forward_s"] > 0


def test_selected_heads_only_are_accumulated():
    out = sliding_window(ThresholdNet(), torch.full((1, 16, 32, 32), 100.0), PATCH, heads=[3, 0])
    assert out.shape[0] == 2 and float(out[0].max()) == -10.0 and float(out[1].min()) == 10.0


# --- properties (hypothesis) ------------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(size=st.integers(1, 300), patch=st.integers(1, 64), step=st.floats(0.05, 1.0))
def test_windows_cover_every_voxel_with_positive_weight(size, patch, step):
    padded = max(size, patch)  # sliding_window pads a volume smaller than the patch
    starts = window_starts(padded, patch, step)
    assert starts[0] == 0 and starts[-1] == padded - patch and starts == sorted(starts)
    if patch * step >= 1:  # (below one voxel per step, rounding repeats a start: harmless, only slower)
        assert len(set(starts)) == len(starts)
    covered = np.zeros(padded, bool)
    for s in starts:
        covered[s : s + patch] = True
    assert covered.all()
    assert all(b - a <= max(int(np.ceil(step * patch)), 1) for a, b in zip(starts, starts[1:]))
    assert np.all(weight_profile(padded, patch, step) > 0)


class _Ones(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 2, *x.shape[2:])


@settings(max_examples=15, deadline=None)
@given(shape=st.tuples(st.integers(1, 20), st.integers(1, 24), st.integers(1, 24)),
       patch=st.tuples(st.integers(2, 8), st.integers(2, 12), st.integers(2, 12)), step=st.floats(0.25, 1.0))
def test_sliding_window_weights_add_up_to_one_everywhere(shape, patch, step):
    """A network that outputs 1 everywhere gives 1 at every voxel: every voxel is covered and the Gaussian
    weights of the windows covering it sum to 1."""
    out = sliding_window(_Ones(), torch.zeros(1, *shape), patch, step, device="cpu")
    assert out.shape == (2, *shape)
    torch.testing.assert_close(out, torch.ones_like(out), rtol=1e-5, atol=1e-5)


# --- CUDA (run where a GPU is present; skipped elsewhere) ------------------------------------------
@cuda
def test_cuda_sliding_window_accumulates_in_float16_and_returns_the_constant():
    stats = {}
    out = sliding_window(ConstNet(3, 2.5), torch.randn(1, 37, 70, 45), PATCH, 0.5, 3, (0, 1), device="cuda",
                         stats=stats)
    assert stats["accumulator_dtype"] == "float16" and out.device.type == "cpu"
    np.testing.assert_allclose(out.numpy(), 2.5, atol=5e-3)
