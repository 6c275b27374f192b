"""Training: case sampling, batches, the loop, checkpoints and exact resume."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from multitalent import objectives
from multitalent.data import loader as loader_mod
from multitalent.data.loader import (
    MAX_AUTO_WORKERS,
    PatchBatches,
    auto_num_workers,
    batch_nbytes,
    crop_padded,
    shared_memory_warning,
)
from multitalent.data.sampling import case_probabilities
from multitalent.data.targets import _expand_cpu, _expand_gather, batch_to_device, label_dtype
from multitalent.errors import UserInputError
from multitalent.preprocessing.pipeline import Preprocessed, run_preprocessing
from multitalent.registry import region_masks
from multitalent.training import loop
from multitalent.training.checkpoint import load_checkpoint
from multitalent.training.config import TrainConfig
from multitalent.training.schedule import phase_at


@pytest.fixture
def pre(tiny_collection, tmp_path):
    out = run_preprocessing(tiny_collection, tmp_path / "pre", preset="small", spacing=(2.0, 2.0, 2.0),
                            patch_size=(16, 32, 32), workers=1, progress=False)
    return Preprocessed.open(out)


def small_cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, iterations_per_epoch=3, val_iterations=1, base_features=4, num_workers=0, quiet=True,
                fold="all")
    base.update(kw)
    return TrainConfig(**base)


def test_inverse_sqrt_probabilities():
    ds = ["A"] * 4 + ["B"] * 16
    p = case_probabilities(ds, "inv_sqrt")
    assert p[0] / p[-1] == pytest.approx(2.0)  # sqrt(16 / 4)
    share_a = p[:4].sum()
    assert share_a == pytest.approx(2 / (2 + 4))  # shares grow as sqrt(n)
    assert case_probabilities(ds, "uniform")[:4].sum() == pytest.approx(0.2)
    assert case_probabilities(ds, "dataset_balanced")[:4].sum() == pytest.approx(0.5)


def test_empirical_sampling_frequencies_follow_inverse_sqrt(pre):
    data = PatchBatches(pre, [c["case"] for c in pre.cases], 1, pre.plans.patch_size, [(1, 1, 1)], augment=False)
    counts = Counter(data._sample(i, 0)[3] for i in range(600))
    # D001 has 3 cases, D002 has 2: expected shares sqrt(3) : sqrt(2)
    expected = np.sqrt(3) / (np.sqrt(3) + np.sqrt(2))
    assert counts["D001"] / 600 == pytest.approx(expected, abs=0.06)


def test_crop_padded_fills_outside():
    vol = np.arange(27).reshape(3, 3, 3)
    out = crop_padded(vol, (0, 0, 0), (3, 3, 3), -1)
    assert out[1, 1, 1] == vol[0, 0, 0] and out[0, 0, 0] == -1


def test_batches_are_deterministic_and_compact(pre):
    data = PatchBatches(pre, [c["case"] for c in pre.cases], 2, pre.plans.patch_size, [(1, 1, 1), (2, 2, 2)], seed=7)
    raw = data[5]
    # the loader ships one label map per sample and level, not one mask per head
    assert raw["labels"][0].shape == (2, 16, 32, 32) and raw["labels"][1].shape == (2, 8, 16, 16)
    assert raw["labels"][0].dtype == torch.uint8 and "targets" not in raw
    a, b = batch_to_device(raw, torch.device("cpu")), batch_to_device(data[5], torch.device("cpu"))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["targets"][0], b["targets"][0])
    assert not torch.equal(a["image"], data[6]["image"])
    assert a["image"].shape == (2, 1, 16, 32, 32)
    # one target row per annotated (sample, head) pair, at every deep-supervision level
    k = len(a["pairs"])
    assert a["targets"][0].shape == (k, 16, 32, 32) and a["targets"][1].shape == (k, 8, 16, 16)
    assert sum(raw["pair_counts"]) == k and raw["label_lut"].shape[0] == k
    for s, h in a["pairs"].tolist():
        assert pre.registry.heads[h].dataset == a["datasets"][s]
    # the targets are each dataset's head masks (regions included) of the sample's label map
    for lvl in range(2):
        rows = []
        for s, ds in enumerate(a["datasets"]):
            rows.append(pre.registry.targets(raw["labels"][lvl][s].numpy(), ds))
        expected = np.concatenate(rows).astype(np.uint8)
        assert np.array_equal(a["targets"][lvl].numpy(), expected)
    assert a["targets"][0].sum() > 0


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


def test_global_batch_is_split_across_ranks(pre):
    cases = [c["case"] for c in pre.cases]
    whole = PatchBatches(pre, cases, 4, pre.plans.patch_size, [(1, 1, 1)], seed=1, augment=False)[3]
    halves = [PatchBatches(pre, cases, 4, pre.plans.patch_size, [(1, 1, 1)], seed=1, augment=False, rank=r,
                           world_size=2)[3] for r in range(2)]
    assert torch.equal(torch.cat([h["image"] for h in halves]), whole["image"])


def test_foreground_oversampling(tmp_path):
    from tests.conftest import write_dataset

    img = np.full((20, 48, 48), 40.0, np.float32)
    seg = np.zeros(img.shape, np.uint8)
    seg[8:11, 20:24, 30:34] = 1  # a small lesion: random patch centres rarely hit it
    write_dataset(tmp_path, 1, "Small", {"lesion": 1}, {"s0": (img, seg)})
    (tmp_path / "m.json").write_text(json.dumps({"datasets": ["Dataset001_Small"]}))
    pre = Preprocessed.open(run_preprocessing(tmp_path / "m.json", tmp_path / "pre", spacing=(2.0, 1.5, 1.5),
                                              patch_size=(4, 4, 4), workers=1, progress=False))

    def centre_hits(fraction: float) -> float:
        data = PatchBatches(pre, ["s0"], 1, (4, 4, 4), [(1, 1, 1)], augment=False, fg_fraction=fraction)
        return float(np.mean([batch_to_device(data[i], torch.device("cpu"))["targets"][0][:, 2, 2, 2].any().item()
                              for i in range(90)]))

    assert centre_hits(1.0) == 1.0
    assert centre_hits(0.0) < 0.1
    assert 0.2 < centre_hits(1 / 3) < 0.5


def test_train_writes_artefacts_and_loss_falls(pre, tmp_path):
    final = loop.train(pre.root, tmp_path / "run", small_cfg(epochs=4, iterations_per_epoch=5, augment=False,
                                                              lr=0.01))
    run = tmp_path / "run"
    for name in ("config.json", "checkpoint_latest.pt", "checkpoint_final.pt", "log.jsonl", "progress.png",
                 "heads.json"):
        assert (run / name).is_file(), name
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2, 3]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert 0 <= log[0]["data_wait_fraction"] <= 1 and set(log[0]["pseudo_dice"]) == set(pre.registry.ids)
    ckpt = load_checkpoint(final)
    assert ckpt.iteration == 20 and ckpt.heads["heads"][0]["id"] == "D001_liver"
    assert load_checkpoint(run).path.endswith("checkpoint_final.pt")


def test_resume_reaches_the_same_weights(pre, tmp_path, monkeypatch):
    cfg = small_cfg(epochs=3, iterations_per_epoch=2)
    straight = load_checkpoint(loop.train(pre.root, tmp_path / "a", cfg))

    real_save = loop.save_checkpoint
    calls = {"n": 0}

    def crash_after_first_epoch(path, payload):
        real_save(path, payload)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # the process dies right after the epoch-1 checkpoint

    monkeypatch.setattr(loop, "save_checkpoint", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        loop.train(pre.root, tmp_path / "b", cfg)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    with pytest.raises(UserInputError, match="--resume"):
        loop.train(pre.root, tmp_path / "b", cfg)
    cfg.resume = True
    resumed = load_checkpoint(loop.train(pre.root, tmp_path / "b", cfg))
    for k, v in straight.state_dict.items():
        assert torch.equal(v, resumed.state_dict[k]), k
    log = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2]


def test_workers_do_not_change_the_batches(pre, tmp_path):
    """One loader serves the whole run (its workers run on through the epochs' validations): with workers,
    every epoch gets the same batches as without, and training ends with the same weights."""
    a = load_checkpoint(loop.train(pre.root, tmp_path / "a", small_cfg(epochs=3, num_workers=0)))
    b = load_checkpoint(loop.train(pre.root, tmp_path / "b", small_cfg(epochs=3, num_workers=2)))
    for k, v in a.state_dict.items():
        assert torch.equal(v, b.state_dict[k]), k
    logs = [[json.loads(x) for x in (tmp_path / r / "log.jsonl").read_text().splitlines()] for r in "ab"]
    assert [r["train_loss"] for r in logs[0]] == [r["train_loss"] for r in logs[1]]
    assert [r["val_loss"] for r in logs[0]] == [r["val_loss"] for r in logs[1]]


def test_single_dataset_training_has_only_its_heads(pre, tmp_path):
    ckpt = load_checkpoint(loop.train(pre.root, tmp_path / "r", small_cfg(epochs=1, datasets=["D002"])))
    assert [h["id"] for h in ckpt.heads["heads"]] == ["D002_spleen"]
    with pytest.raises(UserInputError, match="unknown id"):
        loop.train(pre.root, tmp_path / "r2", small_cfg(epochs=1, datasets=["D009"]))


@pytest.mark.parametrize("prior", [0.01, 0.0])
def test_heads_start_at_the_prior(pre, tmp_path, prior):
    seen = []

    def spy(model):
        seen.extend(torch.sigmoid(h.bias.detach().clone()) for h in model.heads())

    loop.train(pre.root, tmp_path / "r", small_cfg(epochs=1, iterations_per_epoch=1, head_prior=prior), init_fn=spy)
    assert seen
    for probs in seen:
        assert torch.allclose(probs, torch.full_like(probs, prior or 0.5), atol=1e-6)


def test_nonfinite_loss_stops_training_with_a_clear_message(pre, tmp_path, monkeypatch):
    def nan_loss(*a, **k):
        return torch.tensor(float("nan"), requires_grad=True)

    monkeypatch.setattr(objectives, "loss_on_batch", nan_loss)
    with pytest.raises(loop.TrainingError, match="non-finite in 3 consecutive"):
        loop.train(pre.root, tmp_path / "r", small_cfg(max_nonfinite=3))


def test_poly_and_linear_phases():
    poly = loop.Phase("p", 100, lr_start=1e-2)
    assert poly.lr(0) == pytest.approx(1e-2) and poly.lr(100) == 0.0
    assert poly.lr(50) == pytest.approx(1e-2 * 0.5**0.9)
    lin = loop.Phase("l", 10, lr_start=0.0, lr_end=5e-4, schedule="linear")
    assert lin.lr(5) == pytest.approx(2.5e-4)
    phases = [loop.Phase("a", 3), loop.Phase("b", 4)]
    assert phase_at(phases, 2) == (0, 2) and phase_at(phases, 3) == (1, 0)


def test_automatic_loader_workers():
    assert auto_num_workers(3, "cuda", cores=64) == 3 and auto_num_workers(0, "cpu") == 0  # given: kept
    assert auto_num_workers(-1, "cpu", cores=64) == 2
    assert auto_num_workers(-1, "cuda", cores=16) == MAX_AUTO_WORKERS == 12
    assert auto_num_workers(-1, "cuda", cores=8) == 7
    assert auto_num_workers(-1, "cuda", local_processes=4, cores=32) == 7  # the node's cores are shared
    assert auto_num_workers(-1, "cuda", local_processes=8, cores=8) == 1  # never fewer than one


def test_label_values_beyond_255(tmp_path):
    """MM-WHS-style label values (205, 500, 850) survive preprocessing, batches and target expansion."""
    from tests.conftest import blob_case, write_dataset

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


def test_shared_memory_warning(pre, tmp_path, monkeypatch, caplog):
    data = PatchBatches(pre, [c["case"] for c in pre.cases], 2, pre.plans.patch_size, [(1, 1, 1), (2, 2, 2)])
    batch = data[0]
    shipped = sum(t.numel() * t.element_size() for t in [batch["image"], *batch["labels"]])
    assert batch_nbytes(data) == shipped
    assert shared_memory_warning(4, 10**6, shm=str(tmp_path)) is None  # plenty of room
    assert shared_memory_warning(0, 10**12, shm=str(tmp_path)) is None  # no workers, no shared memory
    assert shared_memory_warning(2, 10**6, shm=str(tmp_path / "missing")) is None
    free = shutil.disk_usage(tmp_path).free
    msg = shared_memory_warning(3, free // 2, shm=str(tmp_path))
    assert msg and "--shm-size" in msg and "--num-workers" in msg
    # the loop says it before training (here: shared memory smaller than one batch)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(loader_mod.shutil, "disk_usage", lambda path: usage._replace(free=shipped // 2))
    with caplog.at_level("WARNING", logger="multitalent"):
        loop.train(pre.root, tmp_path / "run", small_cfg(epochs=1, iterations_per_epoch=1, num_workers=1,
                                                          batch_size=2))
    assert any("bus error" in r.getMessage() for r in caplog.records)


def test_best_checkpoint_and_final_validation_on_whole_scans(pre, tmp_path):
    """The held-out fold is predicted from its raw scans and evaluated: RUN/validation/summary.json with a
    Dice for every head of the validated datasets; checkpoint_best.pt is the epoch of the best moving average
    of the pseudo-Dice, and ``--checkpoint best`` finds it."""
    run = tmp_path / "run"
    loop.train(pre.root, run, small_cfg(fold="0", epochs=3))
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    ema = [r["ema_pseudo_dice"] for r in records]
    dice = [r["mean_pseudo_dice"] for r in records]
    assert ema[0] == pytest.approx(dice[0]) and ema[1] == pytest.approx(0.9 * ema[0] + 0.1 * dice[1])
    best = load_checkpoint(run, which="best")
    assert best.path.endswith("checkpoint_best.pt")
    assert best.epoch == int(np.argmax(ema)) + 1
    meta = json.loads((run / "config.json").read_text())
    val_ds = {c["dataset"] for c in pre.cases if c["case"] in meta["val_cases"]}
    summary = json.loads((run / "validation" / "summary.json").read_text())
    assert val_ds and set(summary["datasets"]) == val_ds
    for h in pre.registry.heads:
        if h.dataset in val_ds:
            assert summary["heads"][h.id]["dice_mean"] is not None, h.id
    assert (run / "validation" / "summary.md").is_file()
    for case in meta["val_cases"]:  # predicted in the scan's own geometry
        ds = next(c["dataset"] for c in pre.cases if c["case"] == case)
        assert (run / "validation" / "predictions" / case / f"{ds}.nii.gz").is_file()
    with pytest.raises(UserInputError, match="checkpoint_best.pt"):
        load_checkpoint(tmp_path, which="best")
