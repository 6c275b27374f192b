"""Transfer learning: a trained MultiTalent network as the backbone for a new collection.

New output heads for the target collection; every backbone weight whose shape matches is copied. Three
phases (the paper's recipe): heads only, AdamW with linearly rising lr; the whole network, SGD with lr
rising linearly to ``lr``; then the standard poly schedule.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from multitalent.errors import UserInputError
from multitalent.models import head_parameters, load_backbone
from multitalent.training.checkpoint import load_checkpoint
from multitalent.training.config import FinetuneConfig
from multitalent.training.loop import Phase, standard_phases, train

log = logging.getLogger("multitalent")


def finetune_phases(cfg: FinetuneConfig) -> list[Phase]:
    """The three phases of fine-tuning; with ``from_scratch`` one poly phase of the same total length
    (head warm-up + whole-network warm-up + ``epochs``), so the baseline gets as many iterations."""
    ipe = cfg.iterations_per_epoch
    if cfg.from_scratch:
        return standard_phases(cfg, cfg.head_warmup_epochs + cfg.full_warmup_epochs + cfg.epochs)
    phases = []
    if cfg.head_warmup_epochs > 0:
        phases.append(Phase("head_warmup", cfg.head_warmup_epochs * ipe, "adamw", 0.0, cfg.head_lr, "linear", "heads"))
    if cfg.full_warmup_epochs > 0:
        phases.append(Phase("full_warmup", cfg.full_warmup_epochs * ipe, "sgd", 0.0, cfg.lr, "linear", "all"))
    phases += standard_phases(cfg)
    return phases


def finetune(model: str | os.PathLike, pre_target: str | os.PathLike, out: str | os.PathLike,
             cfg: FinetuneConfig) -> Path:
    """Fine-tune the network of ``model`` (run folder or checkpoint) on ``pre_target``."""
    ckpt = load_checkpoint(model)
    config = dict(ckpt["model_config"])
    kwargs = {k: v for k, v in config.items() if k != "name"}  # create_model stores options flat
    cfg.arch = config.get("name", cfg.arch)
    if cfg.arch == "swin_unetr":
        cfg.feature_size = kwargs.get("feature_size", cfg.feature_size)
    else:
        cfg.base_features = kwargs.get("base_features", cfg.base_features)
        cfg.n_stages = kwargs.get("n_stages", 0) or 0
    if cfg.batch_size == 0:
        cfg.batch_size = 2
    if cfg.arch != "swin_unetr" and cfg.n_stages:
        from multitalent.preprocessing.pipeline import Preprocessed

        available = Preprocessed.open(pre_target).plans.topology.n_stages
        if cfg.n_stages > available:
            raise UserInputError(f"{pre_target}: the pre-trained network has {cfg.n_stages} stages but this "
                                 f"collection's plans allow only {available}; preprocess the target with the "
                                 "pre-training's patch size and spacing.")

    def init(net: torch.nn.Module) -> None:
        if cfg.from_scratch:
            return
        head_names = {n for n, p in net.named_parameters() if any(p is q for q in head_parameters(net))}
        state = {k: v for k, v in ckpt["state_dict"].items() if k not in head_names}
        loaded, skipped = load_backbone(net, state)
        if not loaded:
            raise UserInputError(f"{ckpt['path']}: no backbone weight matches the target network's shapes; "
                                 "is the target preprocessed with the same patch size?")
        if skipped:
            log.warning("fine-tuning: %d backbone tensors did not match in shape and stay random", len(skipped))

    return train(pre_target, out, cfg, phases=finetune_phases(cfg), init_fn=init,
                 extra_meta={"pretrained": ckpt["path"], "from_scratch": cfg.from_scratch})
