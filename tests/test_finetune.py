"""Fine-tuning: new heads on a pre-trained backbone, the three phases, and the from-scratch baseline."""

from __future__ import annotations

import json

import pytest
import torch

from multitalent.errors import UserInputError
from multitalent.finetune import finetune, finetune_phases
from multitalent.preprocessing.pipeline import run_preprocessing
from multitalent.training import loop
from multitalent.training.checkpoint import load_checkpoint
from multitalent.training.config import FinetuneConfig, TrainConfig

COMMON = dict(iterations_per_epoch=2, val_iterations=0, num_workers=0, quiet=True, fold="all")


@pytest.fixture
def pretrained(tiny_collection, tmp_path):
    """A tiny network trained on the tiny collection, and the collection's preprocessed folder."""
    pre = run_preprocessing(tiny_collection, tmp_path / "pre", preset="small", spacing=(2.0, 2.0, 2.0),
                            patch_size=(16, 32, 32), workers=1, progress=False)
    cfg = TrainConfig(epochs=1, base_features=4, n_stages=3, **COMMON)
    return loop.train(pre, tmp_path / "pretrain", cfg), pre


def _split(state: dict, heads: set[str]) -> tuple[dict, dict]:
    backbone = {k: v for k, v in state.items() if k not in heads}
    return backbone, {k: v for k, v in state.items() if k in heads}


def _head_keys(ckpt: dict) -> set[str]:
    return {k for k in ckpt.state_dict if ".seg_layers." in k}  # the U-Net's output convolutions


def test_phases_follow_the_recipe():
    cfg = FinetuneConfig(epochs=3, iterations_per_epoch=10, head_warmup_epochs=1, full_warmup_epochs=2)
    names = [(p.name, p.iterations, p.optimizer, p.params, p.schedule) for p in finetune_phases(cfg)]
    assert names == [("head_warmup", 10, "adamw", "heads", "linear"), ("full_warmup", 20, "sgd", "all", "linear"),
                     ("train", 30, "sgd", "all", "poly")]
    head, full, poly = finetune_phases(cfg)
    assert head.lr(0) == 0.0 and head.lr(10) == pytest.approx(5e-4)
    assert full.lr(0) == 0.0 and full.lr(10) == pytest.approx(5e-3) and full.lr(20) == pytest.approx(1e-2)
    assert poly.lr(0) == pytest.approx(1e-2) and poly.lr(30) == 0.0
    # from scratch: as many iterations as the three phases, all poly
    cfg.from_scratch = True
    assert [(p.iterations, p.schedule, p.params) for p in finetune_phases(cfg)] == [(60, "poly", "all")]


def test_head_warmup_keeps_the_pretrained_backbone(pretrained, tmp_path):
    ckpt_path, pre = pretrained
    source = load_checkpoint(ckpt_path)
    cfg = FinetuneConfig(epochs=0, head_warmup_epochs=1, full_warmup_epochs=0, **COMMON)
    final = load_checkpoint(finetune(ckpt_path, pre, tmp_path / "ft", cfg))
    # the options of the pre-trained model were taken over (not the defaults of 32 features / all stages)
    assert final.model_config == source.model_config
    heads = _head_keys(final)
    assert heads
    src_backbone, _ = _split(source.state_dict, heads)
    ft_backbone, ft_heads = _split(final.state_dict, heads)
    # only the heads trained: every backbone tensor is the pre-trained one, bit for bit
    assert src_backbone.keys() == ft_backbone.keys()
    for k in src_backbone:
        assert torch.equal(src_backbone[k], ft_backbone[k]), k
    # the heads are new (the prior's bias after two small AdamW steps), not the pre-trained ones
    assert any(not torch.equal(v, source.state_dict[k]) for k, v in ft_heads.items())
    log = [json.loads(line) for line in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in log] == ["head_warmup"]
    meta = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert meta["from_scratch"] is False and meta["pretrained"]


def test_whole_network_phases_change_the_backbone(pretrained, tmp_path):
    ckpt_path, pre = pretrained
    source = load_checkpoint(ckpt_path)
    cfg = FinetuneConfig(epochs=1, head_warmup_epochs=1, full_warmup_epochs=1, **COMMON)
    final = load_checkpoint(finetune(ckpt_path, pre, tmp_path / "ft", cfg))
    log = [json.loads(line) for line in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in log] == ["head_warmup", "full_warmup", "train"]
    assert final.iteration == 6
    heads = _head_keys(final)
    backbone = _split(final.state_dict, heads)[0]
    assert [k for k, v in backbone.items() if not torch.equal(v, source.state_dict[k])]


def test_from_scratch_ignores_the_pretrained_weights(pretrained, tmp_path, monkeypatch):
    ckpt_path, pre = pretrained
    source = load_checkpoint(ckpt_path).state_dict
    first = "backbone.encoder.stages.0.0.convs.0.conv.weight"
    start = {}

    def spy_train(*args, init_fn=None, **kwargs):
        def spy(net):  # the weights the first step starts from
            if init_fn is not None:
                init_fn(net)
            start.update({k: v.detach().clone() for k, v in net.state_dict().items()})
        return loop.train(*args, init_fn=spy, **kwargs)

    monkeypatch.setattr("multitalent.finetune.train", spy_train)
    for scratch in (False, True):
        start.clear()
        cfg = FinetuneConfig(epochs=1, head_warmup_epochs=0, full_warmup_epochs=0, from_scratch=scratch, **COMMON)
        finetune(ckpt_path, pre, tmp_path / f"ft_{scratch}", cfg)
        assert torch.equal(start[first], source[first]) is (not scratch)
        heads = [k for k in start if "seg_layers" in k and k.endswith("bias")]
        assert heads and all(torch.allclose(torch.sigmoid(start[k]), torch.tensor(0.01)) for k in heads)


def test_a_backbone_of_another_shape_is_refused(pretrained, tmp_path, tiny_collection):
    ckpt_path, _ = pretrained
    other = run_preprocessing(tiny_collection, tmp_path / "pre_other", preset="small", spacing=(2.0, 2.0, 2.0),
                              patch_size=(8, 8, 8), workers=1, progress=False)
    cfg = FinetuneConfig(epochs=1, head_warmup_epochs=0, full_warmup_epochs=0, **COMMON)
    with pytest.raises(UserInputError) as err:
        finetune(ckpt_path, other, tmp_path / "ft", cfg)
    assert "has 3 stages" in str(err.value) and "pre_other" in str(err.value)
    assert not (tmp_path / "ft").exists()


def test_network_options_come_from_the_checkpoint_and_conflicts_are_refused():
    from multitalent.finetune import adopt_network

    ckpt_cfg = {"name": "plain_unet", "base_features": 4, "n_stages": 3}  # written before max_features existed
    cfg = FinetuneConfig()
    adopt_network(cfg, ckpt_cfg, "ckpt.pt")
    assert (cfg.arch, cfg.base_features, cfg.n_stages, cfg.max_features) == ("plain_unet", 4, 3, 320)
    cfg = FinetuneConfig(base_features=4)  # the same value as the checkpoint: fine
    adopt_network(cfg, ckpt_cfg, "ckpt.pt")
    for bad, flag in ((dict(arch="resenc_unet"), "--arch resenc_unet"), (dict(base_features=16), "--base-features 16"),
                      (dict(n_stages=5), "--n-stages 5")):
        with pytest.raises(UserInputError, match=f"ckpt.pt: {flag} conflicts"):
            adopt_network(FinetuneConfig(**bad), ckpt_cfg, "ckpt.pt")
    swin = {"name": "swin_unetr", "feature_size": 12}
    cfg = FinetuneConfig()
    adopt_network(cfg, swin, "s.pt")
    assert (cfg.arch, cfg.feature_size) == ("swin_unetr", 12)
    with pytest.raises(UserInputError, match="--feature-size 24 conflicts"):
        adopt_network(FinetuneConfig(feature_size=24), swin, "s.pt")


def test_finetune_batch_help_is_true():
    from multitalent.finetune import FINETUNE_BATCH
    from multitalent.training.config import FinetuneConfig as F

    field = {f.name: f for f in __import__("dataclasses").fields(F)}["batch_size"]
    assert str(FINETUNE_BATCH) in field.metadata["help"] and "plans.json" not in field.metadata["help"]
