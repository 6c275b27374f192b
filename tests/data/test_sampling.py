"""Case sampling (``multitalent.data.sampling``): inverse-square-root dataset shares, as specified and as drawn."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multitalent.data.loader import PatchBatches
from multitalent.data.sampling import case_probabilities


def test_inverse_sqrt_probabilities():
    ds = ["A"] * 4 + ["B"] * 16
    p = case_probabilities(ds, "inv_sqrt")
    assert p[0] / p[-1] == pytest.approx(2.0)  # sqrt(16 / 4)
    share_a = p[:4].sum()
    assert share_a == pytest.approx(2 / (2 + 4))  # shares grow as sqrt(n)
    assert case_probabilities(ds, "uniform")[:4].sum() == pytest.approx(0.2)
    assert case_probabilities(ds, "dataset_balanced")[:4].sum() == pytest.approx(0.5)


def test_empirical_sampling_frequencies_follow_inverse_sqrt(pre):
    data = PatchBatches(pre, [c["case"] for c in pre.cases], 1, pre.plans.patch_size, [(1, 1, 1)], augment=False)
    counts = Counter(data._sample(i, 0)[3] for i in range(600))
    # D001 has 3 cases, D002 has 2: expected shares sqrt(3) : sqrt(2)
    expected = np.sqrt(3) / (np.sqrt(3) + np.sqrt(2))
    assert counts["D001"] / 600 == pytest.approx(expected, abs=0.06)


# --- properties (hypothesis) ------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 60), min_size=1, max_size=6), seed=st.integers(0, 1000))
def test_sampling_probabilities(counts, seed):
    """inv_sqrt: probabilities sum to 1, each dataset's share is proportional to sqrt(n), so the ratio of two
    datasets' shares is sqrt(n_a / n_b); uniform: shares proportional to n; dataset_balanced: equal shares."""
    names = [f"D{i:03d}" for i in range(len(counts))]
    ds = [d for d, n in zip(names, counts) for _ in range(n)]
    ds = [ds[i] for i in np.random.default_rng(seed).permutation(len(ds))]
    arr = np.array(ds)
    modes = (("inv_sqrt", np.sqrt), ("uniform", lambda n: n), ("dataset_balanced", lambda n: 1.0))
    for mode, share_of in modes:
        p = case_probabilities(ds, mode)
        assert p.shape == (len(ds),) and np.all(p > 0)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        shares = np.array([p[arr == d].sum() for d in names])
        expected = np.array([share_of(float(n)) for n in counts])
        np.testing.assert_allclose(shares, expected / expected.sum(), rtol=1e-9)
        for d in names:  # the cases of one dataset are alike
            assert np.ptp(p[arr == d]) <= 1e-15
        if mode == "inv_sqrt" and len(counts) > 1:
            assert shares[0] / shares[1] == pytest.approx(np.sqrt(counts[0] / counts[1]), rel=1e-9)
