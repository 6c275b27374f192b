"""Reproduce the MultiTalent paper's experiments on the phantom collection and write ``docs/results.md``.

What is run (all on one phantom collection, seed fixed, inside ``--out``):

1. **Table 1 / Fig. 2** -- MultiTalent (one network, one sigmoid head per (dataset, class), masked
   BCE + batch Dice, 1/sqrt(n) sampling) trained for 2N iterations on all datasets, against one
   single-dataset model per dataset (N iterations each, ``TrainConfig(datasets=[D])``) and the merged
   softmax baseline (``objective="merged_softmax"``, 2N iterations). Same topology, patch and batch for
   all. Dice per head and dataset on every dataset's test cases; averages over datasets, heads, lesion
   heads and difficult heads (single-dataset Dice below 75 %); a box plot like the paper's Fig. 2.
2. **Protocol fidelity** -- the conflicting heads (aorta D005 vs D006, heart with/without the aortic
   root, spleen fine D005 vs coarse D007) scored against each protocol's truth on the same test cases
   (the phantom ground truth holds every protocol for every case).
3. **Table 2 (transfer)** -- the target ``Dataset005_AbdomenMultiOrgan`` (few cases, like BTCV) is left
   out of a second pre-training collection. Fine-tuning (three-phase schedule) from (a) MultiTalent
   pre-trained on the other datasets, (b) supervised pre-training on ``Dataset090_FullyLabelled`` (every
   structure of the other datasets' training cases annotated, built from the phantom ground truth: the
   TotalSegmentator-like baseline) and (c) from scratch, over several seeds; one-sided paired t-tests.
4. **Cost** -- training time of MultiTalent vs the sum of the single-dataset models (from the training
   logs) and inference time of one MultiTalent model vs the ensemble of the single-dataset models on
   the same scans.

Everything is resumable: a training run is skipped when its ``checkpoint_final.pt`` exists and resumed
(``resume=True``) when only ``checkpoint_latest.pt`` does; predictions skip finished cases; an
evaluation is skipped when its ``summary.json`` exists; timings are cached under ``OUT/results/``.

    python benchmarks/reproduce.py --quick         # checks the machinery, < 10 min on 2 CPU cores
    python benchmarks/reproduce.py --full          # about an hour on 2 idle CPU cores; docs/results.md
    python benchmarks/reproduce.py --full --out work_dirs/reproduce_full --seed 0 --device cpu

``--quick`` writes its report to ``OUT/results.md`` only; ``--full`` also to ``docs/results.md`` (and the
box plot to ``docs/results_boxplot.png``); ``--report PATH`` overrides. The sizes are the ``Sizes``
dataclasses below (``FULL``, ``QUICK``, ``TINY``; ``--tiny`` is the reduced form the tests run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGET = "D005"  # Dataset005_AbdomenMultiOrgan: the few-case multi-organ set, like BTCV in the paper
FULLY_FOLDER = "Dataset090_FullyLabelled"
# One label per ground-truth structure, in painting order: later labels overwrite earlier ones, so nested
# structures (vessels and tumours inside their organ) come after their organ.
FULLY_LABELS = ("bone", "lung_left", "lung_right", "trachea", "heart", "aorta", "iliac_arteries",
                "inferior_vena_cava", "liver", "hepatic_vessel", "liver_tumor", "spleen", "kidney_left",
                "kidney_right", "kidney_tumor", "pancreas", "pancreas_tumor", "gallbladder", "stomach")
DIFFICULT_THRESHOLD = 75.0  # percent; reference = the single-dataset models' Dice


# --- sizes ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """Everything that sets how long the reproduction takes.

    Iterations: a single-dataset model trains ``N = single_epochs * iterations_per_epoch`` iterations;
    MultiTalent, the merged softmax and both pre-trainings ``multitalent_factor * N`` (the paper: 1000
    vs 2000 epochs). Fine-tuning: ``ft_head_warmup_epochs`` (heads only, AdamW), ``ft_full_warmup_epochs``
    (whole network, SGD, lr ramp) and ``ft_epochs`` (poly) of ``ft_iterations_per_epoch``; from scratch
    gets the same total number of iterations, all poly.
    """

    name: str
    # the collection: None = the whole small phantom collection; else these datasets, the first
    # ``max_train`` / ``max_test`` cases of each
    datasets: tuple[str, ...] | None = None
    max_train: int | None = None
    max_test: int | None = None
    collection_seed: int = 0
    in_plane_step: int = 1  # >1 (tests only): keep every step-th voxel in plane of the sub-collection's scans
    lesion_scale: float = 1.0  # lesion radii x this (CasePlan.lesion_scale): 2 keeps lesions resolved at 6 mm
    # the plans: None = preset "small" (4 mm, patch 32x64x64, batch 2)
    spacing: tuple[float, float, float] | None = None
    patch_size: tuple[int, int, int] | None = None
    # the networks
    base_features: int = 8
    archs: tuple[str, ...] = ("plain_unet",)  # backbones: MultiTalent and the K single-dataset models
    # of each; the first is the main one (merged softmax, pre-training, fine-tuning)
    swin_probe_iterations: int = 0  # >0: time a few SwinUNETR iterations to report its cost
    swin_feature_size: int = 12  # SwinUNETR's size when probed or listed in ``archs``
    # training
    iterations_per_epoch: int = 25
    single_epochs: int = 6
    multitalent_factor: int = 2
    num_workers: int = 0
    # validation curves: every run holds out this fold of its training cases (nnU-Net's 5-fold split) and
    # scores ``val_iterations`` fixed batches of them after every epoch (patch pseudo-Dice), which is the
    # convergence evidence; "all" trains on every case and validates on the training cases
    fold: str = "0"
    val_iterations: int = 8
    # fine-tuning
    ft_iterations_per_epoch: int = 10
    ft_head_warmup_epochs: int = 1
    ft_full_warmup_epochs: int = 5
    ft_epochs: int = 9
    ft_seeds: int = 3
    # inference and evaluation
    timing_scans: int = 3
    eval_workers: int = 2
    preprocess_workers: int = 2
    # training runs at once, each a process with ``cpu_count // jobs`` torch threads: on 2 cores two
    # 1-thread runs gave 1.36x the iterations per second of one 2-thread run (0.27 s/it each vs 0.185 s/it)
    jobs: int = 1
    # ablations of MultiTalent (main backbone, 2N iterations): (name, ((TrainConfig field, value), ...))
    ablations: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()

    @property
    def n_single(self) -> int:
        return self.single_epochs * self.iterations_per_epoch

    @property
    def n_multi(self) -> int:
        return self.multitalent_factor * self.n_single

    @property
    def ft_total_epochs(self) -> int:
        return self.ft_head_warmup_epochs + self.ft_full_warmup_epochs + self.ft_epochs


# FULL uses the demo's grid (6 mm, patch 32x48x48): on 2 CPU cores MultiTalent learns the large organs
# there within ~1000 iterations (docs/benchmarks.md). N = 1600: at N = 800 (the previous --full run) five
# of seven single-dataset models were still gaining 2.5-6 Dice points over their last quarter; MultiTalent
# trains 2N = 3200. Only the plain U-Net on the CPU (the residual U-Net's 9 runs would not fit 150 min at
# these budgets; --gpu runs both and SwinUNETR); two training runs at a time with one thread each.
FULL = Sizes(name="full", base_features=8, archs=("plain_unet",), swin_probe_iterations=4,
             spacing=(6.0, 6.0, 6.0), patch_size=(32, 48, 48), lesion_scale=2.0, iterations_per_epoch=50,
             single_epochs=32, fold="0", val_iterations=12, ft_iterations_per_epoch=25, ft_head_warmup_epochs=2,
             ft_full_warmup_epochs=4, ft_epochs=22, ft_seeds=3, timing_scans=3, jobs=2,
             ablations=(("width16", (("base_features", 16),)),))
QUICK = Sizes(name="quick", max_train=3, max_test=1, base_features=4, archs=("plain_unet", "resenc_unet"),
              lesion_scale=2.0, swin_probe_iterations=2, iterations_per_epoch=4, single_epochs=2,
              val_iterations=1, ft_iterations_per_epoch=1, ft_head_warmup_epochs=1, ft_full_warmup_epochs=5,
              ft_epochs=4, ft_seeds=2, timing_scans=1)
TINY = Sizes(name="tiny", datasets=("D005", "D006", "D007"), max_train=2, max_test=1, in_plane_step=2,
             spacing=(8.0, 8.0, 8.0), patch_size=(16, 32, 32), base_features=4, iterations_per_epoch=2,
             single_epochs=1, val_iterations=1, ft_iterations_per_epoch=1, ft_head_warmup_epochs=1,
             ft_full_warmup_epochs=2, ft_epochs=1, ft_seeds=1, timing_scans=1, eval_workers=1,
             preprocess_workers=1, jobs=2, ablations=(("width16", (("base_features", 8),)),))
SIZES = {"full": FULL, "quick": QUICK, "tiny": TINY}

# Calibration, measured while writing this script (2-core Xeon @ 2.5 GHz, torch 2.13 CPU with 2 threads,
# the whole phantom collection at 6 mm, patch 32x48x48, batch 2, num_workers=0, idle machine). Used to size
# FULL and for the projection in the report. s/it at 8 base features (SwinUNETR: feature size 12, at 4 mm /
# 32x64x64, as it needs a patch divisible by 32).
CALIBRATION_S_PER_IT = {"plain_unet": 0.3, "resenc_unet": 0.37, "swin_unetr": 1.8}
CALIBRATION_S_PER_EPOCH = 0.5  # checkpoint and progress plot after every epoch
CALIBRATION_FULL_FIXED_MIN = 12.0  # FULL: phantoms, 4 preprocessings, ~100 predictions, 13 evaluations


def projection(sizes: Sizes) -> tuple[dict[str, int], int, float]:
    """(iterations per architecture, epoch ends, training minutes) of ``sizes`` at the calibrated speeds."""
    ft_its = sizes.ft_total_epochs * sizes.ft_iterations_per_epoch
    its = {sizes.archs[0]: 7 * sizes.n_single + 4 * sizes.n_multi + 3 * sizes.ft_seeds * ft_its}
    for arch in sizes.archs[1:]:
        its[arch] = its.get(arch, 0) + 7 * sizes.n_single + sizes.n_multi
    multi_runs = 3 + len(sizes.archs)  # MultiTalent per arch, merged softmax, two pre-trainings
    epochs = (7 * len(sizes.archs) * sizes.single_epochs
              + multi_runs * sizes.multitalent_factor * sizes.single_epochs
              + 3 * sizes.ft_seeds * sizes.ft_total_epochs)
    seconds = sum(CALIBRATION_S_PER_IT.get(a, 1.0) * n for a, n in its.items())
    seconds += CALIBRATION_S_PER_EPOCH * epochs
    return its, epochs, seconds / 60


def calibration_note(sizes: Sizes) -> str:
    """What the sizes were chosen from, and the projected training time of ``sizes`` on 2 idle cores."""
    its, epochs, minutes = projection(sizes)
    full_min = projection(FULL)[2] + CALIBRATION_FULL_FIXED_MIN
    total = " + ".join(f"{n} {a}" for a, n in its.items())
    return (
        "Calibration (measured on 2-core machines while sizing the script, 6 mm, patch 32x48x48, batch 2, "
        "`num_workers=0`): the plain U-Net with 8 base features took 0.18-0.30 s per iteration, the residual "
        "U-Net 0.23-0.37 s (the lower figures on an AMD EPYC, the higher on a Xeon @ 2.5 GHz); another "
        "CPU-heavy process on the same 2 cores makes iterations 2-7x slower. Projection for these sizes at "
        f"the slower speeds: {total} iterations and {epochs} epoch ends, ~{minutes:.0f} min of training on 2 idle "
        f"cores; the `--full` sizes project to ~{full_min:.0f} min in all (~{CALIBRATION_FULL_FIXED_MIN:.0f} "
        "min of it for data, prediction and evaluation), chosen to stay below the 150 min the issue allows."
    )


# protocol conflicts: the heads involved and the truths each is scored against ("head:<id>" = that
# head's protocol repainted from the ground truth, "structure:<name>" = one ground-truth structure)
CONFLICT_CHECKS = {
    "aorta": {"heads": ["D005_aorta", "D006_aorta"],
              "truths": {"D005 protocol (root to bifurcation)": "head:D005_aorta",
                         "D006 protocol (above the root, stops at the diaphragm)": "head:D006_aorta"},
              "own": {"D005_aorta": "D005 protocol (root to bifurcation)",
                      "D006_aorta": "D006 protocol (above the root, stops at the diaphragm)"}},
    "heart": {"heads": ["D006_heart"],
              "truths": {"D006 protocol (with aortic root)": "head:D006_heart",
                         "anatomical (without aortic root)": "structure:heart"},
              "own": {"D006_heart": "D006 protocol (with aortic root)"}},
    "spleen": {"heads": ["D005_spleen", "D007_spleen"],
               "truths": {"D005 protocol (fine)": "head:D005_spleen",
                          "D007 protocol (coarse)": "head:D007_spleen"},
               "own": {"D005_spleen": "D005 protocol (fine)", "D007_spleen": "D007 protocol (coarse)"}},
}


# --- small helpers --------------------------------------------------------------------------------
def _read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.is_file() else default


def _write_json(path: Path, obj) -> None:
    from multitalent.errors import write_json

    write_json(path, obj)


def _link(src: Path, dst: Path) -> None:
    """A relative symbolic link ``dst -> src`` (falls back to a copy where links are not allowed)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        return
    try:
        os.symlink(os.path.relpath(src.resolve(), dst.parent.resolve()), dst)
    except OSError:
        shutil.copy2(src, dst)


def _train_log(run: Path) -> list[dict]:
    from multitalent.training.progress import read_log

    return read_log(run / "log.jsonl") if (run / "log.jsonl").is_file() else []


def run_stats(run: Path) -> dict:
    """Training time and speed of a run from its ``log.jsonl`` (robust to interruptions and resumes)."""
    recs = _train_log(run)
    cfg = _read_json(run / "config.json", {}) or {}
    ipe = (cfg.get("config") or {}).get("iterations_per_epoch") or 1
    iters = int(recs[-1]["iteration"]) if recs else 0
    train_s = float(sum(r.get("train_time_s", 0.0) for r in recs))
    wait = [r.get("data_wait_fraction", 0.0) for r in recs]
    return {"iterations": iters, "epochs": len(recs),
            "epoch_time_s": float(sum(r.get("epoch_time_s", 0.0) for r in recs)),
            "train_time_s": train_s, "s_per_it": train_s / iters if iters else None,
            "data_wait_fraction": float(np.mean(wait)) if recs else None,
            "iterations_per_epoch": ipe, "final_loss": recs[-1].get("train_loss") if recs else None}


def _date_utc() -> str:
    try:
        return subprocess.run(["date", "-u"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return datetime.datetime.now(datetime.timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y")


def machine_description(device: str) -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = (f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


# --- the phantom data -----------------------------------------------------------------------------
def _write_phantom_case(args: tuple) -> str:
    """Render one phantom case and write its image, label and full ground truth (as the collection does)."""
    from multitalent import io
    from multitalent.phantoms import TRUTH_NAMES, dataset_def, render_case

    plan, root, step = args
    case = render_case(plan, "small")
    d = dataset_def(plan.dataset)
    base = Path(root)
    geometry = case.geometry
    if step > 1:  # every step-th voxel in plane (same origin and direction, coarser spacing): faster tests
        g = geometry
        shape = (g.shape[0], *(-(-n // step) for n in g.shape[1:]))
        spacing = (g.spacing[0], g.spacing[1] * step, g.spacing[2] * step)
        geometry = io.Geometry(shape, spacing, g.origin, g.direction)

    def sub(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a[:, ::step, ::step])

    io.write_image(base / d.folder / f"images{plan.split}" / f"{plan.case_id}_0000.nii.gz", sub(case.image),
                   geometry)
    io.write_label(base / d.folder / f"labels{plan.split}" / f"{plan.case_id}.nii.gz", sub(case.label),
                   geometry)
    for name in TRUTH_NAMES:
        io.write_label(base / "ground_truth" / plan.case_id / f"{name}.nii.gz",
                       sub(case.truth_mask(name).astype(np.uint8)), geometry)
    return plan.case_id


def write_subset_collection(out: Path, seed: int, datasets: tuple[str, ...] | None, max_train: int | None,
                            max_test: int | None, workers: int, step: int = 1, lesion_scale: float = 1.0) -> Path:
    """A phantom collection with only some datasets and the first cases of each (for the quick and tiny
    runs); with ``step`` 1 the cases are byte-identical to the same cases of the full collection, with
    ``step`` > 1 only every step-th voxel in plane is kept (a coarser scan of the same anatomy)."""
    import dataclasses

    from multitalent.errors import atomic_dir, write_json
    from multitalent.phantoms import DATASETS, dataset_def, plan_dataset

    manifest = out / "collection.json"
    if manifest.is_file():
        return manifest
    defs = [dataset_def(n) for n in datasets] if datasets else list(DATASETS)
    with atomic_dir(out) as tmp:
        jobs = []
        for d in defs:
            plans = [dataclasses.replace(p, lesion_scale=lesion_scale) for p in plan_dataset(seed, d, "small")]
            tr = [p for p in plans if p.split == "Tr"][:max_train]
            ts = [p for p in plans if p.split == "Ts"][:max_test]
            for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
                (tmp / d.folder / sub).mkdir(parents=True, exist_ok=True)
            dj = {"name": d.name, "description": d.description,
                  "reference": "synthetic (multitalent phantoms)", "channel_names": {"0": "CT"},
                  "labels": d.labels, "numTraining": len(tr), "file_ending": ".nii.gz"}
            if d.regions_class_order is not None:
                dj["regions_class_order"] = d.regions_class_order
            write_json(tmp / d.folder / "dataset.json", dj)
            jobs += [(p, str(tmp), step) for p in tr + ts]
        if workers > 1:
            import multiprocessing

            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
                list(pool.map(_write_phantom_case, jobs))
        else:
            for job in jobs:
                _write_phantom_case(job)
        write_json(tmp / "collection.json", {
            "datasets": [{"path": d.folder} for d in defs],
            "generator": {"name": "multitalent-phantoms/1 (subset, benchmarks/reproduce.py)", "seed": seed,
                          "scale": "small", "max_train": max_train, "max_test": max_test,
                          "in_plane_step": step, "lesion_scale": lesion_scale},
            "ground_truth": "ground_truth"})
    return manifest


def _fully_labelled_case(args: tuple) -> None:
    """Paint one case's ``FULLY_LABELS`` from its ground truth and write image (hard link) and label."""
    from multitalent import io

    raw, case, image, folder = args
    dst = Path(folder) / "imagesTr" / f"{case}_0000.nii.gz"
    try:
        os.link(image, dst)
    except OSError:
        shutil.copy2(image, dst)
    label, geometry = None, None
    for value, name in enumerate(FULLY_LABELS, start=1):
        mask, geometry = io.read_label(Path(raw) / "ground_truth" / case / f"{name}.nii.gz")
        if label is None:
            label = np.zeros(mask.shape, dtype=np.uint8)
        label[mask > 0] = value
    io.write_label(Path(folder) / "labelsTr" / f"{case}.nii.gz", label, geometry)


def write_fully_labelled(raw: Path, exclude: str, out: Path, workers: int = 1) -> Path:
    """``Dataset090_FullyLabelled``: the training cases of every dataset but ``exclude``, with every
    structure annotated (one label per structure of ``FULLY_LABELS``, painted in that order)."""
    from multitalent.errors import atomic_dir, write_json
    from multitalent.registry import load_manifest

    if (out / "dataset.json").is_file():
        return out
    collection = load_manifest(raw / "collection.json")
    with atomic_dir(out) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        jobs = [(str(raw), case, str(d.image_path(case)), str(tmp))
                for d in collection.datasets if d.id != exclude for case in d.cases("Tr")]
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(_fully_labelled_case, jobs))
        else:
            for job in jobs:
                _fully_labelled_case(job)
        write_json(tmp / "dataset.json", {
            "name": "FullyLabelled", "channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
            "numTraining": len(jobs),
            "labels": {"background": 0, **{name: i for i, name in enumerate(FULLY_LABELS, start=1)}},
            "description": "Every structure annotated (TotalSegmentator-like), built from the phantom ground "
                           f"truth of the training cases of every dataset except {exclude}."})
    return out


# --- the experiment -------------------------------------------------------------------------------
# fine-tuning conditions: (the run whose checkpoint is the start, from scratch?)
FT_CONDITIONS = {"scratch": ("pretrain_multitalent", True), "multitalent": ("pretrain_multitalent", False),
                 "supervised": ("pretrain_supervised", False)}


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _train_job(sizes: Sizes, out: Path, seed: int, device: str, quiet: bool, name: str) -> str:
    """One training run of ``Reproduction.training_jobs`` in a worker process (``Reproduction.train_all``)."""
    from multitalent.registry import load_manifest

    rep = Reproduction(sizes, out, seed, device, quiet)
    rep.dataset_ids = [d.id for d in load_manifest(rep.raw / "collection.json").datasets]
    rep.train(name)
    return name


class Reproduction:
    """All experiments inside one output folder; each step skips what is already done."""

    def __init__(self, sizes: Sizes, out: Path, seed: int = 0, device: str = "cpu", quiet: bool = True):
        self.sizes = sizes
        self.out = Path(out)
        self.seed = seed
        self.device = device
        self.quiet = quiet
        self.raw = self.out / "raw"
        self.pre = {k: self.out / "preprocessed" / k for k in ("all", "pretrain", "target", "fully")}
        self.runs = self.out / "runs"
        self.preds = self.out / "predictions"
        self.evals = self.out / "evaluation"
        self.results = self.out / "results"
        self.t0 = time.perf_counter()
        self.log_file = self.out / "reproduce.log"

    # -- bookkeeping
    def start_invocation(self, command: str) -> None:
        """Record this invocation in ``results/invocations.json``; ``say`` keeps its wall time current, so an
        interrupted invocation still counts up to its last logged step."""
        path = self.results / "invocations.json"
        records = _read_json(path, []) or []
        records.append({"date": _date_utc(), "command": command, "wall_s": 0.0})
        self.invocation = len(records) - 1
        _write_json(path, records)

    def invocations(self) -> list[dict]:
        path = self.results / "invocations.json"
        records = _read_json(path, []) or []
        if getattr(self, "invocation", None) is not None and self.invocation < len(records):
            records[self.invocation]["wall_s"] = time.perf_counter() - self.t0
            _write_json(path, records)
        return records

    def say(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a") as fh:
            fh.write(line + "\n")
        self.invocations()

    def _add_wall(self, kind: str, name: str, seconds: float) -> None:
        from filelock import FileLock  # training runs in parallel processes add their times too

        path = self.results / "wall_times.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            data = _read_json(path, {}) or {}
            data.setdefault(kind, {})
            data[kind][name] = data[kind].get(name, 0.0) + seconds
            _write_json(path, data)

    def check_sizes(self) -> None:
        """Refuse to mix runs of different sizes (or seeds) in one output folder."""
        path = self.results / "sizes.json"
        now = {"sizes": asdict(self.sizes), "seed": self.seed}
        before = _read_json(path)
        if before is not None and json.loads(json.dumps(now)) != before:
            raise SystemExit(f"{self.out} holds runs made with other sizes or another seed ({path}); "
                             "choose a new --out (or delete that folder).")
        _write_json(path, now)

    # -- data
    def prepare_data(self) -> None:
        from multitalent.phantoms import generate_collection
        from multitalent.preprocessing.pipeline import run_preprocessing
        from multitalent.registry import load_manifest

        s = self.sizes
        manifest = self.raw / "collection.json"
        if not manifest.is_file():
            t = time.perf_counter()
            whole = s.datasets is None and s.max_train is None and s.max_test is None
            if whole and s.in_plane_step == 1 and s.lesion_scale == 1.0:
                self.say(f"phantom collection (seed {s.collection_seed}, scale small) -> {self.raw}")
                generate_collection(self.raw, seed=s.collection_seed, scale="small", progress=not self.quiet)
            else:
                self.say(f"phantom sub-collection {s.datasets or 'all datasets'}, <= {s.max_train} "
                         f"training / {s.max_test} test cases each, lesions x{s.lesion_scale} -> {self.raw}")
                write_subset_collection(self.raw, s.collection_seed, s.datasets, s.max_train, s.max_test,
                                        s.preprocess_workers, s.in_plane_step, s.lesion_scale)
            self._add_wall("data", "phantoms", time.perf_counter() - t)
        collection = load_manifest(manifest)
        self.dataset_ids = [d.id for d in collection.datasets]
        self.dataset_dirs = {d.id: d.path for d in collection.datasets}
        if TARGET not in self.dataset_ids:
            raise SystemExit(f"the collection must hold the transfer target {TARGET}")
        self.test_cases = {d.id: d.cases("Ts") for d in collection.datasets}

        man = self.out / "manifests"
        others = [d.path for d in collection.datasets if d.id != TARGET]
        _write_json(man / "pretrain.json", {"datasets": [{"path": str(p.resolve())} for p in others]})
        _write_json(man / "target.json", {"datasets": [{"path": str(self.dataset_dirs[TARGET].resolve())}]})
        fully = write_fully_labelled(self.raw, TARGET, self.out / "raw_fully" / FULLY_FOLDER,
                                     s.preprocess_workers)
        _write_json(man / "fully.json", {"datasets": [{"path": str(fully.resolve())}]})

        # every test scan in one folder (symbolic links), and the scans timed for inference
        tests = self.out / "test_images"
        for ds, cases in self.test_cases.items():
            for c in cases:
                _link(self.dataset_dirs[ds] / "imagesTs" / f"{c}_0000.nii.gz", tests / f"{c}_0000.nii.gz")
        self.test_images = tests
        order = [c for i in range(max(len(v) for v in self.test_cases.values()))
                 for v in self.test_cases.values() if i < len(v) for c in [v[i]]]
        self.timing_cases = order[: s.timing_scans]
        timing = self.out / "timing_images"
        for c in self.timing_cases:
            _link(tests / f"{c}_0000.nii.gz", timing / f"{c}_0000.nii.gz")
        self.timing_images = timing

        for key, m in (("all", manifest), ("pretrain", man / "pretrain.json"),
                       ("target", man / "target.json"), ("fully", man / "fully.json")):
            if not (self.pre[key] / "plans.json").is_file():
                self.say(f"preprocessing {key} ({m.name}) -> {self.pre[key]}")
                t = time.perf_counter()
                run_preprocessing(m, self.pre[key], preset="small", spacing=s.spacing,
                                  patch_size=s.patch_size, workers=s.preprocess_workers,
                                  progress=not self.quiet)
                self._add_wall("data", f"preprocess_{key}", time.perf_counter() - t)

    # -- training
    def _train_cfg(self, epochs: int, **kw):
        from multitalent.training.config import TrainConfig

        s = self.sizes
        fields = dict(epochs=epochs, iterations_per_epoch=s.iterations_per_epoch, val_iterations=s.val_iterations,
                      base_features=s.base_features, fold=s.fold, final_validation=False,
                      num_workers=s.num_workers, seed=self.seed, device=self.device, quiet=self.quiet)
        return TrainConfig(**{**fields, **kw})  # an ablation may change a default (base_features)

    def train_run(self, name: str, fn: Callable[[Path, bool], object]) -> Path:
        """Run ``fn(run_dir, resume)`` unless ``run_dir/checkpoint_final.pt`` exists."""
        run = self.runs / name
        if (run / "checkpoint_final.pt").is_file():
            return run
        resume = (run / "checkpoint_latest.pt").is_file()
        self.say(f"training {name}" + (" (resuming)" if resume else ""))
        t = time.perf_counter()
        fn(run, resume)
        wall = time.perf_counter() - t
        self._add_wall("train", name, wall)
        st = run_stats(run)
        self.say(f"  {name}: {st['iterations']} iterations, {wall:.0f}s wall"
                 + (f", {st['s_per_it']:.2f} s/it, data wait {100 * st['data_wait_fraction']:.0f}%"
                    if st["s_per_it"] else ""))
        return run

    def train_plain(self, name: str, pre: Path, epochs: int, **kw) -> Path:
        from multitalent.training.loop import train

        if kw.get("arch") == "swin_unetr":
            kw["feature_size"] = self.sizes.swin_feature_size

        def fn(run: Path, resume: bool) -> None:
            train(pre, run, self._train_cfg(epochs, resume=resume, **kw))

        return self.train_run(name, fn)

    def train_finetune(self, name: str, pretrained: Path, seed: int, from_scratch: bool) -> Path:
        from multitalent.finetune import FinetuneConfig, finetune

        s = self.sizes

        def fn(run: Path, resume: bool) -> None:
            # from scratch: one poly phase as long as the three phases (finetune_phases)
            cfg = FinetuneConfig(epochs=s.ft_epochs, iterations_per_epoch=s.ft_iterations_per_epoch,
                                 val_iterations=s.val_iterations, base_features=s.base_features,
                                 head_warmup_epochs=s.ft_head_warmup_epochs,
                                 full_warmup_epochs=s.ft_full_warmup_epochs, from_scratch=from_scratch,
                                 fold=s.fold, final_validation=False, num_workers=s.num_workers, seed=seed,
                                 device=self.device,
                                 quiet=self.quiet, resume=resume)
            finetune(pretrained, self.pre["target"], run, cfg)

        return self.train_run(name, fn)

    # -- every training run, in one table: the stages train by name, ``train_all`` runs them in parallel
    def training_jobs(self) -> dict[str, dict]:
        """Every training run of the reproduction: name -> spec (``kind`` plain/finetune, its arguments,
        ``after``: runs it starts from). Ordered longest first, so that parallel runs finish together."""
        s = self.sizes
        main = s.archs[0]
        mt_epochs = s.multitalent_factor * s.single_epochs
        jobs: dict[str, dict] = {}

        def plain(name: str, pre: str, epochs: int, **kw) -> None:
            jobs[name] = {"name": name, "kind": "plain", "pre": pre, "epochs": epochs, "kw": kw, "after": []}

        for arch in s.archs:
            plain(f"multitalent_{arch}", "all", mt_epochs, arch=arch)
        plain("pretrain_multitalent", "pretrain", mt_epochs, arch=main)
        plain("pretrain_supervised", "fully", mt_epochs, arch=main)
        plain("merged_softmax", "all", mt_epochs, arch=main, objective="merged_softmax")
        for name, kw in s.ablations:
            plain(f"ablation_{name}", "all", mt_epochs, **{"arch": main, **dict(kw)})
        for arch in s.archs:
            for ds in self.dataset_ids:
                plain(f"{single_key(arch, main)}_{ds}", "all", s.single_epochs, datasets=[ds], arch=arch)
        # from scratch needs a checkpoint only for the architecture; its weights are not used
        for k in range(s.ft_seeds):
            for cond, (pretrained, scratch) in FT_CONDITIONS.items():
                name = f"finetune_{cond}_seed{self.seed + k}"
                jobs[name] = {"name": name, "kind": "finetune", "pretrained": pretrained, "seed": self.seed + k,
                              "from_scratch": scratch, "after": [pretrained]}
        return jobs

    def train(self, name: str) -> Path:
        """Train (or resume, or skip when finished) the run ``name`` of ``training_jobs``."""
        spec = self.training_jobs()[name]
        if spec["kind"] == "finetune":
            return self.train_finetune(name, self.runs / spec["pretrained"], spec["seed"], spec["from_scratch"])
        return self.train_plain(name, self.pre[spec["pre"]], spec["epochs"], **spec["kw"])

    def train_all(self) -> None:
        """Every unfinished training run, ``sizes.jobs`` at a time in worker processes (each with
        ``cpu_count // jobs`` torch threads), a fine-tuning only after its pre-training. Nothing to do when
        ``sizes.jobs`` is 1: the stages then train one run after the other."""
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, wait

        s = self.sizes
        if s.jobs <= 1:
            return
        jobs = self.training_jobs()
        done = {n for n in jobs if (self.runs / n / "checkpoint_final.pt").is_file()}
        todo = [n for n in jobs if n not in done]
        if not todo:
            return
        threads = max(1, (os.cpu_count() or s.jobs) // s.jobs)
        self.say(f"training {len(todo)} runs, {s.jobs} at a time ({threads} torch thread(s) each)")
        running: dict = {}
        here = str(Path(__file__).resolve().parent)
        if here not in sys.path:  # the workers unpickle ``_train_job`` by importing this script as a module
            sys.path.insert(0, here)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(s.jobs, mp_context=ctx, initializer=_set_threads, initargs=(threads,)) as pool:
            while todo or running:
                for n in [n for n in todo if all(a in done for a in jobs[n]["after"])]:
                    if len(running) >= s.jobs:
                        break
                    todo.remove(n)
                    running[pool.submit(_train_job, s, self.out, self.seed, self.device, self.quiet, n)] = n
                if not running:
                    raise RuntimeError(f"training runs wait for runs that never finish: {todo}")
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    n = running.pop(f)
                    f.result()  # a failed run stops the reproduction with its error
                    done.add(n)

    # -- prediction and evaluation
    def predict(self, run: Path, images: Path, out: Path, save_heads: bool = False) -> float:
        """Predict every scan of ``images`` (finished cases are skipped); returns the wall time."""
        from multitalent.inference.config import PredictConfig
        from multitalent.inference.predict import predict

        t = time.perf_counter()
        cfg = PredictConfig(device=self.device, quiet=self.quiet, continue_=True, save_heads=save_heads)
        predict(run, images, out, cfg)  # merged-softmax runs predict one logit per head too
        return time.perf_counter() - t

    def evaluate(self, pred: Path, datasets: list[str], registry, name: str,
                 reference: dict[str, float] | None = None) -> dict:
        from multitalent.evaluation import evaluate

        out = self.evals / name
        if (out / "summary.json").is_file():
            return json.loads((out / "summary.json").read_text())
        gt = [f"{ds}={self.dataset_dirs[ds] / 'labelsTs'}" for ds in datasets]
        return evaluate(pred, gt, registry, out, reference=reference, difficult_threshold=DIFFICULT_THRESHOLD,
                        progress=not self.quiet, workers=self.sizes.eval_workers)

    # -- the experiments
    def table1(self) -> dict:
        from multitalent.evaluation import reference_from_summary
        from multitalent.registry import HeadRegistry

        s = self.sizes
        registry = HeadRegistry.load(self.pre["all"] / "heads.json")
        singles, summary = self.single_models(s.archs[0], registry, None)
        summaries = {"single": summary}
        reference = reference_from_summary(summaries["single"])
        _write_json(self.results / "reference_dice.json", reference)

        runs = {"single": singles}
        main_arch = s.archs[0]
        key = f"multitalent_{main_arch}"
        runs[key] = self.train(key)
        runs["merged_softmax"] = self.train("merged_softmax")
        for key in (f"multitalent_{main_arch}", "merged_softmax"):
            summaries[key] = self.predict_and_evaluate(key, runs[key], registry, reference)
        self.table1_runs, self.registry, self.reference = runs, registry, reference
        return summaries

    def single_models(self, arch: str, registry, reference: dict | None) -> tuple[dict[str, Path], dict]:
        """Train, predict and evaluate the K single-dataset models of ``arch`` (N iterations each)."""
        key = single_key(arch, self.sizes.archs[0])
        runs = {ds: self.train(f"{key}_{ds}") for ds in self.dataset_ids}
        pred = self.preds / key
        for ds, run in runs.items():
            if any(not (pred / c / "case.json").is_file() for c in self.test_cases[ds]):
                self.say(f"predicting {key}_{ds} on its {len(self.test_cases[ds])} test cases")
                self.predict(run, self.dataset_dirs[ds] / "imagesTs", pred)
        return runs, self.evaluate(pred, self.dataset_ids, registry, key, reference)

    def predict_and_evaluate(self, key: str, run: Path, registry, reference: dict) -> dict:
        pred = self.preds / f"{key}_test"
        if not all((pred / c / "case.json").is_file() for v in self.test_cases.values() for c in v):
            n = sum(map(len, self.test_cases.values()))
            self.say(f"predicting {key} on all {n} test cases (head masks kept)")
            self.predict(run, self.test_images, pred, save_heads=True)
        return self.evaluate(pred, self.dataset_ids, registry, key, reference)

    def extra_archs(self, summaries: dict) -> None:
        s = self.sizes
        for arch in s.archs[1:]:
            runs, summaries[single_key(arch, s.archs[0])] = self.single_models(arch, self.registry, self.reference)
            self.table1_runs[single_key(arch, s.archs[0])] = runs
            key = f"multitalent_{arch}"
            run = self.train(key)
            self.table1_runs[key] = run
            summaries[key] = self.predict_and_evaluate(key, run, self.registry, self.reference)

    def ablation_runs(self, summaries: dict) -> None:
        """Each ablation of MultiTalent (``sizes.ablations``): trained, predicted and evaluated like it."""
        for name, _ in self.sizes.ablations:
            key = f"ablation_{name}"
            self.table1_runs[key] = run = self.train(key)
            summaries[key] = self.predict_and_evaluate(key, run, self.registry, self.reference)

    def swin_probe(self) -> dict | None:
        s = self.sizes
        if s.swin_probe_iterations <= 0:
            return None
        cache = self.results / "swin_probe.json"
        if cache.is_file():
            return json.loads(cache.read_text())
        from multitalent.training.config import TrainConfig
        from multitalent.training.loop import train

        run = self.runs / "probe_swin_unetr"
        shutil.rmtree(run, ignore_errors=True)
        self.say(f"timing {s.swin_probe_iterations} SwinUNETR iterations "
                 f"(feature size {s.swin_feature_size})")
        cfg = TrainConfig(arch="swin_unetr", feature_size=s.swin_feature_size, epochs=2,
                          iterations_per_epoch=s.swin_probe_iterations, val_iterations=0, fold="all",
                          num_workers=s.num_workers, seed=self.seed, device=self.device, quiet=self.quiet)
        try:
            train(self.pre["all"], run, cfg)
        except Exception as e:  # noqa: BLE001 - the probe reports what happened instead of stopping the run
            result = {"error": f"{type(e).__name__}: {e}"}
        else:
            recs = _train_log(run)
            # the second epoch only: the first one pays for start-up
            result = {"s_per_it": recs[-1]["train_time_s"] / s.swin_probe_iterations,
                      "iterations": s.swin_probe_iterations, "feature_size": s.swin_feature_size}
        shutil.rmtree(run, ignore_errors=True)
        _write_json(cache, result)
        return result

    def transfer(self) -> dict:
        from multitalent.registry import HeadRegistry

        s = self.sizes
        self.train("pretrain_multitalent")
        self.train("pretrain_supervised")
        registry = HeadRegistry.load(self.pre["target"] / "heads.json")
        per_seed: dict[str, dict[int, dict]] = {c: {} for c in FT_CONDITIONS}
        for k in range(s.ft_seeds):
            seed = self.seed + k
            for cond in FT_CONDITIONS:
                name = f"finetune_{cond}_seed{seed}"
                run = self.train(name)
                pred = self.preds / name
                if not all((pred / c / "case.json").is_file() for c in self.test_cases[TARGET]):
                    self.predict(run, self.dataset_dirs[TARGET] / "imagesTs", pred)
                summary = self.evaluate(pred, [TARGET], registry, name)
                per_seed[cond][seed] = {"dataset_dice": summary["datasets"][TARGET]["dice_mean"],
                                        "heads": {h: v["dice_mean"] for h, v in summary["heads"].items()}}
        return {"per_seed": per_seed, "heads": registry.ids}

    def inference_timing(self) -> dict:
        cache = self.results / "inference_timing.json"
        if cache.is_file():
            return json.loads(cache.read_text())
        key = f"multitalent_{self.sizes.archs[0]}"
        root = self.preds / "timing"
        shutil.rmtree(root, ignore_errors=True)
        self.say(f"timing inference: {key} vs the {len(self.table1_runs['single'])} single-dataset models on "
                 f"{len(self.timing_cases)} scan(s)")
        mt = [self.predict(self.table1_runs[key], self.timing_images, root / f"{key}_a")]
        singles = {ds: self.predict(run, self.timing_images, root / f"single_{ds}")
                   for ds, run in self.table1_runs["single"].items()}
        mt.append(self.predict(self.table1_runs[key], self.timing_images, root / f"{key}_b"))
        result = {"scans": self.timing_cases, "model": key, "multitalent_s_runs": mt,
                  "multitalent_s": float(np.mean(mt)), "single_s": singles,
                  "ensemble_s": float(sum(singles.values())), "k": len(singles)}
        result["ratio"] = result["ensemble_s"] / result["multitalent_s"]
        shutil.rmtree(root, ignore_errors=True)
        _write_json(cache, result)
        return result

    def protocol_fidelity(self, models: list[str]) -> dict:
        """Dice of each conflicting head against every protocol's truth on the same test cases."""
        from multitalent import io
        from multitalent.evaluation import dice
        from multitalent.phantoms import truth_for_head

        cache = self.results / "protocol_fidelity.json"
        cached = _read_json(cache, {}) or {}
        if cached.get("models") == models and cached.get("format") == 2:
            return cached
        cases = [c for v in self.test_cases.values() for c in v]
        truths: dict[tuple[str, str], np.ndarray] = {}

        def truth(case: str, spec: str) -> np.ndarray:
            if (case, spec) not in truths:
                kind, name = spec.split(":", 1)
                if kind == "head":
                    truths[(case, spec)] = truth_for_head(self.raw, case, name)[0]
                else:
                    path = self.raw / "ground_truth" / case / f"{name}.nii.gz"
                    truths[(case, spec)] = io.read_label(path)[0] > 0
            return truths[(case, spec)]

        out: dict = {"format": 2, "models": models, "conflicts": {}}
        for conflict, check in CONFLICT_CHECKS.items():
            if not all(h in self.registry.ids for h in check["heads"]):
                continue
            specs = check["truths"]
            used = [c for c in cases if all(truth(c, sp).any() for sp in specs.values())]
            entry = {"cases": used, "truths": list(specs), "rows": []}
            for model in models:
                pred_dir = self.preds / f"{model}_test"
                for head in check["heads"]:
                    scores = {t: [] for t in specs}
                    extra: list[float] = []
                    for c in used:
                        mask = io.read_label(pred_dir / c / "heads" / f"{head}.nii.gz")[0] > 0
                        for t, sp in specs.items():
                            scores[t].append(dice(mask, truth(c, sp)))
                        extra.append(_extra_metric(conflict, head, mask, c, truth))
                    defined = [x for x in extra if not math.isnan(x)]
                    row = {"model": model, "head": head, "own": check["own"][head],
                           "dice": {t: (float(np.mean(v)) if v else None) for t, v in scores.items()},
                           "per_case": scores,
                           "extra": float(np.mean(defined)) if defined else None}
                    entry["rows"].append(row)
            out["conflicts"][conflict] = entry
        _write_json(cache, out)
        return out


def single_key(arch: str, main_arch: str) -> str:
    """Name of the single-dataset models of ``arch``: ``single`` for the main architecture."""
    return "single" if arch == main_arch else f"single_{arch}"


def _extra_metric(conflict: str, head: str, mask: np.ndarray, case: str, truth: Callable) -> float:
    """One number per conflict that shows the protocol directly (see ``EXTRA_METRICS``)."""
    if conflict == "aorta":  # share of the abdominal aorta (below the diaphragm cut) that the head marks
        abdominal = truth(case, "structure:aorta") & ~truth(case, "structure:aorta_thoracic") \
            & ~truth(case, "structure:aortic_root")
        return float((mask & abdominal).sum() / abdominal.sum()) if abdominal.any() else float("nan")
    if conflict == "heart":  # share of the aortic root that the heart head marks
        root = truth(case, "structure:aortic_root")
        return float((mask & root).sum() / root.sum()) if root.any() else float("nan")
    if conflict == "spleen":  # predicted volume / fine spleen volume
        fine = truth(case, "structure:spleen")
        return float(mask.sum() / fine.sum()) if fine.any() else float("nan")
    return float("nan")


EXTRA_METRICS = {
    "aorta": ("abdominal aorta marked (%)", "D005_aorta should mark it (~100), D006_aorta should not (~0)"),
    "heart": ("aortic root marked (%)", "D006_heart should include the root (~100)"),
    "spleen": ("volume / fine spleen volume", "D005_spleen ~1; D007_spleen larger (the coarse truth is "
                                              "~1.5-2.5x the fine volume)"),
}


# --- convergence, resolution and tests ------------------------------------------------------------
CONVERGENCE_TOL = 0.01  # one Dice point
ALPHA = 0.05


def convergence(run: Path) -> dict:
    """The run's validation curve and whether it has converged.

    The curve is the mean patch pseudo-Dice over the held-out fold after every epoch (``log.jsonl``). The
    criterion (the issue's): the run gained less than one Dice point over the last quarter of training,
    measured between the curve's mean over the ``w`` epochs that end at 75 % of training and its mean over
    the last ``w`` epochs, ``w`` = an eighth of the epochs (at least 2), so that the noise of a few
    validation patches does not decide. Fewer than 8 validated epochs cannot be judged.
    """
    recs = [r for r in _train_log(run) if r.get("mean_pseudo_dice") is not None]
    its = [int(r["iteration"]) for r in recs]
    y = [float(r["mean_pseudo_dice"]) for r in recs]
    out = {"iterations": its, "curve": y, "epochs": len(y), "gain_last_quarter": None, "converged": None}
    if len(y) < 8:
        return out
    w = max(2, round(len(y) / 8))
    q3 = round(0.75 * len(y))
    out["gain_last_quarter"] = float(np.mean(y[-w:]) - np.mean(y[q3 - w:q3]))
    out["converged"] = bool(out["gain_last_quarter"] < CONVERGENCE_TOL)
    out["final"] = float(np.mean(y[-max(1, len(y) // 4):]))
    return out


def samples_per_dataset(run: Path, pre_cases: list[dict]) -> dict[str, float]:
    """Expected training samples drawn from each dataset over the run: iterations x batch x the dataset's
    share under the run's case sampling (``case_probabilities`` over its training cases)."""
    from multitalent.data.sampling import case_probabilities

    cfg = _read_json(run / "config.json", {}) or {}
    ds_of = {c["case"]: c["dataset"] for c in pre_cases}
    cases = cfg.get("train_cases") or []
    if not cases:
        return {}
    datasets = [ds_of.get(c, "?") for c in cases]
    p = case_probabilities(datasets, (cfg.get("config") or {}).get("sampling", "inv_sqrt"))
    log = _train_log(run)
    total = (int(log[-1]["iteration"]) if log else 0) * int(cfg.get("batch_size") or 1)
    share: dict[str, float] = {}
    for d, q in zip(datasets, p, strict=True):
        share[d] = share.get(d, 0.0) + float(q)
    return {d: v * total for d, v in sorted(share.items())}


def head_thickness(dataset_dirs: dict[str, Path], test_cases: dict[str, list[str]], registry) -> dict:
    """Per head, the median over its dataset's test cases of the largest inscribed ball's diameter (mm) of
    the head's true mask: how thick the structure is, which decides whether a grid resolves it."""
    from scipy.ndimage import distance_transform_edt

    from multitalent import io

    out: dict[str, float | None] = {}
    labels = {}
    for ds, cases in test_cases.items():
        for c in cases:
            labels[c] = io.read_label(dataset_dirs[ds] / "labelsTs" / f"{c}.nii.gz")
    for h in registry.heads:
        vals = []
        for c in test_cases.get(h.dataset, []):
            lab, geo = labels[c]
            mask = np.isin(lab, h.labels)
            if mask.any():
                vals.append(2 * float(distance_transform_edt(mask, sampling=geo.spacing).max()))
        out[h.id] = float(np.median(vals)) if vals else None
    return out


def paired(a: list[float], b: list[float]) -> dict:
    """Paired one-sided t-tests of a against b: p for H1 a > b and for H1 a < b (``scipy.stats.ttest_rel``);
    identical differences have no t statistic: p is 0 or 1 by the sign of the difference."""
    from scipy.stats import ttest_rel

    d = np.subtract(a, b, dtype=float)
    res = {"n": len(d), "mean_difference": float(d.mean()) if len(d) else None, "p_greater": None,
           "p_less": None}
    if len(d) < 2:
        return res
    if np.allclose(d, d[0]):
        res["p_greater"] = 0.0 if d[0] > 0 else 1.0
        res["p_less"] = 0.0 if d[0] < 0 else 1.0
    else:
        res["p_greater"] = float(ttest_rel(a, b, alternative="greater").pvalue)
        res["p_less"] = float(ttest_rel(a, b, alternative="less").pvalue)
    return res


NOT_CONVERGED = "not measurable at this budget"
QUICK_VERDICT = "not judged (--quick checks the machinery)"


def judge(tests: list[dict], converged: bool | None, judged: bool) -> str:
    """The verdict of a 'a beats b' claim from its paired tests: it holds when every test finds a > b at
    ALPHA, does not hold when any finds a < b, and otherwise the difference is not significant; only between
    converged models, and never for ``--quick``."""
    if not judged:
        return QUICK_VERDICT
    if not converged:
        return NOT_CONVERGED
    if any(t["p_greater"] is None for t in tests):
        return "not testable (too few pairs)"
    if all(t["p_greater"] < ALPHA for t in tests):
        return "holds"
    if any(t["p_less"] < ALPHA for t in tests):
        return "does not hold"
    return "no significant difference"


def per_head(summary: dict, heads: list[str]) -> list[float]:
    return [summary["heads"][h]["dice_mean"] or 0.0 for h in heads]


def per_case(summary: dict, heads: list[str]) -> dict[str, float]:
    """Per test case, the mean Dice over those of ``heads`` that belong to the case's dataset."""
    out = {}
    for cases in summary["cases"].values():
        for case, hs in cases.items():
            vals = [hs[h]["dice"] for h in heads if h in hs and hs[h]["dice"] is not None]
            if vals:
                out[case] = float(np.mean(vals))
    return out


def compare(a: dict, b: dict, heads: list[str]) -> dict:
    """Paired tests of summary a against summary b over heads and over test cases."""
    ca, cb = per_case(a, heads), per_case(b, heads)
    cases = sorted(set(ca) & set(cb))
    return {"heads": paired(per_head(a, heads), per_head(b, heads)),
            "cases": paired([ca[c] for c in cases], [cb[c] for c in cases])}


# the paper's figures (../shared/reference/paper_figures.md: Ulrich et al., MICCAI 2023, Sect. 3 / Fig. 2
# and Table 2), placed beside ours
PAPER_FIG2 = {  # mean Dice: (same architecture per dataset, MultiTalent)
    "plain_unet": {"datasets": (79.16, 80.21), "heads": (82.96, 83.35), "difficult": (65.20, 67.10),
                   "lesions": (63.92, 67.02)},
    "resenc_unet": {"datasets": (79.67, 80.93), "heads": (83.44, 83.84), "difficult": (66.31, 67.82),
                    "lesions": (65.27, 68.51)},
}
PAPER_TABLE2_UNET = {  # U-Net, 5-fold CV Dice: scratch, supervised (p), MultiTalent (p)
    "BTCV": (83.76, 84.22, "0.01", 84.41, "<0.01"), "AMOS": (89.40, 89.66, "<0.01", 89.60, "<0.01"),
    "KiTS19 kidney": (96.56, 96.72, "0.09", 96.81, "0.04"), "KiTS19 tumour": (80.69, 82.48, "0.02", 83.03,
                                                                             "<0.01"),
}


# --- the report -----------------------------------------------------------------------------------
def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


METHOD_TITLES = {"single": "single-dataset (U-Net)", "single_resenc_unet": "single-dataset (residual U-Net)",
                 "single_swin_unetr": "single-dataset (SwinUNETR)", "multitalent_plain_unet": "MultiTalent (U-Net)",
                 "multitalent_resenc_unet": "MultiTalent (residual U-Net)",
                 "multitalent_swin_unetr": "MultiTalent (SwinUNETR)",
                 "merged_softmax": "merged softmax (U-Net)"}
CONDITIONS = {"scratch": "from scratch", "multitalent": "MultiTalent pre-training",
              "supervised": "supervised pre-training"}


def _title(key: str) -> str:
    return METHOD_TITLES.get(key, key)


def _mean_dice(summary: dict, heads: list[str]) -> float | None:
    vals = [summary["heads"][h]["dice_mean"] for h in heads if h in summary["heads"]]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _points(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} points"


def _verdict(v: str) -> str:
    return f"**{v}**" if v in ("holds", "does not hold") else v


def _p(x: float | None) -> str:
    return "n/a" if x is None else ("<0.001" if x < 0.001 else f"{x:.3f}")


def _tests_text(t: dict) -> str:
    return (f"one-sided paired p = {_p(t['heads']['p_greater'])} over {t['heads']['n']} heads, "
            f"{_p(t['cases']['p_greater'])} over {t['cases']['n']} cases")


def dataset_average(summary: dict, heads: list[str]) -> float | None:
    """Mean over datasets of the mean Dice over each dataset's heads among ``heads``."""
    by_ds: dict[str, list[float]] = {}
    for h in heads:
        v = summary["heads"].get(h, {})
        if v.get("dice_mean") is not None:
            by_ds.setdefault(v["dataset"], []).append(v["dice_mean"])
    return float(np.mean([np.mean(v) for v in by_ds.values()])) if by_ds else None


def all_converged(conv: dict, names: list[str]) -> bool | None:
    """True when every named run met the convergence criterion; None when one cannot be judged."""
    states = [conv.get(n, {}).get("converged") for n in names]
    if any(s is False for s in states):
        return False
    return None if any(s is None for s in states) else True


def _conv_note(conv: dict, names: list[str]) -> str:
    bad = [n for n in names if conv.get(n, {}).get("converged") is not True]
    return "" if not bad else f"; not shown converged: {', '.join(bad)}"


def findings(ctx: dict) -> list[dict]:
    """Every paper claim with what was measured here and its verdict (``judge``)."""
    sizes, summaries, conv, judged = ctx["sizes"], ctx["summaries"], ctx["convergence"], ctx["judged"]
    registry, ids = ctx["registry"], ctx["dataset_ids"]
    main_arch = sizes.archs[0]
    main = f"multitalent_{main_arch}"
    heads = [h for h in summaries["single"]["heads"] if h in ctx["resolved"]]
    lesion_ids = {h.id for h in registry.heads if h.lesion}
    out = []

    def add(key: str, claim: str, paper: str, measured: str, verdict: str, tests: dict | None = None) -> None:
        out.append({"key": key, "claim": claim, "paper": paper, "measured": measured, "verdict": verdict,
                    "tests": tests})

    for arch in sizes.archs:
        mt_key, sg_key = f"multitalent_{arch}", single_key(arch, main_arch)
        if mt_key not in summaries or sg_key not in summaries:
            continue
        mt, sg = summaries[mt_key], summaries[sg_key]
        names = [mt_key] + [f"{sg_key}_{ds}" for ds in ids]
        converged = all_converged(conv, names)
        cnote = _conv_note(conv, names)
        paper = PAPER_FIG2.get(arch, {})
        title = _title(mt_key)
        lesions = [h for h in heads if h in lesion_ids]
        difficult = [h for h in heads if summaries["single"]["heads"][h]["difficult"]]
        t_all = compare(mt, sg, heads)
        d_avg = _diff(dataset_average(mt, heads), dataset_average(sg, heads))
        pf = paper.get("datasets")
        add(f"t1_average_{arch}", f"{title} beats the single-dataset models of its architecture",
            f"Fig. 2: {pf[1]:.2f} vs {pf[0]:.2f} ({pf[1] - pf[0]:+.2f}) over datasets" if pf else "Fig. 2",
            f"over datasets {_pct(dataset_average(mt, heads))} vs {_pct(dataset_average(sg, heads))} "
            f"({_points(d_avg)}), over heads {_pct(_mean_dice(mt, heads))} vs {_pct(_mean_dice(sg, heads))}; "
            f"{_tests_text(t_all)}{cnote}", judge([t_all["heads"], t_all["cases"]], converged, judged), t_all)
        d_all = _diff(_mean_dice(mt, heads), _mean_dice(sg, heads))
        for group, hs, fig in (("lesions", lesions, "lesions"), ("difficult", difficult, "difficult")):
            t = compare(mt, sg, hs)
            d = _diff(_mean_dice(mt, hs), _mean_dice(sg, hs))
            verdict = judge([t["heads"], t["cases"]], converged, judged) if hs else "no such heads"
            if verdict == "holds" and (d is None or d_all is None or d <= d_all):
                verdict = "holds, but the gain is not larger than on all heads"
            pf = paper.get(fig)
            label = "lesion heads" if group == "lesions" else \
                f"difficult heads (single-dataset Dice < {DIFFICULT_THRESHOLD:.0f} %)"
            add(f"t1_{group}_{arch}", f"{title}: the gain is largest on {label}",
                f"Fig. 2: {pf[1]:.2f} vs {pf[0]:.2f} ({pf[1] - pf[0]:+.2f}; all classes "
                f"{paper['heads'][1] - paper['heads'][0]:+.2f})" if pf else "Fig. 2",
                f"{len(hs)} heads: {_pct(_mean_dice(mt, hs))} vs {_pct(_mean_dice(sg, hs))} ({_points(d)}; all "
                f"heads {_points(d_all)}); {_tests_text(t)}{cnote}", verdict, t)
    if "merged_softmax" in summaries:
        ms = summaries["merged_softmax"]
        t = compare(summaries[main], ms, heads)
        names = [main, "merged_softmax"]
        found = {h for cases in ms.get("cases", {}).values() for heads_ in cases.values()
                 for h, r in heads_.items() if (r.get("pred_voxels") or 0) > 0}
        collapsed = ("; the merged softmax predicted no foreground for any head on any test case"
                     if not found else f"; the merged softmax predicted foreground for {len(found)} heads")
        add("t1_merged", "Sigmoid heads per (dataset, class) beat one softmax over merged classes",
            "Sect. 2: a merged softmax cannot represent overlapping or conflicting classes (no figure)",
            f"over datasets {_pct(dataset_average(summaries[main], heads))} vs "
            f"{_pct(dataset_average(ms, heads))}; {_tests_text(t)}{collapsed}{_conv_note(conv, names)}",
            judge([t["heads"], t["cases"]], all_converged(conv, names), judged), t)

    for conflict, entry in ctx["fidelity"]["conflicts"].items():
        rows = [r for r in entry["rows"] if r["model"] == main]
        if not entry["cases"] or not rows:
            add(f"fidelity_{conflict}", f"{conflict}: each head follows its own dataset's protocol",
                "Fig. 1 / Sect. 2", "no test case holds every protocol's truth", "not testable")
            continue
        tests, parts = [], []
        for r in rows:
            own = r["per_case"][r["own"]]
            for other in entry["truths"]:
                if other == r["own"]:
                    continue
                t = paired(own, r["per_case"][other])
                tests.append(t)
                parts.append(f"{r['head']} own - other {_points(t['mean_difference'])} (p = {_p(t['p_greater'])})")
        add(f"fidelity_{conflict}", f"{conflict}: each {_title(main)} head follows its own dataset's protocol",
            "Fig. 1 / Sect. 2: conflicting protocols are kept apart (no figure)",
            f"{len(entry['cases'])} cases; " + "; ".join(parts) + _conv_note(conv, [main]),
            judge(tests, all_converged(conv, [main]), judged), {"per_head": tests})

    tr = ctx["transfer"]
    seeds = sorted(tr["per_seed"]["multitalent"], key=int)
    ft_runs = [f"finetune_{c}_seed{s}" for c in CONDITIONS for s in seeds] + \
        ["pretrain_multitalent", "pretrain_supervised"]

    def mean(c: str) -> float:
        return float(np.mean([tr["per_seed"][c][s]["dataset_dice"] for s in seeds]))

    for other in ("scratch", "supervised"):
        a = [tr["per_seed"]["multitalent"][s]["dataset_dice"] for s in seeds]
        b = [tr["per_seed"][other][s]["dataset_dice"] for s in seeds]
        th = tr["heads"]
        ha = [float(np.mean([tr["per_seed"]["multitalent"][s]["heads"][h] for s in seeds])) for h in th]
        hb = [float(np.mean([tr["per_seed"][other][s]["heads"][h] for s in seeds])) for h in th]
        t = {"seeds": paired(a, b), "heads": paired(ha, hb)}
        pb = PAPER_TABLE2_UNET["BTCV"]
        paper = (f"Table 2 (U-Net, BTCV): {pb[3]:.2f} vs {pb[0]:.2f} from scratch (p {pb[4]})" if other == "scratch"
                 else f"Table 2 (U-Net, BTCV): {pb[3]:.2f} vs {pb[1]:.2f} supervised")
        add(f"transfer_{other}", f"MultiTalent pre-training beats {CONDITIONS[other]}", paper,
            f"{_pct(mean('multitalent'))} vs {_pct(mean(other))} ({_points(mean('multitalent') - mean(other))}; "
            f"one-sided paired p = {_p(t['seeds']['p_greater'])} over {t['seeds']['n']} seeds, "
            f"{_p(t['heads']['p_greater'])} over {t['heads']['n']} heads){_conv_note(conv, ft_runs)}",
            judge([t["seeds"], t["heads"]], all_converged(conv, ft_runs), judged), t)

    cost, inf = ctx["cost"], ctx["inference"]
    k = len(ids)
    add("cost_training", f"Training one MultiTalent model is ~K/2 = {k / 2:.1f}x cheaper than K = {k} "
        "single-dataset models", "~6.5x for K = 13",
        f"{cost['ratio']:.2f}x ({cost['multitalent_s']:.0f} s vs {cost['singles_s']:.0f} s)",
        ("holds" if cost["ratio"] >= 0.75 * k / 2 else "does not hold") if judged else QUICK_VERDICT)
    add("cost_inference", f"Inference with one model is ~K = {k}x faster than the K single-dataset models",
        "~13x for K = 13", f"{inf['ratio']:.2f}x ({inf['multitalent_s']:.1f} s vs {inf['ensemble_s']:.1f} s "
        f"on {len(inf['scans'])} scan(s))",
        ("holds" if inf["ratio"] >= 0.5 * k else "does not hold") if judged else QUICK_VERDICT)
    return out


def plot_curves(ctx: dict, png: Path) -> None:
    """The validation curve (mean pseudo-Dice on the held-out fold) of every run, one panel per kind."""
    from matplotlib.figure import Figure

    groups: dict[str, list[str]] = {}
    for name in ctx["convergence"]:
        kind = ("single-dataset, " + ("U-Net" if name.removeprefix("single_") in ctx["dataset_ids"] else
                                      name.split("_")[1] + " U-Net")) if name.startswith("single_") else \
            "fine-tuning" if name.startswith("finetune_") else "multi-dataset and pre-training"
        groups.setdefault(kind, []).append(name)
    fig = Figure(figsize=(4.2 * len(groups), 3.6))
    for i, (kind, names) in enumerate(sorted(groups.items())):
        ax = fig.add_subplot(1, len(groups), i + 1)
        for name in names:
            c = ctx["convergence"][name]
            if c["curve"]:
                ax.plot(c["iterations"], np.asarray(c["curve"]) * 100, lw=1, label=name,
                        ls="-" if c["converged"] else "--")
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel("validation pseudo-Dice (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def _quarters(c: dict) -> list[float | None]:
    y = c["curve"]
    if not y:
        return [None] * 4
    return [y[max(0, math.ceil(q * len(y)) - 1)] for q in (0.25, 0.5, 0.75, 1.0)]


def _only_heads(summary: dict, keep: list[str]) -> dict:
    """``summary`` with its heads and head groups restricted to ``keep``."""
    groups = {g: {**v, "heads": [h for h in v.get("heads", []) if h in keep]} for g, v in summary["groups"].items()}
    return {**summary, "heads": {h: v for h, v in summary["heads"].items() if h in keep}, "groups": groups}


def write_report(path: Path, ctx: dict) -> str:
    """Write the Markdown report to ``path`` (and the box plot and curves beside it); returns the text."""
    from multitalent.errors import atomic_path
    from multitalent.evaluation import plot_comparison

    sizes: Sizes = ctx["sizes"]
    summaries: dict = ctx["summaries"]
    registry = ctx["registry"]
    conv = ctx["convergence"]
    methods = list(summaries)
    found = {f["key"]: f for f in ctx["findings"]}
    png = path.with_name(path.stem + "_boxplot.png")
    curves_png = path.with_name(path.stem + "_curves.png")
    resolved = ctx["resolved"]
    plot_comparison({_title(m): _only_heads(summaries[m], resolved) for m in methods}, png,
                    title=f"Dice per resolved head on the phantom test cases ({sizes.name} sizes)")
    plot_curves(ctx, curves_png)
    heads = list(summaries["single"]["heads"])
    rheads = [h for h in heads if h in resolved]
    lesions = [h for h in rheads if summaries["single"]["heads"][h]["lesion"]]
    difficult = [h for h in rheads if summaries["single"]["heads"][h]["difficult"]]
    k = len(ctx["dataset_ids"])
    n, n2 = sizes.n_single, sizes.n_multi
    L: list[str] = []
    w = L.append

    def claim_line(key: str) -> None:
        if key in found:
            f = found[key]
            w(f"- {f['claim']}: {f['measured']} -> {_verdict(f['verdict'])}.")

    w("# Reproducing the MultiTalent paper's experiments on the phantom collection\n")
    w(f"Written by `benchmarks/reproduce.py` ({sizes.name} sizes). Every number below was measured by that "
      "script on the synthetic phantom collection (`docs/phantoms.md`); the paper's figures (Ulrich et al., "
      "MultiTalent, MICCAI 2023, as transcribed in `../shared/reference/paper_figures.md`) stand beside ours "
      "in every section.\n")
    w("**How a verdict is reached.** A claim *holds* or *does not hold* only when every model in the "
      "comparison has converged (criterion in section 0) and one-sided paired t-tests "
      f"(`scipy.stats.ttest_rel`, alpha = {ALPHA}) over heads and over test cases agree: *holds* when every "
      "test finds the claimed direction significant, *does not hold* when one finds the opposite direction "
      "significant, *no significant difference* otherwise. A comparison with an unconverged model is *"
      f"{NOT_CONVERGED}*. `--quick` and the test sizes judge nothing. Heads whose structure is too thin for "
      "the training grid are reported apart and left out of the tests (section 0).\n")
    w("## Run\n")
    w(f"- command: `{ctx['command']}`")
    w(f"- seeds: training seed {ctx['seed']}; fine-tuning seeds {', '.join(map(str, ctx['ft_seeds']))}; "
      f"phantom collection seed {sizes.collection_seed}, lesion radii x{sizes.lesion_scale:g}")
    w(f"- date: {ctx['date']}")
    w(f"- machine: {ctx['machine']}; device `{ctx['device']}`")
    w(f"- wall time: {ctx['wall_s'] / 60:.1f} min for the invocation that wrote this report; "
      f"{ctx['wall_total_s'] / 60:.1f} min summed over all {ctx['n_invocations']} invocation(s) on this "
      "output folder (the script resumes where it stopped; an interrupted invocation counts up to its last "
      "logged step)")
    w(f"- collection: {k} datasets ({', '.join(ctx['dataset_ids'])}), {ctx['n_train']} training and "
      f"{ctx['n_test']} test cases, {len(registry)} heads; every run holds out fold {sizes.fold} of its "
      f"training cases for its validation curve ({sizes.val_iterations} fixed batches after every epoch)")
    plans = ctx["plans"]
    w(f"- plans: spacing {plans['spacing']} mm, patch {plans['patch_size']}, batch {plans['batch_size']}; "
      f"{' and '.join(sizes.archs)} with {sizes.base_features} base features, deep supervision, SGD (lr 0.01, "
      "Nesterov 0.99, poly), nnU-Net augmentation; the same for every model")
    w(f"- budgets (the paper's rule, 1000 vs 2000 epochs): each single-dataset model N = {n} iterations "
      f"({sizes.single_epochs} x {sizes.iterations_per_epoch}), for every backbone; MultiTalent, the merged "
      f"softmax and both pre-trainings 2N = {n2}; fine-tuning {sizes.ft_head_warmup_epochs} + "
      f"{sizes.ft_full_warmup_epochs} + {sizes.ft_epochs} epochs of {sizes.ft_iterations_per_epoch} "
      "iterations (heads only with AdamW, whole network with an lr ramp, poly), from scratch the same "
      f"{sizes.ft_total_epochs * sizes.ft_iterations_per_epoch} iterations, all poly")
    w("- the paper's scale: 13 datasets, 1,477 images, 47 classes; single-dataset nnU-Nets 1000 epochs x 250 "
      "iterations, MultiTalent 2000 epochs, patch 96x192x192 at 1.5x1x1 mm, batch 4. Its effects are about one "
      "Dice point between converged models.\n")

    # 0. convergence, samples, resolution
    w("## 0. Convergence, samples seen and resolution\n")
    w("**Criterion.** Each run's curve is its mean patch pseudo-Dice on the held-out fold after every epoch "
      "(`log.jsonl`). A run has converged when it gained less than "
      f"{100 * CONVERGENCE_TOL:.0f} Dice point over the last quarter of training: the curve's mean over the "
      "last eighth of the epochs minus its mean over the eighth that ends at 75 % of training (means of "
      "several epochs, so that the noise of a few validation patches does not decide). The learning rate "
      "decays to zero (poly), so this says the run stopped gaining under its schedule.\n")
    w(f"![validation curves]({curves_png.name})\n")
    w(f"*`{curves_png.name}`: every run's validation curve; dashed: not converged by the criterion.*\n")
    w("| run | iterations | pseudo-Dice at 25 / 50 / 75 / 100 % of training (%) | gain over the last "
      "quarter (points) | converged |")
    w("|---|---:|---|---:|---|")
    for name, c in conv.items():
        q = " / ".join(_pct(v) for v in _quarters(c))
        gain = None if c["gain_last_quarter"] is None else 100 * c["gain_last_quarter"]
        state = {True: "yes", False: "**no**", None: "cannot be judged"}[c["converged"]]
        last = c["iterations"][-1] if c["iterations"] else 0
        w(f"| {name} | {last} | {q} | {_num(gain, '+.2f')} | {state} |")
    w("")
    samples = ctx["samples"]
    if samples:
        cols = list(samples)
        w("Training samples drawn per dataset (patches: iterations x batch x the dataset's share under the "
          "run's case sampling, 1/sqrt(n) per case for MultiTalent; expected counts of the random sampler):\n")
        w("| dataset | training cases | " + " | ".join(cols) + " |")
        w("|---|---:|" + "---:|" * len(cols))
        for ds in ctx["dataset_ids"]:
            cells = " | ".join(f"{samples[c].get(ds, 0):.0f}" for c in cols)
            w(f"| {ds} | {ctx['train_cases_per_dataset'].get(ds, 0)} | {cells} |")
        w("")
    limit = ctx["resolution_limit_mm"]
    below = [h for h in heads if h not in resolved]
    w(f"**Resolution.** A head is *below resolution* when its structure's median thickness over its test cases "
      f"(the diameter of the largest ball inside the true mask, at the scans' own resolution) is below "
      f"{limit:.0f} mm, two voxels of the {max(plans['spacing']):g} mm training grid: such a structure cannot "
      "be learned at this grid. Below resolution here: "
      + (", ".join(f"{h} ({_num(ctx['thickness'][h], '.0f')} mm)" for h in below) if below else "none")
      + ". They appear in the per-head tables but not in the averages and tests.\n")

    # 1. Table 1
    w("## 1. MultiTalent vs single-dataset models vs merged softmax (paper: Fig. 2, Sect. 3)\n")
    w("**Paper** (mean Dice, 13 datasets, 47 classes; MultiTalent against the same architecture trained per "
      "dataset):\n")
    w("| group | U-Net | MT U-Net | Resenc U-Net | MT Resenc U-Net |")
    w("|---|---:|---:|---:|---:|")
    for g, label in (("datasets", "all datasets (13)"), ("heads", "all classes (47)"),
                     ("difficult", "difficult classes (12)"), ("lesions", "tumour classes (6)")):
        a, b = PAPER_FIG2["plain_unet"][g], PAPER_FIG2["resenc_unet"][g]
        w(f"| {label} | {a[0]:.2f} | {a[1]:.2f} | {b[0]:.2f} | {b[1]:.2f} |")
    w("\nA softmax over merged classes is discussed but not measured in the paper (Sect. 2).\n")
    w("**Here:** Dice (%) per head, mean over the head's dataset's test cases (a case where truth and prediction "
      "are both empty counts as 100, `docs/evaluation.md`). *lesion*: tumour head; *difficult*: single-dataset "
      f"(U-Net) Dice below {DIFFICULT_THRESHOLD:.0f} %; *thickness*: see section 0.\n")
    w("| head | lesion | difficult | thickness (mm) | " + " | ".join(_title(m) for m in methods) + " |")
    w("|---|---|---|---:|" + "---:|" * len(methods))
    for h in heads:
        hs = summaries["single"]["heads"][h]
        cells = " | ".join(_pct(summaries[m]["heads"].get(h, {}).get("dice_mean")) for m in methods)
        thick = _num(ctx["thickness"].get(h), ".0f") + ("" if h in resolved else " (below)")
        w(f"| {h} | {'yes' if hs['lesion'] else ''} | {'yes' if hs['difficult'] else ''} | {thick} | {cells} |")
    w("")
    w("Averages over the resolved heads (Dice %):\n")
    w("| average | n | " + " | ".join(_title(m) for m in methods) + " |")
    w("|---|---:|" + "---:|" * len(methods))
    w(f"| over datasets | {k} | " + " | ".join(_pct(dataset_average(summaries[m], rheads)) for m in methods)
      + " |")
    for label, hs in (("over heads", rheads), ("lesion heads", lesions), ("difficult heads", difficult)):
        cells = " | ".join(_pct(_mean_dice(summaries[m], hs)) for m in methods)
        w(f"| {label} | {len(hs)} | {cells} |")
    w(f"| all {len(heads)} heads, over datasets | {k} | "
      + " | ".join(_pct(summaries[m]["dataset_average"]["dice_mean"]) for m in methods) + " |")
    w("")
    w(f"![Dice per head, by group and method]({png.name})\n")
    w(f"*`{png.name}`, like the paper's Fig. 2: one point per resolved head (its mean Dice over the test cases), "
      "grouped into all heads, lesion heads and difficult heads, one box per method.*\n")
    w("Paired tests (a = MultiTalent, b = the other model; mean difference in points; p for H1 a > b):\n")
    w("| comparison | over | n | mean difference | p (a > b) | p (a < b) |")
    w("|---|---|---:|---:|---:|---:|")
    for f in ctx["findings"]:
        if f["key"].startswith("t1_") and f.get("tests"):
            for over in ("heads", "cases"):
                t = f["tests"][over]
                w(f"| {f['claim']} | {over} | {t['n']} | {_points(t['mean_difference'])} | "
                  f"{_p(t['p_greater'])} | {_p(t['p_less'])} |")
    w("")
    w("**Verdicts:**\n")
    for f in ctx["findings"]:
        if f["key"].startswith("t1_"):
            claim_line(f["key"])
    per_ds = ctx["n_test"] / max(k, 1)
    w(f"- Each dataset has {per_ds:.0f} test case(s) here; the tests pair heads and cases, not datasets.")
    if "swin_unetr" not in sizes.archs:
        w("- " + _swin_text(ctx))
    w("")

    # 2. protocol fidelity
    fid = ctx["fidelity"]
    w("## 2. Protocol fidelity on conflicting classes\n")
    w("**Paper** (Fig. 1, Sect. 2, no figure): each (dataset, class) pair has its own head, so conflicting "
      "annotation protocols (an aorta that stops at the diaphragm and one that runs to the bifurcation; a heart "
      "with or without the aortic root) are reproduced side by side; a merged softmax has one class per name "
      "and cannot.\n")
    w("**Here:** each conflicting head's mask (`predict(..., save_heads=True)`) is scored against *every* "
      "protocol's truth on the same cases: all test cases of the collection where every protocol's truth is "
      "non-empty (the phantom ground truth holds every protocol for every case, `truth_for_head`). Dice in %, "
      "mean over cases; * marks the head's own protocol; *own - other*: the head's Dice against its own "
      "protocol minus against the other one (points, mean over cases). The merged softmax merges same-name "
      "classes, so its D005_aorta and D006_aorta (and its two spleens) are one class and give the same mask.\n")
    for conflict, entry in fid["conflicts"].items():
        title, expl = EXTRA_METRICS[conflict]
        w(f"**{conflict}** ({len(entry['cases'])} cases)\n")
        w("| model | head | " + " | ".join(entry["truths"]) + f" | own - other | {title} |")
        w("|---|---|" + "---:|" * (len(entry["truths"]) + 2))
        for r in entry["rows"]:
            cells = " | ".join(_pct(r["dice"][t]) + (" *" if t == r["own"] else "") for t in entry["truths"])
            others = [t for t in entry["truths"] if t != r["own"]]
            diff = None if not others or r["dice"][r["own"]] is None or r["dice"][others[0]] is None else \
                r["dice"][r["own"]] - r["dice"][others[0]]
            extra = _num(r["extra"]) if conflict == "spleen" else _pct(r["extra"])
            w(f"| {_title(r['model'])} | {r['head']} | {cells} | {_points(diff)} | {extra} |")
        w(f"\n*{title}: {expl}.*\n")
    w("**Verdicts** (paired over cases, H1: own protocol's Dice > the other protocol's):\n")
    for conflict in fid["conflicts"]:
        claim_line(f"fidelity_{conflict}")
    w("")

    # 3. transfer
    tr = ctx["transfer"]
    w("## 3. Transfer to a left-out target (paper: Table 2)\n")
    w("**Paper** (5-fold CV Dice, U-Net; one-sided paired t-test p against from scratch):\n")
    w("| target | from scratch | supervised (TotalSegmentator) | p | MultiTalent | p |")
    w("|---|---:|---:|---:|---:|---:|")
    for target, (a, b, pb, c, pc) in PAPER_TABLE2_UNET.items():
        w(f"| {target} | {a:.2f} | {b:.2f} | {pb} | {c:.2f} | {pc} |")
    w("")
    w(f"**Here:** target {TARGET} AbdomenMultiOrgan ({ctx['n_target_train']} training and "
      f"{ctx['n_target_test']} test cases, {len(tr['heads'])} heads), the smallest dataset, like BTCV; it is "
      "left out of both pre-trainings and preprocessed as its own collection (its own CT statistics, the same "
      f"spacing and patch). MultiTalent pre-training: the other {k - 1} datasets, 2N iterations. Supervised "
      f"pre-training: `{FULLY_FOLDER}`, the same {ctx['n_fully']} training cases with all {len(FULLY_LABELS)} "
      "structures annotated (painted from the phantom ground truth: the TotalSegmentator-like baseline), 2N "
      "iterations. Fine-tuning: `multitalent.finetune` (new heads, the backbone copied, three phases).\n")
    w("Dice (%) on the target's test cases, mean over its heads:\n")
    conds = list(CONDITIONS)
    w("| seed | " + " | ".join(CONDITIONS[c] for c in conds) + " |")
    w("|---|" + "---:|" * len(conds))
    seeds = sorted(tr["per_seed"]["multitalent"], key=int)
    for sd in seeds:
        w(f"| {sd} | " + " | ".join(_pct(tr["per_seed"][c][sd]["dataset_dice"]) for c in conds) + " |")
    cells = []
    for c in conds:
        v = np.array([tr["per_seed"][c][sd]["dataset_dice"] for sd in seeds], dtype=float) * 100
        cells.append(f"{v.mean():.1f} ± {_num(float(v.std(ddof=1)) if len(v) > 1 else None, '.1f')}")
    w("| mean ± sd | " + " | ".join(cells) + " |")
    w("")
    w("One-sided paired t-tests with a = MultiTalent pre-training; paired over seeds (each seed's mean over "
      "heads) and over heads (each head's mean over seeds):\n")
    w("| comparison | paired over | n | mean difference (points) | p (a > b) |")
    w("|---|---|---:|---:|---:|")
    for other in ("scratch", "supervised"):
        f = found.get(f"transfer_{other}")
        for over in ("seeds", "heads"):
            t = f["tests"][over]
            w(f"| MultiTalent vs {CONDITIONS[other]} | {over} | {t['n']} | {_points(t['mean_difference'])} | "
              f"{_p(t['p_greater'])} |")
    w("")
    w("Per head (Dice %, mean over seeds):\n")
    w("| head | " + " | ".join(CONDITIONS[c] for c in conds) + " |")
    w("|---|" + "---:|" * len(conds))
    for h in tr["heads"]:
        w(f"| {h} | " + " | ".join(_pct(float(np.mean([tr["per_seed"][c][sd]["heads"][h] for sd in seeds])))
                                    for c in conds) + " |")
    w("")
    w("**Verdicts:**\n")
    claim_line("transfer_scratch")
    claim_line("transfer_supervised")
    w("")

    # 4. cost
    cost, inf = ctx["cost"], ctx["inference"]
    w("## 4. Cost\n")
    w("**Paper:** training MultiTalent (2000 epochs) is ~6.5x faster than training the 13 single-dataset "
      "nnU-Nets (13 x 1000 epochs), and inference is ~13x faster than running the 13 models.\n")
    w(f"With K = {k} datasets the same mechanism gives about K/2 = {k / 2:.1f}x for training (K x N vs 2N "
      f"iterations of similar cost) and at most about K = {k}x for inference (one sliding window instead of "
      "K; the per-scan reading, resampling and export are paid once instead of K times, but MultiTalent "
      "exports more heads).\n")
    w("| | MultiTalent | single-dataset models | ratio | expected |")
    w("|---|---:|---:|---:|---:|")
    w(f"| training time (s; sum of epoch times in `log.jsonl`) | {cost['multitalent_s']:.0f} | "
      f"{cost['singles_s']:.0f} (sum of {k}) | {cost['ratio']:.2f} | {k / 2:.1f} |")
    w(f"| training iterations | {cost['multitalent_it']} | {cost['singles_it']} | "
      f"{cost['singles_it'] / max(cost['multitalent_it'], 1):.2f} | {k / 2:.1f} |")
    w(f"| inference on {len(inf['scans'])} scan(s) (s; `predict`, model loading included) | "
      f"{inf['multitalent_s']:.1f} | {inf['ensemble_s']:.1f} (ensemble of {inf['k']}) | {inf['ratio']:.2f} | "
      f"<= {k} |")
    w("")
    w(f"Inference scans: {', '.join(inf['scans'])}. MultiTalent was timed before and after the single models "
      f"({' and '.join(f'{x:.1f}' for x in inf['multitalent_s_runs'])} s; the mean is used); the single "
      "models took " + ", ".join(f"{ds} {t:.1f}" for ds, t in inf["single_s"].items()) + " s.\n")
    w("**Verdicts:**\n")
    claim_line("cost_training")
    claim_line("cost_inference")
    w("- Timings come from one run on a possibly shared machine and are noisy.\n")

    # ablations
    w("## Ablations\n")
    lost = [f for f in ctx["findings"] if f["key"].startswith("t1_average_") and f["verdict"] == "does not hold"]
    if lost:
        w("MultiTalent loses to the single-dataset models at convergence here ("
          + ", ".join(f["claim"] for f in lost) + ").\n")
    _ablations_text(ctx, w)

    # calibration
    w("## Runs and calibration\n")
    w("Every training run (from its `log.jsonl`: s/it = training time / iterations; data wait = share of the "
      f"step time spent waiting for the next batch, `num_workers={sizes.num_workers}`):\n")
    w("| run | iterations | training time (s) | s/it | data wait |")
    w("|---|---:|---:|---:|---:|")
    for name, st in ctx["run_stats"].items():
        w(f"| {name} | {st['iterations']} | {st['train_time_s']:.0f} | {_num(st['s_per_it'])} | "
          f"{_pct(st['data_wait_fraction'], 0)} % |")
    w("")
    stages = ", ".join(f"{kind} {sum(v.values()) / 60:.1f} min" for kind, v in ctx["wall_times"].items())
    w(f"Wall time by stage, summed over invocations: {stages}; the rest is prediction, evaluation and the "
      "report.\n")
    w(ctx["calibration_note"] + "\n")
    w("Sizes (`Sizes` in `benchmarks/reproduce.py`):\n")
    w("```json")
    w(json.dumps(asdict(sizes)))
    w("```\n")

    w("## Summary: the paper's claims at this scale\n")
    w("| claim | paper | here | verdict |")
    w("|---|---|---|---|")
    for f in ctx["findings"]:
        w(f"| {f['claim']} | {f['paper']} | {f['measured']} | {_verdict(f['verdict'])} |")
    w("")
    text = "\n".join(L)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return text


ABLATION_TEXT = {"width16": "MultiTalent with 16 base features instead of 8 (the shared backbone's width: about "
                            "4x one single-dataset model's parameters, where the K single models hold K x)"}


def _ablations_text(ctx: dict, w: Callable[[str], None]) -> None:
    """The ablation runs beside MultiTalent and the single-dataset models, with paired tests."""
    sizes, summaries, conv = ctx["sizes"], ctx["summaries"], ctx["convergence"]
    if not sizes.ablations:
        w("No ablation is part of these sizes.\n")
        return
    main = f"multitalent_{sizes.archs[0]}"
    heads = [h for h in summaries["single"]["heads"] if h in ctx["resolved"]]
    lesions = [h for h in heads if h in {x.id for x in ctx["registry"].heads if x.lesion}]
    w("Each ablation changes one thing of MultiTalent (main backbone, 2N iterations, everything else equal) and "
      "is scored like it. Dice in %, averages over the resolved heads; tests one-sided paired, H1: the ablation "
      "beats the single-dataset models (and, second, MultiTalent as trained).\n")
    w("| model | what changes | converged | over datasets | over heads | lesion heads | p vs single (heads / "
      "cases) | p vs MultiTalent (heads / cases) |")
    w("|---|---|---|---:|---:|---:|---|---|")
    for key, what in [("single", "one model per dataset, N iterations"), (main, "as in the paper")] + [
            (f"ablation_{n}", ABLATION_TEXT.get(n, ", ".join(f"{k} = {v}" for k, v in kw)))
            for n, kw in sizes.ablations]:
        if key not in summaries:
            continue
        sm = summaries[key]
        names = [f"single_{ds}" for ds in ctx["dataset_ids"]] if key == "single" else [key]
        c = all_converged(conv, names)
        tests = ""
        if key != "single":
            t1, t2 = compare(sm, summaries["single"], heads), compare(sm, summaries[main], heads)
            tests = (f"| {_p(t1['heads']['p_greater'])} / {_p(t1['cases']['p_greater'])} | "
                     + ("" if key == main else f"{_p(t2['heads']['p_greater'])} / {_p(t2['cases']['p_greater'])}"))
        else:
            tests = "| |"
        w(f"| {_title(key)} | {what} | {'yes' if c else 'no' if c is not None else '?'} | "
          f"{_pct(dataset_average(sm, heads))} | {_pct(_mean_dice(sm, heads))} | {_pct(_mean_dice(sm, lesions))} "
          f"{tests} |")
    w("")


def _swin_text(ctx: dict) -> str:
    sw, sizes = ctx.get("swin"), ctx["sizes"]
    if not sw:
        return "SwinUNETR was not trained or timed at these sizes."
    if "error" in sw:
        return f"SwinUNETR was not trained: a timing probe failed ({sw['error']})."
    main = ctx["run_stats"].get(f"multitalent_{sizes.archs[0]}", {}).get("s_per_it")
    rel = f" ({sw['s_per_it'] / main:.1f}x the U-Net's {main:.2f} s)" if main else ""
    return (f"SwinUNETR (MONAI, feature size {sw['feature_size']}) was not trained: a probe measured "
            f"{sw['s_per_it']:.2f} s per iteration{rel}, i.e. ~{sw['s_per_it'] * sizes.n_multi / 60:.0f} min "
            f"for one 2N = {sizes.n_multi}-iteration MultiTalent run, which does not fit this time budget "
            "(add "
            "`swin_unetr` to `Sizes.archs` to train it).")


# --- main -----------------------------------------------------------------------------------------
JUDGED_SIZES = ("full",)  # sizes whose report gives verdicts; --quick and the test sizes judge nothing


def analysis(rep: Reproduction, runs: dict, pre_all, sizes: Sizes, spacing) -> dict:
    """Convergence of every run, samples drawn per dataset, head thickness and the resolved heads."""
    conv = {name: convergence(rep.runs / name) for name in runs}
    # the single-dataset model of each dataset (any backbone: same N and batch) and the multi-dataset runs
    samples: dict[str, dict[str, float]] = {"its single-dataset model": {
        ds: samples_per_dataset(rep.runs / f"single_{ds}", pre_all.cases).get(ds, 0.0)
        for ds in rep.dataset_ids if (rep.runs / f"single_{ds}" / "config.json").is_file()}}
    for name in [f"multitalent_{a}" for a in sizes.archs] + ["merged_softmax"]:
        if (rep.runs / name / "config.json").is_file():
            samples[_title(name)] = samples_per_dataset(rep.runs / name, pre_all.cases)
    cache = rep.results / "head_thickness.json"
    thickness = _read_json(cache)
    if thickness is None:
        thickness = head_thickness(rep.dataset_dirs, rep.test_cases, rep.registry)
        _write_json(cache, thickness)
    limit = 2 * max(spacing)
    resolved = [h for h, t in thickness.items() if t is not None and t >= limit]
    per_ds: dict[str, int] = {}
    for c in pre_all.cases:
        per_ds[c["dataset"]] = per_ds.get(c["dataset"], 0) + 1
    return {"convergence": conv, "samples": samples, "thickness": thickness, "resolved": resolved,
            "resolution_limit_mm": limit, "judged": sizes.name in JUDGED_SIZES,
            "train_cases_per_dataset": per_ds}


def run(sizes: Sizes, out: Path, seed: int = 0, device: str = "cpu", quiet: bool = True,
        report: Path | None = None, command: str | None = None) -> dict:
    """Run (or resume) every experiment in ``out`` and write the report; returns the report context."""
    from multitalent.preprocessing.pipeline import Preprocessed

    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep = Reproduction(sizes, out, seed, device, quiet)
    rep.check_sizes()
    command = command or f"python benchmarks/reproduce.py --{sizes.name} --out {out} --seed {seed}"
    rep.start_invocation(command)
    rep.say(f"reproduce ({sizes.name} sizes, seed {seed}, device {device}) -> {out}")
    rep.prepare_data()
    rep.train_all()
    summaries = rep.table1()
    transfer = rep.transfer()
    inference = rep.inference_timing()
    rep.extra_archs(summaries)
    rep.ablation_runs(summaries)
    swin = rep.swin_probe()
    fidelity = rep.protocol_fidelity([m for m in summaries if not m.startswith("single")])

    runs = {p.name: run_stats(p) for p in sorted(rep.runs.iterdir()) if (p / "log.jsonl").is_file()}
    main = f"multitalent_{sizes.archs[0]}"
    singles = [v for name, v in runs.items() if name.removeprefix("single_") in rep.dataset_ids]
    cost = {"multitalent_s": runs[main]["epoch_time_s"], "singles_s": sum(v["epoch_time_s"] for v in singles),
            "multitalent_it": runs[main]["iterations"], "singles_it": sum(v["iterations"] for v in singles)}
    cost["ratio"] = cost["singles_s"] / max(cost["multitalent_s"], 1e-9)
    wall_s = time.perf_counter() - t_start
    invocations = rep.invocations()
    pre_all = Preprocessed.open(rep.pre["all"])
    ctx = {
        "sizes": sizes, "summaries": summaries, "registry": rep.registry, "fidelity": fidelity,
        "transfer": transfer, "inference": inference, "cost": cost, "run_stats": runs, "swin": swin,
        "dataset_ids": rep.dataset_ids, "n_train": len(pre_all.cases),
        "n_test": sum(len(v) for v in rep.test_cases.values()),
        "n_target_train": sum(1 for c in pre_all.cases if c["dataset"] == TARGET),
        "n_target_test": len(rep.test_cases[TARGET]),
        "n_fully": len(Preprocessed.open(rep.pre["fully"]).cases),
        "plans": {"spacing": pre_all.plans.spacing, "patch_size": pre_all.plans.patch_size,
                  "batch_size": pre_all.plans.batch_size},
        "command": command,
        "seed": seed, "ft_seeds": [seed + i for i in range(sizes.ft_seeds)], "date": _date_utc(),
        "machine": machine_description(device), "device": device, "wall_s": wall_s,
        "wall_total_s": sum(i["wall_s"] for i in invocations), "n_invocations": len(invocations),
        "wall_times": _read_json(rep.results / "wall_times.json", {}) or {},
        "calibration_note": calibration_note(sizes),
    }
    ctx.update(analysis(rep, runs, pre_all, sizes, pre_all.plans.spacing))
    ctx["findings"] = findings(ctx)
    _write_json(rep.results / "findings.json", ctx["findings"])
    for path in [out / "results.md"] + ([Path(report)] if report else []):
        write_report(path, ctx)
        rep.say(f"report written: {path}")
    return ctx


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true", help="toy sizes: checks the machinery (minutes)")
    mode.add_argument("--full", action="store_true", help="the sizes for < 70 min on 2 idle CPU cores")
    mode.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the reduced form the tests run
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: work_dirs/reproduce_<mode>)")
    p.add_argument("--seed", type=int, default=0, help="training seed; fine-tuning uses seed, seed+1, ...")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--report", type=Path, default=None,
                   help="also write the report here (default for --full: docs/results.md); it is always "
                        "written to OUT/results.md")
    p.add_argument("--verbose", action="store_true", help="progress bars of every stage")
    args = p.parse_args(argv)
    name = "full" if args.full else "quick" if args.quick else "tiny"
    out = args.out or REPO / "work_dirs" / f"reproduce_{name}"
    report = args.report or (REPO / "docs" / "results.md" if name == "full" else None)
    argv = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/reproduce.py " + " ".join(shlex.quote(a) for a in argv)
    run(SIZES[name], out, args.seed, args.device, quiet=not args.verbose, report=report, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
