"""Learning-rate schedules as data: a run is a list of :class:`Phase` (what is trained, with which
optimiser and learning-rate ramp). Plain training is one poly phase; fine-tuning is three."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

import torch

from multitalent.models import head_parameters
from multitalent.training.config import TrainConfig

OptimizerName = Literal["sgd", "adamw"]
ScheduleName = Literal["poly", "linear"]
ParamsName = Literal["all", "heads"]


@dataclass
class Phase:
    """A stretch of iterations with one optimiser and one learning-rate ramp.

    ``schedule``: "poly" (lr_start * (1 - t/n)^exponent) or "linear" (lr_start -> lr_end);
    ``params``: "all" or "heads" (only the output convolutions are trained).
    """

    name: str
    iterations: int
    optimizer: OptimizerName = "sgd"
    lr_start: float = 1e-2
    lr_end: float = 0.0
    schedule: ScheduleName = "poly"
    params: ParamsName = "all"

    def __post_init__(self) -> None:
        for name, kind in (("optimizer", OptimizerName), ("schedule", ScheduleName), ("params", ParamsName)):
            allowed = typing.get_args(kind)
            if getattr(self, name) not in allowed:
                raise ValueError(f"Phase {self.name!r}: {name} {getattr(self, name)!r} is not one of {allowed}")

    def lr(self, t: int, exponent: float = 0.9) -> float:
        frac = min(max(t / max(self.iterations, 1), 0.0), 1.0)
        if self.schedule == "poly":
            return self.lr_start * (1 - frac) ** exponent
        return self.lr_start + (self.lr_end - self.lr_start) * frac


def standard_phases(cfg: TrainConfig, epochs: int | None = None) -> list[Phase]:
    """nnU-Net's schedule: one SGD phase with poly decay over ``epochs`` (default ``cfg.epochs``) of
    ``cfg.iterations_per_epoch``, from ``cfg.lr``."""
    n = cfg.epochs if epochs is None else epochs
    return [Phase("train", n * cfg.iterations_per_epoch, "sgd", cfg.lr, 0.0, "poly", "all")]


def phase_at(phases: list[Phase], iteration: int) -> tuple[int, int]:
    """(phase index, iteration within the phase) of a global iteration."""
    start = 0
    for i, ph in enumerate(phases):
        if iteration < start + ph.iterations:
            return i, iteration - start
        start += ph.iterations
    return len(phases) - 1, phases[-1].iterations


def make_optimizer(phase: Phase, model: torch.nn.Module, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """The phase's optimiser over the parameters it trains (the others stop requiring gradients)."""
    params = list(head_parameters(model)) if phase.params == "heads" else list(model.parameters())
    for p in model.parameters():
        p.requires_grad_(phase.params == "all")
    for p in params:
        p.requires_grad_(True)
    if phase.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=phase.lr(0), weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=phase.lr(0), momentum=momentum, nesterov=True, weight_decay=weight_decay)
