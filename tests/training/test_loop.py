"""The training loop (``multitalent.training.loop``): artefacts, exact resume, workers, dataset subsets,
the head prior and the non-finite stop."""

from __future__ import annotations

import json
import os

import pytest
import torch

from multitalent import objectives
from multitalent.errors import TrainingError, UserInputError
from multitalent.training import loop
from multitalent.training.checkpoint import load_checkpoint
from tests.helpers import small_cfg


@pytest.mark.slow  # 20 iterations
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


def test_bf16_on_the_cpu_trains_float32_weights_through_bfloat16_convolutions(pre, tmp_path, monkeypatch):
    from multitalent.training import step as step_module

    seen = []
    real = step_module.autocast

    def spy(device, dtype):
        seen.append((device.type, dtype))
        return real(device, dtype)

    monkeypatch.setattr(step_module, "autocast", spy)
    final = loop.train(pre.root, tmp_path / "run", small_cfg(epochs=1, iterations_per_epoch=2, amp="bf16"))
    assert seen and set(seen) == {("cpu", torch.bfloat16)}
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert torch.isfinite(torch.tensor(log[-1]["train_loss"]))
    weights = load_checkpoint(final).state_dict
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())
    with pytest.raises(UserInputError, match="fp16 needs a CUDA device"):
        loop.train(pre.root, tmp_path / "fp16", small_cfg(epochs=1, iterations_per_epoch=1, amp="fp16"))
    assert not (tmp_path / "fp16").exists()


@pytest.mark.slow  # three runs of up to 6 iterations
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


@pytest.mark.slow  # two runs of 9 iterations, one with 2 loader worker processes
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


def test_the_validation_batches_workers_are_started_once_per_run(pre, tmp_path, monkeypatch):
    """The validation loader's workers serve every epoch: with a loader per epoch, PyTorch waited 5.3 s per
    epoch on an H200 for its worker to exit. Three epochs with 2 workers start 3 worker processes in all: 2 for
    the training batches, 1 (half as many, as nnU-Net) for the validation batches (a loader per epoch: 8)."""
    from multitalent.data import loader as loader_module

    starts = tmp_path / "starts"
    starts.mkdir()
    real = loader_module._worker_init

    def counting(worker_id: int, parent: int | None = None) -> None:
        (starts / str(os.getpid())).touch()
        real(worker_id, parent)

    monkeypatch.setattr(loader_module, "_worker_init", counting)
    loop.train(pre.root, tmp_path / "r", small_cfg(epochs=3, num_workers=2, val_iterations=2))
    log = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2] and all(r["val_loss"] == r["val_loss"] for r in log)
    assert len(list(starts.iterdir())) == 3


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


def test_the_bce_weight_scales_the_bce_term_of_the_loss(pre, tmp_path, monkeypatch):
    seen = []
    real = objectives.loss_on_batch

    def spy(outs, batch, loss_fn, num_heads, bce_scale=1.0):
        seen.append(bce_scale)
        return real(outs, batch, loss_fn, num_heads, bce_scale)

    monkeypatch.setattr(objectives, "loss_on_batch", spy)
    loop.train(pre.root, tmp_path / "r", small_cfg(epochs=1, iterations_per_epoch=2, bce_weight=0.25))
    assert seen and set(seen) == {0.25}  # one process: the weight itself
    # weight x BCE - Dice: the pairs' loss with a BCE weight of 0 is minus the summed Dice alone
    from multitalent.loss import MultiTalentLoss

    torch.manual_seed(0)
    out, target = torch.randn(3, 1, 4, 4, 4), (torch.rand(3, 1, 4, 4, 4) > 0.5).float()
    heads = torch.tensor([0, 1, 1])
    fn = MultiTalentLoss(ds_weights=[1.0])
    full, dice_only = fn.pairs([out], [target], heads, 2), fn.pairs([out], [target], heads, 2, bce_scale=0.0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out.reshape(3, -1), target.reshape(3, -1),
                                                               reduction="none").mean(1).sum()
    assert torch.allclose(full - dice_only, bce) and dice_only < 0
    assert torch.allclose(fn.pairs([out], [target], heads, 2, bce_scale=0.25), dice_only + 0.25 * bce)
    for bad in (-1.0, float("nan")):
        with pytest.raises(UserInputError, match="--bce-weight"):
            loop.train(pre.root, tmp_path / "bad", small_cfg(epochs=1, bce_weight=bad))


def test_nonfinite_loss_stops_training_with_a_clear_message(pre, tmp_path, monkeypatch):
    def nan_loss(*a, **k):
        return torch.tensor(float("nan"), requires_grad=True)

    monkeypatch.setattr(objectives, "loss_on_batch", nan_loss)
    with pytest.raises(TrainingError, match="non-finite in 3 consecutive"):
        loop.train(pre.root, tmp_path / "r", small_cfg(max_nonfinite=3))
