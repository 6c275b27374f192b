"""The training loop: one readable function, phases of learning-rate schedules, exact resume.

Extension points are data, not subclasses: a list of :class:`Phase` (what is trained, with which
optimiser and learning-rate ramp) and an ``init_fn`` that may load weights into the fresh model. Plain
MultiTalent training is a single poly-decay phase; fine-tuning (``multitalent.finetune``) is three.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
from multitalent.errors import UserInputError, ensure_output_dir, write_json
from multitalent.loss import MultiTalentLoss, deep_supervision_weights
from multitalent.models import create_model, deep_supervision_scales, head_parameters, init_head_bias
from multitalent.preprocessing.pipeline import Preprocessed
from multitalent.registry import HeadRegistry
from multitalent.training.checkpoint import (
    BackgroundSaver,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from multitalent.training.config import TrainConfig
from multitalent.training.distributed import (
    DistInfo,
    all_reduce_sum,
    cleanup,
    init_distributed,
    reduce_detached,
    setup_barrier,
    wrap_ddp,
)
from multitalent.training.progress import append_log, plot_progress, read_log, truncate_log

log = logging.getLogger("multitalent")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stayed non-finite); the message says why."""


@dataclass
class Phase:
    """A stretch of iterations with one optimiser and one learning-rate ramp.

    ``schedule``: "poly" (lr_start * (1 - t/n)^exponent) or "linear" (lr_start -> lr_end);
    ``params``: "all" or "heads" (only the output convolutions are trained).
    """

    name: str
    iterations: int
    optimizer: str = "sgd"
    lr_start: float = 1e-2
    lr_end: float = 0.0
    schedule: str = "poly"
    params: str = "all"

    def lr(self, t: int, exponent: float = 0.9) -> float:
        frac = min(max(t / max(self.iterations, 1), 0.0), 1.0)
        if self.schedule == "poly":
            return self.lr_start * (1 - frac) ** exponent
        return self.lr_start + (self.lr_end - self.lr_start) * frac


def standard_phases(cfg: TrainConfig, epochs: int | None = None) -> list[Phase]:
    """nnU-Net's schedule: one SGD phase with poly decay over ``epochs`` (default ``cfg.epochs``)."""
    n = cfg.epochs if epochs is None else epochs
    return [Phase("train", n * cfg.iterations_per_epoch, "sgd", cfg.lr, 0.0, "poly", "all")]


def _make_optimizer(phase: Phase, model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = list(head_parameters(model)) if phase.params == "heads" else list(model.parameters())
    for p in model.parameters():
        p.requires_grad_(phase.params == "all")
    for p in params:
        p.requires_grad_(True)
    if phase.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=phase.lr(0), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=phase.lr(0), momentum=cfg.momentum, nesterov=True,
                           weight_decay=cfg.weight_decay)


def _phase_at(phases: list[Phase], iteration: int) -> tuple[int, int]:
    """(phase index, iteration within the phase) of a global iteration."""
    start = 0
    for i, ph in enumerate(phases):
        if iteration < start + ph.iterations:
            return i, iteration - start
        start += ph.iterations
    return len(phases) - 1, phases[-1].iterations


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "bf16" or (cfg.amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"--device {name}: CUDA is not available on this machine; use --device cpu.")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserInputError(f"--device {name}: use cpu, cuda or cuda:N.")
    return torch.device(name)


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


class Objective:
    """What the network's outputs mean and how they are scored.

    ``multitalent``: one sigmoid output per head, the masked BCE + batch-Dice loss on the annotated
    (sample, head) pairs. ``merged_softmax``: the baseline with one softmax over the union of classes
    (:mod:`multitalent.baselines`). ``head_logits`` turns the first output into one logit per head.
    """

    def __init__(self, kind: str, registry: HeadRegistry, ds_weights: list[float], dinfo: DistInfo):
        self.kind = kind
        self.num_heads = len(registry)
        self.bce_scale = float(dinfo.world_size)
        if kind == "merged_softmax":
            from multitalent.baselines import MergedSoftmaxLoss, SoftmaxAsHeads, union_classes

            if dinfo.enabled:
                raise UserInputError("--objective merged_softmax is a single-process baseline; "
                                     "run it without torchrun.")
            self.num_outputs = len(union_classes(registry)[0])
            self.merged = MergedSoftmaxLoss(registry, len(ds_weights))
            self._to_heads = SoftmaxAsHeads(torch.nn.Identity(), registry)
        elif kind == "multitalent":
            self.num_outputs = len(registry)
            self.loss_fn = MultiTalentLoss(ds_weights=ds_weights, sum_fn=all_reduce_sum if dinfo.enabled else None)
        else:
            raise UserInputError(f"unknown objective {kind!r}; use multitalent or merged_softmax.")

    @staticmethod
    def count(kind: str, registry: HeadRegistry) -> int:
        """Number of network output channels for ``kind``."""
        if kind == "merged_softmax":
            from multitalent.baselines import union_classes

            return len(union_classes(registry)[0])
        return len(registry)

    def loss(self, outs: list[torch.Tensor], batch: dict) -> torch.Tensor:
        outs = list(outs[: len(batch["targets"])])
        if self.kind == "merged_softmax":
            return self.merged(outs, batch["targets"], batch["pairs"])
        # the loss promotes only the selected (sample, head) pairs to float32, not the whole output
        return loss_on_batch(outs, batch, self.loss_fn, self.num_heads, self.bce_scale)

    def head_logits(self, out: torch.Tensor) -> torch.Tensor:
        if self.kind == "merged_softmax":
            return self._to_heads.to(out.device)(out)
        return out


def loss_on_batch(model_out: torch.Tensor | list[torch.Tensor], batch: dict, loss_fn: MultiTalentLoss,
                  num_heads: int, bce_scale: float = 1.0) -> torch.Tensor:
    """Select the annotated (sample, head) pairs of every output level and apply the loss to them."""
    outs = model_out if isinstance(model_out, (list, tuple)) else [model_out]
    pairs = batch["pairs"]
    selected = [o[pairs[:, 0], pairs[:, 1]] for o in outs[: len(batch["targets"])]]
    return loss_fn.pairs(selected, batch["targets"][: len(selected)], pairs[:, 1], num_heads, bce_scale=bce_scale)


@torch.no_grad()
def validate(model: torch.nn.Module, loader, objective: Objective, registry: HeadRegistry,
             device: torch.device, amp: torch.dtype | None, dinfo: DistInfo) -> dict:
    """Validation loss and pseudo-Dice per head (hard Dice over all validation patches pooled)."""
    model.eval()
    h = len(registry)
    tp, fp, fn = (torch.zeros(h, dtype=torch.float64, device=device) for _ in range(3))
    losses = []
    for batch in loader:
        batch = batch_to_device(batch, device)
        with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
            out = model(batch["image"])
        out = out if isinstance(out, (list, tuple)) else [out]
        losses.append(float(objective.loss(out, batch)))
        pairs = batch["pairs"]
        pred = objective.head_logits(out[0])[pairs[:, 0], pairs[:, 1]] > 0
        gt = batch["targets"][0] > 0
        dims = tuple(range(1, pred.ndim))
        tp.index_add_(0, pairs[:, 1], (pred & gt).sum(dims).double())
        fp.index_add_(0, pairs[:, 1], (pred & ~gt).sum(dims).double())
        fn.index_add_(0, pairs[:, 1], (~pred & gt).sum(dims).double())
    stats = reduce_detached(torch.stack([tp, fp, fn]), dinfo).cpu().numpy()
    # each rank's loss is world_size * local BCE - global Dice: the sum over ranks / world_size is the
    # loss of the global batch
    val_loss = float(reduce_detached(torch.tensor([float(np.mean(losses)) if losses else float("nan")],
                                                  device=device), dinfo)[0]) / dinfo.world_size
    tp_, fp_, fn_ = stats
    denom = 2 * tp_ + fp_ + fn_
    dice = np.where(denom > 0, 2 * tp_ / np.maximum(denom, 1), np.nan)
    per_head = {hd.id: (None if np.isnan(d) else float(d)) for hd, d in zip(registry.heads, dice)}
    per_ds = {}
    for ds in registry.dataset_ids:
        vals = [dice[i] for i in registry.indices_of(ds) if not np.isnan(dice[i])]
        if vals:
            per_ds[ds] = float(np.mean(vals))
    model.train()
    valid = [d for d in dice if not np.isnan(d)]
    return {"val_loss": val_loss, "pseudo_dice": per_head,
            "pseudo_dice_per_dataset": per_ds, "mean_pseudo_dice": float(np.mean(valid)) if valid else None}


def train(pre_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: TrainConfig,
          phases: list[Phase] | None = None, init_fn: Callable[[torch.nn.Module], None] | None = None,
          registry: HeadRegistry | None = None, extra_meta: dict | None = None) -> Path:
    """Train one network on the preprocessed collection ``pre_dir``; artefacts go to ``out_dir``.

    Returns the path of ``checkpoint_final.pt``. With ``cfg.final_validation`` the held-out fold's whole
    scans are then predicted and evaluated into ``out_dir/validation/`` (:mod:`multitalent.training.validation`).
    """
    pre = Preprocessed.open(pre_dir)
    device = resolve_device(cfg.device)
    dinfo = init_distributed(cfg.device)
    if dinfo.enabled and device.type == "cuda":
        device = torch.device("cuda", dinfo.local_rank)
    try:
        final = _train(pre, Path(out_dir), cfg, phases, init_fn, registry, extra_meta, device, dinfo)
    finally:
        cleanup(dinfo)
    if cfg.final_validation and dinfo.is_main:
        from multitalent.training.validation import final_validation

        log.info("final validation: predicting the held-out fold's whole scans")
        final_validation(out_dir, device=str(device), quiet=cfg.quiet)
    return final


def _train(pre: Preprocessed, out: Path, cfg: TrainConfig, phases: list[Phase] | None,
           init_fn: Callable | None, registry: HeadRegistry | None, extra_meta: dict | None,
           device: torch.device, dinfo: DistInfo) -> Path:
    main = dinfo.is_main
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out}: the output path exists and is a file; give a folder path instead.")
    latest = out / "checkpoint_latest.pt"
    if latest.exists() and not cfg.resume:
        raise UserInputError(f"{out}: already holds a training run; pass --resume to continue it or choose "
                             "another output folder.")
    if cfg.resume and not latest.exists():
        raise UserInputError(f"{latest}: not found; nothing to resume (drop --resume to start).")
    registry = registry or pre.registry
    if cfg.datasets:
        unknown = [d for d in cfg.datasets if d not in pre.registry.dataset_ids]
        if unknown:
            raise UserInputError(f"--datasets: unknown id(s) {unknown}; the collection has {pre.registry.dataset_ids}.")
        registry = registry.subset(cfg.datasets)
    plans = pre.plans
    batch_size = cfg.batch_size or plans.batch_size
    if batch_size % dinfo.world_size:
        raise UserInputError(f"--batch-size {batch_size} must be divisible by the {dinfo.world_size} processes.")
    phases = phases or standard_phases(cfg)
    total_iters = sum(p.iterations for p in phases)
    ipe = cfg.iterations_per_epoch
    epochs = math.ceil(total_iters / ipe)
    if cfg.num_workers < -1:
        raise UserInputError(f"--num-workers {cfg.num_workers}: give 0 or more, or -1 to choose automatically.")
    if not 0.0 <= cfg.head_prior < 1.0:
        raise UserInputError(f"--head-prior {cfg.head_prior}: give a probability in [0, 1) (0 keeps zero biases).")
    if not 0.0 <= cfg.fg_fraction <= 1.0:
        raise UserInputError(f"--fg-fraction {cfg.fg_fraction}: give a fraction in [0, 1] (the paper: 1/3).")
    train_cases, val_cases = split_cases(pre, cfg.fold, cfg.datasets)
    if not train_cases:
        raise UserInputError(f"{pre.root}: no training cases for fold {cfg.fold} and datasets {cfg.datasets or 'all'}.")

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model_kwargs = cfg.model_kwargs()
    model = create_model(cfg.arch, plans, Objective.count(cfg.objective, registry),
                         deep_supervision=cfg.deep_supervision, **model_kwargs)
    if cfg.head_prior and cfg.objective == "multitalent":
        init_head_bias(model, cfg.head_prior)  # before init_fn: fine-tuning keeps its loaded weights
    if init_fn is not None:
        init_fn(model)
    if main:  # only now, after every option and the model were checked: a refused run leaves no folder
        ensure_output_dir(out)
    model.to(device)
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cpu")
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    ds_scales = deep_supervision_scales(plans, model_kwargs.get("n_stages")) if model.deep_supervision else [(1, 1, 1)]
    n_outputs = len(ds_scales)
    ds_weights = deep_supervision_weights(n_outputs)
    # outputs weighted 0 are never computed into the loss: do not build their targets either
    used = [i for i, w in enumerate(ds_weights) if w > 0] or [0]
    ds_scales_used = ds_scales[: max(used) + 1]
    objective = Objective(cfg.objective, registry, ds_weights[: len(ds_scales_used)], dinfo)

    common = dict(patch_size=plans.patch_size, ds_scales=ds_scales_used, seed=cfg.seed, sampling=cfg.sampling,
                  fg_fraction=cfg.fg_fraction, mirror_axes=cfg.mirror_axes, rank=dinfo.rank,
                  world_size=dinfo.world_size, registry=registry)
    train_data = PatchBatches(pre, train_cases, batch_size, augment=cfg.augment, length=total_iters, **common)
    val_data = PatchBatches(pre, val_cases, batch_size, augment=False, stream=STREAM_VAL,
                            length=cfg.val_iterations, **common)
    # each rank unpacks a share; this barrier allows hours (a large collection), the training collectives not
    unpack_all(pre, sorted(set(train_cases) | set(val_cases))[dinfo.rank :: dinfo.world_size])
    setup_barrier(dinfo)
    workers = auto_num_workers(cfg.num_workers, device.type, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if main:
        log.info("%d loader worker(s) per training process", workers)
    warning = shared_memory_warning(workers, batch_nbytes(train_data))
    if warning and dinfo.local_rank == 0:
        log.warning(warning)

    amp = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    start_iter = 0
    phase_idx, _ = _phase_at(phases, 0)
    optimizer = _make_optimizer(phases[phase_idx], model, cfg)
    if cfg.resume:
        ckpt = load_checkpoint(latest)
        model.load_state_dict(ckpt["state_dict"])
        start_iter = int(ckpt["iteration"])
        phase_idx, _ = _phase_at(phases, start_iter)
        optimizer = _make_optimizer(phases[phase_idx], model, cfg)
        if ckpt.get("phase") == phase_idx:
            optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        if main:
            truncate_log(out / "log.jsonl", start_iter // ipe)
            log.info("resuming %s at iteration %d", out, start_iter)

    def wrap(m: torch.nn.Module) -> torch.nn.Module:
        # DDP sees only the outputs the loss uses (the zero-weighted lowest one gets no gradient)
        keep = len(ds_scales_used) if len(ds_scales_used) < n_outputs else None
        m = wrap_ddp(m, dinfo, device, keep_outputs=keep)
        return torch.compile(m) if cfg.compile else m

    net = wrap(model)

    meta = {"config": asdict(cfg), "batch_size": batch_size, "world_size": dinfo.world_size,
            "train_cases": train_cases, "val_cases": val_cases, "heads": len(registry),
            "phases": [asdict(p) for p in phases], "preprocessed": str(pre.root.resolve()), **(extra_meta or {})}
    if main:
        write_json(out / "config.json", meta)
        registry.save(out / "heads.json")

    # checkpoints are written in the background from a CPU snapshot (the residual U-Net's, optimiser
    # included, is 816 MB at the paper config: about 3 s per epoch that the device would otherwise wait)
    saver = BackgroundSaver()

    def checkpoint(path: Path, iteration: int, epoch: int, also: Path | None = None) -> None:
        def write(target: str | os.PathLike, snapshot: dict) -> None:  # one snapshot for both files
            save_checkpoint(target, snapshot)
            if also is not None:
                save_checkpoint(also, snapshot)

        saver.save(path, writer=write, payload={
            "model_config": model.config, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
            "phase": phase_idx, "scaler": scaler.state_dict() if scaler else None, "rng": rng_state(),
            "iteration": iteration, "epoch": epoch, "plans": plans.to_dict(), "heads": registry.to_dict(),
            "train_config": asdict(cfg), "meta": meta})

    # checkpoint_best.pt: the best exponential moving average of the mean validation pseudo-Dice (nnU-Net)
    best_path = out / "checkpoint_best.pt"
    ema, best_ema = _ema_from_log(read_log(out / "log.jsonl")) if cfg.resume and main else (None, -math.inf)
    pin = device.type == "cuda"
    nonfinite_run = 0
    it = start_iter
    quiet = cfg.quiet or not main
    model.train()
    with saver:  # the last write is on disk when the block ends
        # one loader for the whole run: its workers keep building the next epoch's batches while the epoch's
        # validation runs, instead of starting again (and the first batch's wait) at every epoch
        train_batches = iter(make_loader(train_data, start_iter, total_iters, workers, pin_memory=pin))
        for epoch in range(start_iter // ipe, epochs):
            ep_start = time.perf_counter()
            ep_end_iter = min((epoch + 1) * ipe, total_iters)
            losses, skipped, wait = [], 0, 0.0
            bar = tqdm(total=ep_end_iter - it, desc=f"epoch {epoch + 1}/{epochs}", unit="it", disable=quiet,
                       leave=False)
            for _ in range(ep_end_iter - it):
                t_wait = time.perf_counter()
                batch = next(train_batches)
                wait += time.perf_counter() - t_wait
                new_phase, t_in = _phase_at(phases, it)
                if new_phase != phase_idx:
                    phase_idx = new_phase
                    optimizer = _make_optimizer(phases[phase_idx], model, cfg)
                    if dinfo.enabled:  # DDP syncs only the parameters that required grad when it was built
                        del net
                        net = wrap(model)
                for g in optimizer.param_groups:
                    g["lr"] = phases[phase_idx].lr(t_in, cfg.poly_exponent)
                batch = batch_to_device(batch, device, channels_last)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
                    out_ = net(batch["image"])
                out_ = out_ if isinstance(out_, (list, tuple)) else [out_]
                loss = objective.loss(out_, batch)
                finite = torch.isfinite(loss.detach())
                if dinfo.enabled:
                    finite = reduce_detached(finite.float(), dinfo) == dinfo.world_size
                if not bool(finite):
                    skipped += 1
                    nonfinite_run += 1
                    log.warning("iteration %d: non-finite loss, step skipped", it)
                    if nonfinite_run >= cfg.max_nonfinite:
                        with contextlib.suppress(Exception):
                            saver.wait()  # the epoch's checkpoint may still be being written
                        where = (f"The last good checkpoint is {latest}." if latest.exists()
                                 else "No epoch finished, so there is no checkpoint to resume from.")
                        raise TrainingError(f"the loss was non-finite in {nonfinite_run} consecutive iterations "
                                            f"(last: {it}); lower --lr or check the data. {where}")
                else:
                    nonfinite_run = 0
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        loss.backward()
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        optimizer.step()
                    losses.append(float(loss.detach()))
                it += 1
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.3f}" if losses else "nan")
            bar.close()
            train_time = time.perf_counter() - ep_start
            val = validate(net, make_loader(val_data, 0, cfg.val_iterations, workers, pin_memory=pin),
                           objective, registry, device, amp, dinfo) if cfg.val_iterations > 0 else {}
            mean_loss = reduce_detached(torch.tensor([float(np.mean(losses)) if losses else float("nan")],
                                                     device=device), dinfo)
            record = {"epoch": epoch, "iteration": it, "train_loss": float(mean_loss[0]) / dinfo.world_size,
                      **val, "lr": optimizer.param_groups[0]["lr"], "phase": phases[phase_idx].name,
                      "epoch_time_s": time.perf_counter() - ep_start, "train_time_s": train_time,
                      "data_wait_fraction": wait / max(train_time, 1e-9), "skipped_steps": skipped}
            better = False
            if record.get("mean_pseudo_dice") is not None:
                dice = record["mean_pseudo_dice"]
                ema = dice if ema is None else EMA_DECAY * ema + (1 - EMA_DECAY) * dice
                record["ema_pseudo_dice"] = ema
                better = ema > best_ema
                best_ema = max(best_ema, ema)
            if main:
                append_log(out / "log.jsonl", record)
                plot_progress(read_log(out / "log.jsonl"), out / "progress.png")
                checkpoint(latest, it, epoch + 1, also=best_path if better else None)
                if not quiet:
                    dice = record.get("mean_pseudo_dice")
                    tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {record['train_loss']:.4f}"
                               + (f", val {record['val_loss']:.4f}, pseudo-Dice {dice:.3f}" if dice is not None else "")
                               + f", data wait {100 * record['data_wait_fraction']:.1f}%"
                               + f", {record['epoch_time_s']:.1f}s")
        del train_batches  # ends the loader's workers
        final = out / "checkpoint_final.pt"
        if main:
            checkpoint(final, it, epochs)
    return final


EMA_DECAY = 0.9  # nnU-Net's moving average of the pseudo-Dice


def _ema_from_log(records: list[dict]) -> tuple[float | None, float]:
    """(last moving average, best moving average) of the epochs already logged (for a resumed run)."""
    values = [r["ema_pseudo_dice"] for r in records if r.get("ema_pseudo_dice") is not None]
    return (values[-1], max(values)) if values else (None, -math.inf)


def read_config(run: str | os.PathLike) -> dict:
    return json.loads((Path(run) / "config.json").read_text(encoding="utf-8"))
