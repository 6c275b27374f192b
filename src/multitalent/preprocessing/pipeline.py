"""The preprocessing stage: check every case, compute CT statistics, reorient, crop, resample, write.

Layout written under ``PRE/`` (built in a temporary sibling folder and renamed at the end, so a
failure leaves nothing half-written):

- ``plans.json``    spacing, patch, batch, normalisation statistics, network topology
- ``heads.json``    the head registry
- ``cases.json``    every case: id, source dataset, file names
- ``splits.json``   5 folds, stratified per dataset
- ``cases/<case>.npz``  ``image`` (int16 HU, canonical orientation, cropped, at the target spacing),
  ``seg`` (the dataset's own label values), ``fg_locations`` ([K, 3] voxel indices) and ``fg_heads``
  ([K] registry index of the head each location belongs to)
- ``cases/<case>.json`` properties: original geometry, canonical geometry, crop box, resampled shape

Normalisation is applied when patches are loaded (from ``plans.json``), not baked into the files: the
files stay compact (int16) and the statistics can change without preprocessing again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from multitalent import io
from multitalent.config import with_options
from multitalent.errors import UserInputError, atomic_dir, write_json
from multitalent.preprocessing.config import PreprocessConfig
from multitalent.preprocessing.normalization import compute_normalization, sample_foreground
from multitalent.preprocessing.plans import Plans
from multitalent.preprocessing.resample import resample_image, resample_labels, target_shape
from multitalent.registry import Collection, HeadRegistry, build_registry, load_manifest

log = logging.getLogger("multitalent")

BODY_THRESHOLD_HU = -500.0


@dataclass(frozen=True)
class CaseRecord:
    case: str
    dataset: str
    image: Path
    label: Path


def list_cases(collection: Collection) -> list[CaseRecord]:
    """All training cases of the collection; checks image/label pairing and unique case ids."""
    records: list[CaseRecord] = []
    seen: dict[str, str] = {}
    for d in collection.datasets:
        labels_dir = d.path / "labelsTr"
        images_dir = d.path / "imagesTr"
        if not labels_dir.is_dir() or not images_dir.is_dir():
            raise UserInputError(f"{d.path}: needs the folders imagesTr/ and labelsTr/.")
        cases = d.cases("Tr")
        if not cases:
            raise UserInputError(f"{labels_dir}: no label files ending in {d.file_ending}.")
        images = sorted(p.name for p in images_dir.iterdir() if p.name.endswith(d.file_ending))
        expected = {f"{c}_0000{d.file_ending}" for c in cases}
        for name in images:
            if name not in expected:
                raise UserInputError(f"{images_dir / name}: image without a label file in {labels_dir} "
                                     "(expected names <case>_0000<ending> and <case><ending>).")
        for c in cases:
            img = d.image_path(c)
            if not img.is_file():
                raise UserInputError(f"{img}: missing image for label {d.label_path(c)}.")
            if c in seen:
                raise UserInputError(f"{d.label_path(c)}: case id '{c}' also exists in dataset {seen[c]}; "
                                     "case ids must be unique across the collection.")
            seen[c] = d.id
            records.append(CaseRecord(c, d.id, img, d.label_path(c)))
    return records


def body_box(image: np.ndarray, threshold: float = BODY_THRESHOLD_HU) -> tuple[slice, slice, slice]:
    """Bounding box of the voxels brighter than air (the body); the whole volume if there are none."""
    mask = image > threshold
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, image.shape[axis]))
    return tuple(box)


def prepare_image(image: np.ndarray, geometry: io.Geometry, spacing: Sequence[float]) -> tuple[np.ndarray, dict]:
    """Canonical orientation, body crop and resampling of a scan (HU kept). Returns array and properties."""
    canon, canon_geom = io.to_canonical(image, geometry)
    box = body_box(canon)
    cropped = canon[box]
    new_shape = target_shape(cropped.shape, canon_geom.spacing, spacing)
    resampled = resample_image(cropped, canon_geom.spacing, new_shape, order=3)
    props = {
        "original_geometry": geometry.to_dict(),
        "canonical_geometry": canon_geom.to_dict(),
        "crop_box": [[s.start, s.stop] for s in box],
        "resampled_shape": list(new_shape),
        "spacing": list(spacing),
    }
    return resampled, props


def restore_channel(array: np.ndarray, props: dict, order: int = 1, fill: float = 0.0) -> np.ndarray:
    """Bring one channel on the target grid back to the input's original grid (shape and orientation).

    ``order=1`` for probabilities/logits, ``order=0`` for masks.
    """
    canon_geom = io.Geometry.from_dict(props["canonical_geometry"])
    original = io.Geometry.from_dict(props["original_geometry"])
    box = tuple(slice(a, b) for a, b in props["crop_box"])
    crop_shape = tuple(s.stop - s.start for s in box)
    if order == 0:
        res = resample_labels(array, canon_geom.spacing, crop_shape)
    else:
        res = resample_image(array, props["spacing"], crop_shape, order=order)
    full = np.full(canon_geom.shape, fill, dtype=res.dtype)
    full[box] = res
    return io.from_canonical(full, canon_geom, original)


def _check_labels(seg: np.ndarray, record: CaseRecord, declared: set[int]) -> None:
    values = set(np.unique(seg).tolist())
    extra = sorted(values - declared)
    if extra:
        raise UserInputError(f"{record.label}: label value(s) {extra} are not declared in dataset.json "
                             f"(declared: {sorted(declared)}).")
    if values <= {0}:
        log.warning("%s: the label map is empty (no foreground); the case is kept as background only.", record.label)


def _preprocess_one(args: tuple) -> tuple[str, np.ndarray]:
    record, registry_dict, spacing, cases_dir, n_fg = args
    registry = HeadRegistry.from_dict(registry_dict)
    image, geom = io.read_image(record.image)
    seg, seg_geom = io.read_label(record.label)
    problem = geom.matches(seg_geom)
    if problem is not None:
        raise UserInputError(f"{record.label}: geometry differs from its image {record.image.name} ({problem}); "
                             "image and label must share shape, spacing, origin and direction.")
    declared = set()
    for h in registry.heads_of(record.dataset):
        declared.update(h.labels)
    _check_labels(seg, record, declared | {0})

    resampled, props = prepare_image(image, geom, spacing)
    canon_seg, _ = io.to_canonical(seg, seg_geom)
    box = tuple(slice(a, b) for a, b in props["crop_box"])
    canon_geom = io.Geometry.from_dict(props["canonical_geometry"])
    seg_res = resample_labels(canon_seg[box], canon_geom.spacing, props["resampled_shape"])

    rng = np.random.default_rng(_stable_seed(record.case))
    locs, owners = [], []
    head_idx = registry.indices_of(record.dataset)
    masks = registry.targets(seg_res, record.dataset)
    for i, mask in zip(head_idx, masks):
        where = np.argwhere(mask)
        if len(where) > n_fg:
            where = where[rng.choice(len(where), n_fg, replace=False)]
        locs.append(where.astype(np.int32))
        owners.append(np.full(len(where), i, dtype=np.int32))
    fg_locations = np.concatenate(locs) if locs else np.zeros((0, 3), np.int32)
    fg_heads = np.concatenate(owners) if owners else np.zeros(0, np.int32)

    image_hu = np.clip(np.round(resampled), -32768, 32767).astype(np.int16)
    samples = sample_foreground(resampled, seg_res, rng)
    props.update({"case": record.case, "dataset": record.dataset, "image_file": str(record.image),
                  "label_file": str(record.label),
                  "heads_present": sorted({int(i) for i in np.unique(fg_heads)}),
                  "min_intensity": float(image.min()) if image.size else 0.0})
    np.savez_compressed(cases_dir / f"{record.case}.npz", image=image_hu, seg=seg_res.astype(np.int16),
                        fg_locations=fg_locations, fg_heads=fg_heads)
    write_json(cases_dir / f"{record.case}.json", props)
    return record.case, samples


def preprocess_records(records: Sequence[CaseRecord], registry: HeadRegistry, plans: Plans, cases_dir: Path,
                       workers: int = 1, progress: bool = True) -> dict[str, np.ndarray]:
    """Write every case of ``records`` into ``cases_dir`` at ``plans``' spacing (``fg_heads`` index
    ``registry``); returns each case's foreground intensity samples (for the normalisation statistics)."""
    jobs = [(r, registry.to_dict(), plans.spacing, cases_dir, plans.foreground_samples_per_head) for r in records]
    samples: dict[str, np.ndarray] = {}
    bar = tqdm(total=len(jobs), desc="preprocess", unit="case", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for case, s in pool.map(_preprocess_one, jobs):
                samples[case] = s
                bar.update()
    else:
        for job in jobs:
            case, s = _preprocess_one(job)
            samples[case] = s
            bar.update()
    bar.close()
    return samples


def _stable_seed(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode())


def make_splits(records: list[CaseRecord], n_folds: int = 5, seed: int = 12345) -> dict[str, dict[str, list[str]]]:
    """Folds split per dataset so every fold's validation set draws from every dataset that can spare cases."""
    rng = np.random.default_rng(seed)
    by_ds: dict[str, list[str]] = {}
    for r in records:
        by_ds.setdefault(r.dataset, []).append(r.case)
    folds: dict[str, dict[str, list[str]]] = {str(f): {"train": [], "val": []} for f in range(n_folds)}
    for cases in by_ds.values():
        order = [cases[i] for i in rng.permutation(len(cases))]
        for pos, case in enumerate(order):
            for f in range(n_folds):
                folds[str(f)]["val" if pos % n_folds == f else "train"].append(case)
    return folds


def run_preprocessing(manifest: str | os.PathLike, out: str | os.PathLike, config: PreprocessConfig | None = None,
                      *, progress: bool = True, **options: Any) -> Path:
    """Preprocess a collection into ``out``. ``options`` are :class:`PreprocessConfig` fields (``preset``,
    ``spacing``, ``patch_size``, ``batch_size``, ``workers``) and replace those of ``config``; spacing, patch
    size and batch size not given come from the preset. Returns ``out``."""
    cfg = with_options(PreprocessConfig, config, **options).resolved()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out}: the output path exists and is a file; give a folder path instead.")
    # the finished folder replaces ``out`` as a whole: never delete a folder that is not ours
    if out.is_dir() and any(out.iterdir()) and not (out / "plans.json").is_file():
        raise UserInputError(f"{out}: folder is not empty and holds no preprocessed collection (no "
                             "plans.json); refusing to replace it. Choose a new or empty folder.")
    collection = load_manifest(manifest)
    registry = build_registry(collection)
    records = list_cases(collection)
    for name, vals in (("spacing", cfg.spacing), ("patch_size", cfg.patch_size)):
        if len(vals) != 3 or any(v <= 0 for v in vals):
            raise UserInputError(f"--{name.replace('_', '-')} needs three positive numbers (z y x), got {list(vals)}.")
    plans = Plans(spacing=[float(v) for v in cfg.spacing], patch_size=[int(v) for v in cfg.patch_size],
                  batch_size=int(cfg.batch_size))
    workers = cfg.workers

    with atomic_dir(out) as tmp:
        cases_dir = tmp / "cases"
        cases_dir.mkdir()
        samples = preprocess_records(records, registry, plans, cases_dir, workers, progress)
        plans.normalization = compute_normalization([samples[r.case] for r in records])
        plans.save(tmp / "plans.json")
        registry.save(tmp / "heads.json")
        write_json(tmp / "cases.json", [{"case": r.case, "dataset": r.dataset, "image": str(r.image),
                                          "label": str(r.label)} for r in records])
        write_json(tmp / "splits.json", make_splits(records))
        write_json(tmp / "manifest.json", {"manifest": str(Path(manifest).resolve())})
    return out


@dataclass
class Preprocessed:
    """A preprocessed folder opened for training: plans, heads, cases and splits."""

    root: Path
    plans: Plans
    registry: HeadRegistry
    cases: list[dict]
    splits: dict

    @classmethod
    def open(cls, root: str | os.PathLike) -> Preprocessed:
        root = Path(root)
        for name in ("plans.json", "heads.json", "cases.json", "splits.json"):
            if not (root / name).is_file():
                raise UserInputError(f"{root / name}: missing; is {root} a folder made by `multitalent preprocess`?")
        return cls(root, Plans.load(root / "plans.json"), HeadRegistry.load(root / "heads.json"),
                   json.loads((root / "cases.json").read_text(encoding="utf-8")),
                   json.loads((root / "splits.json").read_text(encoding="utf-8")))

    def case_file(self, case: str) -> Path:
        return self.root / "cases" / f"{case}.npz"

    def properties(self, case: str) -> dict:
        return json.loads((self.root / "cases" / f"{case}.json").read_text(encoding="utf-8"))
