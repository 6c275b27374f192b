"""Shared fixtures: tiny raw datasets built in the test, with fixed seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from multitalent import io


def write_dataset(root: Path, number: int, name: str, labels: dict, cases: dict[str, tuple[np.ndarray, np.ndarray]],
                  geometry: io.Geometry | None = None, regions_class_order: list[int] | None = None) -> Path:
    """Write an nnU-Net raw dataset with the given (image, label) arrays per case."""
    folder = root / f"Dataset{number:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    dj = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **labels}, "numTraining": len(cases),
          "file_ending": ".nii.gz"}
    if regions_class_order:
        dj["regions_class_order"] = regions_class_order
    (folder / "dataset.json").write_text(json.dumps(dj))
    for case, (img, seg) in cases.items():
        g = geometry or io.Geometry(img.shape, (2.0, 1.5, 1.5), (0.0, 0.0, 0.0), io.direction_for("LPS"))
        io.write_image(folder / "imagesTr" / f"{case}_0000.nii.gz", img.astype(np.int16), g)
        io.write_label(folder / "labelsTr" / f"{case}.nii.gz", seg, g)
    return folder


def blob_case(rng: np.random.Generator, shape=(20, 32, 32), values=(1,)) -> tuple[np.ndarray, np.ndarray]:
    """A body (HU ~40) in air with nested boxes labelled ``values`` (later values inside earlier ones)."""
    img = np.full(shape, -1000, np.float32)
    img[2:-2, 4:-4, 4:-4] = 40
    img += rng.normal(0, 5, shape)
    seg = np.zeros(shape, np.uint8)
    z, y, x = shape
    for i, v in enumerate(values):
        m = 3 + 2 * i
        seg[m : z - m, 6 + 2 * i : y - 6 - 2 * i, 6 + 2 * i : x - 6 - 2 * i] = v
        img[seg == v] += 30 * (i + 1)
    return img, seg


@pytest.fixture
def tiny_collection(tmp_path: Path) -> Path:
    """Two datasets (one plain, one with nnU-Net regions); returns the manifest path."""
    rng = np.random.default_rng(0)
    write_dataset(tmp_path, 1, "Liver", {"liver": [1, 2], "tumor": 2},
                  {f"liver_{i}": blob_case(rng, values=(1, 2)) for i in range(3)}, regions_class_order=[1, 2])
    write_dataset(tmp_path, 2, "Spleen", {"spleen": 1},
                  {f"spleen_{i}": blob_case(rng, values=(1,)) for i in range(2)})
    manifest = tmp_path / "collection.json"
    manifest.write_text(json.dumps({"datasets": [{"path": "Dataset001_Liver"}, {"path": "Dataset002_Spleen"}]}))
    return manifest


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Tests that pin torch to one thread must not leak it: CPU results depend on the thread count."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
