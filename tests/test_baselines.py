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


def test_softmax_as_heads_marks_a_head_where_the_argmax_is_one_of_its_classes():
    reg = _registry()  # classes: background, liver, tumor@D001, tumor@D002, spleen
    probs = torch.tensor([[0.1, 0.5, 0.2, 0.1, 0.1],  # liver wins
                          [0.3, 0.25, 0.05, 0.3, 0.1],  # a tie of background and tumor@D002 (1e-6 apart below)
                          [0.35, 0.4, 0.05, 0.1, 0.1]])  # liver wins; no head's classes reach one half
    probs[1, 3] += 1e-6
    heads = SoftmaxAsHeads(torch.nn.Identity(), reg)(torch.log(probs).T[None])[0].T  # [voxel, head]
    on = (heads > 0).tolist()
    # heads: D001_liver (liver + tumour@D001), D001_tumor, D002_liver, D002_tumor, D002_spleen
    assert on[0] == [True, False, True, False, False]
    assert on[1] == [False, False, False, True, False]
    assert on[2] == [True, False, True, False, False]  # the sum-above-one-half rule would mark nothing here
    assert heads[0, 0].item() == pytest.approx(float(torch.log(torch.tensor(0.5 / 0.1))), abs=1e-5)
    assert heads[0, 1].item() == pytest.approx(float(torch.log(torch.tensor(0.2 / 0.5))), abs=1e-5)


@pytest.mark.slow  # trains and predicts
def test_merged_softmax_training_runs(tiny_collection, tmp_path):
    from multitalent.preprocessing.pipeline import run_preprocessing

    pre = run_preprocessing(tiny_collection, tmp_path / "pre", spacing=(2.0, 2.0, 2.0), patch_size=(16, 32, 32),
                            workers=1, progress=False)
    ckpt = load_checkpoint(loop.train(pre, tmp_path / "run", small_cfg(objective="merged_softmax")))
    assert ckpt.config["objective"] == "merged_softmax"
    # background, liver, tumor@D001, spleen
    assert ckpt.state_dict[[k for k in ckpt.state_dict if "seg_layers.0.weight" in k][0]].shape[0] == 4
