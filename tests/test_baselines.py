"""The merged-softmax baseline: union classes, targets, the head view for prediction, training."""

import pytest
import torch

from multitalent.baselines import MergedSoftmaxLoss, SoftmaxAsHeads, union_classes
from multitalent.registry import Head, HeadRegistry
from multitalent.training import loop
from multitalent.training.checkpoint import load_checkpoint
from tests.helpers import small_cfg


def _registry() -> HeadRegistry:
    heads = [Head("D001_liver", "D001", "liver", (1, 2)), Head("D001_tumor", "D001", "tumor", (2,), lesion=True),
             Head("D002_liver", "D002", "liver", (1,)), Head("D002_tumor", "D002", "tumor", (2,), lesion=True),
             Head("D002_spleen", "D002", "spleen", (3,))]
    return HeadRegistry(heads, {"D001": {"regions_class_order": [1, 2]}, "D002": {"regions_class_order": None}})


def test_union_merges_organs_by_name_but_keeps_lesions_per_dataset():
    names, members, own = union_classes(_registry())
    assert names == ["background", "liver", "tumor@D001", "tumor@D002", "spleen"]
    assert own == [1, 2, 1, 3, 4]
    assert members[0] == [1, 2]  # the region liver = liver + its tumour
    assert members[2] == [1]


def test_union_target_paints_nested_heads_last():
    loss = MergedSoftmaxLoss(_registry(), n_outputs=1)
    liver = torch.tensor([[0, 1, 1, 1]], dtype=torch.uint8)
    tumor = torch.tensor([[0, 0, 1, 0]], dtype=torch.uint8)
    spleen = torch.tensor([[1, 0, 0, 0]], dtype=torch.uint8)
    targets = torch.cat([tumor, liver, spleen])  # pairs given in any order
    pairs = torch.tensor([[0, 1], [0, 0], [1, 4]])
    y = loss.union_target(targets, pairs, 2)
    assert y[0].tolist() == [0, 1, 2, 1] and y[1].tolist() == [4, 0, 0, 0]


def test_softmax_as_heads_sums_member_probabilities():
    reg = _registry()
    logits = torch.log(torch.tensor([0.1, 0.5, 0.2, 0.1, 0.1]))[None, :, None]
    heads = SoftmaxAsHeads(torch.nn.Identity(), reg)(logits)
    p = torch.sigmoid(heads)[0, :, 0]
    assert p[0].item() == pytest.approx(0.7, abs=1e-5)  # D001 liver = liver + tumour@D001
    assert p[1].item() == pytest.approx(0.2, abs=1e-5)
    assert p[2].item() == pytest.approx(0.5, abs=1e-5)


@pytest.mark.slow  # trains and predicts
def test_merged_softmax_training_runs(tiny_collection, tmp_path):
    from multitalent.preprocessing.pipeline import run_preprocessing

    pre = run_preprocessing(tiny_collection, tmp_path / "pre", spacing=(2.0, 2.0, 2.0), patch_size=(16, 32, 32),
                            workers=1, progress=False)
    ckpt = load_checkpoint(loop.train(pre, tmp_path / "run", small_cfg(objective="merged_softmax")))
    assert ckpt.config["objective"] == "merged_softmax"
    # background, liver, tumor@D001, spleen
    assert ckpt.state_dict[[k for k in ckpt.state_dict if "seg_layers.0.weight" in k][0]].shape[0] == 4
