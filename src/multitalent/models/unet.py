"""nnU-Net style U-Nets from dynamic-network-architectures: plain and residual-encoder."""

from __future__ import annotations

import math

from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from multitalent.errors import UserInputError
from multitalent.models.core import MultiHeadNet, deep_supervision_scales, register
from multitalent.preprocessing.plans import Plans

# nnU-Net ResEnc presets: residual blocks per encoder stage (truncated to the number of stages)
RESENC_BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6)
# nnU-Net's cap on features per stage (the paper's networks: 32, 64, 128, 256, 320, 320)
NNUNET_MAX_FEATURES = 320


def _nnunet_ops() -> dict:
    """nnU-Net's defaults: Conv3d, InstanceNorm3d(eps 1e-5, affine), LeakyReLU(inplace), conv bias."""
    return dict(conv_op=nn.Conv3d, conv_bias=True, norm_op=nn.InstanceNorm3d,
                norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
                nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})


def _topology(plans: Plans, n_stages: int | None, base_features: int | None,
              max_features: int | None) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """Features, kernels and strides from ``plans.topology``, optionally truncated and rescaled; every
    stage is capped at ``max_features`` (None or 0: no cap)."""
    topo = plans.topology
    n = topo.n_stages if n_stages is None else int(n_stages)
    if not 2 <= n <= topo.n_stages:
        raise UserInputError(f"n_stages must be between 2 and {topo.n_stages} for these plans "
                             f"(patch {plans.patch_size}), got {n}.")
    features = list(topo.features_per_stage[:n])
    if base_features is not None:
        if int(base_features) < 1:
            raise UserInputError(f"base_features must be positive, got {base_features}.")
        features = [int(base_features) * 2 ** i for i in range(n)]
    if max_features is not None and int(max_features) < 0:
        raise UserInputError(f"max_features must be positive (or 0 for no cap), got {max_features}.")
    if max_features:
        features = [min(f, int(max_features)) for f in features]
    kernels = [list(k) for k in topo.kernel_sizes[:n]]
    strides = [list(s) for s in topo.strides[:n]]
    total = [math.prod(s[a] for s in strides) for a in range(3)]
    if any(p % t for p, t in zip(plans.patch_size, total, strict=True)):
        raise UserInputError(f"the plans' patch_size {list(plans.patch_size)} (z, y, x) is not divisible by "
                             f"the U-Net's total stride {total}; choose a patch divisible by it or fewer "
                             f"stages.")
    return features, kernels, strides


def _wrap(net: nn.Module, arch: str, num_heads: int, deep_supervision: bool, plans: Plans,
          n_stages: int) -> MultiHeadNet:
    # nnU-Net's initialisation (He with neg. slope 1e-2; ResEnc: last norm of each block 0)
    net.apply(net.initialize)
    heads = [f"decoder.seg_layers.{i}" for i in range(len(net.decoder.seg_layers))]
    return MultiHeadNet(net, arch, num_heads, heads, ds_scales=deep_supervision_scales(plans, n_stages),
                        ds_module="decoder", deep_supervision=deep_supervision)


@register("plain_unet", options=("base_features", "max_features", "n_stages"))
def plain_unet(plans: Plans, num_heads: int, deep_supervision: bool = True, *,
               base_features: int | None = None, max_features: int | None = NNUNET_MAX_FEATURES,
               n_stages: int | None = None, n_conv_per_stage: int = 2, n_conv_per_stage_decoder: int = 2,
               in_channels: int = 1) -> MultiHeadNet:
    """nnU-Net's plain convolutional U-Net (``PlainConvUNet``) with the topology of ``plans``.

    Options: ``base_features`` (features 2**i * base per stage instead of the plans'), ``max_features``
    (cap on features per stage, nnU-Net's 320 by default; 0 or None: no cap), ``n_stages`` (keep only
    the first stages of the topology, >= 2),
    ``n_conv_per_stage`` / ``n_conv_per_stage_decoder`` (default 2), ``in_channels`` (default 1, CT).
    """
    features, kernels, strides = _topology(plans, n_stages, base_features, max_features)
    n = len(features)
    net = PlainConvUNet(in_channels, n, features, kernel_sizes=kernels, strides=strides,
                        n_conv_per_stage=int(n_conv_per_stage), num_classes=num_heads,
                        n_conv_per_stage_decoder=int(n_conv_per_stage_decoder),
                        deep_supervision=deep_supervision, **_nnunet_ops())
    return _wrap(net, "plain_unet", num_heads, deep_supervision, plans, n)


@register("resenc_unet", options=("base_features", "max_features", "n_stages"))
def resenc_unet(plans: Plans, num_heads: int, deep_supervision: bool = True, *,
                base_features: int | None = None, max_features: int | None = NNUNET_MAX_FEATURES,
                n_stages: int | None = None,
                n_conv_per_stage_decoder: int = 1, in_channels: int = 1) -> MultiHeadNet:
    """nnU-Net's residual-encoder U-Net (``ResidualEncoderUNet``, ResEnc-M layout: 1, 3, 4, 6, 6, 6(, 6)
    basic blocks per encoder stage, one conv per decoder stage) with the topology of ``plans``.

    Options as for ``plain_unet``: ``base_features``, ``max_features``, ``n_stages``,
    ``n_conv_per_stage_decoder`` (default 1), ``in_channels``.
    """
    features, kernels, strides = _topology(plans, n_stages, base_features, max_features)
    n = len(features)
    blocks = [RESENC_BLOCKS_PER_STAGE[min(i, len(RESENC_BLOCKS_PER_STAGE) - 1)] for i in range(n)]
    net = ResidualEncoderUNet(in_channels, n, features, kernel_sizes=kernels, strides=strides,
                              n_blocks_per_stage=blocks, num_classes=num_heads,
                              n_conv_per_stage_decoder=int(n_conv_per_stage_decoder),
                              deep_supervision=deep_supervision, **_nnunet_ops())
    return _wrap(net, "resenc_unet", num_heads, deep_supervision, plans, n)
