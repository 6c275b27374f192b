"""The U-Nets (``multitalent.models.unet``): nnU-Net's topology, the paper's parameter counts, feature caps."""

from __future__ import annotations

import pytest
import torch

from multitalent.models import create_model, deep_supervision_scales
from multitalent.preprocessing.plans import Plans


def test_paper_plans_plain_unet_has_six_stages_32_to_320():
    model = create_model("plain_unet", Plans(), num_heads=13)
    encoder = model.backbone.encoder
    assert list(encoder.output_channels) == [32, 64, 128, 256, 320, 320]
    assert len(encoder.stages) == 6
    assert len(model.output_strides()) == 5 == len(deep_supervision_scales(Plans()))
    assert isinstance(encoder.stages[0][0].convs[0].norm, torch.nn.InstanceNorm3d)
    assert encoder.stages[0][0].convs[0].conv.bias is not None


@pytest.mark.slow  # builds the 30.8 M and 102 M parameter networks
def test_paper_plans_give_the_papers_parameter_counts():
    """nnU-Net's topology at 96x192x192 / 1.5x1x1 mm: 30.8 M (plain) and 102 M (residual) parameters with
    the defaults and with ``base_features=32`` (what ``multitalent train`` passes): the 320 cap holds."""
    for name, millions in (("plain_unet", 30.8), ("resenc_unet", 102.0)):
        for kw in ({}, {"base_features": 32}, {"base_features": 32, "max_features": 320}):
            model = create_model(name, Plans(), num_heads=47, **kw)
            n = sum(p.numel() for p in model.parameters()) / 1e6
            assert n == pytest.approx(millions, abs=0.1), (name, kw, n)
    uncapped = create_model("plain_unet", Plans(), num_heads=47, base_features=32, max_features=0)
    assert list(uncapped.backbone.encoder.output_channels) == [32, 64, 128, 256, 512, 1024]


def test_train_config_builds_the_papers_network():
    from multitalent.training.config import TrainConfig

    kw = TrainConfig().model_kwargs()
    assert kw["max_features"] == 320
    model = create_model("plain_unet", Plans(), num_heads=47, **kw)
    assert list(model.backbone.encoder.output_channels) == [32, 64, 128, 256, 320, 320]


def test_base_features_and_max_features_scale_the_topology():
    plans = Plans(spacing=[4.0, 4.0, 4.0], patch_size=[32, 64, 64])
    model = create_model("plain_unet", plans, 1, base_features=8, max_features=32)
    assert list(model.backbone.encoder.output_channels) == [8, 16, 32, 32, 32][: plans.topology.n_stages]
    resenc = create_model("resenc_unet", plans, 1, base_features=4, n_stages=5)
    assert [len(s.blocks) for s in resenc.backbone.encoder.stages] == [1, 3, 4, 6, 6]
