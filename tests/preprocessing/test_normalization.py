"""CT normalisation (``multitalent.preprocessing.normalization``) on known values."""

import numpy as np
import pytest

from multitalent.preprocessing.normalization import compute_normalization, normalize


def test_normalization_statistics_on_known_values():
    samples = [np.arange(0, 1000, dtype=np.float32), np.arange(1000, 2001, dtype=np.float32)]
    n = compute_normalization(samples)
    pooled = np.arange(0, 2001, dtype=np.float64)
    lo, hi = np.percentile(pooled, [0.5, 99.5])
    assert n.lower == pytest.approx(lo) and n.upper == pytest.approx(hi)
    clipped = np.clip(pooled, lo, hi)
    assert n.mean == pytest.approx(clipped.mean()) and n.std == pytest.approx(clipped.std())
    out = normalize(np.array([-5000.0, n.mean, 5000.0]), n)
    assert out[1] == pytest.approx(0.0, abs=1e-6)
    assert out[0] == pytest.approx((lo - n.mean) / n.std, rel=1e-5)
