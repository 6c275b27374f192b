"""``plans.json``: target spacing, patch, batch, CT normalisation and network topology."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from multitalent.errors import UserInputError, write_json

PAPER_SPACING = (1.5, 1.0, 1.0)
PAPER_PATCH = (96, 192, 192)
SMALL_SPACING = (4.0, 4.0, 4.0)
SMALL_PATCH = (32, 64, 64)


@dataclass
class Normalization:
    """CT normalisation: clip to [lower, upper] (0.5/99.5 foreground percentiles), then (x-mean)/std."""

    lower: float = -1000.0
    upper: float = 1000.0
    mean: float = 0.0
    std: float = 1.0


@dataclass
class Topology:
    """A U-Net topology as nnU-Net derives it from the patch size (all per-axis lists are z, y, x)."""

    features_per_stage: list[int]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]

    @property
    def n_stages(self) -> int:
        return len(self.features_per_stage)


def derive_topology(patch_size: tuple[int, ...] | list[int], spacing: tuple[float, ...] | list[float],
                    base_features: int = 32, max_features: int = 320, min_feature_map: int = 4,
                    max_stages: int = 7) -> Topology:
    """Pool an axis while its feature map stays >= ``min_feature_map`` voxels after pooling and its
    spacing is not more than twice the finest one (nnU-Net's rule for anisotropic data); kernels are
    3 on an axis except while the axis is much coarser than the others (then 1)."""
    shape = list(patch_size)
    sp = list(spacing)
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1, 1, 1]]
    features = [base_features]
    while True:
        kernels.append([3 if s <= 2 * min(sp) else 1 for s in sp])
        if len(features) >= max_stages:
            break
        stride = [2 if (shape[a] // 2 >= min_feature_map and sp[a] <= 2 * min(sp)) else 1 for a in range(3)]
        if max(stride) == 1:
            break
        strides.append(stride)
        shape = [s // st for s, st in zip(shape, stride)]
        sp = [s * st for s, st in zip(sp, stride)]
        features.append(min(features[-1] * 2, max_features))
    return Topology(features, kernels, strides)


@dataclass
class Plans:
    """Everything fixed before training, saved as ``plans.json`` in the preprocessed folder."""

    spacing: list[float] = field(default_factory=lambda: list(PAPER_SPACING))  # z, y, x in mm
    patch_size: list[int] = field(default_factory=lambda: list(PAPER_PATCH))  # z, y, x in voxels
    batch_size: int = 4
    normalization: Normalization = field(default_factory=Normalization)
    topology: Topology | None = None
    foreground_samples_per_head: int = 2000

    def __post_init__(self) -> None:
        if self.topology is None:
            self.topology = derive_topology(self.patch_size, self.spacing)

    def to_dict(self) -> dict:
        return {"format": "multitalent-plans/1", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> Plans:
        if not isinstance(d, dict) or d.get("format") != "multitalent-plans/1":
            raise UserInputError("not multitalent plans (missing format 'multitalent-plans/1').")
        d = {k: v for k, v in d.items() if k != "format"}
        d["normalization"] = Normalization(**d["normalization"])
        d["topology"] = Topology(**d["topology"]) if d.get("topology") else None
        return cls(**d)

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plans:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserInputError(f"{path}: cannot read plans ({e}).") from None
