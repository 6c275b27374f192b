"""Learning-rate phases (``multitalent.training.schedule``)."""

from __future__ import annotations

import pytest

from multitalent.training.schedule import Phase, phase_at


def test_poly_and_linear_phases():
    poly = Phase("p", 100, lr_start=1e-2)
    assert poly.lr(0) == pytest.approx(1e-2) and poly.lr(100) == 0.0
    assert poly.lr(50) == pytest.approx(1e-2 * 0.5**0.9)
    lin = Phase("l", 10, lr_start=0.0, lr_end=5e-4, schedule="linear")
    assert lin.lr(5) == pytest.approx(2.5e-4)
    phases = [Phase("a", 3), Phase("b", 4)]
    assert phase_at(phases, 2) == (0, 2) and phase_at(phases, 3) == (1, 0)
