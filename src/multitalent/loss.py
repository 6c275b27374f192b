"""MultiTalent's loss (paper, eq. 2): per-head BCE plus batch soft Dice over the annotated heads only.

For every head c, with A_c the samples of the batch whose source dataset annotates c:

    L_c = sum_{b in A_c} mean_v BCE(x_bcv, t_bcv)  -  (2 sum_{b in A_c, v} p t + s) / (sum p + sum t + s)

with p = sigmoid(x); the loss is the SUM of L_c over heads with A_c non-empty. Written by hand because
nnU-Net's and MONAI's losses neither mask heads per sample nor keep unannotated outputs out of the
gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def deep_supervision_weights(n: int) -> list[float]:
    """nnU-Net's deep-supervision weights: 1/2**i for output i (highest resolution first), the lowest
    resolution output weighted 0, normalised to sum 1; ``[1.0]`` for a single output."""
    if n < 1:
        raise ValueError(f"need at least one output, got {n}")
    if n == 1:
        return [1.0]
    w = [1.0 / 2**i for i in range(n)]
    w[-1] = 0.0
    total = sum(w)
    return [v / total for v in w]


class MultiTalentLoss(nn.Module):
    """Masked BCE + batch Dice, summed over the heads annotated in the batch.

    Args:
        ds_weights: weights of the deep-supervision outputs (highest resolution first); by default
            :func:`deep_supervision_weights` of the number of outputs given.
        smooth: Dice smoothing term.
        sum_fn: applied to the per-head sums, a [4, H] tensor (rows: intersection, prediction sum,
            target sum, number of annotated samples), before the Dice is computed; e.g. a differentiable
            all-reduce (``torch.distributed.nn.functional.all_reduce``) for a Dice over the global batch
            under DDP. Identity by default.
    """

    def __init__(self, ds_weights: Sequence[float] | None = None, smooth: float = 1e-5,
                 sum_fn: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        self.ds_weights = list(ds_weights) if ds_weights is not None else None
        self.smooth = float(smooth)
        self.sum_fn = sum_fn

    def _weights(self, n: int) -> list[float]:
        if self.ds_weights is None:
            return deep_supervision_weights(n)
        if len(self.ds_weights) != n:
            raise ValueError(f"{n} outputs but {len(self.ds_weights)} deep-supervision weights")
        return self.ds_weights

    def _per_head(self, logits: Tensor, target: Tensor, annotated: Tensor,
                  reduce: bool = True) -> dict[str, Tensor]:
        """Per-head BCE sum [H], Dice [H] and the [4, H] sums for one output level."""
        if logits.shape != target.shape:
            raise ValueError(f"outputs {tuple(logits.shape)} and targets {tuple(target.shape)} differ "
                             "in shape")
        b, h = logits.shape[:2]
        if tuple(annotated.shape) != (b, h):
            raise ValueError(f"annotated must be [B, H] = {[b, h]}, got {list(annotated.shape)}")
        # sums over many voxels in at least float32, also under autocast (float64 stays float64)
        x = logits.reshape(b, h, -1)
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        ann = annotated.to(device=x.device, dtype=torch.bool)
        mask = ann[:, :, None].expand_as(x)
        # select (torch.where), not multiply: unannotated logits/targets (even NaN/inf) never reach the
        # forward values, and their gradient is exactly 0 rather than 0 * grad
        x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
        t = target.reshape(b, h, -1).to(device=x.device, dtype=x.dtype)
        t = torch.where(mask, t, torch.zeros((), dtype=x.dtype, device=x.device))

        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        bce = F.binary_cross_entropy_with_logits(x, t, reduction="none").mean(-1)  # [B, H] voxel mean
        bce = torch.where(ann, bce, zero).sum(0)  # [H] sum over annotated samples

        p = torch.where(mask, torch.sigmoid(x), zero)
        sums = torch.stack([(p * t).sum((0, 2)), p.sum((0, 2)), t.sum((0, 2)), ann.sum(0).to(x.dtype)])
        if reduce and self.sum_fn is not None:
            sums = self.sum_fn(sums)
        inter, psum, tsum, count = sums
        dice = (2 * inter + self.smooth) / (psum + tsum + self.smooth)
        return {"bce": bce, "dice": dice, "sums": sums, "present": count > 0}

    def _level_loss(self, logits: Tensor, target: Tensor, annotated: Tensor) -> Tensor:
        r = self._per_head(logits, target, annotated)
        head_loss = r["bce"] - r["dice"]
        return torch.where(r["present"], head_loss, torch.zeros_like(head_loss)).sum()

    def forward(self, outputs: Tensor | list[Tensor], targets: Tensor | list[Tensor],
                annotated: Tensor) -> Tensor:
        """Total loss; ``outputs``/``targets`` are [B, H, ...] tensors or lists (one per deep-supervision
        level, highest resolution first), ``annotated`` is bool [B, H]."""
        if isinstance(outputs, Tensor):
            return self._level_loss(outputs, targets, annotated)
        outputs, targets = list(outputs), list(targets)
        if len(outputs) != len(targets):
            raise ValueError(f"{len(outputs)} outputs but {len(targets)} targets")
        total = None
        for w, o, t in zip(self._weights(len(outputs)), outputs, targets, strict=True):
            if w == 0:  # skip the work for zero-weighted outputs
                continue
            term = w * self._level_loss(o, t, annotated)
            total = term if total is None else total + term
        return total if total is not None else outputs[0].sum() * 0.0

    @torch.no_grad()
    def components(self, outputs: Tensor | list[Tensor], targets: Tensor | list[Tensor],
                   annotated: Tensor) -> dict[str, Tensor]:
        """Detached per-head values of the highest-resolution output, for logging: ``bce`` and ``dice``
        [H] (the loss's terms), ``annotated`` [H] (number of annotated samples), and hard ``tp``, ``fp``,
        ``fn`` [H] at probability 0.5 over the annotated samples (for nnU-Net's pseudo-Dice). Local to this
        process: ``sum_fn`` is not applied (sum tp/fp/fn across ranks yourself)."""
        if not isinstance(outputs, Tensor):
            outputs, targets = outputs[0], targets[0]
        r = self._per_head(outputs, targets, annotated, reduce=False)
        b, h = outputs.shape[:2]
        ann = annotated.to(device=outputs.device, dtype=torch.bool)[:, :, None]
        pred = (outputs.reshape(b, h, -1) > 0) & ann
        gt = (targets.reshape(b, h, -1) > 0.5) & ann
        return {"bce": r["bce"], "dice": r["dice"], "annotated": r["sums"][3],
                "tp": (pred & gt).sum((0, 2)), "fp": (pred & ~gt).sum((0, 2)), "fn": (~pred & gt).sum((0, 2))}

    def pairs(self, outputs: Sequence[Tensor], targets: Sequence[Tensor], heads: Tensor, num_heads: int,
              bce_scale: float = 1.0, ignore: int | None = None, annotated: Tensor | None = None) -> Tensor:
        """The same loss from compact pairs, as the training loop feeds it.

        ``outputs[l]``/``targets[l]`` are [K, ...]: the logits and targets of the K annotated (sample,
        head) pairs of the batch at deep-supervision level l; ``heads`` [K] is each pair's head index.
        Equals :meth:`forward` on the dense [B, H, ...] tensors, but the work scales with the annotated
        pairs rather than with B x H. ``bce_scale`` multiplies the BCE term (the number of processes
        under DDP, whose gradient averaging would otherwise shrink the local BCE sum).

        ``ignore``: a target value whose voxels are left out of both terms (the exclusion pairs'
        unknown voxels, :mod:`multitalent.exclusions`): they add nothing to the BCE, which stays a mean
        over all the pair's voxels, nor to the Dice's sums. None: every voxel counts (the paper's loss).
        ``annotated`` [K] bool: which pairs are annotated (the others are exclusion pairs, which have no
        positive voxel). A head's Dice is computed only in a batch with an annotated pair of it, and then
        over all its pairs (an exclusion pair adds the probability it puts on excluded voxels to the
        denominator); a head with exclusion pairs only gets their BCE alone. (A Dice over negatives only is
        s / (sum p + s): it rewards predicting nothing anywhere, and a first version that computed it made
        the heads of the smaller datasets collapse to background, ``docs/benchmarks.md``.) None: all are.
        """
        weights = self._weights(len(outputs))
        total = None
        for w, o, t in zip(weights, outputs, targets):
            if w == 0:
                continue
            k = o.shape[0]
            x = o.reshape(k, -1)
            x = x.to(torch.promote_types(x.dtype, torch.float32))
            t = t.reshape(k, -1)
            known = None
            if ignore is not None:
                known = t != ignore
                t = torch.where(known, t, torch.zeros((), dtype=t.dtype, device=t.device))
            tt = t.to(x.dtype)
            bce = F.binary_cross_entropy_with_logits(x, tt, reduction="none")
            p = torch.sigmoid(x)
            if known is not None:
                bce = torch.where(known, bce, torch.zeros((), dtype=x.dtype, device=x.device))
                p = torch.where(known, p, torch.zeros((), dtype=x.dtype, device=x.device))
            bce = bce.mean(1).sum()
            counts = (torch.ones(k, dtype=x.dtype, device=x.device) if annotated is None
                      else annotated.to(device=x.device, dtype=x.dtype))
            per_pair = torch.stack([(p * tt).sum(1), p.sum(1), tt.sum(1), counts])
            sums = torch.zeros(4, num_heads, dtype=x.dtype, device=x.device).index_add(1, heads.to(x.device), per_pair)
            if self.sum_fn is not None:
                sums = self.sum_fn(sums)
            inter, psum, tsum, count = sums
            dice = (2 * inter + self.smooth) / (psum + tsum + self.smooth)
            dice_sum = torch.where(count > 0, dice, torch.zeros_like(dice)).sum()
            term = w * (bce_scale * bce - dice_sum)
            total = term if total is None else total + term
        if total is None:
            return outputs[0].sum() * 0.0
        return total
