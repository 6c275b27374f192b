"""The phantom collection: seven partially-labelled datasets modelled on MultiTalent's, plus full truth.

Every case is a complete synthetic body; each dataset annotates only its own structures, with its own
protocol. ``ground_truth/`` keeps every structure of every protocol for every case, so that protocol
conflicts and cross-dataset predictions can be measured.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
from scipy import ndimage

from multitalent.config import with_options
from multitalent.errors import UserInputError, atomic_dir, write_json
from multitalent.io import Geometry, read_label, write_image, write_label
from multitalent.phantoms import anatomy as A
from multitalent.phantoms import scanner
from multitalent.phantoms.config import PhantomsConfig, Scale
from multitalent.phantoms.space import orient, random_field

SCALES: tuple[str, ...] = get_args(Scale)
GENERATOR = "multitalent-phantoms/1"
TRUTH_FORMAT = "multitalent-phantom-truth/1"


@dataclass(frozen=True)
class DatasetDef:
    """One phantom dataset: its labels, how they are drawn from the truth, and its case mix."""

    number: int
    name: str
    prefix: str
    labels: dict[str, int | list[int]]
    recipe: tuple[tuple[int, str], ...]  # (label value, truth structure), painted in this order
    n_train: dict[str, int]
    n_test: dict[str, int]
    fov: dict[str, float]
    phase: dict[str, float]
    tumours: dict[str, float]  # probability of a liver / kidney / pancreas tumour
    description: str
    regions_class_order: list[int] | None = None

    @property
    def folder(self) -> str:
        return f"Dataset{self.number:03d}_{self.name}"

    @property
    def id(self) -> str:
        return f"D{self.number:03d}"

    def n_cases(self, scale: str) -> int:
        return self.n_train[scale] + self.n_test[scale]


_ABDOMEN = {"abdomen": 0.7, "both": 0.3}
DATASETS: tuple[DatasetDef, ...] = (
    DatasetDef(1, "Liver", "liver", {"background": 0, "liver": [1, 2], "tumor": 2},
               ((1, "liver"), (2, "liver_tumor")), {"small": 14, "full": 40}, {"small": 2, "full": 10},
               _ABDOMEN, {"native": 0.15, "arterial": 0.25, "venous": 0.6},
               {"liver": 0.85, "kidney": 0.1, "pancreas": 0.05},
               "Liver and liver tumours (after MSD Task03 / LiTS) as nnU-Net regions: the liver includes its "
               "tumours.", regions_class_order=[1, 2]),
    DatasetDef(2, "HepaticVessel", "hepaticvessel", {"background": 0, "vessel": 1, "tumor": 2},
               ((1, "hepatic_vessel"), (2, "liver_tumor")), {"small": 10, "full": 30},
               {"small": 2, "full": 8},
               _ABDOMEN, {"native": 0.05, "arterial": 0.15, "venous": 0.8},
               {"liver": 0.85, "kidney": 0.1, "pancreas": 0.05},
               "Intrahepatic vessels and liver tumours (after MSD Task08)."),
    DatasetDef(3, "Kidney", "kidney", {"background": 0, "kidney": 1, "tumor": 2},
               ((1, "kidney_left"), (1, "kidney_right"), (2, "kidney_tumor")), {"small": 12, "full": 36},
               {"small": 2, "full": 9}, {"abdomen": 0.8, "both": 0.2},
               {"native": 0.1, "arterial": 0.6, "venous": 0.3},
               {"liver": 0.1, "kidney": 0.9, "pancreas": 0.05},
               "Both kidneys and a kidney tumour (after KiTS19); the kidney label excludes the tumour."),
    DatasetDef(4, "Pancreas", "pancreas", {"background": 0, "pancreas": 1, "tumor": 2},
               ((1, "pancreas"), (2, "pancreas_tumor")), {"small": 10, "full": 32}, {"small": 2, "full": 8},
               {"abdomen": 0.75, "both": 0.25}, {"native": 0.1, "arterial": 0.3, "venous": 0.6},
               {"liver": 0.1, "kidney": 0.1, "pancreas": 0.85},
               "Pancreas and pancreas tumour (after MSD Task07); the pancreas label excludes the tumour."),
    DatasetDef(5, "AbdomenMultiOrgan", "abdomen",
               {"background": 0, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4,
                "liver": 5, "stomach": 6, "aorta": 7, "inferior_vena_cava": 8, "pancreas": 9},
               ((1, "spleen"), (2, "kidney_right"), (3, "kidney_left"), (4, "gallbladder"), (5, "liver"),
                (6, "stomach"), (7, "aorta"), (8, "inferior_vena_cava"), (9, "pancreas")),
               {"small": 4, "full": 8}, {"small": 2, "full": 4}, {"both": 0.6, "abdomen": 0.4},
               {"native": 0.2, "arterial": 0.3, "venous": 0.5},
               {"liver": 0.15, "kidney": 0.1, "pancreas": 0.05},
               "Abdominal organs (after BTCV), the smallest dataset; organs include their tumours and the "
               "aorta runs the full length, root to bifurcation."),
    DatasetDef(6, "Thorax", "thorax",
               {"background": 0, "heart": 1, "aorta": 2, "lung_left": 3, "lung_right": 4, "trachea": 5},
               ((3, "lung_left"), (4, "lung_right"), (5, "trachea"), (2, "aorta_thoracic"),
                (1, "heart_with_aortic_root")), {"small": 8, "full": 24}, {"small": 2, "full": 6},
               {"thorax": 0.7, "both": 0.3}, {"native": 0.4, "arterial": 0.4, "venous": 0.2},
               {"liver": 0.05, "kidney": 0.05, "pancreas": 0.0},
               "Thoracic organs at risk (after SegTHOR / StructSeg): the heart includes the aortic root "
               "and the aorta stops at the diaphragm."),
    DatasetDef(7, "Spleen", "spleen", {"background": 0, "spleen": 1}, ((1, "spleen_coarse"),),
               {"small": 6, "full": 12}, {"small": 2, "full": 4}, _ABDOMEN,
               {"native": 0.1, "arterial": 0.2, "venous": 0.7},
               {"liver": 0.1, "kidney": 0.05, "pancreas": 0.0},
               "Spleen (after MSD Task09), annotated coarsely: smoothed and dilated by ~1-2 voxels."),
)

CONFLICTS = [
    {"structure": "aorta", "heads": ["D005_aorta", "D006_aorta"], "truth": ["aorta", "aorta_thoracic"],
     "what": "D006 (Thorax) stops the aorta at the slice where it crosses the diaphragm and leaves the root "
             "to the heart; D005 (AbdomenMultiOrgan) labels it from the valve down to the bifurcation."},
    {"structure": "heart", "heads": ["D006_heart"],
     "truth": ["heart_with_aortic_root", "heart", "aortic_root"],
     "what": "D006 (Thorax) includes the aortic root in the heart; anatomically (truth 'heart') and in "
             "D005's aorta the root belongs to the aorta."},
    {"structure": "spleen", "heads": ["D005_spleen", "D007_spleen"], "truth": ["spleen", "spleen_coarse"],
     "what": "D007 (Spleen) is annotated coarsely (smoothed and dilated by ~1-2 voxels); D005 follows the "
             "organ's outline."},
    {"structure": "tumour-in-organ", "heads": ["D001_liver", "D003_kidney", "D004_pancreas", "D005_liver"],
     "truth": ["liver", "kidney_left", "kidney_right", "pancreas"],
     "what": "D001 (regions) and D005 count tumours as part of the organ; D003 and D004 label the organ "
             "without its tumour."},
]


def dataset_def(name: str) -> DatasetDef:
    """Look a dataset up by folder name (Dataset001_Liver), name (Liver), prefix (liver) or id (D001)."""
    for d in DATASETS:
        if name in (d.folder, d.name, d.prefix, d.id):
            return d
    raise UserInputError(f"unknown phantom dataset {name!r}; choose one of {[d.name for d in DATASETS]}.")


@dataclass(frozen=True)
class CasePlan:
    """What one case is: which dataset, split, orientation, field of view and contrast phase."""

    seed: int
    dataset: str  # folder name
    index: int
    case_id: str
    split: str  # "Tr" or "Ts"
    orientation: str
    fov: str
    phase: str
    # lesion radii are multiplied by this (1: the collection's small lesions, radius 6-16 mm; the
    # reproduction uses 2, radius 12-32 mm, still within what LiTS, KiTS and MSD Pancreas hold)
    lesion_scale: float = 1.0


def _allocate(rng: np.random.Generator, weights: dict[str, float], n: int) -> list[str]:
    """``n`` labels in proportion to ``weights`` (largest remainder), in random order."""
    keys = list(weights)
    w = np.array([weights[k] for k in keys], dtype=float)
    w = w / w.sum() * n
    counts = np.floor(w).astype(int)
    for i in np.argsort(-(w - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    labels = [k for k, c in zip(keys, counts, strict=True) for _ in range(c)]
    return [labels[i] for i in rng.permutation(n)]


def plan_dataset(seed: int, d: DatasetDef, scale: str) -> list[CasePlan]:
    """The plans of all cases of one dataset (training first, then test), balanced over the options."""
    rng = np.random.default_rng([seed, d.number, 0])
    n = d.n_cases(scale)
    orientations = _allocate(rng, {o: 1.0 for o in scanner.ORIENTATIONS}, n)
    fovs = _allocate(rng, d.fov, n)
    phases = _allocate(rng, d.phase, n)
    return [CasePlan(seed=seed, dataset=d.folder, index=i, case_id=f"{d.prefix}_{i:03d}",
                     split="Tr" if i < d.n_train[scale] else "Ts", orientation=orientations[i], fov=fovs[i],
                     phase=phases[i]) for i in range(n)]


TRUTH_NAMES: tuple[str, ...] = (*A.STRUCTURES, *A.DERIVED)


def _atom_lut(name: str) -> np.ndarray:
    lut = np.zeros(256, dtype=bool)
    lut[list(A.STRUCTURES[name][0])] = True
    return lut


@dataclass
class PhantomCase:
    """One generated case, in its stored orientation.

    The ground truth is kept as the map of disjoint anatomical atoms (plus the coarse spleen, which
    is not a union of atoms); :meth:`truth_mask` builds one structure's mask at a time.
    """

    plan: CasePlan
    image: np.ndarray  # int16 HU (z, y, x)
    label: np.ndarray  # uint8 label map of the case's own dataset
    atoms: np.ndarray  # uint8 anatomical atoms (see anatomy.STRUCTURES)
    spleen_coarse: np.ndarray  # bool
    geometry: Geometry
    meta: dict = field(default_factory=dict)

    def truth_mask(self, name: str) -> np.ndarray:
        """Boolean mask of a ground-truth structure (one of ``TRUTH_NAMES``)."""
        if name == "spleen_coarse":
            return self.spleen_coarse
        if name not in A.STRUCTURES:
            raise KeyError(f"unknown structure {name!r}; known: {', '.join(TRUTH_NAMES)}")
        return _atom_lut(name)[self.atoms]

    @property
    def truth(self) -> dict[str, np.ndarray]:
        """Every ground-truth structure's mask (memory-hungry at full scale; prefer :meth:`truth_mask`)."""
        return {name: self.truth_mask(name) for name in TRUTH_NAMES}


def _coarse(mask: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float],
            radius_mm: float) -> np.ndarray:
    """Coarse annotation: smooth the mask (sigma 2 mm) and dilate it by ``radius_mm``, within the body."""
    out = np.zeros_like(mask)
    if not mask.any():
        return out
    sp = np.asarray(spacing)
    margin = np.ceil((radius_mm + 8.0) / sp).astype(int)
    nz = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
    sl = tuple(slice(max(0, int(i[0]) - m), min(n, int(i[-1]) + m + 1))
               for i, m, n in zip(nz, margin, mask.shape, strict=True))
    sub = mask[sl]
    smooth = ndimage.gaussian_filter(sub.astype(np.float32), 2.0 / sp, mode="constant") > 0.4
    dist = ndimage.distance_transform_edt(~smooth, sampling=sp)
    out[sl] = ((dist <= radius_mm) | sub) & body[sl]
    return out


def render_case(plan: CasePlan, scale: str = "small") -> PhantomCase:
    """Generate one case from its plan (deterministic: the case's random stream depends only on the plan)."""
    d = dataset_def(plan.dataset)
    rng = np.random.default_rng([plan.seed, d.number, plan.index + 1])
    scan, size = scanner.sample_scan(rng, plan.fov, plan.phase, scale)
    frame = scanner.make_frame(rng, scan, size)
    n_liver = int(rng.integers(1, 4)) if rng.random() < d.tumours["liver"] else 0
    has_kidney = bool(rng.random() < d.tumours["kidney"])
    has_pancreas = bool(rng.random() < d.tumours["pancreas"])
    anat = A.sample_anatomy(rng, n_liver, has_kidney, has_pancreas, lesion_scale=plan.lesion_scale)
    extent = np.array(scan.shape) * np.array(scan.spacing)
    bowel, gas = random_field(rng, extent, 14.0), random_field(rng, extent, 9.0)
    zcut = float(frame.to_physical(anat.hiatus)[0])
    atoms, tissue = A.paint(frame, anat, zcut, bowel, gas)
    table, deltas = scanner.hu_table(rng, scan.phase, scan.enhancement)
    image = scanner.form_image(rng, tissue, scan, table)
    del tissue

    canonical = frame.geometry()
    radius = float(rng.uniform(3.5, 6.0))
    coarse = _coarse(atoms == A.SPLEEN, atoms > 0, scan.spacing, radius)
    label = np.zeros(atoms.shape, dtype=np.uint8)
    for value, name in d.recipe:
        label[coarse if name == "spleen_coarse" else _atom_lut(name)[atoms]] = value
    counts = np.bincount(atoms.ravel(), minlength=256)
    voxels = {name: int(counts[list(values)].sum()) for name, (values, _) in A.STRUCTURES.items()}
    voxels["spleen_coarse"] = int(coarse.sum())

    image, geometry = orient(image, canonical, plan.orientation)
    label, _ = orient(label, canonical, plan.orientation)
    atoms, _ = orient(atoms, canonical, plan.orientation)
    coarse, _ = orient(coarse, canonical, plan.orientation)
    meta = {
        "case": plan.case_id, "dataset": d.id, "folder": d.folder, "split": plan.split,
        "orientation": plan.orientation, "fov": plan.fov, "phase": plan.phase,
        "shape": list(scan.shape), "spacing": [round(v, 4) for v in scan.spacing],
        "noise_sigma_hu": round(scan.noise_sigma, 2), "blur_sigma_mm": round(scan.psf_mm, 3),
        "contrast_factor": round(scan.enhancement, 3),
        "aorta_cut_z_mm": round(zcut, 3),
        "tumours": {"liver": len(anat.liver_tumours),
                    "kidney": anat.kidney_tumour[0] if anat.kidney_tumour else None,
                    "pancreas": anat.pancreas_tumour is not None},
        "lesion_contrast_hu": deltas,
        "voxels": voxels,
    }
    return PhantomCase(plan=plan, image=image, label=label, atoms=atoms, spleen_coarse=coarse,
                       geometry=geometry, meta=meta)


def generate_case(seed: int, dataset: str, index: int, scale: str = "small",
                  orientation: str | None = None) -> PhantomCase:
    """Generate case ``index`` of ``dataset`` (name, folder or id) as the collection with ``seed`` would.

    ``orientation`` overrides the planned storage orientation; the anatomy does not change with it.
    """
    _check_args(seed, scale)
    d = dataset_def(dataset)
    plans = plan_dataset(seed, d, scale)
    if not 0 <= index < len(plans):
        raise UserInputError(f"{d.folder} has {len(plans)} cases at scale {scale!r}; index {index} is out "
                             "of range.")
    plan = plans[index]
    if orientation is not None:
        plan = CasePlan(**{**plan.__dict__, "orientation": orientation})
    return render_case(plan, scale)


def _write_case(plan: CasePlan, scale: str, root: str) -> dict:
    case = render_case(plan, scale)
    d = dataset_def(plan.dataset)
    base = Path(root)
    ds = base / d.folder
    write_image(ds / f"images{plan.split}" / f"{plan.case_id}_0000.nii.gz", case.image, case.geometry)
    write_label(ds / f"labels{plan.split}" / f"{plan.case_id}.nii.gz", case.label, case.geometry)
    gt = base / "ground_truth" / plan.case_id
    for name in TRUTH_NAMES:
        write_label(gt / f"{name}.nii.gz", case.truth_mask(name).view(np.uint8), case.geometry)
    return case.meta


def _check_args(seed: int, scale: str) -> None:
    if scale not in SCALES:
        raise UserInputError(f"unknown phantom scale {scale!r}; use one of {', '.join(SCALES)}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserInputError(f"seed must be a non-negative integer, got {seed!r}.")


def _may_overlap(a: str, b: str) -> bool:
    if a not in A.STRUCTURES or b not in A.STRUCTURES:  # derived ones (the coarse spleen) may touch anything
        return True
    return bool(set(A.STRUCTURES[a][0]) & set(A.STRUCTURES[b][0]))


def head_recipe(d: DatasetDef) -> dict[str, dict]:
    """For each head of ``d``: its label values and the truth structures that form it (union minus)."""
    heads = {}
    for name, value in d.labels.items():
        values = value if isinstance(value, list) else [value]
        if name == "background":
            continue
        union = [s for v, s in d.recipe if v in values]
        first = min(i for i, (v, _) in enumerate(d.recipe) if v in values)
        minus = [s for i, (v, s) in enumerate(d.recipe)
                 if v not in values and i > first and any(_may_overlap(s, u) for u in union)]
        heads[f"{d.id}_{name}"] = {"labels": values, "union": union, "minus": minus}
    return heads


def phantom_exclusions(defs: list[DatasetDef] | tuple[DatasetDef, ...] = DATASETS) -> dict:
    """The exclusive heads of a phantom collection of datasets ``defs`` (``multitalent train --exclusions``):
    every pair of heads of different datasets whose structures cannot overlap by the phantom's anatomy (no
    shared atom). A head drawn from a derived structure (the coarse spleen, dilated beyond the organ) excludes
    nothing, and neither does a head that some protocol of another dataset may overlap (the heart that includes
    the aortic root and the aorta that starts at the valve)."""
    heads = {h: r["union"] for d in defs for h, r in head_recipe(d).items()}
    exclusive: dict[str, list[str]] = {}
    for a, ua in heads.items():
        for b, ub in heads.items():
            if a < b and a.split("_", 1)[0] != b.split("_", 1)[0] and \
                    not any(_may_overlap(x, y) for x in ua for y in ub):
                exclusive.setdefault(a, []).append(b)
    return {"format": "multitalent-exclusions/1", "exclusive": exclusive}


def truth_for_head(collection_dir: str | os.PathLike, case_id: str,
                   head_id: str) -> tuple[np.ndarray, Geometry]:
    """The true mask of head ``head_id`` (e.g. 'D006_aorta') in case ``case_id``, whatever its dataset.

    Repaints the head's dataset's recipe from the case's ground truth, so it is exactly what that
    dataset's annotators would have drawn on this case.
    """
    d = dataset_def(head_id.split("_", 1)[0])
    heads = head_recipe(d)
    if head_id not in heads:
        raise UserInputError(f"unknown head {head_id!r}; {d.folder} has {sorted(heads)}.")
    gt = Path(collection_dir) / "ground_truth" / case_id
    if not gt.is_dir():
        raise UserInputError(f"{gt}: no ground truth for case {case_id!r}.")
    label, geometry = None, None
    for value, name in d.recipe:
        mask, geometry = read_label(gt / f"{name}.nii.gz")
        if label is None:
            label = np.zeros(mask.shape, dtype=np.int16)
        label[mask > 0] = value
    return np.isin(label, heads[head_id]["labels"]), geometry


def _dataset_json(d: DatasetDef, scale: str) -> dict:
    dj = {"name": d.name, "description": d.description, "reference": "synthetic (multitalent phantoms)",
          "channel_names": {"0": "CT"}, "labels": d.labels, "numTraining": d.n_train[scale],
          "file_ending": ".nii.gz"}
    if d.regions_class_order is not None:
        dj["regions_class_order"] = d.regions_class_order
    return dj


def _structures_json(seed: int, scale: str, metas: list[dict]) -> dict:
    structures = {k: {"description": v[1], "protocol": "anatomical"} for k, v in A.STRUCTURES.items()}
    for k in ("heart_with_aortic_root", "aorta_thoracic"):
        structures[k]["protocol"] = "thorax (D006)"
    structures["spleen_coarse"] = {"description": A.DERIVED["spleen_coarse"], "protocol": "coarse (D007)"}
    return {
        "format": TRUTH_FORMAT, "seed": seed, "scale": scale,
        "layout": "ground_truth/<case>/<structure>.nii.gz: binary uint8 masks on the grid (shape, spacing, "
                  "origin, direction) of the case's image",
        "structures": structures,
        "datasets": {d.id: {"folder": d.folder, "recipe": [list(r) for r in d.recipe],
                            "heads": head_recipe(d)} for d in DATASETS},
        "conflicts": CONFLICTS,
        "cases": {m["case"]: m for m in sorted(metas, key=lambda m: m["case"])},
    }


def _run(jobs: list[CasePlan], scale: str, root: Path, workers: int,
         on_done: Callable[[], None]) -> list[dict]:
    if workers <= 1:
        metas = []
        for plan in jobs:
            metas.append(_write_case(plan, scale, str(root)))
            on_done()
        return metas
    metas = []
    # forkserver, not fork: the caller may hold threads (torch, OpenMP) that a forked child would inherit
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))
    try:
        # biggest cases first so the pool drains evenly
        order = sorted(jobs, key=lambda p: (p.fov != "both", p.fov != "abdomen"))
        pending = {pool.submit(_write_case, p, scale, str(root)) for p in order}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                metas.append(f.result())
                on_done()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return metas


def generate_collection(out: str | Path, config: PhantomsConfig | None = None, *, progress: bool = True,
                        workers: int | None = None, **options: Any) -> Path:
    """Write the collection under ``out``; return the manifest path (out/collection.json). ``options`` are
    :class:`PhantomsConfig` fields (``seed``, ``scale``) and replace those of ``config``.

    The collection is built in a temporary sibling folder and renamed into place, so a crash leaves
    nothing under ``out``. An existing ``out`` is replaced only if it is empty or an earlier collection.
    """
    cfg = with_options(PhantomsConfig, config, **options)
    seed, scale = cfg.seed, cfg.scale
    _check_args(seed, scale)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out}: exists and is a file; give a folder path for the phantom collection.")
    if out.is_dir() and any(out.iterdir()) and not (out / "collection.json").is_file():
        raise UserInputError(f"{out}: folder is not empty and holds no phantom collection; refusing to "
                             "replace it. Choose a new or empty folder.")
    if workers is None:
        workers = min(os.cpu_count() or 1, 4 if scale == "small" else 2)
    jobs = [p for d in DATASETS for p in plan_dataset(seed, d, scale)]

    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="phantoms", unit="case", disable=not progress)
    with atomic_dir(out) as tmp, bar:
        for d in DATASETS:
            for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
                (tmp / d.folder / sub).mkdir(parents=True, exist_ok=True)
            write_json(tmp / d.folder / "dataset.json", _dataset_json(d, scale))
        metas = _run(jobs, scale, tmp, workers, lambda: bar.update(1))
        write_json(tmp / "ground_truth" / "structures.json", _structures_json(seed, scale, metas))
        write_json(tmp / "exclusions.json", phantom_exclusions())
        write_json(tmp / "collection.json", {
            "datasets": [{"path": d.folder} for d in DATASETS],
            "generator": {"name": GENERATOR, "seed": seed, "scale": scale},
            "ground_truth": "ground_truth",
        })
    return out / "collection.json"
