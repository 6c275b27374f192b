"""Validation during training: the loss and the pseudo-Dice per head on fixed validation patches (hard
Dice over all patches pooled, nnU-Net's curve). Whole-scan validation at the end of a run is
:mod:`multitalent.training.validation`."""

from __future__ import annotations

import numpy as np
import torch

from multitalent.data.targets import batch_to_device
from multitalent.device import autocast
from multitalent.objectives import Objective
from multitalent.registry import HeadRegistry
from multitalent.training.distributed import DistInfo, reduce_detached


@torch.no_grad()
def validate(model: torch.nn.Module, loader, objective: Objective, registry: HeadRegistry,
             device: torch.device, amp: torch.dtype | None, dinfo: DistInfo) -> dict:
    """Validation loss and pseudo-Dice per head and dataset over the batches of ``loader``."""
    model.eval()
    h = len(registry)
    tp, fp, fn = (torch.zeros(h, dtype=torch.float64, device=device) for _ in range(3))
    losses = []
    for batch in loader:
        batch = batch_to_device(batch, device)
        with autocast(device, amp):
            out = model(batch["image"])
        out = out if isinstance(out, (list, tuple)) else [out]
        losses.append(float(objective.loss(out, batch)))
        pairs = batch["pairs"]
        pred = objective.head_logits(out[0])[pairs[:, 0], pairs[:, 1]] > 0
        gt = batch["targets"][0] > 0
        dims = tuple(range(1, pred.ndim))
        tp.index_add_(0, pairs[:, 1], (pred & gt).sum(dims).double())
        fp.index_add_(0, pairs[:, 1], (pred & ~gt).sum(dims).double())
        fn.index_add_(0, pairs[:, 1], (~pred & gt).sum(dims).double())
    stats = reduce_detached(torch.stack([tp, fp, fn]), dinfo).cpu().numpy()
    # each rank's loss is world_size * local BCE - global Dice: the sum over ranks / world_size is the
    # loss of the global batch
    val_loss = float(reduce_detached(torch.tensor([float(np.mean(losses)) if losses else float("nan")],
                                                  device=device), dinfo)[0]) / dinfo.world_size
    model.train()
    return {"val_loss": val_loss, **pseudo_dice(stats, registry)}


def pseudo_dice(stats: np.ndarray, registry: HeadRegistry) -> dict:
    """Per head, per dataset and mean pseudo-Dice from pooled (tp, fp, fn) counts [3, heads]; a head with
    neither truth nor prediction in any patch has none."""
    tp, fp, fn = stats
    denom = 2 * tp + fp + fn
    dice = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)
    per_head = {hd.id: (None if np.isnan(d) else float(d)) for hd, d in zip(registry.heads, dice)}
    per_ds = {}
    for ds in registry.dataset_ids:
        vals = [dice[i] for i in registry.indices_of(ds) if not np.isnan(dice[i])]
        if vals:
            per_ds[ds] = float(np.mean(vals))
    valid = [d for d in dice if not np.isnan(d)]
    return {"pseudo_dice": per_head, "pseudo_dice_per_dataset": per_ds,
            "mean_pseudo_dice": float(np.mean(valid)) if valid else None}
