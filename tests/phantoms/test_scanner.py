"""The simulated scanner (``multitalent.phantoms.scanner``) at full scale."""

from __future__ import annotations

import numpy as np

from multitalent.phantoms.scanner import make_frame, sample_scan


def test_full_scale_geometry() -> None:
    rng = np.random.default_rng(0)
    scan, size = sample_scan(rng, "both", "venous", "full")
    assert scan.shape[1:] == (512, 512) and 1.0 <= scan.spacing[0] <= 5.0 and 0.65 <= scan.spacing[1] <= 0.9
    frame = make_frame(rng, scan, size)
    extent = np.array(scan.shape[1:]) * np.array(scan.spacing[1:])
    assert extent.min() > 2 * 150 * size  # the body fits in plane
    box = frame.box(np.array([100.0, 20.0, 60.0]), np.array([110.0, 30.0, 70.0]))  # around the left kidney
    assert box is not None and all(0 <= s.start < s.stop <= n for s, n in zip(box, scan.shape, strict=True))
