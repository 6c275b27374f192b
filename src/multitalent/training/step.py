"""The training step: forward, loss, and an optimiser step with gradient clipping, mixed precision and the
non-finite policy; the phase (optimiser, learning rate) of every iteration. The training loop and
``benchmarks/train_throughput.py`` both run this class, so that what is timed is what trains.

It imports no data loading (SimpleITK, batchgeneratorsv2): a GPU box measuring the step does not need them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from multitalent.device import amp_dtype, autocast
from multitalent.errors import TrainingError
from multitalent.objectives import Objective
from multitalent.training.config import TrainConfig
from multitalent.training.distributed import DistInfo, reduce_detached, wrap_ddp
from multitalent.training.schedule import Phase, make_optimizer, phase_at

log = logging.getLogger("multitalent")


class TrainStep:
    """One optimisation step of ``model`` under ``cfg`` (momentum, weight decay, clipping, ``--amp``,
    ``--compile``, ``--max-nonfinite``) through ``phases``.

    ``keep_outputs``: under DDP, the number of outputs the loss uses (the zero-weighted lowest output
    gets no gradient, so DDP must not wait for it). ``on_nonfinite_stop`` is called before the error of
    too many consecutive non-finite losses is raised and returns a sentence for its message (the loop
    waits for its checkpoint writer there and names the last good checkpoint).
    """

    def __init__(self, model: torch.nn.Module, objective: Objective, cfg: TrainConfig, phases: Sequence[Phase],
                 device: torch.device, dinfo: DistInfo | None = None, keep_outputs: int | None = None,
                 channels_last: bool = False) -> None:
        self.model = model
        self.objective = objective
        self.cfg = cfg
        self.phases = list(phases)
        self.device = device
        self.dinfo = dinfo or DistInfo()
        self.keep_outputs = keep_outputs
        self.channels_last = channels_last
        self.amp = amp_dtype(cfg.amp, device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        self.phase_idx = phase_at(self.phases, 0)[0]
        self.optimizer = self._optimizer()
        self.net = self._wrap()
        self.nonfinite_run = 0
        self.skipped = 0  # steps skipped since the last reset_counts()
        self.on_nonfinite_stop: Callable[[], str] | None = None

    def _optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.phases[self.phase_idx], self.model, self.cfg.momentum, self.cfg.weight_decay)

    def _wrap(self) -> torch.nn.Module:
        net = wrap_ddp(self.model, self.dinfo, self.device, keep_outputs=self.keep_outputs)
        return torch.compile(net) if self.cfg.compile else net

    def start_at(self, iteration: int, optimizer_state: dict | None = None, phase: int | None = None,
                 scaler_state: dict | None = None) -> None:
        """Position the step at ``iteration`` (resume): its phase's optimiser, with the saved state when
        the checkpoint was written in the same phase."""
        self.phase_idx = phase_at(self.phases, iteration)[0]
        self.optimizer = self._optimizer()
        if optimizer_state is not None and phase == self.phase_idx:
            self.optimizer.load_state_dict(optimizer_state)
        if self.scaler is not None and scaler_state:
            self.scaler.load_state_dict(scaler_state)

    def set_iteration(self, iteration: int) -> None:
        """Switch phase when ``iteration`` starts a new one, and set its learning rate."""
        idx, t_in = phase_at(self.phases, iteration)
        if idx != self.phase_idx:
            self.phase_idx = idx
            self.optimizer = self._optimizer()
            if self.dinfo.enabled:  # DDP syncs only the parameters that required grad when it was built
                del self.net
                self.net = self._wrap()
        for g in self.optimizer.param_groups:
            g["lr"] = self.phases[idx].lr(t_in, self.cfg.poly_exponent)

    @property
    def phase(self) -> Phase:
        return self.phases[self.phase_idx]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        with autocast(self.device, self.amp):
            out = self.net(image)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def __call__(self, batch: dict, iteration: int = -1) -> float | None:
        """One step on a batch on the device; the loss, or None when it was non-finite and skipped."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.objective.loss(self.forward(batch["image"]), batch)
        finite = torch.isfinite(loss.detach())
        if self.dinfo.enabled:  # every rank skips together
            finite = reduce_detached(finite.float(), self.dinfo) == self.dinfo.world_size
        if not bool(finite):
            self._skip(iteration)
            return None
        self.nonfinite_run = 0
        params = self.model.parameters()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            self.optimizer.step()
        return float(loss.detach())

    def _skip(self, iteration: int) -> None:
        """The non-finite policy: skip the step; stop after ``max_nonfinite`` consecutive ones."""
        self.skipped += 1
        self.nonfinite_run += 1
        log.warning("iteration %d: non-finite loss, step skipped", iteration)
        if self.nonfinite_run >= self.cfg.max_nonfinite:
            where = self.on_nonfinite_stop() if self.on_nonfinite_stop is not None else ""
            raise TrainingError(f"the loss was non-finite in {self.nonfinite_run} consecutive iterations "
                                f"(last: {iteration}); lower --lr or check the data." + (f" {where}" if where else ""))

    def state(self) -> dict:
        """The optimiser, phase and scaler state for a checkpoint."""
        return {"optimizer": self.optimizer.state_dict(), "phase": self.phase_idx,
                "scaler": self.scaler.state_dict() if self.scaler else None}
