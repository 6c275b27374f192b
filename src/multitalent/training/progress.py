"""Per-epoch log (``log.jsonl``) and the ``progress.png`` plot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from multitalent.errors import atomic_path


def append_log(path: str | os.PathLike, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_log(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash: ignore it
                continue
    return out


def truncate_log(path: str | os.PathLike, epochs_done: int) -> None:
    """Keep the log lines of the first ``epochs_done`` epochs (resume after a crash)."""
    records = [r for r in read_log(path) if r.get("epoch", 0) < epochs_done]
    with atomic_path(path, suffix=".tmp") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def plot_progress(records: list[dict], png: str | os.PathLike) -> None:
    """Loss curves, pseudo-Dice averaged per dataset, and the learning rate, against epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        return
    ep = [r["epoch"] for r in records]
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(ep, [r["train_loss"] for r in records], label="train loss")
    axes[0].plot(ep, [r.get("val_loss", np.nan) for r in records], label="validation loss")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    datasets = sorted({d for r in records for d in r.get("pseudo_dice_per_dataset", {})})
    for d in datasets:
        axes[1].plot(ep, [r.get("pseudo_dice_per_dataset", {}).get(d, np.nan) for r in records], label=d)
    axes[1].plot(ep, [r.get("mean_pseudo_dice", np.nan) for r in records], "k--", label="mean")
    axes[1].set_ylabel("pseudo-Dice")
    axes[1].set_ylim(0, 1)
    axes[1].legend(fontsize=7, ncol=4)
    axes[2].plot(ep, [r["lr"] for r in records])
    axes[2].set_ylabel("learning rate")
    axes[2].set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
