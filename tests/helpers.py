"""Helpers shared by several test modules (no tests here): tiny raw datasets, a small training
configuration, and the session's shared artefacts (the ``shared`` fixture of ``tests/conftest.py``)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from multitalent import io

# the options of the shared artefacts' commands (docs/reliability.md leaves them out of its table)
PRE_ARGS = ["--spacing", "2", "2", "2", "--patch-size", "16", "32", "32", "--workers", "1"]
TRAIN_ARGS = ["--base-features", "4", "--num-workers", "0", "--epochs", "3", "--iterations-per-epoch", "4",
              "--val-iterations", "1", "--fold", "all"]
LIVER, SPLEEN = "Dataset001_Liver", "Dataset002_Spleen"


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


def build_collection(root: Path) -> Path:
    """The tiny two-dataset collection (3 liver cases with nested regions, 2 spleen cases) under ``root``;
    returns its manifest."""
    rng = np.random.default_rng(0)
    write_dataset(root, 1, "Liver", {"liver": [1, 2], "tumor": 2},
                  {f"liver_{i}": blob_case(rng, values=(1, 2)) for i in range(3)}, regions_class_order=[1, 2])
    write_dataset(root, 2, "Spleen", {"spleen": 1},
                  {f"spleen_{i}": blob_case(rng, values=(1,)) for i in range(2)})
    manifest = root / "collection.json"
    manifest.write_text(json.dumps({"datasets": [{"path": LIVER}, {"path": SPLEEN}]}))
    return manifest


def small_cfg(**kw):
    """A TrainConfig for a tiny CPU run (2 epochs of 3 iterations, 4 base features); ``kw`` overrides."""
    from multitalent.training.config import TrainConfig

    base = dict(epochs=2, iterations_per_epoch=3, val_iterations=1, base_features=4, num_workers=0, quiet=True,
                fold="all")
    base.update(kw)
    return TrainConfig(**base)


def _cli(argv: list) -> None:
    from multitalent.cli import main

    assert main(["-q", *[str(a) for a in argv]]) == 0, argv


class Shared:
    """The tiny collection (``raw``) and its preprocessed folder (``pre``), built when the session first asks
    for them, and -- built on first use, with the command line -- a run trained with ``TRAIN_ARGS`` (``run``)
    and the predictions of the spleen scans (``pred``). ``run`` and ``pred`` cost a training: tests that use
    them are marked slow. Tests must not change these folders (copy them first)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if not (root / "raw.done").is_file():
            shutil.rmtree(root, ignore_errors=True)
            self.raw.mkdir(parents=True)
            build_collection(self.raw)
            (root / "raw.done").touch()
        # cheap, so built now rather than inside some test's own captures
        self.pre = self._stage("pre", lambda out: ["preprocess", self.manifest, "-o", out, *PRE_ARGS])

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def manifest(self) -> Path:
        return self.raw / "collection.json"

    def scan(self, case: str = "spleen_0") -> Path:
        return self.raw / SPLEEN / "imagesTr" / f"{case}_0000.nii.gz"

    def _stage(self, name: str, command: Callable[[Path], list]) -> Path:
        """``ROOT/name``, written by ``multitalent -q COMMAND(ROOT/name)`` unless an earlier test did."""
        path = self.root / name
        if not (self.root / f"{name}.done").is_file():
            shutil.rmtree(path, ignore_errors=True)
            _cli(command(path))
            (self.root / f"{name}.done").touch()
        return path

    @property
    def run(self) -> Path:
        return self._stage("run", lambda out: ["train", self.pre, "-o", out, *TRAIN_ARGS])

    @property
    def pred(self) -> Path:
        return self._stage("pred", lambda out: ["predict", "-m", self.run, "-i", self.raw / SPLEEN / "imagesTr",
                                                 "-o", out])
