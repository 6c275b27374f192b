"""Target expansion (``multitalent.data.targets``): label maps to per-head masks on the CPU and the device."""

from __future__ import annotations

import json

import numpy as np
import torch

from multitalent.data.loader import PatchBatches
from multitalent.data.targets import _expand_cpu, _expand_gather, batch_to_device, label_dtype
from multitalent.preprocessing.pipeline import Preprocessed, run_preprocessing
from multitalent.registry import region_masks
from tests.helpers import blob_case, write_dataset


def test_target_expansion_paths_agree():
    """The CPU path (equality with label values) and the device path (gather) build the same masks as
    region_masks, for plain and multi-label heads; values beyond the table are background."""
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 8, size=(2, 6, 7, 8)).astype(np.uint8)
    lab[0, 0, 0, :3] = (9, 200, 255)  # beyond the table
    plain = [(1,), (3,), (7,)]
    regions = [(1, 2), (2,), (4, 5, 6), ()]
    for heads in (plain, regions):
        table = np.zeros((len(heads), 8), dtype=bool)
        for i, r in enumerate(heads):
            table[i, list(r)] = True
        expected = region_masks(lab[0], [r or (99,) for r in heads])
        got_cpu = _expand_cpu(lab[0], table)
        got_gather = _expand_gather(torch.from_numpy(lab[0]), torch.from_numpy(table)).numpy()
        assert np.array_equal(got_cpu, expected) and np.array_equal(got_gather, expected)
    assert label_dtype(256) == torch.uint8 and label_dtype(257) == torch.int16


def test_label_values_beyond_255(tmp_path):
    """MM-WHS-style label values (205, 500, 850) survive preprocessing, batches and target expansion."""
    rng = np.random.default_rng(1)
    cases = {}
    for i in range(2):
        img, seg = blob_case(rng, values=(1, 2, 3))
        cases[f"heart_{i}"] = (img, np.choose(seg, [0, 205, 500, 850]).astype(np.int16))
    write_dataset(tmp_path, 1, "Heart", {"myocardium": 205, "left_atrium": 500, "aorta": 850}, cases)
    (tmp_path / "m.json").write_text(json.dumps({"datasets": ["Dataset001_Heart"]}))
    pre = Preprocessed.open(run_preprocessing(tmp_path / "m.json", tmp_path / "pre", spacing=(2.0, 1.5, 1.5),
                                              patch_size=(8, 16, 16), workers=1, progress=False))
    data = PatchBatches(pre, ["heart_0", "heart_1"], 2, (8, 16, 16), [(1, 1, 1)], augment=True, fg_fraction=1.0)
    assert data.label_dtype == torch.int16
    for it in range(4):
        raw = data[it]
        batch = batch_to_device(raw, torch.device("cpu"))
        lab = raw["labels"][0].numpy()
        assert set(np.unique(lab)) <= {0, 205, 500, 850}
        expected = np.concatenate([pre.registry.targets(lab[b], "D001") for b in range(2)]).astype(np.uint8)
        assert np.array_equal(batch["targets"][0].numpy(), expected)
        # the gather used on a GPU gives the same masks
        gathered = [_expand_gather(raw["labels"][0][b], rows) for b, rows in
                    enumerate(torch.split(raw["label_lut"], raw["pair_counts"]))]
        assert np.array_equal(torch.cat(gathered).numpy().astype(np.uint8), expected)
    assert batch["targets"][0].sum() > 0
