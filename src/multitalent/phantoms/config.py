"""Phantom collection configuration: every field is a ``multitalent phantoms`` flag (no numpy, no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from multitalent.config import option

Scale = Literal["small", "full"]


@dataclass
class PhantomsConfig:
    seed: int = option(0, "random seed")
    scale: Scale = option("small", "small: ~3 mm voxels for CPU work; full: 512x512 slices")
