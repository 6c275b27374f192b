"""Training batches, keyed by iteration number.

Batch ``i`` is a pure function of (seed, i, slot): every sample slot of the global batch draws its case,
its patch and its augmentation from a random stream seeded by those numbers. This makes training
resumable bit for bit (no data-loader state to save), independent of the number of workers, and lets
``torchrun`` ranks each build their own share of the same global batch that one process would build.

A batch carries each sample's label map once per deep-supervision level (``labels[level]``: [B, z, y, x])
and ``pairs`` [K, 2] = (sample, head), the (sample, head) pairs annotated in the sample's source dataset,
with a row of the label lookup table per pair (``label_lut``, see :mod:`multitalent.data.targets`); with
exclusive heads (:mod:`multitalent.exclusions`) also the pairs of heads that get negatives on a sample from
another dataset, and ``known_lut``, which of their voxels count. The
binary targets ``targets[level]`` [K, z, y, x] are built from these where the batch is used
(:func:`multitalent.data.targets.batch_to_device`), so memory and work scale with the heads of the sampled
datasets, not with all heads, and the loader ships one label map per sample rather than one mask per head.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from multitalent.data.augment import initial_patch_size, training_transforms
from multitalent.data.sampling import case_probabilities
from multitalent.data.targets import label_dtype
from multitalent.device import usable_cores
from multitalent.exclusions import exclusion_rows
from multitalent.preprocessing.normalization import AIR_HU, normalize, normalized_air
from multitalent.preprocessing.pipeline import Preprocessed
from multitalent.procfs import die_with_parent
from multitalent.registry import HeadRegistry

STREAM_TRAIN = 0
STREAM_VAL = 1


UNPACKED_KEYS = ("image", "seg", "fg_locations", "fg_heads")  # one ``<case>_<key>.npy`` each under ``unpacked/``


class CaseStore:
    """Opens case files as memory maps (unpacking each ``.npz`` once to ``.npy`` files beside the run)."""

    def __init__(self, pre: Preprocessed):
        self.pre = pre
        self.unpacked = pre.root / "unpacked"
        self._cache: dict[str, dict] = {}

    def _unpack(self, case: str) -> None:
        self.unpacked.mkdir(exist_ok=True)
        with np.load(self.pre.case_file(case)) as z:
            for key in UNPACKED_KEYS:
                final = self.unpacked / f"{case}_{key}.npy"
                if final.exists():
                    continue
                tmp = self.unpacked / f".{case}_{key}.{os.getpid()}.npy"
                np.save(tmp, z[key])
                os.replace(tmp, final)

    def get(self, case: str) -> dict:
        if case not in self._cache:
            if not (self.unpacked / f"{case}_fg_heads.npy").exists():
                self._unpack(case)
            self._cache[case] = {
                key: np.load(self.unpacked / f"{case}_{key}.npy", mmap_mode="r" if key in ("image", "seg") else None)
                for key in UNPACKED_KEYS
            }
        return self._cache[case]


def crop_padded(volume: np.ndarray, center: Sequence[int], size: Sequence[int], pad_value: float,
                dtype: np.dtype | type | None = None) -> np.ndarray:
    """The box of ``size`` centred on ``center``; parts outside the volume are filled with ``pad_value``.

    ``dtype`` (default: the volume's) is the type of the result; the copy converts on the way.
    """
    start = [int(c) - s // 2 for c, s in zip(center, size)]
    out = np.full(tuple(size), pad_value, dtype=dtype or volume.dtype)
    src, dst = [], []
    for st, s, n in zip(start, size, volume.shape):
        lo, hi = max(st, 0), min(st + s, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - st, hi - st))
    out[tuple(dst)] = volume[tuple(src)]
    return out


class PatchBatches(Dataset):
    """Map-style dataset: item ``i`` is the (local share of the) batch of iteration ``i``."""

    def __init__(self, pre: Preprocessed, cases: Sequence[str], batch_size: int, patch_size: Sequence[int],
                 ds_scales: Sequence[Sequence[int]], seed: int = 0, sampling: str = "inv_sqrt",
                 augment: bool = True, fg_fraction: float = 1 / 3, mirror_axes: Sequence[int] = (0, 1),
                 stream: int = STREAM_TRAIN, length: int = 10**9, rank: int = 0, world_size: int = 1,
                 registry: HeadRegistry | None = None, exclusions: dict[str, list[str]] | None = None):
        if batch_size % world_size:
            raise ValueError(f"global batch size {batch_size} is not divisible by {world_size} processes")
        self.pre = pre
        self.registry = registry or pre.registry
        self.cases = list(cases)
        by_case = {c["case"]: c["dataset"] for c in pre.cases}
        self.datasets = [by_case[c] for c in self.cases]
        self.probabilities = case_probabilities(self.datasets, sampling)
        self.batch_size = batch_size
        self.local = batch_size // world_size
        self.rank = rank
        self.patch_size = tuple(int(v) for v in patch_size)
        self.ds_scales = [tuple(int(s) for s in sc) for sc in ds_scales]
        self.seed = seed
        self.augment = augment
        self.fg_fraction = fg_fraction
        self.stream = stream
        self.length = length
        norm = pre.plans.normalization
        self.norm = norm
        self.pad_value = normalized_air(norm)
        self.in_size = initial_patch_size(self.patch_size) if augment else self.patch_size
        self.transforms = (training_transforms(self.patch_size, self.pad_value, mirror_axes) if augment else None)
        self.store = CaseStore(pre)
        # label value -> head membership lookup per dataset: [n_heads_of_ds, L], L = largest label of all
        # datasets + 1, so that every dataset's rows fit one table
        top = max(v for h in self.registry.heads for v in h.labels) + 1
        self.label_dtype = label_dtype(top)
        self._lut: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for ds in self.registry.dataset_ids:
            heads = self.registry.heads_of(ds)
            lut = torch.zeros(len(heads), top, dtype=torch.bool)
            for i, h in enumerate(heads):
                lut[i, list(h.labels)] = True
            self._lut[ds] = (lut, torch.tensor(self.registry.indices_of(ds), dtype=torch.long))
        # --exclusions: per dataset, the other datasets' heads that get negatives on its samples, and which label
        # values are background for each (multitalent.exclusions); None: the paper's pairs only
        self._exclusions = exclusion_rows(self.registry, exclusions, top) if exclusions else None

    def __len__(self) -> int:
        return self.length

    def _sample(self, iteration: int, slot: int) -> tuple[torch.Tensor, list[torch.Tensor], str, str]:
        rng = np.random.default_rng([self.seed, self.stream, iteration, slot])
        k = int(rng.choice(len(self.cases), p=self.probabilities))
        case, ds = self.cases[k], self.datasets[k]
        data = self.store.get(case)
        shape = data["image"].shape
        center = None
        if rng.random() < self.fg_fraction and len(data["fg_heads"]):
            present = np.unique(data["fg_heads"])
            head = rng.choice(present)
            locs = data["fg_locations"][data["fg_heads"] == head]
            center = locs[rng.integers(len(locs))]
        if center is None:
            center = [int(rng.integers(min(p // 2, n // 2), max(n - p // 2, n // 2) + 1))
                      for p, n in zip(self.patch_size, shape)]
        # cropped straight into float32 and normalised in place (one copy of the larger pre-rotation box)
        image = crop_padded(data["image"], center, self.in_size, AIR_HU, dtype=np.float32)
        seg = crop_padded(data["seg"], center, self.in_size, 0, dtype=np.int16)
        img_t = torch.from_numpy(normalize(image, self.norm, inplace=True))[None]
        seg_t = torch.from_numpy(seg)[None]
        if self.transforms is not None:
            # batchgeneratorsv2 draws from torch's, numpy's and Python's global generators
            aug_seed = int(rng.integers(2**31))
            torch.manual_seed(aug_seed)
            np.random.seed(aug_seed)
            random.seed(aug_seed)
            out = self.transforms(image=img_t, segmentation=seg_t)
            img_t, seg_t = out["image"], out["segmentation"]
        # nearest-neighbour resampling keeps the label values, so the map fits the label type; values beyond
        # the table (impossible after preprocessing's checks) would count as background
        seg_t = seg_t[0]
        levels = [seg_t[:: sc[0], :: sc[1], :: sc[2]].to(self.label_dtype) for sc in self.ds_scales]
        return img_t.float(), levels, case, ds

    def __getitem__(self, iteration: int) -> dict:
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            samples = [self._sample(iteration, self.rank * self.local + j) for j in range(self.local)]
        np.random.set_state(np_state)
        random.setstate(py_state)
        images = torch.stack([s[0] for s in samples])
        pairs, luts, known = [], [], []
        for b, (_, _, _, ds) in enumerate(samples):
            lut, head_idx = self._lut[ds]
            if self._exclusions is not None:
                # the sample's annotated pairs (every voxel known), then its exclusion pairs (no positive; known
                # only where the sample's labels are a head the pair's head excludes)
                known.append(torch.ones_like(lut))
                if ds in self._exclusions:
                    rows, extra = self._exclusions[ds]
                    lut, head_idx = torch.cat([lut, torch.zeros_like(rows)]), torch.cat([head_idx, extra])
                    known.append(rows)
            pairs.append(torch.stack([torch.full_like(head_idx, b), head_idx], 1))
            luts.append(lut)
        labels = [torch.stack([s[1][lvl] for s in samples]) for lvl in range(len(self.ds_scales))]
        batch = {"image": images, "pairs": torch.cat(pairs), "labels": labels, "label_lut": torch.cat(luts),
                 "pair_counts": [len(p) for p in pairs],
                 "cases": [s[2] for s in samples], "datasets": [s[3] for s in samples], "iteration": iteration}
        if self._exclusions is not None:
            batch["known_lut"] = torch.cat(known)
        return batch


def _worker_init(_: int, parent: int | None = None) -> None:
    torch.set_num_threads(1)
    if parent is not None:
        # a training process killed outright (the out-of-memory killer, a scheduler's SIGKILL) cannot stop its
        # workers, and torchrun signals only the ranks still alive; PyTorch's own watchdog looks only between
        # batches, so a worker busy on one, or blocked writing to a reader that is gone, would outlive the job
        die_with_parent(parent)


def _identity(batch: dict) -> dict:
    """Items are whole batches already (module level so spawn/forkserver workers can pickle it)."""
    return batch


#: most loader workers chosen automatically per training process (nnU-Net's default for 3D is 12)
MAX_AUTO_WORKERS = 12
#: batches each loader worker builds ahead
PREFETCH = 2


def auto_num_workers(requested: int, device_type: str, local_processes: int = 1, cores: int | None = None) -> int:
    """The loader workers to start: ``requested`` if >= 0, else automatic.

    Automatic: on CUDA, the CPU cores this process may use, shared among the training processes of this node,
    minus one for the training process itself, at most :data:`MAX_AUTO_WORKERS` (one paper-config worker
    builds a batch of 4 in about 1.3 s, a GPU step takes 0.14-0.27 s: docs/distributed.md); on the CPU, 2
    (the workers compete with the training threads for the same cores).
    """
    if requested >= 0:
        return requested
    if device_type != "cuda":
        return 2
    if cores is None:
        cores = usable_cores()
    return max(1, min(MAX_AUTO_WORKERS, cores // max(1, local_processes) - 1))


def batch_nbytes(dataset: PatchBatches) -> int:
    """Bytes of one batch as the loader ships it (image and label maps at every level)."""
    voxels = int(np.prod(dataset.patch_size))
    labels = sum(voxels // int(np.prod(sc)) for sc in dataset.ds_scales)
    return dataset.local * (4 * voxels + labels * dataset.label_dtype.itemsize)


def shared_memory_warning(num_workers: int, batch_bytes: int, prefetch: int = PREFETCH,
                          shm: str = "/dev/shm") -> str | None:
    """A warning if ``shm`` cannot hold the batches that ``num_workers`` workers keep in flight.

    Workers hand batches to the training process through shared memory; containers often give it 64 MB
    (Docker's default), far less than a few paper-config batches (about 70 MB each), and the loader then
    dies with a bus error. None when it fits, when there are no workers or when ``shm`` does not exist.
    """
    if num_workers <= 0:
        return None
    try:
        free = shutil.disk_usage(shm).free
    except OSError:
        return None
    need = num_workers * prefetch * batch_bytes
    if free >= need:
        return None
    return (f"{shm} has {free / 1e6:.0f} MB free, but {num_workers} loader workers keep about {need / 1e6:.0f} MB "
            f"of batches there; the loader may fail with a bus error. Give the container more shared memory "
            f"(docker run --shm-size=8g or --ipc=host) or lower --num-workers.")


def make_loader(dataset: PatchBatches, start: int, stop: int, num_workers: int, pin_memory: bool = False,
                prefetch: int = PREFETCH, persistent: bool = False) -> DataLoader:
    """Iterate batches ``start..stop-1`` in order, built by ``num_workers`` background processes.

    ``persistent``: the workers outlive a pass and serve every later one (the validation batches, read once per
    epoch): started once instead of at every pass, and shut down only with the loader."""
    kwargs = {}
    if num_workers > 0:
        init = functools.partial(_worker_init, parent=os.getpid())  # ends with this process (die_with_parent)
        kwargs = {"worker_init_fn": init, "prefetch_factor": prefetch, "persistent_workers": persistent}
    return DataLoader(dataset, batch_size=None, sampler=range(start, stop), num_workers=num_workers,
                      pin_memory=pin_memory, collate_fn=_identity, **kwargs)


def unpack_all(pre: Preprocessed, cases: Sequence[str]) -> None:
    """Unpack the case files once before workers start (avoids races and repeated decompression)."""
    store = CaseStore(pre)
    for c in cases:
        if not (store.unpacked / f"{c}_fg_heads.npy").exists():
            store._unpack(c)


__all__ = ["UNPACKED_KEYS", "PatchBatches", "CaseStore", "make_loader", "auto_num_workers", "shared_memory_warning",
           "batch_nbytes", "unpack_all", "crop_padded"]
