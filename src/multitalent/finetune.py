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

from multitalent._callable import make_callable
from multitalent.errors import UserInputError
from multitalent.models import head_parameters, load_backbone
from multitalent.models.unet import NNUNET_MAX_FEATURES
from multitalent.training.checkpoint import load_checkpoint
from multitalent.training.config import FinetuneConfig
from multitalent.training.loop import train
from multitalent.training.schedule import Phase, standard_phases

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


FINETUNE_BATCH = 2  # the paper's fine-tuning batch size


def checkpoint_network(model_config: dict, cfg: FinetuneConfig) -> dict:
    """The training options that a checkpoint's ``model_config`` fixes (checkpoints written before
    ``max_features`` existed were built with nnU-Net's cap of 320 only when their features reached it)."""
    arch = model_config.get("name", cfg.arch)
    if arch == "swin_unetr":
        return {"arch": arch, "feature_size": model_config.get("feature_size", cfg.feature_size)}
    return {"arch": arch, "base_features": model_config.get("base_features", cfg.base_features),
            "max_features": model_config.get("max_features", NNUNET_MAX_FEATURES) or 0,
            "n_stages": model_config.get("n_stages") or 0}


def adopt_network(cfg: FinetuneConfig, model_config: dict, source: str) -> None:
    """Take the network's options from the pre-trained checkpoint.

    An option left at its default is replaced by the checkpoint's value (logged); an option set to another
    value than the checkpoint's is refused: the pre-trained weights fix the network.
    """
    defaults = FinetuneConfig()
    used = []
    for field, value in checkpoint_network(model_config, cfg).items():
        mine = getattr(cfg, field)
        if mine == value:
            continue
        if mine != getattr(defaults, field):
            flag = "--" + field.replace("_", "-")
            raise UserInputError(f"{source}: {flag} {mine} conflicts with the pre-trained network's {value}; "
                                 f"fine-tuning keeps the checkpoint's network, so leave {flag} out.")
        used.append(f"{field}={value}")
        setattr(cfg, field, value)
    if used:
        log.info("fine-tuning: the network comes from %s (%s)", source, ", ".join(used))


def finetune(model: str | os.PathLike, pre_target: str | os.PathLike, out: str | os.PathLike,
             cfg: FinetuneConfig) -> Path:
    """Fine-tune the network of ``model`` (run folder or checkpoint) on ``pre_target``."""
    ckpt = load_checkpoint(model)
    adopt_network(cfg, dict(ckpt.model_config), ckpt.path)
    if cfg.batch_size == 0:
        cfg.batch_size = FINETUNE_BATCH
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
        state = {k: v for k, v in ckpt.state_dict.items() if k not in head_names}
        loaded, skipped = load_backbone(net, state)
        if not loaded:
            raise UserInputError(f"{ckpt.path}: no backbone weight matches the target network's shapes; "
                                 "is the target preprocessed with the same patch size?")
        if skipped:
            log.warning("fine-tuning: %d backbone tensors did not match in shape and stay random", len(skipped))

    return train(pre_target, out, cfg, phases=finetune_phases(cfg), init_fn=init,
                 extra_meta={"pretrained": ckpt.path, "from_scratch": cfg.from_scratch})


make_callable(__name__)  # ``mt.finetune(...)`` also after ``import multitalent.finetune``
