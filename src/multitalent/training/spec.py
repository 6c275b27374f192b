"""The run specification: every option of a training run checked once, and everything derived from the
options and the preprocessed folder (head registry, cases of the fold, batch size, phases, the network and
its deep-supervision outputs). The loop only reads it."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from multitalent.device import amp_dtype
from multitalent.errors import UserInputError
from multitalent.exclusions import load_exclusions
from multitalent.loss import deep_supervision_weights
from multitalent.models import MultiHeadNet, create_model, init_head_bias
from multitalent.objectives import Objective, get_objective
from multitalent.preprocessing.pipeline import Preprocessed
from multitalent.preprocessing.plans import Plans
from multitalent.registry import HeadRegistry
from multitalent.training.config import TrainConfig
from multitalent.training.distributed import DistInfo
from multitalent.training.memory import preflight_memory
from multitalent.training.schedule import Phase, standard_phases


def split_cases(pre: Preprocessed, fold: str, datasets: list[str]) -> tuple[list[str], list[str]]:
    """Training and validation cases of a fold, restricted to ``datasets`` when given."""
    keep = {c["case"] for c in pre.cases if not datasets or c["dataset"] in datasets}
    if fold == "all":
        train = [c["case"] for c in pre.cases if c["case"] in keep]
        return train, train
    if fold not in pre.splits:
        raise UserInputError(f"--fold {fold}: choose one of {sorted(pre.splits)} or 'all'.")
    train = [c for c in pre.splits[fold]["train"] if c in keep]
    val = [c for c in pre.splits[fold]["val"] if c in keep] or train
    return train, val


@dataclass
class RunSpec:
    """A checked training run: build it with :func:`build_run`."""

    cfg: TrainConfig
    pre: Preprocessed
    out: Path
    registry: HeadRegistry
    objective: type[Objective]
    batch_size: int
    phases: list[Phase]
    train_cases: list[str]
    val_cases: list[str]
    device: torch.device
    dinfo: DistInfo
    ds_scales: list[tuple[int, int, int]] = field(default_factory=list)  # the outputs the loss uses
    ds_weights: list[float] = field(default_factory=list)
    n_outputs: int = 1  # outputs the network returns (the lowest may be weighted 0)
    extra_meta: dict = field(default_factory=dict)
    exclusions: dict[str, list[str]] | None = None  # --exclusions, checked (multitalent.exclusions)

    @property
    def plans(self) -> Plans:
        return self.pre.plans

    @property
    def total_iterations(self) -> int:
        return sum(p.iterations for p in self.phases)

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_iterations / self.cfg.iterations_per_epoch)

    @property
    def latest(self) -> Path:
        return self.out / "checkpoint_latest.pt"

    @property
    def final(self) -> Path:
        return self.out / "checkpoint_final.pt"

    @property
    def best(self) -> Path:
        return self.out / "checkpoint_best.pt"

    def record(self) -> dict:
        """The run's record (``config.json``; the checkpoints' ``run`` and ``config``)."""
        return {"config": asdict(self.cfg), "batch_size": self.batch_size, "world_size": self.dinfo.world_size,
                "train_cases": self.train_cases, "val_cases": self.val_cases, "heads": len(self.registry),
                "phases": [asdict(p) for p in self.phases], "preprocessed": str(self.pre.root.resolve()),
                **({"exclusions": self.exclusions} if self.exclusions else {}), **self.extra_meta}


def _check_options(cfg: TrainConfig, out: Path, dinfo: DistInfo,
                   objective: type[Objective] | None = None) -> type[Objective]:
    """The options that can be refused before anything is read; returns the objective."""
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out}: the output path exists and is a file; give a folder path instead.")
    latest = out / "checkpoint_latest.pt"
    if latest.exists() and not cfg.resume:
        raise UserInputError(f"{out}: already holds a training run; pass --resume to continue it or choose "
                             "another output folder.")
    if cfg.resume and not latest.exists():
        raise UserInputError(f"{latest}: not found; nothing to resume (drop --resume to start).")
    if cfg.num_workers < -1:
        raise UserInputError(f"--num-workers {cfg.num_workers}: give 0 or more, or -1 to choose automatically.")
    if not (cfg.bce_weight >= 0.0 and math.isfinite(cfg.bce_weight)):
        raise UserInputError(f"--bce-weight {cfg.bce_weight}: give a finite weight >= 0 (1: the paper's loss).")
    if not 0.0 <= cfg.head_prior < 1.0:
        raise UserInputError(f"--head-prior {cfg.head_prior}: give a probability in [0, 1) (0 keeps zero biases).")
    if not 0.0 <= cfg.fg_fraction <= 1.0:
        raise UserInputError(f"--fg-fraction {cfg.fg_fraction}: give a fraction in [0, 1] (the paper: 1/3).")
    objective = objective or get_objective(cfg.objective)
    if dinfo.enabled and not objective.distributed:
        raise UserInputError(f"the {objective.name} objective runs in one process; run it without torchrun.")
    if cfg.exclusions and not objective.uses_exclusions:
        raise UserInputError(f"--exclusions gives sigmoid heads negatives; the {objective.name} objective has none.")
    return objective


def _registry_for(cfg: TrainConfig, pre: Preprocessed, registry: HeadRegistry | None) -> HeadRegistry:
    registry = registry or pre.registry
    if cfg.datasets:
        unknown = [d for d in cfg.datasets if d not in pre.registry.dataset_ids]
        if unknown:
            raise UserInputError(f"--datasets: unknown id(s) {unknown}; the collection has {pre.registry.dataset_ids}.")
        registry = registry.subset(cfg.datasets)
    return registry


def build_run(pre_dir: str | os.PathLike, out: str | os.PathLike, cfg: TrainConfig, device: torch.device,
              dinfo: DistInfo, phases: list[Phase] | None = None, registry: HeadRegistry | None = None,
              extra_meta: dict | None = None,
              objective: type[Objective] | None = None) -> tuple[RunSpec, MultiHeadNet]:
    """Check every option against the preprocessed collection, build the network (seeded, with its head
    prior) and check that one training step fits the device's memory (:mod:`.memory`). Raises
    :class:`UserInputError` for anything a user can fix; writes nothing."""
    out = Path(out)
    objective = _check_options(cfg, out, dinfo, objective)
    amp_dtype(cfg.amp, device)  # --amp fp16 on the CPU is refused here, before the run folder exists
    pre = Preprocessed.open(pre_dir)
    exclusions = load_exclusions(cfg.exclusions, registry or pre.registry) if cfg.exclusions else None
    registry = _registry_for(cfg, pre, registry)
    batch_size = cfg.batch_size or pre.plans.batch_size
    if batch_size % dinfo.world_size:
        raise UserInputError(f"--batch-size {batch_size} must be divisible by the {dinfo.world_size} processes.")
    train_cases, val_cases = split_cases(pre, cfg.fold, cfg.datasets)
    if not train_cases:
        raise UserInputError(f"{pre.root}: no training cases for fold {cfg.fold} and datasets {cfg.datasets or 'all'}.")

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = create_model(cfg.arch, pre.plans, objective.num_outputs(registry),
                         deep_supervision=cfg.deep_supervision, **cfg.model_kwargs())
    if cfg.head_prior and objective.uses_head_prior:
        init_head_bias(model, cfg.head_prior)
    scales = model.output_strides()
    weights = deep_supervision_weights(len(scales))
    # outputs weighted 0 are never computed into the loss: their targets are not built either
    used = max([i for i, w in enumerate(weights) if w > 0] or [0]) + 1
    # one step's peak memory against what this device has: refused here (exit code 2, one line) rather
    # than killed by the kernel in the first step
    preflight_memory(model, cfg, pre.plans, batch_size, device, dinfo)
    spec = RunSpec(cfg=cfg, pre=pre, out=out, registry=registry, objective=objective, batch_size=batch_size,
                   phases=phases or standard_phases(cfg), train_cases=train_cases, val_cases=val_cases,
                   device=device, dinfo=dinfo, ds_scales=scales[:used], ds_weights=weights[:used],
                   n_outputs=len(scales), extra_meta=dict(extra_meta or {}), exclusions=exclusions)
    return spec, model
