"""Helpers of the inference tests (no tests here): a fake head registry, plans, a synthetic scan, pointwise
networks with known outputs and a ``Predictor`` around them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from multitalent import io
from multitalent.inference.config import PredictConfig
from multitalent.inference.predict import Predictor
from multitalent.preprocessing.plans import Plans
from multitalent.registry import Head, HeadRegistry

PATCH = (16, 32, 32)


def registry() -> HeadRegistry:
    """D001: nested regions (liver = {1, 2}, tumour = {2}); D002: plain labels."""
    heads = [Head("D001_liver", "D001", "liver", (1, 2)),
             Head("D001_tumor", "D001", "tumor", (2,), lesion=True),
             Head("D002_kidney", "D002", "kidney", (1,)), Head("D002_spleen", "D002", "spleen", (2,))]
    datasets = {"D001": {"name": "Liver", "labels": {"liver": [1, 2], "tumor": [2]},
                         "regions_class_order": [1, 2]},
                "D002": {"name": "Organs", "labels": {"kidney": [1], "spleen": [2]},
                         "regions_class_order": None}}
    return HeadRegistry(heads, datasets)


def plans(spacing=(2.0, 1.5, 1.5)) -> Plans:
    return Plans(spacing=list(spacing), patch_size=list(PATCH), batch_size=2)


def scan(shape=(22, 40, 36), spacing=(2.0, 1.5, 1.5), code="LPS") -> tuple[np.ndarray, io.Geometry]:
    """Air around a body (0 HU) holding an off-centre 'liver' box (100 HU) with a 'tumour' box (300 HU)."""
    img = np.full(shape, -1000.0, np.float32)
    img[2:-2, 3:-4, 5:-3] = 0
    img[4:14, 8:24, 9:25] = 100
    img[6:10, 10:16, 12:18] = 300
    return img, io.Geometry(shape, spacing, (12.0, -30.0, 7.5), io.direction_for(code))


def write_scan(path: Path, **kw) -> io.Geometry:
    img, g = scan(**kw)
    io.write_image(path, img.astype(np.int16), g)
    return g


class ThresholdNet(nn.Module):
    """Logit +10 where the (normalised = HU with default plans) input exceeds the head's threshold, else -10:
    liver > 50, tumour > 200, kidney > 50, spleen > 200. Pointwise, so every window agrees exactly."""

    def __init__(self, thresholds=(50.0, 200.0, 50.0, 200.0)) -> None:
        super().__init__()
        self.register_buffer("t", torch.tensor(thresholds).view(1, -1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > self.t, 10.0, -10.0)


class ConstNet(nn.Module):
    def __init__(self, heads: int, value: float) -> None:
        super().__init__()
        self.heads, self.value = heads, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], self.heads, *x.shape[2:]), self.value, device=x.device)


def fake_predictor(net: nn.Module | None = None, spacing=(2.0, 1.5, 1.5)) -> Predictor:
    return Predictor(net or ThresholdNet(), plans(spacing), registry(), (0, 1), torch.device("cpu"), "fake")


def quiet(**kw) -> PredictConfig:
    return PredictConfig(quiet=True, **kw)
