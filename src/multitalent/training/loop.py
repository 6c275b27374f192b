"""The training loop: schedule, validation, logging and checkpoints, reading top to bottom.

What a run is comes from :func:`multitalent.training.spec.build_run` (every option checked once, the
network built); one optimisation step is :class:`multitalent.training.step.TrainStep`; the learning-rate
phases are data (:mod:`multitalent.training.schedule`): plain training is one poly phase, fine-tuning
(:mod:`multitalent.finetune`) three, with an ``init_fn`` that loads the pre-trained weights.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from multitalent.data.loader import (
    STREAM_VAL,
    PatchBatches,
    auto_num_workers,
    batch_nbytes,
    make_loader,
    shared_memory_warning,
    unpack_all,
)
from multitalent.data.targets import batch_to_device
from multitalent.device import resolve_device
from multitalent.errors import ensure_output_dir, write_json
from multitalent.objectives import Objective
from multitalent.registry import HeadRegistry
from multitalent.training.checkpoint import (
    BackgroundSaver,
    Checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from multitalent.training.config import TrainConfig
from multitalent.training.distributed import all_reduce_sum, cleanup, init_distributed, reduce_detached, setup_barrier
from multitalent.training.progress import append_log, plot_progress, read_log, truncate_log
from multitalent.training.pseudo_dice import validate
from multitalent.training.schedule import Phase
from multitalent.training.spec import RunSpec, build_run
from multitalent.training.step import TrainStep

log = logging.getLogger("multitalent")


EMA_DECAY = 0.9  # nnU-Net's moving average of the pseudo-Dice


def train(pre_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: TrainConfig,
          phases: list[Phase] | None = None, init_fn: Callable[[torch.nn.Module], None] | None = None,
          registry: HeadRegistry | None = None, extra_meta: dict | None = None,
          objective: type[Objective] | None = None) -> Path:
    """Train one network on the preprocessed collection ``pre_dir``; artefacts go to ``out_dir``.

    ``objective`` replaces the one ``cfg.objective`` names (``multitalent extend`` adds distillation to
    MultiTalent's loss this way); the checkpoint still records ``cfg.objective``, which prediction reads.

    Returns the path of ``checkpoint_final.pt``. With ``cfg.final_validation`` the held-out fold's whole
    scans are then predicted and evaluated into ``out_dir/validation/`` (:mod:`multitalent.training.validation`).
    """
    device = resolve_device(cfg.device)
    dinfo = init_distributed(cfg.device)
    if dinfo.enabled and device.type == "cuda":
        device = torch.device("cuda", dinfo.local_rank)
    try:
        spec, model = build_run(pre_dir, out_dir, cfg, device, dinfo, phases, registry, extra_meta, objective)
        final = _run(spec, model, init_fn)
    finally:
        cleanup(dinfo)
    if cfg.final_validation and dinfo.is_main:
        from multitalent.training.validation import final_validation

        log.info("final validation: predicting the held-out fold's whole scans")
        final_validation(out_dir, device=str(device), quiet=cfg.quiet)
    return final


def _run(spec: RunSpec, model: torch.nn.Module, init_fn: Callable[[torch.nn.Module], None] | None) -> Path:
    """Set the run up (weights, data, step, resume, records), then train it epoch by epoch."""
    cfg, dinfo, device = spec.cfg, spec.dinfo, spec.device
    if init_fn is not None:
        init_fn(model)  # after the head prior: fine-tuning keeps the weights it loads
    if dinfo.is_main:  # only now, after every option and the model were checked: a refused run leaves no folder
        ensure_output_dir(spec.out)
    model.to(device)
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cpu")
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    train_data, val_data, workers = _data(spec)
    objective = spec.objective(spec.registry, spec.ds_weights, sum_fn=all_reduce_sum if dinfo.enabled else None,
                               bce_scale=float(dinfo.world_size) * cfg.bce_weight)
    # DDP sees only the outputs the loss uses (the zero-weighted lowest one gets no gradient)
    keep = len(spec.ds_scales) if len(spec.ds_scales) < spec.n_outputs else None
    step = TrainStep(model, objective, cfg, spec.phases, device, dinfo, keep, channels_last)
    start = _resume(spec, model, step) if cfg.resume else 0
    record = spec.record()
    if dinfo.is_main:
        write_json(spec.out / "config.json", record)
        spec.registry.save(spec.out / "heads.json")
    with BackgroundSaver() as saver:  # the last write is on disk when the block ends
        ckpt = _Checkpointer(spec, model, step, record, saver)
        step.on_nonfinite_stop = ckpt.last_good
        it = _epochs(spec, step, train_data, val_data, workers, start, ckpt)
        if dinfo.is_main:
            ckpt.save(spec.final, it, spec.epochs)
    return spec.final


def _data(spec: RunSpec) -> tuple[PatchBatches, PatchBatches, int]:
    """The training and validation batches, their cases unpacked, and the loader workers per process."""
    cfg, dinfo, plans = spec.cfg, spec.dinfo, spec.plans
    common = dict(patch_size=plans.patch_size, ds_scales=spec.ds_scales, seed=cfg.seed, sampling=cfg.sampling,
                  fg_fraction=cfg.fg_fraction, mirror_axes=cfg.mirror_axes, rank=dinfo.rank,
                  world_size=dinfo.world_size, registry=spec.registry)
    train_data = PatchBatches(spec.pre, spec.train_cases, spec.batch_size, augment=cfg.augment,
                              length=spec.total_iterations, exclusions=spec.exclusions, **common)
    val_data = PatchBatches(spec.pre, spec.val_cases, spec.batch_size, augment=False, stream=STREAM_VAL,
                            length=cfg.val_iterations, **common)
    # each rank unpacks a share; this barrier allows hours (a large collection), the training collectives not
    unpack_all(spec.pre, sorted(set(spec.train_cases) | set(spec.val_cases))[dinfo.rank :: dinfo.world_size])
    setup_barrier(dinfo)
    workers = auto_num_workers(cfg.num_workers, spec.device.type, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if dinfo.is_main:
        log.info("%d loader worker(s) per training process", workers)
    warning = shared_memory_warning(workers, batch_nbytes(train_data))
    if warning and dinfo.local_rank == 0:
        log.warning(warning)
    return train_data, val_data, workers


def _resume(spec: RunSpec, model: torch.nn.Module, step: TrainStep) -> int:
    """Load ``checkpoint_latest.pt`` into the model, the step and the RNGs; the iteration to go on from."""
    ckpt = load_checkpoint(spec.latest)
    model.load_state_dict(ckpt.state_dict)
    step.start_at(ckpt.iteration, ckpt.optimizer, ckpt.phase, ckpt.scaler)
    set_rng_state(ckpt.rng)
    if spec.dinfo.is_main:
        truncate_log(spec.out / "log.jsonl", ckpt.iteration // spec.cfg.iterations_per_epoch)
        log.info("resuming %s at iteration %d", spec.out, ckpt.iteration)
    return int(ckpt.iteration)


class _Checkpointer:
    """Writes the run's checkpoints in the background from a CPU snapshot (the residual U-Net's, optimiser
    included, is 816 MB at the paper config: about 3 s per epoch that the device would otherwise wait)."""

    def __init__(self, spec: RunSpec, model: torch.nn.Module, step: TrainStep, record: dict,
                 saver: BackgroundSaver) -> None:
        self.spec, self.model, self.step, self.saver = spec, model, step, saver
        self.config = record["config"]
        self.run = {k: v for k, v in record.items() if k != "config"}

    def save(self, path: Path, iteration: int, epoch: int, also: Path | None = None) -> None:
        def write(target: str | os.PathLike, snapshot: dict) -> None:  # one snapshot for both files
            save_checkpoint(target, snapshot)
            if also is not None:
                save_checkpoint(also, snapshot)

        record = Checkpoint(model_config=self.model.config, state_dict=self.model.state_dict(),
                            plans=self.spec.plans.to_dict(), heads=self.spec.registry.to_dict(), config=self.config,
                            run=self.run, iteration=iteration, epoch=epoch, rng=rng_state(), **self.step.state())
        self.saver.save(path, writer=write, payload=record.payload())

    def last_good(self) -> str:
        """Where a stopped run can be resumed from (after the pending write is on disk)."""
        with contextlib.suppress(Exception):
            self.saver.wait()  # the epoch's checkpoint may still be being written
        latest = self.spec.latest
        return (f"The last good checkpoint is {latest}." if latest.exists()
                else "No epoch finished, so there is no checkpoint to resume from.")


def _epochs(spec: RunSpec, step: TrainStep, train_data: PatchBatches, val_data: PatchBatches, workers: int,
            start: int, ckpt: _Checkpointer) -> int:
    """Train from iteration ``start`` to the end: per epoch its iterations, validation, the log line,
    the progress plot and the checkpoints. Returns the last iteration."""
    cfg, dinfo, device = spec.cfg, spec.dinfo, spec.device
    main, pin = dinfo.is_main, device.type == "cuda"
    quiet = cfg.quiet or not main
    ema, best_ema = _ema_from_log(read_log(spec.out / "log.jsonl")) if cfg.resume and main else (None, -math.inf)
    it = start
    step.model.train()
    # one loader for the whole run: its workers keep building the next epoch's batches while the epoch's
    # validation runs, instead of starting again (and the first batch's wait) at every epoch
    batches = iter(make_loader(train_data, start, spec.total_iterations, workers, pin_memory=pin))
    # and one for the validation batches, its workers kept between epochs (nnU-Net's half as many): with a
    # loader started and shut down at every epoch, PyTorch waited 5.3 s per epoch on an H200 for its worker
    # to exit (its 5 s join timeout, then SIGTERM: the worker did not end in time; on the CPU too), ten times
    # the epoch's 16 training iterations at the reproduction's GPU sizes (docs/benchmarks.md)
    val_loader = make_loader(val_data, 0, cfg.val_iterations, max(1, workers // 2) if workers else 0,
                             pin_memory=pin, persistent=True)
    for epoch in range(start // cfg.iterations_per_epoch, spec.epochs):
        ep_start = time.perf_counter()
        losses, wait, it = _train_epoch(spec, step, batches, epoch, it, quiet)
        train_time = time.perf_counter() - ep_start
        val = validate(step.net, val_loader, step.objective, spec.registry, device, step.amp, dinfo) \
            if cfg.val_iterations > 0 else {}
        mean_loss = reduce_detached(torch.tensor([float(np.mean(losses)) if losses else float("nan")],
                                                 device=device), dinfo)
        record = {"epoch": epoch, "iteration": it, "train_loss": float(mean_loss[0]) / dinfo.world_size,
                  **val, "lr": step.optimizer.param_groups[0]["lr"], "phase": step.phase.name,
                  "epoch_time_s": time.perf_counter() - ep_start, "train_time_s": train_time,
                  "data_wait_fraction": wait / max(train_time, 1e-9), "skipped_steps": step.skipped}
        better = False
        if record.get("mean_pseudo_dice") is not None:  # checkpoint_best.pt: the best moving average
            dice = record["mean_pseudo_dice"]
            ema = dice if ema is None else EMA_DECAY * ema + (1 - EMA_DECAY) * dice
            record["ema_pseudo_dice"] = ema
            better, best_ema = ema > best_ema, max(best_ema, ema)
        if main:
            append_log(spec.out / "log.jsonl", record)
            plot_progress(read_log(spec.out / "log.jsonl"), spec.out / "progress.png")
            ckpt.save(spec.latest, it, epoch + 1, also=spec.best if better else None)
            if not quiet:
                tqdm.write(_epoch_line(record, spec.epochs))
    del batches, val_loader  # ends the loaders' workers
    return it


def _train_epoch(spec: RunSpec, step: TrainStep, batches: Iterator[dict], epoch: int, it: int,
                 quiet: bool) -> tuple[list[float], float, int]:
    """The iterations of one epoch: (finite losses, seconds waiting for batches, the next iteration)."""
    end = min((epoch + 1) * spec.cfg.iterations_per_epoch, spec.total_iterations)
    losses: list[float] = []
    wait = 0.0
    step.skipped = 0
    bar = tqdm(total=end - it, desc=f"epoch {epoch + 1}/{spec.epochs}", unit="it", disable=quiet, leave=False)
    for _ in range(end - it):
        t_wait = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t_wait
        step.set_iteration(it)
        loss = step(batch_to_device(batch, spec.device, step.channels_last), it)
        if loss is not None:
            losses.append(loss)
        it += 1
        bar.update()
        bar.set_postfix(loss=f"{losses[-1]:.3f}" if losses else "nan")
    bar.close()
    return losses, wait, it


def _epoch_line(record: dict, epochs: int) -> str:
    dice = record.get("mean_pseudo_dice")
    return (f"epoch {record['epoch'] + 1}/{epochs}: loss {record['train_loss']:.4f}"
            + (f", val {record['val_loss']:.4f}, pseudo-Dice {dice:.3f}" if dice is not None else "")
            + f", data wait {100 * record['data_wait_fraction']:.1f}%, {record['epoch_time_s']:.1f}s")


def _ema_from_log(records: list[dict]) -> tuple[float | None, float]:
    """(last moving average, best moving average) of the epochs already logged (for a resumed run)."""
    values = [r["ema_pseudo_dice"] for r in records if r.get("ema_pseudo_dice") is not None]
    return (values[-1], max(values)) if values else (None, -math.inf)
