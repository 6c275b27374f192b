"""Evaluation configuration: every field is a ``multitalent evaluate`` flag (no numpy, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from multitalent.config import option


@dataclass
class EvaluateConfig:
    difficult_threshold: float = option(75.0, "heads with a reference Dice below this (percent) count as "
                                              "difficult")
    workers: int = option(2, "parallel processes")
