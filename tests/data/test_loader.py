"""The patch loader (``multitalent.data.loader``): crops, deterministic compact batches, rank splits,
foreground oversampling, worker counts and the shared-memory warning."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from multitalent.data import loader as loader_mod
from multitalent.data.loader import (
    MAX_AUTO_WORKERS,
    PatchBatches,
    auto_num_workers,
    batch_nbytes,
    crop_padded,
    shared_memory_warning,
)
from multitalent.data.targets import batch_to_device
from multitalent.preprocessing.pipeline import Preprocessed, run_preprocessing
from multitalent.procfs import die_with_parent, running
from multitalent.training import loop
from tests.helpers import small_cfg, write_dataset


def test_crop_padded_fills_outside():
    vol = np.arange(27).reshape(3, 3, 3)
    out = crop_padded(vol, (0, 0, 0), (3, 3, 3), -1)
    assert out[1, 1, 1] == vol[0, 0, 0] and out[0, 0, 0] == -1


def test_batches_are_deterministic_and_compact(pre):
    data = PatchBatches(pre, [c["case"] for c in pre.cases], 2, pre.plans.patch_size, [(1, 1, 1), (2, 2, 2)], seed=7)
    raw = data[5]
    # the loader ships one label map per sample and level, not one mask per head
    assert raw["labels"][0].shape == (2, 16, 32, 32) and raw["labels"][1].shape == (2, 8, 16, 16)
    assert raw["labels"][0].dtype == torch.uint8 and "targets" not in raw
    a, b = batch_to_device(raw, torch.device("cpu")), batch_to_device(data[5], torch.device("cpu"))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["targets"][0], b["targets"][0])
    assert not torch.equal(a["image"], data[6]["image"])
    assert a["image"].shape == (2, 1, 16, 32, 32)
    # one target row per annotated (sample, head) pair, at every deep-supervision level
    k = len(a["pairs"])
    assert a["targets"][0].shape == (k, 16, 32, 32) and a["targets"][1].shape == (k, 8, 16, 16)
    assert sum(raw["pair_counts"]) == k and raw["label_lut"].shape[0] == k
    for s, h in a["pairs"].tolist():
        assert pre.registry.heads[h].dataset == a["datasets"][s]
    # the targets are each dataset's head masks (regions included) of the sample's label map
    for lvl in range(2):
        rows = []
        for s, ds in enumerate(a["datasets"]):
            rows.append(pre.registry.targets(raw["labels"][lvl][s].numpy(), ds))
        expected = np.concatenate(rows).astype(np.uint8)
        assert np.array_equal(a["targets"][lvl].numpy(), expected)
    assert a["targets"][0].sum() > 0


def test_global_batch_is_split_across_ranks(pre):
    cases = [c["case"] for c in pre.cases]
    whole = PatchBatches(pre, cases, 4, pre.plans.patch_size, [(1, 1, 1)], seed=1, augment=False)[3]
    halves = [PatchBatches(pre, cases, 4, pre.plans.patch_size, [(1, 1, 1)], seed=1, augment=False, rank=r,
                           world_size=2)[3] for r in range(2)]
    assert torch.equal(torch.cat([h["image"] for h in halves]), whole["image"])


def test_foreground_oversampling(tmp_path):
    img = np.full((20, 48, 48), 40.0, np.float32)
    seg = np.zeros(img.shape, np.uint8)
    seg[8:11, 20:24, 30:34] = 1  # a small lesion: random patch centres rarely hit it
    write_dataset(tmp_path, 1, "Small", {"lesion": 1}, {"s0": (img, seg)})
    (tmp_path / "m.json").write_text(json.dumps({"datasets": ["Dataset001_Small"]}))
    pre = Preprocessed.open(run_preprocessing(tmp_path / "m.json", tmp_path / "pre", spacing=(2.0, 1.5, 1.5),
                                              patch_size=(4, 4, 4), workers=1, progress=False))

    def centre_hits(fraction: float) -> float:
        data = PatchBatches(pre, ["s0"], 1, (4, 4, 4), [(1, 1, 1)], augment=False, fg_fraction=fraction)
        return float(np.mean([batch_to_device(data[i], torch.device("cpu"))["targets"][0][:, 2, 2, 2].any().item()
                              for i in range(90)]))

    assert centre_hits(1.0) == 1.0
    assert centre_hits(0.0) < 0.1
    assert 0.2 < centre_hits(1 / 3) < 0.5


def test_automatic_loader_workers():
    assert auto_num_workers(3, "cuda", cores=64) == 3 and auto_num_workers(0, "cpu") == 0  # given: kept
    assert auto_num_workers(-1, "cpu", cores=64) == 2
    assert auto_num_workers(-1, "cuda", cores=16) == MAX_AUTO_WORKERS == 12
    assert auto_num_workers(-1, "cuda", cores=8) == 7
    assert auto_num_workers(-1, "cuda", local_processes=4, cores=32) == 7  # the node's cores are shared
    assert auto_num_workers(-1, "cuda", local_processes=8, cores=8) == 1  # never fewer than one


def test_shared_memory_warning(pre, tmp_path, monkeypatch, caplog):
    data = PatchBatches(pre, [c["case"] for c in pre.cases], 2, pre.plans.patch_size, [(1, 1, 1), (2, 2, 2)])
    batch = data[0]
    shipped = sum(t.numel() * t.element_size() for t in [batch["image"], *batch["labels"]])
    assert batch_nbytes(data) == shipped
    assert shared_memory_warning(4, 10**6, shm=str(tmp_path)) is None  # plenty of room
    assert shared_memory_warning(0, 10**12, shm=str(tmp_path)) is None  # no workers, no shared memory
    assert shared_memory_warning(2, 10**6, shm=str(tmp_path / "missing")) is None
    free = shutil.disk_usage(tmp_path).free
    msg = shared_memory_warning(3, free // 2, shm=str(tmp_path))
    assert msg and "--shm-size" in msg and "--num-workers" in msg
    # the loop says it before training (here: shared memory smaller than one batch)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(loader_mod.shutil, "disk_usage", lambda path: usage._replace(free=shipped // 2))
    with caplog.at_level("WARNING", logger="multitalent"):
        loop.train(pre.root, tmp_path / "run", small_cfg(epochs=1, iterations_per_epoch=1, num_workers=1,
                                                          batch_size=2))
    assert any("bus error" in r.getMessage() for r in caplog.records)


_ORPHAN_SCRIPT = """
import os, sys, time
from torch.utils.data import Dataset
from multitalent.data.loader import make_loader

class Slow(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        if i > 0:
            time.sleep(120)  # busy on a batch: PyTorch's watchdog only looks between batches
        return os.getpid()

batches = iter(make_loader(Slow(), 0, 10, 1, prefetch=1))
print(next(batches), flush=True)
time.sleep(300)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_a_loader_worker_dies_with_its_training_process(tmp_path):
    """A training process killed outright (out-of-memory killer) takes its loader workers with it at once,
    even a worker in the middle of a batch; an orphan would hold shared memory and the job's output pipes
    (torchrun's caller waited on them for minutes)."""
    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    worker = None
    try:
        worker = int(proc.stdout.readline())
        assert worker != proc.pid and running(worker)
        time.sleep(0.5)  # the worker is now sleeping inside batch 1
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while running(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(worker), "the loader worker outlived its training process"
    finally:
        if proc.poll() is None:
            proc.kill()
        if worker is not None and running(worker):
            os.kill(worker, signal.SIGKILL)


def _fork_and_die_with(parent: int) -> int:
    """The wait status of a child that calls ``die_with_parent(parent)`` and then exits 0."""
    child = os.fork()
    if child == 0:
        code = 0
        try:
            die_with_parent(parent)
        except BaseException:  # noqa: BLE001 - never return into pytest in the child
            code = 3
        os._exit(code)
    return os.waitpid(child, 0)[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_a_worker_whose_parent_is_gone_before_it_starts_ends_itself():
    """The training process died between forking the worker and the worker's start-up: the worker ends at
    once. A worker whose parent is another live process (a forkserver) is left alone."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    status = _fork_and_die_with(gone.pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    live = subprocess.Popen(["sleep", "30"])
    try:
        status = _fork_and_die_with(live.pid)
    finally:
        live.kill()
        live.wait()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
