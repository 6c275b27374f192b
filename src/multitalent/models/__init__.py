"""Backbones with one output channel per head, behind one timm-style registry.

>>> model = create_model("plain_unet", plans, num_heads=12, base_features=8)
>>> rebuilt = create_model(**model.config, plans=plans, num_heads=12)
"""

from multitalent.models import swin as _swin  # noqa: F401  (registers swin_unetr)
from multitalent.models import unet as _unet  # noqa: F401  (registers plain_unet, resenc_unet)
from multitalent.models.core import (
    ARCHITECTURES,
    TRAINING_OPTIONS,
    MultiHeadNet,
    backbone_parameters,
    create_model,
    deep_supervision_scales,
    head_parameters,
    init_head_bias,
    list_models,
    load_backbone,
    model_options,
    register,
    replace_heads,
    training_options,
)

__all__ = [
    "ARCHITECTURES",
    "TRAINING_OPTIONS",
    "MultiHeadNet",
    "backbone_parameters",
    "create_model",
    "deep_supervision_scales",
    "head_parameters",
    "init_head_bias",
    "list_models",
    "load_backbone",
    "model_options",
    "register",
    "replace_heads",
    "training_options",
]
