"""MONAI's SwinUNETR as a MultiTalent backbone (no deep supervision)."""

from __future__ import annotations

from multitalent.errors import UserInputError
from multitalent.models.core import MultiHeadNet, register
from multitalent.preprocessing.plans import Plans

# SwinUNETR with patch tokens of 2 and four patch-merging stages needs inputs divisible by 2**5
SWIN_DIVISOR = 32


@register("swin_unetr", options=("feature_size",))
def swin_unetr(plans: Plans, num_heads: int, deep_supervision: bool = False, *, feature_size: int = 48,
               use_checkpoint: bool = False, use_v2: bool = False, in_channels: int = 1) -> MultiHeadNet:
    """MONAI ``SwinUNETR`` (3D, patch tokens of 2). It has no deep supervision: ``deep_supervision`` is
    ignored and the model always returns one tensor.

    Options: ``feature_size`` (embedding size, a multiple of 12; default 48, 12 for small demos),
    ``use_checkpoint`` (gradient checkpointing), ``use_v2`` (SwinUNETR-v2 residual conv blocks),
    ``in_channels`` (default 1).
    """
    bad = [p for p in plans.patch_size if int(p) % SWIN_DIVISOR]
    if bad:
        suggestion = [max(SWIN_DIVISOR, int(p) // SWIN_DIVISOR * SWIN_DIVISOR) for p in plans.patch_size]
        raise UserInputError(f"swin_unetr needs a patch_size divisible by {SWIN_DIVISOR} on every axis; the "
                             f"plans' patch_size is {list(plans.patch_size)} (z, y, x). Set a patch such as "
                             f"{suggestion} in plans.json or pick a U-Net architecture.")
    bottleneck = [int(p) // SWIN_DIVISOR for p in plans.patch_size]
    if bottleneck == [1, 1, 1]:
        # the bottleneck would be a single voxel, where instance norm cannot train
        raise UserInputError(f"swin_unetr needs a patch_size larger than {SWIN_DIVISOR} on at least one axis "
                             f"(its bottleneck is patch/{SWIN_DIVISOR} and must hold more than one voxel); "
                             f"the plans' patch_size is {list(plans.patch_size)} (z, y, x).")
    if int(feature_size) < 12 or int(feature_size) % 12:
        raise UserInputError(f"swin_unetr feature_size must be a positive multiple of 12, "
                             f"got {feature_size}.")
    # imported here: MONAI takes seconds to import and only this architecture needs it
    from monai.networks.nets import SwinUNETR

    # current MONAI signature: the input size is no longer a constructor argument (img_size was removed)
    net = SwinUNETR(in_channels=in_channels, out_channels=num_heads, feature_size=int(feature_size),
                    use_checkpoint=bool(use_checkpoint), use_v2=bool(use_v2), spatial_dims=3)
    return MultiHeadNet(net, "swin_unetr", num_heads, ["out.conv.conv"], ds_scales=None, ds_module=None)
