"""Preprocessing configuration: every field is a ``multitalent preprocess`` flag (no torch, no numpy).

A preset names the defaults of spacing, patch size and batch size; the flags given explicitly win
(:meth:`PreprocessConfig.resolved`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, get_args

from multitalent.config import option
from multitalent.errors import UserInputError
from multitalent.preprocessing.plans import PAPER_PATCH, PAPER_SPACING, SMALL_PATCH, SMALL_SPACING

Preset = Literal["paper", "small"]


@dataclass
class PreprocessConfig:
    preset: Preset = option("paper", "paper: 1.5x1x1 mm, patch 96x192x192, batch 4; small: CPU-sized")
    spacing: list[float] | None = option(None, "target spacing in mm (default: the preset's)", nargs=3,
                                         metavar=("Z", "Y", "X"))
    patch_size: list[int] | None = option(None, "patch size in voxels (default: the preset's)", nargs=3,
                                          metavar=("Z", "Y", "X"))
    batch_size: int | None = option(None, "batch size recorded in plans.json (default: the preset's)")
    workers: int = option(2, "parallel processes")

    def resolved(self) -> PreprocessConfig:
        """A copy with spacing, patch size and batch size taken from ``preset`` where they are None."""
        if self.preset == "paper":
            spacing, patch_size, batch_size = PAPER_SPACING, PAPER_PATCH, 4
        elif self.preset == "small":  # CPU-sized
            spacing, patch_size, batch_size = SMALL_SPACING, SMALL_PATCH, 2
        else:
            raise UserInputError(f"unknown preset {self.preset!r}; choose one of {list(get_args(Preset))}.")
        return dataclasses.replace(
            self, spacing=tuple(self.spacing) if self.spacing is not None else spacing,
            patch_size=tuple(self.patch_size) if self.patch_size is not None else patch_size,
            batch_size=self.batch_size if self.batch_size is not None else batch_size)
