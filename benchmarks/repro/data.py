"""The phantom data of the reproduction: a phantom sub-collection (some datasets, the first cases of each)
and ``Dataset090_FullyLabelled`` (every structure annotated, painted from the phantom ground truth)."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from repro.common import FULLY_LABELS


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
    from multitalent.phantoms.collection import phantom_exclusions

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
        write_json(tmp / "exclusions.json", phantom_exclusions(defs))
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
