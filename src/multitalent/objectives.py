"""Objectives: what the network's outputs mean, how they are scored, and how prediction reads them.

One registry, used by training (the loss, the output count, whether the head prior applies) and by
prediction (a wrapper that turns the network's outputs into one logit per head):

- ``multitalent``: one sigmoid output per head; per head BCE minus batch Dice on the annotated
  (sample, head) pairs, summed over heads (:class:`multitalent.loss.MultiTalentLoss`);
- ``merged_softmax``: the baseline the paper argues against, one softmax over the union of classes
  (:mod:`multitalent.baselines`).

A new objective is a subclass of :class:`Objective` decorated with ``@register_objective("name")``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

from multitalent.data.targets import IGNORE
from multitalent.errors import UserInputError
from multitalent.loss import MultiTalentLoss
from multitalent.registry import HeadRegistry

OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator: register an :class:`Objective` under ``name``."""

    def deco(cls: type[Objective]) -> type[Objective]:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is registered twice")
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return deco


def get_objective(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise UserInputError(f"unknown objective {name!r}; choose one of: {', '.join(sorted(OBJECTIVES))}.")
    return OBJECTIVES[name]


class Objective:
    """An objective bound to a head registry and the deep-supervision weights of the outputs it scores.

    ``sum_fn`` sums a tensor over the training processes (batch Dice over the global batch under DDP);
    ``bce_scale`` multiplies the BCE term: the number of processes (each rank's BCE is a voxel mean of its share of
    the batch) times ``TrainConfig.bce_weight`` (the BCE's weight against the batch Dice; 1 in the paper).
    """

    name: ClassVar[str] = ""
    uses_head_prior: ClassVar[bool] = True  # sigmoid heads start at the head prior (models.init_head_bias)
    distributed: ClassVar[bool] = True  # can run under torchrun
    uses_exclusions: ClassVar[bool] = True  # its loss reads exclusion pairs (--exclusions)

    def __init__(self, registry: HeadRegistry, ds_weights: Sequence[float],
                 sum_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, bce_scale: float = 1.0) -> None:
        self.registry = registry
        self.num_heads = len(registry)
        self.ds_weights = list(ds_weights)
        self.sum_fn = sum_fn
        self.bce_scale = float(bce_scale)

    @staticmethod
    def num_outputs(registry: HeadRegistry) -> int:
        """Output channels of the network for ``registry``."""
        return len(registry)

    def loss(self, outs: Sequence[torch.Tensor], batch: dict) -> torch.Tensor:
        """The loss of the network's outputs (highest resolution first) on a batch on the device."""
        raise NotImplementedError

    def head_logits(self, out: torch.Tensor) -> torch.Tensor:
        """One logit per head from the network's highest-resolution output."""
        return out

    @classmethod
    def for_prediction(cls, net: nn.Module, registry: HeadRegistry) -> nn.Module:
        """``net`` wrapped so that it returns one logit per head (prediction, evaluation)."""
        return net


def loss_on_batch(model_out: torch.Tensor | Sequence[torch.Tensor], batch: dict, loss_fn: MultiTalentLoss,
                  num_heads: int, bce_scale: float = 1.0) -> torch.Tensor:
    """Select the annotated (sample, head) pairs of every output level and apply the loss to them (only
    those pairs are promoted to float32, not the whole output); a batch with exclusion pairs (``ignore``)
    leaves their unknown voxels out."""
    outs = model_out if isinstance(model_out, (list, tuple)) else [model_out]
    pairs = batch["pairs"]
    selected = [o[pairs[:, 0], pairs[:, 1]] for o in outs[: len(batch["targets"])]]
    return loss_fn.pairs(selected, batch["targets"][: len(selected)], pairs[:, 1], num_heads, bce_scale=bce_scale,
                         ignore=IGNORE if batch.get("ignore") else None, annotated=batch.get("annotated"))


@register_objective("multitalent")
class MultiTalentObjective(Objective):
    """One sigmoid head per (dataset, class); the masked BCE + batch-Dice loss, summed over heads."""

    def __init__(self, registry: HeadRegistry, ds_weights: Sequence[float],
                 sum_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, bce_scale: float = 1.0) -> None:
        super().__init__(registry, ds_weights, sum_fn, bce_scale)
        self.loss_fn = MultiTalentLoss(ds_weights=self.ds_weights, sum_fn=sum_fn)

    def loss(self, outs: Sequence[torch.Tensor], batch: dict) -> torch.Tensor:
        return loss_on_batch(list(outs), batch, self.loss_fn, self.num_heads, self.bce_scale)


@register_objective("merged_softmax")
class MergedSoftmaxObjective(Objective):
    """One softmax over the union of classes (same-name classes merged across datasets)."""

    uses_head_prior = False
    distributed = False  # a single-process baseline
    uses_exclusions = False  # one softmax: no per-head negatives

    def __init__(self, registry: HeadRegistry, ds_weights: Sequence[float],
                 sum_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, bce_scale: float = 1.0) -> None:
        from multitalent.baselines import MergedSoftmaxLoss, SoftmaxAsHeads

        super().__init__(registry, ds_weights, sum_fn, bce_scale)
        self.merged = MergedSoftmaxLoss(registry, len(self.ds_weights))
        self._to_heads = SoftmaxAsHeads(nn.Identity(), registry)

    @staticmethod
    def num_outputs(registry: HeadRegistry) -> int:
        from multitalent.baselines import union_classes

        return len(union_classes(registry)[0])

    def loss(self, outs: Sequence[torch.Tensor], batch: dict) -> torch.Tensor:
        outs = list(outs[: len(batch["targets"])])
        return self.merged(outs, batch["targets"], batch["pairs"])

    def head_logits(self, out: torch.Tensor) -> torch.Tensor:
        return self._to_heads.to(out.device)(out)

    @classmethod
    def for_prediction(cls, net: nn.Module, registry: HeadRegistry) -> nn.Module:
        from multitalent.baselines import SoftmaxAsHeads

        return SoftmaxAsHeads(net, registry)
