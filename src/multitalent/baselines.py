"""The merged-softmax baseline the paper argues against: one softmax over the union of all classes.

Classes of the same name are merged across datasets (one "liver" class for every dataset that has a
liver), except lesion classes, which stay per dataset (a liver tumour is not a kidney tumour). Each
sample's target is the union label map built from its own dataset's annotation; every class its
dataset does not annotate is background there, which is exactly the flaw MultiTalent avoids.

For prediction the network is wrapped so that it returns one logit per *head* (positive where the softmax's
argmax is one of the head's union classes); the sliding window, the export and the evaluation then treat it
like any MultiTalent model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multitalent.loss import deep_supervision_weights
from multitalent.registry import HeadRegistry


def union_classes(registry: HeadRegistry) -> tuple[list[str], list[list[int]], list[int]]:
    """(class names with background first, union classes of every head, the class each head paints).

    A head's "own" class is painted where its mask is set; nested heads (a tumour inside its organ)
    paint later so the more specific class wins. Its union classes are its own class plus the own
    classes of the heads nested in it (liver = liver + liver tumour).
    """
    names = ["background"]
    own: list[int] = []
    for h in registry.heads:
        key = f"{h.name.lower()}@{h.dataset}" if h.lesion else h.name.lower()
        if key not in names:
            names.append(key)
        own.append(names.index(key))
    members = []
    for i, h in enumerate(registry.heads):
        nested = [own[j] for j, g in enumerate(registry.heads)
                  if g.dataset == h.dataset and set(g.labels) <= set(h.labels)]
        members.append(sorted(set(nested) | {own[i]}))
    return names, members, own


def paint_order(registry: HeadRegistry) -> list[int]:
    """Heads ordered so that a head is painted after every head whose region contains its own."""
    return sorted(range(len(registry)), key=lambda i: -len(registry.heads[i].labels))


class MergedSoftmaxLoss(nn.Module):
    """Cross-entropy + batch soft Dice (foreground classes) over the union label map, with deep supervision."""

    def __init__(self, registry: HeadRegistry, n_outputs: int, smooth: float = 1e-5):
        super().__init__()
        self.names, _, own = union_classes(registry)
        self.register_buffer("own", torch.tensor(own, dtype=torch.long), persistent=False)
        self.order = paint_order(registry)
        self.weights = deep_supervision_weights(n_outputs)
        self.smooth = smooth

    def union_target(self, target: Tensor, pairs: Tensor, batch: int) -> Tensor:
        """[B, ...] union class index from the compact per-(sample, head) masks."""
        out = torch.zeros((batch, *target.shape[1:]), dtype=torch.long, device=target.device)
        rank = {h: r for r, h in enumerate(self.order)}
        for k in sorted(range(len(pairs)), key=lambda k: rank[int(pairs[k, 1])]):
            b, h = int(pairs[k, 0]), int(pairs[k, 1])
            out[b][target[k].bool()] = self.own[h].to(out.device)
        return out

    def forward(self, outputs: list[Tensor], targets: list[Tensor], pairs: Tensor) -> Tensor:
        total = None
        for w, o, t in zip(self.weights, outputs, targets):
            if w == 0:
                continue
            y = self.union_target(t, pairs, o.shape[0])
            ce = F.cross_entropy(o.float(), y)
            p = torch.softmax(o.float(), 1)
            onehot = F.one_hot(y, o.shape[1]).movedim(-1, 1).to(p.dtype)
            dims = (0, *range(2, p.ndim))
            inter, psum, tsum = (p * onehot).sum(dims), p.sum(dims), onehot.sum(dims)
            dice = ((2 * inter + self.smooth) / (psum + tsum + self.smooth))[1:].mean()
            term = w * (ce - dice)
            total = term if total is None else total + term
        return total


class SoftmaxAsHeads(nn.Module):
    """Wraps a merged-softmax network so it returns one logit per head (for prediction).

    A softmax decides by its argmax (nnU-Net's rule), so a head's logit is the log-ratio of the probability of its
    best union class to that of the best class outside it: positive exactly where the argmax is one of the head's
    classes. (The summed probability of the head's classes above one half, the sigmoid heads' rule, would leave a
    voxel unlabelled wherever no class reaches one half, which with many classes can be most of an organ.)
    """

    def __init__(self, net: nn.Module, registry: HeadRegistry):
        super().__init__()
        self.net = net
        _, members, _ = union_classes(registry)
        n_classes = max(max(m) for m in members) + 1
        self.members = [list(m) for m in members]
        self.others = [[c for c in range(n_classes) if c not in m] for m in members]

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        logp = torch.log_softmax(out.float(), 1)
        return torch.stack([logp[:, m].amax(1) - logp[:, o].amax(1) for m, o in zip(self.members, self.others)], 1)
