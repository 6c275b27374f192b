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
# there within ~1000 iterations (docs/benchmarks.md); at 4 mm / 32x64x64 a patch holds less of the body
# and the demo's network still predicted background everywhere after 240 iterations (before the head prior)
FULL = Sizes(name="full", base_features=8, archs=("plain_unet", "resenc_unet"), swin_probe_iterations=4,
             spacing=(6.0, 6.0, 6.0), patch_size=(32, 48, 48), lesion_scale=2.0, iterations_per_epoch=50,
             single_epochs=16, fold="0", val_iterations=12, ft_iterations_per_epoch=25, ft_head_warmup_epochs=1,
             ft_full_warmup_epochs=3, ft_epochs=10, ft_seeds=3, timing_scans=3)
QUICK = Sizes(name="quick", max_train=3, max_test=1, base_features=4, archs=("plain_unet", "resenc_unet"),
              lesion_scale=2.0, swin_probe_iterations=2, iterations_per_epoch=4, single_epochs=2,
              val_iterations=1, ft_iterations_per_epoch=1, ft_head_warmup_epochs=1, ft_full_warmup_epochs=5,
              ft_epochs=4, ft_seeds=2, timing_scans=1)
TINY = Sizes(name="tiny", datasets=("D005", "D006", "D007"), max_train=2, max_test=1, in_plane_step=2,
             spacing=(8.0, 8.0, 8.0), patch_size=(16, 32, 32), base_features=4, iterations_per_epoch=2,
             single_epochs=1, val_iterations=1, ft_iterations_per_epoch=1, ft_head_warmup_epochs=1,
             ft_full_warmup_epochs=2, ft_epochs=1, ft_seeds=1, timing_scans=1, eval_workers=1,
             preprocess_workers=1)
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
        "Calibration (measured while writing the script; 2-core Xeon @ 2.5 GHz, 6 mm, patch 32x48x48, "
        "batch 2, `num_workers=0`): the plain U-Net with 8 base features takes 0.27-0.32 s per iteration "
        "(data wait 6-7 %), the residual U-Net 0.35-0.39 s; at 4 mm / patch 32x64x64 the plain U-Net took "
        "0.38-0.39 s (0.42 s with `num_workers=1`: the loader process competes with the two compute threads, "
        "so batches are built in the main process) and SwinUNETR (feature size 12) ~4.5x as much. "
        "Predicting one test scan takes 1-3 s. On a shared machine (another process's threads on "
        "the same 2 cores) iterations were 5-10x slower. Projection for these sizes at the calibrated "
        f"speeds: {total} iterations and {epochs} epoch ends, ~{minutes:.0f} min of training on 2 idle "
        f"cores. The `--full` sizes project to ~{full_min:.0f} min in all "
        f"(~{CALIBRATION_FULL_FIXED_MIN:.0f} min of it "
        "for data, prediction and evaluation), chosen to stay below 70 min."
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
        path = self.results / "wall_times.json"
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
        return TrainConfig(epochs=epochs, iterations_per_epoch=s.iterations_per_epoch,
                           val_iterations=s.val_iterations, base_features=s.base_features, fold=s.fold,
                           num_workers=s.num_workers,
                           seed=self.seed, device=self.device, quiet=self.quiet, **kw)

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
                                 fold=s.fold, num_workers=s.num_workers, seed=seed, device=self.device,
                                 quiet=self.quiet, resume=resume)
            finetune(pretrained, self.pre["target"], run, cfg)

        return self.train_run(name, fn)

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
        epochs = s.multitalent_factor * s.single_epochs
        key = f"multitalent_{main_arch}"
        runs[key] = self.train_plain(key, self.pre["all"], epochs, arch=main_arch)
        runs["merged_softmax"] = self.train_plain("merged_softmax", self.pre["all"], epochs, arch=main_arch,
                                                  objective="merged_softmax")
        for key in (f"multitalent_{main_arch}", "merged_softmax"):
            summaries[key] = self.predict_and_evaluate(key, runs[key], registry, reference)
        self.table1_runs, self.registry, self.reference = runs, registry, reference
        return summaries

    def single_models(self, arch: str, registry, reference: dict | None) -> tuple[dict[str, Path], dict]:
        """Train, predict and evaluate the K single-dataset models of ``arch`` (N iterations each)."""
        key = single_key(arch, self.sizes.archs[0])
        runs = {ds: self.train_plain(f"{key}_{ds}", self.pre["all"], self.sizes.single_epochs, datasets=[ds],
                                     arch=arch) for ds in self.dataset_ids}
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
            run = self.train_plain(key, self.pre["all"], s.multitalent_factor * s.single_epochs, arch=arch)
            self.table1_runs[key] = run
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
        arch = s.archs[0]
        epochs = s.multitalent_factor * s.single_epochs
        pre_mt = self.train_plain("pretrain_multitalent", self.pre["pretrain"], epochs, arch=arch)
        pre_sup = self.train_plain("pretrain_supervised", self.pre["fully"], epochs, arch=arch)
        registry = HeadRegistry.load(self.pre["target"] / "heads.json")
        # from scratch needs a checkpoint only for the architecture; its weights are not used
        conditions = {"scratch": (pre_mt, True), "multitalent": (pre_mt, False),
                      "supervised": (pre_sup, False)}
        per_seed: dict[str, dict[int, dict]] = {c: {} for c in conditions}
        for k in range(s.ft_seeds):
            seed = self.seed + k
            for cond, (pretrained, scratch) in conditions.items():
                name = f"finetune_{cond}_seed{seed}"
                run = self.train_finetune(name, pretrained, seed, scratch)
                pred = self.preds / name
                if not all((pred / c / "case.json").is_file() for c in self.test_cases[TARGET]):
                    self.predict(run, self.dataset_dirs[TARGET] / "imagesTs", pred)
                summary = self.evaluate(pred, [TARGET], registry, name)
                per_seed[cond][seed] = {"dataset_dice": summary["datasets"][TARGET]["dice_mean"],
                                        "heads": {h: v["dice_mean"] for h, v in summary["heads"].items()}}
        return {"per_seed": per_seed, "tests": transfer_tests(per_seed), "heads": registry.ids}

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
        if cached.get("models") == models:
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

        out: dict = {"models": models, "conflicts": {}}
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


def transfer_tests(per_seed: dict[str, dict[int, dict]]) -> dict:
    """One-sided paired t-tests (``ttest_rel(..., alternative='greater')``): paired over seeds (the
    dataset-mean Dice of each seed) and over heads (each head's Dice averaged over seeds)."""
    from scipy.stats import ttest_rel

    out = {}
    seeds = sorted(per_seed["multitalent"])
    heads = sorted(per_seed["multitalent"][seeds[0]]["heads"]) if seeds else []
    for other in ("scratch", "supervised"):
        a = [per_seed["multitalent"][s]["dataset_dice"] for s in seeds]
        b = [per_seed[other][s]["dataset_dice"] for s in seeds]
        ha = [float(np.mean([per_seed["multitalent"][s]["heads"][h] for s in seeds])) for h in heads]
        hb = [float(np.mean([per_seed[other][s]["heads"][h] for s in seeds])) for h in heads]
        res = {}
        for key, x, y in (("seeds", a, b), ("heads", ha, hb)):
            p = float("nan")
            if len(x) >= 2 and not np.allclose(np.subtract(x, y), np.subtract(x, y)[0]):
                p = float(ttest_rel(x, y, alternative="greater").pvalue)
            elif len(x) >= 2:  # identical differences: the t statistic is undefined
                p = 0.0 if np.mean(np.subtract(x, y)) > 0 else 1.0
            res[key] = {"n": len(x), "mean_difference": float(np.mean(np.subtract(x, y))) if x else None,
                        "p": None if math.isnan(p) else p}
        out[f"multitalent_vs_{other}"] = res
    return out


# --- the report -----------------------------------------------------------------------------------
def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _p(x: float | None) -> str:
    return "n/a" if x is None else (f"{x:.3f}" if x >= 0.001 else f"{x:.1e}")


METHOD_TITLES = {"single": "single-dataset", "multitalent_plain_unet": "MultiTalent (U-Net)",
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


def _verdict(ok: bool | None) -> str:
    return "not measurable" if ok is None else ("**holds here**" if ok else "**does not hold here**")


def _points(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} points"


def findings(ctx: dict) -> list[dict]:
    """Every paper claim with what was measured here and whether it holds at this scale."""
    sizes, summaries = ctx["sizes"], ctx["summaries"]
    main = f"multitalent_{sizes.archs[0]}"
    mt, sg = summaries[main], summaries["single"]
    heads = list(sg["heads"])
    lesions = [h for h in heads if sg["heads"][h]["lesion"]]
    difficult = [h for h in heads if sg["heads"][h]["difficult"]]
    k = len(ctx["dataset_ids"])
    out = []

    def add(key: str, claim: str, paper: str, measured: str, holds: bool | None) -> None:
        out.append({"key": key, "claim": claim, "paper": paper, "measured": measured, "holds": holds})

    d_avg = _diff(mt["dataset_average"]["dice_mean"], sg["dataset_average"]["dice_mean"])
    d_all = _diff(_mean_dice(mt, heads), _mean_dice(sg, heads))
    wins = sum(1 for h in heads if (mt["heads"][h]["dice_mean"] or 0) > (sg["heads"][h]["dice_mean"] or 0))
    add("t1_average", "One MultiTalent model matches or beats the single-dataset models (average over "
        "datasets; within 1 point counts as matching)", "Table 1: matches or improves on average",
        f"{_pct(mt['dataset_average']['dice_mean'])} vs {_pct(sg['dataset_average']['dice_mean'])} "
        f"({_points(d_avg)}); better on {wins} of {len(heads)} heads",
        None if d_avg is None else d_avg >= -0.01)
    d_les = _diff(_mean_dice(mt, lesions), _mean_dice(sg, lesions))
    add("t1_lesions", "The gain is largest on lesion heads", "Table 1 / Fig. 2: largest gains on lesions",
        f"lesions ({len(lesions)}): {_pct(_mean_dice(mt, lesions))} vs {_pct(_mean_dice(sg, lesions))} "
        f"({_points(d_les)}; all heads {_points(d_all)})",
        None if d_les is None or d_all is None else (d_les > 0 and d_les >= d_all))
    d_dif = _diff(_mean_dice(mt, difficult), _mean_dice(sg, difficult))
    note = " (every head is difficult at this scale)" if difficult and len(difficult) == len(heads) else ""
    add("t1_difficult",
        f"MultiTalent is better on difficult heads (single-dataset Dice < {DIFFICULT_THRESHOLD:.0f} %)",
        "Fig. 2: gains on difficult classes",
        f"difficult ({len(difficult)}){note}: {_pct(_mean_dice(mt, difficult))} vs "
        f"{_pct(_mean_dice(sg, difficult))} ({_points(d_dif)})", None if d_dif is None else d_dif > 0)
    if "merged_softmax" in summaries:
        ms = summaries["merged_softmax"]
        d_ms = _diff(mt["dataset_average"]["dice_mean"], ms["dataset_average"]["dice_mean"])
        found = {h for cases in ms.get("cases", {}).values() for heads_ in cases.values()
                 for h, r in heads_.items() if (r.get("pred_voxels") or 0) > 0}
        collapsed = ("; the merged softmax predicted no foreground for any head on any test case (background "
                     "everywhere: each class is background in the datasets that do not annotate it)"
                     if not found else f"; the merged softmax predicted foreground for {len(found)} of "
                     f"{len(heads)} heads")
        add("t1_merged", "Sigmoid heads per (dataset, class) beat one softmax over merged classes",
            "Sect. 2-3: the merged softmax cannot represent overlapping or conflicting classes",
            f"{_pct(mt['dataset_average']['dice_mean'])} vs {_pct(ms['dataset_average']['dice_mean'])} "
            f"({_points(d_ms)}, average over datasets){collapsed}", None if d_ms is None else d_ms > 0)

    for conflict, entry in ctx["fidelity"]["conflicts"].items():
        rows = {r["head"]: r for r in entry["rows"] if r["model"] == main}
        merged = [r for r in entry["rows"] if r["model"] == "merged_softmax"]
        if not entry["cases"] or not rows:
            add(f"fidelity_{conflict}", f"{conflict}: each head follows its own dataset's protocol",
                "Fig. 1 / Sect. 2", "no test case holds every protocol's truth", None)
            continue
        closer = all((r["dice"][r["own"]] or 0) >= max((v or 0) for v in r["dice"].values())
                     for r in rows.values())
        extra = {h: r["extra"] for h, r in rows.items()}
        if conflict == "aorta":
            ok = closer and (extra.get("D005_aorta") or 0) > (extra.get("D006_aorta") or 0)
            measured = (f"D005_aorta marks {_pct(extra.get('D005_aorta'), 0)} % of the abdominal aorta, "
                        f"D006_aorta {_pct(extra.get('D006_aorta'), 0)} %")
        elif conflict == "heart":
            ok = closer and (extra.get("D006_heart") or 0) >= 0.5
            measured = f"D006_heart marks {_pct(extra.get('D006_heart'), 0)} % of the aortic root"
        else:
            ok = closer and (extra.get("D007_spleen") or 0) > (extra.get("D005_spleen") or 0)
            measured = (f"predicted / fine spleen volume: D005_spleen {_num(extra.get('D005_spleen'))}, "
                        f"D007_spleen {_num(extra.get('D007_spleen'))}")
        measured += "; each head closest to its own protocol's truth" if closer else \
            "; not every head is closest to its own protocol's truth"
        if len(merged) == 2:
            same = all(merged[0]["dice"][t] == merged[1]["dice"][t] for t in entry["truths"])
            measured += ("; the merged softmax's two heads are one class (identical masks)" if same
                         else "; the merged softmax's two heads differ")
        add(f"fidelity_{conflict}",
            f"{conflict}: each {_title(main)} head follows its own dataset's protocol",
            "Fig. 1 / Sect. 2: conflicting protocols are kept apart", measured, ok)

    tr = ctx["transfer"]
    seeds = sorted(tr["per_seed"]["multitalent"], key=int)

    def mean(c: str) -> float:
        return float(np.mean([tr["per_seed"][c][s]["dataset_dice"] for s in seeds]))

    for other in ("scratch", "supervised"):
        t = tr["tests"][f"multitalent_vs_{other}"]
        d = mean("multitalent") - mean(other)
        sig = t["seeds"]["p"] is not None and t["seeds"]["p"] < 0.05
        add(f"transfer_{other}", f"MultiTalent pre-training beats {CONDITIONS[other]}",
            "Table 2: better on average, one-sided paired t-tests",
            f"{_pct(mean('multitalent'))} vs {_pct(mean(other))} ({_points(d)}; one-sided paired p = "
            f"{_p(t['seeds']['p'])} over {t['seeds']['n']} seeds, {_p(t['heads']['p'])} over "
            f"{t['heads']['n']} heads){'; significant at 0.05' if sig else '; not significant at 0.05'}",
            d > 0)

    cost, inf = ctx["cost"], ctx["inference"]
    add("cost_training", f"Training one MultiTalent model is ~K/2 = {k / 2:.1f}x cheaper than K = {k} "
        "single-dataset models", "~6.5x for K = 13",
        f"{cost['ratio']:.2f}x ({cost['multitalent_s']:.0f} s vs {cost['singles_s']:.0f} s)",
        cost["ratio"] >= 0.75 * k / 2)
    add("cost_inference", f"Inference with one model is ~K = {k}x faster than the K single-dataset models",
        "~13x for K = 13", f"{inf['ratio']:.2f}x ({inf['multitalent_s']:.1f} s vs {inf['ensemble_s']:.1f} s "
        f"on {len(inf['scans'])} scan(s))", inf["ratio"] >= 0.5 * k)
    return out


def write_report(path: Path, ctx: dict) -> str:
    """Write the Markdown report to ``path`` (and the box plot beside it); returns the text."""
    from multitalent.errors import atomic_path
    from multitalent.evaluation import plot_comparison

    sizes: Sizes = ctx["sizes"]
    summaries: dict = ctx["summaries"]
    registry = ctx["registry"]
    methods = list(summaries)
    found = {f["key"]: f for f in ctx["findings"]}
    png = path.with_name(path.stem + "_boxplot.png")
    plot_comparison({_title(m): summaries[m] for m in methods}, png,
                    title=f"Dice per head on the phantom test cases ({sizes.name} sizes)")
    heads = list(summaries["single"]["heads"])
    lesions = [h for h in heads if summaries["single"]["heads"][h]["lesion"]]
    difficult = [h for h in heads if summaries["single"]["heads"][h]["difficult"]]
    k = len(ctx["dataset_ids"])
    n, n2 = sizes.n_single, sizes.n_multi
    L: list[str] = []
    w = L.append

    def claim_line(key: str) -> None:
        if key in found:
            f = found[key]
            w(f"- {f['claim']}: {f['measured']} -> {_verdict(f['holds'])}.")

    w("# Reproducing the MultiTalent paper's experiments on the phantom collection\n")
    w(f"Written by `benchmarks/reproduce.py` ({sizes.name} sizes). Every number below was measured by that "
      "script on the synthetic phantom collection (`docs/phantoms.md`). The paper's results (Ulrich et al., "
      "MultiTalent, MICCAI 2023) are quoted qualitatively, as what the paper reports: its tables could not "
      "be consulted while this script was written (only the abstract was at hand), so no Dice values of "
      "the paper are given; the speed-ups (~6.5x training, ~13x inference at 13 datasets) are quoted as "
      "given in the issue that asked for this reproduction, not checked against the paper.\n")
    w("## Run\n")
    w(f"- command: `{ctx['command']}`")
    w(f"- seeds: training seed {ctx['seed']}; fine-tuning seeds {', '.join(map(str, ctx['ft_seeds']))}; "
      f"phantom collection seed {sizes.collection_seed}")
    w(f"- date: {ctx['date']}")
    w(f"- machine: {ctx['machine']}; device `{ctx['device']}`")
    w(f"- wall time: {ctx['wall_s'] / 60:.1f} min for the invocation that wrote this report; "
      f"{ctx['wall_total_s'] / 60:.1f} min summed over all {ctx['n_invocations']} invocation(s) on this "
      "output folder (the script resumes where it stopped; an interrupted invocation counts up to its last "
      "logged step)")
    w(f"- collection: {k} datasets ({', '.join(ctx['dataset_ids'])}), {ctx['n_train']} training and "
      f"{ctx['n_test']} test cases, {len(registry)} heads")
    plans = ctx["plans"]
    w(f"- plans: spacing {plans['spacing']} mm, patch {plans['patch_size']}, batch {plans['batch_size']}; "
      f"{sizes.archs[0]} with {sizes.base_features} base features, deep supervision, SGD (lr 0.01, "
      "Nesterov 0.99, poly), nnU-Net augmentation; the same for every model")
    w(f"- budgets: each single-dataset model N = {n} iterations ({sizes.single_epochs} x "
      f"{sizes.iterations_per_epoch}); MultiTalent, the merged softmax and both pre-trainings 2N = {n2}; "
      f"fine-tuning {sizes.ft_head_warmup_epochs} + {sizes.ft_full_warmup_epochs} + {sizes.ft_epochs} epochs "
      f"of {sizes.ft_iterations_per_epoch} iterations (heads only with AdamW, whole network with an lr ramp, "
      f"poly), from scratch the same {sizes.ft_total_epochs * sizes.ft_iterations_per_epoch} iterations, all "
      "poly")
    w("- the paper's scale: 13 datasets, single-dataset nnU-Nets 1000 epochs x 250 iterations, MultiTalent "
      "2000 epochs, patch 96x192x192 at 1.5x1x1 mm. This run is several orders of magnitude smaller and its "
      "networks are far from converged: it checks the machinery and the direction of the effects, not the "
      "paper's numbers.\n")

    # 1. Table 1
    w("## 1. MultiTalent vs single-dataset models vs merged softmax (paper: Table 1, Fig. 2)\n")
    w("**Paper:** one MultiTalent model matches or beats the 13 single-dataset nnU-Nets on average, with the "
      "largest gains on lesions and other difficult classes; a softmax over merged classes cannot represent "
      "overlapping or conflicting classes.\n")
    w("Dice (%) per head, mean over the head's dataset's test cases (a case where truth and prediction are "
      "both empty counts as 100, `docs/evaluation.md`). *lesion*: tumour head; *difficult*: single-dataset "
      f"Dice below {DIFFICULT_THRESHOLD:.0f} %.\n")
    w("| head | lesion | difficult | " + " | ".join(_title(m) for m in methods) + " |")
    w("|---|---|---|" + "---:|" * len(methods))
    for h in heads:
        hs = summaries["single"]["heads"][h]
        cells = " | ".join(_pct(summaries[m]["heads"].get(h, {}).get("dice_mean")) for m in methods)
        w(f"| {h} | {'yes' if hs['lesion'] else ''} | {'yes' if hs['difficult'] else ''} | {cells} |")
    w("")
    w("Averages (Dice %):\n")
    w("| average | n | " + " | ".join(_title(m) for m in methods) + " |")
    w("|---|---:|" + "---:|" * len(methods))
    w(f"| over datasets | {k} | "
      + " | ".join(_pct(summaries[m]["dataset_average"]["dice_mean"]) for m in methods) + " |")
    for label, hs in (("over heads", heads), ("lesion heads", lesions), ("difficult heads", difficult)):
        cells = " | ".join(_pct(_mean_dice(summaries[m], hs)) for m in methods)
        w(f"| {label} | {len(hs)} | {cells} |")
    w("")
    w("Per dataset (Dice %, mean over the dataset's heads):\n")
    w("| dataset | " + " | ".join(_title(m) for m in methods) + " |")
    w("|---|" + "---:|" * len(methods))
    for ds in ctx["dataset_ids"]:
        cells = " | ".join(_pct(summaries[m]["datasets"].get(ds, {}).get("dice_mean")) for m in methods)
        w(f"| {ds} {registry.datasets[ds].get('name', '')} | {cells} |")
    w("")
    w(f"![Dice per head, by group and method]({png.name})\n")
    w(f"*`{png.name}`, like the paper's Fig. 2: one point per head (its mean Dice over the test cases), "
      "grouped into all heads, lesion heads and difficult heads, one box per method.*\n")
    w("**At this scale:**\n")
    for key in ("t1_average", "t1_lesions", "t1_difficult", "t1_merged"):
        claim_line(key)
    per_ds = ctx["n_test"] / max(k, 1)
    w(f"- Each dataset has {per_ds:.0f} test case(s) here, so per-head differences of several points are "
      "within case-to-case noise.")
    for arch in ("resenc_unet", "swin_unetr"):
        if arch not in sizes.archs:
            if arch == "swin_unetr":
                w("- " + _swin_text(ctx))
            else:
                w("- The residual U-Net variant was not trained at these sizes.")
    w("")

    # 2. protocol fidelity
    fid = ctx["fidelity"]
    w("## 2. Protocol fidelity on conflicting classes\n")
    w("**Paper:** each (dataset, class) pair has its own head, so conflicting annotation protocols (an aorta "
      "that stops at the diaphragm and one that runs to the bifurcation; a heart with or without the aortic "
      "root) are reproduced side by side; a merged softmax has one class per name and cannot.\n")
    w("Each conflicting head's mask (`predict(..., save_heads=True)`) is scored against *every* protocol's "
      "truth on the same cases: all test cases of the collection where every protocol's truth is non-empty "
      "(the phantom ground truth holds every protocol for every case, `truth_for_head`). Dice in %, mean "
      "over cases; * marks the head's own protocol. The merged softmax merges same-name classes, so its "
      "D005_aorta and D006_aorta (and its two spleens) are one class and give the same mask.\n")
    for conflict, entry in fid["conflicts"].items():
        title, expl = EXTRA_METRICS[conflict]
        w(f"**{conflict}** ({len(entry['cases'])} cases: {', '.join(entry['cases']) or 'none'})\n")
        w("| model | head | " + " | ".join(entry["truths"]) + f" | {title} |")
        w("|---|---|" + "---:|" * (len(entry["truths"]) + 1))
        for r in entry["rows"]:
            cells = " | ".join(_pct(r["dice"][t]) + (" *" if t == r["own"] else "") for t in entry["truths"])
            extra = _num(r["extra"]) if conflict == "spleen" else _pct(r["extra"])
            w(f"| {_title(r['model'])} | {r['head']} | {cells} | {extra} |")
        w(f"\n*{title}: {expl}.*\n")
    w("**At this scale:**\n")
    for conflict in fid["conflicts"]:
        claim_line(f"fidelity_{conflict}")
    w("")

    # 3. transfer
    tr = ctx["transfer"]
    w("## 3. Transfer to a left-out target (paper: Table 2)\n")
    w("**Paper:** fine-tuning from MultiTalent beats training from scratch and beats supervised "
      "(TotalSegmentator) pre-training on average over BTCV, AMOS and KiTS19, tested with one-sided paired "
      "t-tests.\n")
    w(f"Target: {TARGET} AbdomenMultiOrgan ({ctx['n_target_train']} training and {ctx['n_target_test']} test "
      f"cases, {len(tr['heads'])} heads), the smallest dataset, like BTCV; it is left out of both "
      f"pre-trainings and preprocessed as its own collection (its own CT statistics, the same spacing and "
      f"patch). MultiTalent pre-training: the other {k - 1} datasets, 2N iterations. Supervised "
      f"pre-training: `{FULLY_FOLDER}`, the same {ctx['n_fully']} training cases with all "
      f"{len(FULLY_LABELS)} structures "
      "annotated (painted from the phantom ground truth: the TotalSegmentator-like baseline), 2N iterations. "
      "Fine-tuning: `multitalent.finetune` (new heads, the backbone copied, three phases).\n")
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
    w("One-sided paired t-tests, `scipy.stats.ttest_rel(a, b, alternative='greater')` with a = MultiTalent "
      "pre-training (H1: a > b); paired over seeds (each seed's mean over heads) and over heads (each head's "
      "mean over seeds):\n")
    w("| comparison | paired over | n | mean difference (points) | p |")
    w("|---|---|---:|---:|---:|")
    for other in ("scratch", "supervised"):
        for over in ("seeds", "heads"):
            t = tr["tests"][f"multitalent_vs_{other}"][over]
            diff = None if t["mean_difference"] is None else 100 * t["mean_difference"]
            w(f"| MultiTalent vs {CONDITIONS[other]} | {over} | {t['n']} | {_num(diff, '+.1f')} | "
              f"{_p(t['p'])} |")
    w("")
    w("Per head (Dice %, mean over seeds):\n")
    w("| head | " + " | ".join(CONDITIONS[c] for c in conds) + " |")
    w("|---|" + "---:|" * len(conds))
    for h in tr["heads"]:
        w(f"| {h} | " + " | ".join(_pct(float(np.mean([tr["per_seed"][c][sd]["heads"][h] for sd in seeds])))
                                    for c in conds) + " |")
    w("")
    w("**At this scale:**\n")
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
      "exports "
      "more heads).\n")
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
    w("**At this scale:**\n")
    claim_line("cost_training")
    claim_line("cost_inference")
    w("- Timings come from one run on a possibly shared machine and are noisy.\n")

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

    w("## Summary: which of the paper's claims hold at this scale\n")
    w("| claim | paper | here | verdict |")
    w("|---|---|---|---|")
    for f in ctx["findings"]:
        w(f"| {f['claim']} | {f['paper']} | {f['measured']} | {_verdict(f['holds'])} |")
    w("")
    w("The accuracy comparisons (sections 1 and 3) come from networks trained for a tiny fraction of the "
      "paper's budget, on small synthetic data with 1-2 test cases per dataset: at this scale they say "
      "little about the paper's regime, whichever way they come out. Protocol fidelity (section 2) and cost "
      "(section 4) follow from the method's structure (separate heads; one network instead of K) and are the "
      "results "
      "that carry over.\n")
    text = "\n".join(L)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return text


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
    summaries = rep.table1()
    transfer = rep.transfer()
    inference = rep.inference_timing()
    rep.extra_archs(summaries)
    swin = rep.swin_probe()
    fidelity = rep.protocol_fidelity([m for m in summaries if m != "single"])

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
