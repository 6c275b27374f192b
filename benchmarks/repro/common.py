"""Constants and small helpers shared by the reproduction's modules (files, logs, the machine)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TARGET = "D005"  # Dataset005_AbdomenMultiOrgan: the few-case multi-organ set, like BTCV in the paper
FULLY_FOLDER = "Dataset090_FullyLabelled"
# One label per ground-truth structure, in painting order: later labels overwrite earlier ones, so nested
# structures (vessels and tumours inside their organ) come after their organ.
FULLY_LABELS = ("bone", "lung_left", "lung_right", "trachea", "heart", "aorta", "iliac_arteries",
                "inferior_vena_cava", "liver", "hepatic_vessel", "liver_tumor", "spleen", "kidney_left",
                "kidney_right", "kidney_tumor", "pancreas", "pancreas_tumor", "gallbladder", "stomach")
DIFFICULT_THRESHOLD = 75.0  # percent; reference = the single-dataset models' Dice

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


# the pre-training each fine-tuning condition starts from by default; from scratch takes only the architecture of
# the MultiTalent pre-training, so its runs do not depend on that pre-training's budget
FT_PRETRAINING = {"scratch": "pretrain_multitalent", "multitalent": "pretrain_multitalent",
                  "supervised": "pretrain_supervised"}


def finetune_run(cond: str, seed: int, start: str | None = None) -> str:
    """The fine-tuning run of condition ``cond`` (scratch, multitalent, supervised) and ``seed`` that starts from
    the pre-training run ``start`` (None or the table's own: ``finetune_multitalent_seed0``; a longer run of its
    budget chain, 2^k times its budget: ``finetune_multitalent_x4_seed0`` from ``double_double_pretrain_multitalent``).
    From scratch never depends on the start."""
    k = doublings(start) if start and cond != "scratch" else 0
    return f"finetune_{cond}{f'_x{2 ** k}' if k else ''}_seed{seed}"


def single_key(arch: str, main_arch: str) -> str:
    """Name of the single-dataset models of ``arch``: ``single`` for the main architecture."""
    return "single" if arch == main_arch else f"single_{arch}"


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
            # robust to bursts of other work on the cores: the median epoch times the number of epochs
            "robust_time_s": (float(np.median([r.get("epoch_time_s", 0.0) for r in recs])) * len(recs)
                              if recs else 0.0),
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


def doublings(name: str) -> int:
    """How many ``double_`` prefixes a budget pair's run name carries (``double_double_single_D001``: 2)."""
    k = 0
    while name.startswith("double_"):
        name, k = name.removeprefix("double_"), k + 1
    return k


def shorter_runs(name: str) -> list[str]:
    """The runs of a budget chain below ``name`` (``double_double_single_D001``: ``single_D001``,
    ``double_single_D001``): each is doubled to make the next, so training ``name`` needs them all doubled."""
    return [("double_" * k) + base_run(name) for k in range(doublings(name))]


def base_run(name: str) -> str:
    """The table's run that a budget pair's run repeats at another budget (``half_single_D001``,
    ``double_double_single_D001``: ``single_D001``)."""
    return name.removeprefix("half_").removeprefix("double_" * doublings(name.removeprefix("half_")))
