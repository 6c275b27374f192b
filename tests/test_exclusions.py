"""Exclusive heads (``multitalent.exclusions``, ``multitalent train --exclusions``): the file's checks, the
exclusion pairs the loader adds, their targets (background where another dataset's label is an excluded head,
unknown elsewhere), the loss that leaves the unknown voxels out, and a run that trains with them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from multitalent.data.loader import PatchBatches
from multitalent.data.targets import IGNORE, _expand_gather, batch_to_device
from multitalent.errors import UserInputError
from multitalent.exclusions import FORMAT, exclusion_rows, load_exclusions
from multitalent.loss import MultiTalentLoss
from multitalent.training import loop
from multitalent.training.checkpoint import load_checkpoint
from tests.helpers import small_cfg

# the tiny collection: D001 Liver (liver = labels 1 and 2, tumor = 2), D002 Spleen (spleen = 1)


def _write(tmp_path, exclusive, name="excl.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps({"format": FORMAT, "exclusive": exclusive}))
    return str(path)


def test_the_relation_is_symmetric_and_a_bad_file_is_refused_naming_it(pre, tmp_path):
    path = _write(tmp_path, {"D002_spleen": ["D001_liver", "D001_tumor"]})
    assert load_exclusions(path, pre.registry) == {"D001_liver": ["D002_spleen"], "D001_tumor": ["D002_spleen"],
                                                   "D002_spleen": ["D001_liver", "D001_tumor"]}
    for exclusive, msg in (({"D002_spleen": ["D001_lver"]}, "unknown head 'D001_lver'"),
                           ({"D001_liver": ["D001_tumor"]}, "heads of one dataset"),
                           ({"D001_liver": "D002_spleen"}, "must be a list of head ids")):
        with pytest.raises(UserInputError, match=msg) as e:
            load_exclusions(_write(tmp_path, exclusive), pre.registry)
        assert "excl.json" in str(e.value)
    (tmp_path / "bad.json").write_text(json.dumps({"exclusive": {}}))
    with pytest.raises(UserInputError, match="bad.json: expected"):
        load_exclusions(tmp_path / "bad.json", pre.registry)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(UserInputError, match="broken.json: not a readable JSON"):
        load_exclusions(tmp_path / "broken.json", pre.registry)
    with pytest.raises(UserInputError, match="missing.json: exclusions file not found"):
        load_exclusions(tmp_path / "missing.json", pre.registry)


def test_each_dataset_s_samples_give_negatives_to_the_heads_that_exclude_its_labels(pre, tmp_path):
    reg = pre.registry
    rel = load_exclusions(_write(tmp_path, {"D002_spleen": ["D001_liver"]}), reg)
    rows = exclusion_rows(reg, rel, 3)
    # on a liver case, the spleen head learns background on the liver (labels 1 and 2: the liver with its tumour)
    table, heads = rows["D001"]
    assert heads.tolist() == [reg.index("D002_spleen")] and table.tolist() == [[False, True, True]]
    # on a spleen case, the liver head learns background on the spleen; the tumour head excludes nothing here
    table, heads = rows["D002"]
    assert heads.tolist() == [reg.index("D001_liver")] and table.tolist() == [[False, True, False]]
    assert exclusion_rows(reg.subset(["D001"]), rel, 3) == {}  # a subset without the spleen: no pairs


def test_exclusion_pairs_have_no_positive_and_are_unknown_outside_the_excluded_labels(pre, tmp_path):
    reg = pre.registry
    rel = load_exclusions(_write(tmp_path, {"D002_spleen": ["D001_liver", "D001_tumor"]}), reg)
    cases = [c["case"] for c in pre.cases]
    plain = PatchBatches(pre, cases, 4, pre.plans.patch_size, [(1, 1, 1), (2, 2, 2)], seed=3)
    data = PatchBatches(pre, cases, 4, pre.plans.patch_size, [(1, 1, 1), (2, 2, 2)], seed=3, exclusions=rel)
    raw, ref = data[2], plain[2]
    assert torch.equal(raw["image"], ref["image"])  # the same samples: exclusions add pairs, nothing else
    batch = batch_to_device(raw, torch.device("cpu"))
    assert batch["ignore"] and not batch_to_device(ref, torch.device("cpu"))["ignore"]
    own = [reg.heads[int(h)].dataset == raw["datasets"][int(s)] for s, h in batch["pairs"]]
    assert batch["annotated"].tolist() == own
    assert len(batch["pairs"]) > len(ref["pairs"]) and set(raw["datasets"]) == {"D001", "D002"}
    known_rows = torch.split(raw["known_lut"], raw["pair_counts"])
    lut_rows = torch.split(raw["label_lut"], raw["pair_counts"])
    k = 0
    for s, ds in enumerate(raw["datasets"]):
        lab = raw["labels"][0][s].numpy()
        own = reg.indices_of(ds)
        for j in range(raw["pair_counts"][s]):
            head = int(batch["pairs"][k, 1])
            t = batch["targets"][0][k].numpy()
            if head in own:  # an annotated pair, exactly as without exclusions
                assert np.array_equal(t, reg.targets(lab, ds)[own.index(head)].astype(np.uint8))
            else:  # an exclusion pair: background on the excluded labels, unknown elsewhere, never positive
                excluded = np.isin(lab, [1, 2] if ds == "D001" else [1])
                assert np.array_equal(t == 0, excluded) and np.array_equal(t == IGNORE, ~excluded)
                # the gather a GPU uses builds the same known mask
                gathered = _expand_gather(raw["labels"][0][s], known_rows[s][j:j + 1])[0].numpy()
                assert np.array_equal(gathered, excluded) and not lut_rows[s][j].any()
            k += 1


def test_the_loss_leaves_unknown_voxels_out_and_computes_a_dice_only_beside_an_annotated_pair():
    torch.manual_seed(0)
    loss = MultiTalentLoss(ds_weights=[1.0])
    x = torch.randn(4, 4, 5, 6, requires_grad=True)
    t = (torch.rand(4, 4, 5, 6) > 0.6).to(torch.uint8)
    heads = torch.tensor([0, 1, 1, 2])
    # no unknown voxel and every pair annotated: the paper's loss
    plain = loss.pairs([x], [t], heads, 3)
    assert torch.allclose(loss.pairs([x], [t], heads, 3, ignore=IGNORE, annotated=torch.ones(4, dtype=torch.bool)),
                          plain)
    # pairs 2 and 3 are exclusion pairs: known background on half their voxels; head 1 has an annotated pair
    # (pair 1) in the batch, head 2 has none
    t2 = t.clone()
    t2[2:] = 0
    t2[2:, :2] = IGNORE
    annotated = torch.tensor([True, True, False, False])
    total = loss.pairs([x], [t2], heads, 3, ignore=IGNORE, annotated=annotated)
    total.backward()
    assert torch.all(x.grad[2:, :2] == 0) and torch.all(x.grad[2:, 2:] != 0)
    # by hand: BCE a voxel mean with the unknown voxels adding 0; Dice sums without them, and no Dice for head 2
    xs, ts = x.detach().reshape(4, -1), t2.reshape(4, -1).float()
    known = ts != IGNORE
    ts = torch.where(known, ts, torch.zeros(()))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(xs, ts, reduction="none") * known
    p = torch.sigmoid(xs) * known
    dice = []
    for rows in ([0], [1, 2]):  # head 0: pair 0; head 1: pairs 1 and 2 (its exclusion pair in the denominator)
        inter, psum, tsum = (p[rows] * ts[rows]).sum(), p[rows].sum(), ts[rows].sum()
        dice.append((2 * inter + 1e-5) / (psum + tsum + 1e-5))
    assert torch.allclose(total.detach(), bce.mean(1).sum() - sum(dice), atol=1e-5)


def test_a_run_trains_with_exclusions_and_records_them(pre, tmp_path):
    path = _write(tmp_path, {"D002_spleen": ["D001_liver"]})
    final = loop.train(pre.root, tmp_path / "run", small_cfg(exclusions=path, augment=False))
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["config"]["exclusions"] == path
    assert record["exclusions"] == {"D001_liver": ["D002_spleen"], "D002_spleen": ["D001_liver"]}
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train_loss"]) for r in log)
    assert load_checkpoint(final).iteration == 6
    # refused before anything is written: a bad file, and an objective without sigmoid heads
    for cfg, msg in ((small_cfg(exclusions=str(tmp_path / "none.json")), "exclusions file not found"),
                     (small_cfg(exclusions=path, objective="merged_softmax"), "has none")):
        with pytest.raises(UserInputError, match=msg):
            loop.train(pre.root, tmp_path / "refused", cfg)
        assert not (tmp_path / "refused").exists()


def test_the_phantom_collection_s_exclusive_heads_never_overlap_and_keep_the_conflicts_apart(tmp_path):
    from multitalent.phantoms import DATASETS, generate_case, head_recipe, phantom_exclusions
    from multitalent.registry import Head, HeadRegistry

    data = phantom_exclusions()
    registry = HeadRegistry([Head(id=h, dataset=d.id, name=h.split("_", 1)[1], labels=tuple(r["labels"]))
                             for d in DATASETS for h, r in head_recipe(d).items()],
                            {d.id: {} for d in DATASETS})
    assert data["format"] == FORMAT
    rel = load_exclusions(_write(tmp_path, data["exclusive"]), registry)
    assert "D005_liver" in rel["D006_heart"] and "D006_heart" in rel["D005_pancreas"]
    # overlapping protocols and organ/tumour pairs are not exclusive; the coarse spleen excludes nothing
    assert "D005_aorta" not in rel["D006_heart"] and "D006_aorta" not in rel.get("D005_aorta", [])
    assert "D005_liver" not in rel["D001_tumor"] and "D005_kidney_left" not in rel["D003_tumor"]
    assert "D007_spleen" not in rel
    # on cases of both body regions (thorax_002 reaches the abdomen), every exclusive pair's true masks are disjoint
    recipes = {h: r for d in DATASETS for h, r in head_recipe(d).items()}
    for ds, index in (("D005", 0), ("D006", 0), ("D006", 2)):
        case = generate_case(0, ds, index)
        masks = {h: np.any([case.truth_mask(s) for s in r["union"]], axis=0) for h, r in recipes.items()}
        for a, others in rel.items():
            for b in others:
                assert not np.any(masks[a] & masks[b]), (ds, index, a, b)

