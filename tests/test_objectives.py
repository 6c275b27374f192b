"""The objective registry: training and prediction read the same objective."""

from __future__ import annotations

import pytest
import torch

from multitalent.errors import UserInputError
from multitalent.objectives import (
    OBJECTIVES,
    MergedSoftmaxObjective,
    MultiTalentObjective,
    Objective,
    get_objective,
    register_objective,
)
from multitalent.registry import Head, HeadRegistry


def registry() -> HeadRegistry:
    return HeadRegistry([Head("D001_liver", "D001", "liver", (1, 2)), Head("D001_tumor", "D001", "tumor", (2,), True),
                         Head("D002_liver", "D002", "liver", (1,))])


def test_registry_holds_both_objectives_and_refuses_unknown_names():
    assert set(OBJECTIVES) >= {"multitalent", "merged_softmax"}
    assert get_objective("multitalent") is MultiTalentObjective
    with pytest.raises(UserInputError, match="unknown objective 'focal'"):
        get_objective("focal")
    with pytest.raises(ValueError, match="twice"):
        register_objective("multitalent")(type("Again", (Objective,), {}))


def test_output_counts_head_prior_and_torchrun():
    reg = registry()
    assert MultiTalentObjective.num_outputs(reg) == 3
    # background, liver (merged across datasets), tumor@D001
    assert MergedSoftmaxObjective.num_outputs(reg) == 3
    assert MultiTalentObjective.uses_head_prior and not MergedSoftmaxObjective.uses_head_prior
    assert MultiTalentObjective.distributed and not MergedSoftmaxObjective.distributed


def test_both_objectives_score_a_batch_and_predict_one_logit_per_head():
    reg = registry()
    torch.manual_seed(0)
    pairs = torch.tensor([[0, 0], [0, 1], [1, 2]])
    targets = [(torch.rand(3, 4, 4, 4) > 0.5).to(torch.uint8)]
    batch = {"pairs": pairs, "targets": targets}
    for cls in (MultiTalentObjective, MergedSoftmaxObjective):
        obj = cls(reg, [1.0])
        out = torch.randn(2, cls.num_outputs(reg), 4, 4, 4, requires_grad=True)
        loss = obj.loss([out], batch)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        assert out.grad is not None and out.grad.abs().sum() > 0
        assert obj.head_logits(out.detach()).shape == (2, 3, 4, 4, 4)
        net = cls.for_prediction(torch.nn.Conv3d(1, cls.num_outputs(reg), 1), reg)
        assert net(torch.zeros(1, 1, 4, 4, 4)).shape == (1, 3, 4, 4, 4)


def test_the_objective_flag_offers_exactly_the_registered_objectives():
    import typing

    from multitalent.training.config import TrainConfig

    hint = typing.get_type_hints(TrainConfig)["objective"]
    assert set(typing.get_args(hint)) == set(OBJECTIVES)
