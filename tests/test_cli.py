"""The command line refuses every bad input clearly: exit code 2, one line naming the file, nothing written.

Every entry of ``BAD_INPUTS`` runs ``multitalent.cli.main`` in-process on a fresh copy of a tiny collection
(or of a tiny trained run) and checks: the exit code, a single ``multitalent: error:`` line on stderr that
names the file, no traceback, and that the test folder is unchanged afterwards (no output folder, no stray
temporary file). What each command actually printed is collected and compared with the table in
``docs/reliability.md`` by the last test (``MULTITALENT_WRITE_DOCS=1`` rewrites the table instead).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import importlib
import inspect
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from multitalent import io
from multitalent.cli import main
from multitalent.errors import UserInputError
from tests.conftest import blob_case, write_dataset

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
TABLE_START, TABLE_END = "<!-- bad-inputs:start -->", "<!-- bad-inputs:end -->"

PRE_ARGS = ["--spacing", "2", "2", "2", "--patch-size", "16", "32", "32", "--workers", "1"]
TRAIN_ARGS = ["--base-features", "4", "--num-workers", "0", "--epochs", "3", "--iterations-per-epoch", "4",
              "--val-iterations", "1", "--fold", "all"]
LIVER, SPLEEN = "Dataset001_Liver", "Dataset002_Spleen"


# --- shared artefacts: one tiny collection, preprocessed, trained and predicted once per session --------
@dataclass(frozen=True)
class Shared:
    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def manifest(self) -> Path:
        return self.raw / "collection.json"

    @property
    def pre(self) -> Path:
        return self.root / "pre"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def pred(self) -> Path:
        return self.root / "pred"

    def scan(self, case: str = "spleen_0") -> Path:
        return self.raw / SPLEEN / "imagesTr" / f"{case}_0000.nii.gz"


def build_collection(root: Path) -> Path:
    """The conftest's two-dataset collection (3 liver cases with nested regions, 2 spleen cases)."""
    rng = np.random.default_rng(0)
    write_dataset(root, 1, "Liver", {"liver": [1, 2], "tumor": 2},
                  {f"liver_{i}": blob_case(rng, values=(1, 2)) for i in range(3)}, regions_class_order=[1, 2])
    write_dataset(root, 2, "Spleen", {"spleen": 1},
                  {f"spleen_{i}": blob_case(rng, values=(1,)) for i in range(2)})
    manifest = root / "collection.json"
    manifest.write_text(json.dumps({"datasets": [{"path": LIVER}, {"path": SPLEEN}]}))
    return manifest


def shared_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    """Build (once per test session, shared by test_cli.py and test_reliability.py) the raw collection, its
    preprocessed folder, a run trained with ``TRAIN_ARGS`` and the predictions of the spleen scans."""
    sh = Shared(tmp_path_factory.getbasetemp() / "multitalent_shared")
    if (sh.root / "done").is_file():
        return sh
    shutil.rmtree(sh.root, ignore_errors=True)
    sh.raw.mkdir(parents=True)
    build_collection(sh.raw)
    assert main(["-q", "preprocess", str(sh.manifest), "-o", str(sh.pre), *PRE_ARGS]) == 0
    assert main(["-q", "train", str(sh.pre), "-o", str(sh.run), *TRAIN_ARGS]) == 0
    assert main(["-q", "predict", "-m", str(sh.run), "-i", str(sh.raw / SPLEEN / "imagesTr"), "-o",
                 str(sh.pred)]) == 0
    (sh.root / "done").touch()
    return sh


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Shared:
    return shared_artifacts(tmp_path_factory)


# --- running the CLI and looking at the disk -----------------------------------------------------------
def run_cli(capfd, argv: list) -> tuple[int, str, str]:
    """``multitalent -q ARGV`` in-process: (exit code, stdout, stderr), captured at the file descriptors so
    that what C++ libraries (ITK) print is seen too."""
    try:
        rc = main(["-q", *[str(a) for a in argv]])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capfd.readouterr()
    return rc, out, err


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size and modification time."""
    state = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        state[p.relative_to(root).as_posix()] = ("d",) if p.is_dir() else ("f", st.st_size, st.st_mtime_ns)
    return state


def describe_changes(before: dict, after: dict) -> str:
    """'nothing', or the new/changed/removed paths (new folders summarised by their file count)."""
    new = sorted(set(after) - set(before))
    tops = [p for p in new if not any(p.startswith(q + "/") for q in new if q != p)]
    parts = []
    for p in tops:
        if after[p][0] == "d":
            n = sum(1 for q in new if q.startswith(p + "/") and after[q][0] == "f")
            parts.append(f"`{p}/` ({n} files)" if n else f"`{p}/` (empty folder)")
        else:
            parts.append(f"`{p}`")
    parts += [f"`{p}` changed" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    parts += [f"`{p}` removed" for p in sorted(set(before) - set(after))]
    return "; ".join(parts) or "nothing"


def hidden(before: dict, after: dict) -> list[str]:
    """New paths with a component starting with '.' (temporary files and folders)."""
    return [p for p in set(after) - set(before) if any(part.startswith(".") for part in p.split("/"))]


# --- building bad inputs --------------------------------------------------------------------------------
def copy_raw(tmp: Path, sh: Shared) -> Path:
    shutil.copytree(sh.raw, tmp / "raw")
    return tmp / "raw" / "collection.json"


def raw_path(tmp: Path, kind: str = "image", case: str = "liver_0", dataset: str = LIVER) -> Path:
    if kind == "image":
        return tmp / "raw" / dataset / "imagesTr" / f"{case}_0000.nii.gz"
    return tmp / "raw" / dataset / "labelsTr" / f"{case}.nii.gz"


def preprocess_args(tmp: Path, manifest: Path | None = None, out: Path | None = None) -> list:
    return ["preprocess", manifest or tmp / "raw" / "collection.json", "-o", out or tmp / "out", *PRE_ARGS]


def edit_dataset_json(tmp: Path, edit: Callable[[dict], None], dataset: str = LIVER) -> None:
    path = tmp / "raw" / dataset / "dataset.json"
    dj = json.loads(path.read_text())
    edit(dj)
    path.write_text(json.dumps(dj))


def rewrite(path: Path, array: Callable[[np.ndarray], np.ndarray] | None = None,
            geometry: Callable[[io.Geometry], io.Geometry] | None = None) -> None:
    """Rewrite a scan or label file with a changed array and/or geometry."""
    img = sitk.ReadImage(str(path))
    a = sitk.GetArrayFromImage(img)
    g = io.geometry_of(img)
    a = array(a) if array else a
    g = geometry(g) if geometry else g
    if tuple(a.shape) != tuple(g.shape):
        g = io.Geometry(tuple(a.shape), g.spacing, g.origin, g.direction)
    path.unlink()
    io.write_image(path, a, g)


def with_spacing(spacing):
    return lambda g: io.Geometry(g.shape, spacing, g.origin, g.direction)


def set_nifti_z_spacing(path: Path, value: float) -> None:
    """Write ``value`` into pixdim[3] (the z voxel size) of a .nii.gz header, as a broken tool might."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[88:92] = struct.pack("<f", value)
    path.write_bytes(gzip.compress(bytes(raw)))


def write_plain(path: Path, array: np.ndarray) -> None:
    path.unlink(missing_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=False), str(path))


def with_nonfinite(value: float):
    def change(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32)
        a[10, 16, 16] = value
        return a
    return change


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def dicom_series(folder: Path, slices: int = 6) -> None:
    g = io.Geometry((slices, 16, 16), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), io.direction_for("LPS"))
    io.write_dicom_series(folder, np.full(g.shape, 40, np.int16), g)


def add_second_series(folder: Path) -> None:
    img = sitk.GetImageFromArray(np.zeros((1, 16, 16), np.int16))[:, :, 0]
    for k, v in {"0020|000e": "1.2.3.999", "0020|0013": "1", "0008|0060": "CT"}.items():
        img.SetMetaData(k, v)
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    w.SetFileName(str(folder / "other_series.dcm"))
    w.Execute(img)


def copy_run(tmp: Path, sh: Shared) -> Path:
    shutil.copytree(sh.run, tmp / "run")
    return tmp / "run"


def predict_args(tmp: Path, sh: Shared, model=None, scan=None, out=None) -> list:
    return ["predict", "-m", model or sh.run, "-i", scan or sh.scan(), "-o", out or tmp / "out"]


def predict_on(make_scan: Callable[[Path], None]):
    """predict on one scan written by ``make_scan(path)`` into tmp/in/."""
    def setup(tmp: Path, sh: Shared) -> list:
        (tmp / "in").mkdir()
        scan = tmp / "in" / "scan.nii.gz"
        shutil.copy(sh.scan(), scan)
        make_scan(scan)
        return predict_args(tmp, sh, scan=scan)
    return setup


def preprocess_with(change: Callable[[Path], None]):
    """preprocess a copy of the collection after ``change(tmp)``."""
    def setup(tmp: Path, sh: Shared) -> list:
        copy_raw(tmp, sh)
        change(tmp)
        return preprocess_args(tmp)
    return setup


def file_at(tmp: Path, name: str = "out") -> Path:
    (tmp / name).write_text("I am a file\n")
    return tmp / name


def foreign_folder(tmp: Path) -> Path:
    """A folder holding someone else's file."""
    (tmp / "data").mkdir()
    (tmp / "data" / "thesis.tex").write_text("months of work\n")
    return tmp / "data"


def fake_checkpoint(kind: str):
    def setup(tmp: Path, sh: Shared) -> list:
        path = tmp / "model.pt"
        if kind == "foreign":
            torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, path)
        elif kind == "truncated":
            data = (sh.run / "checkpoint_final.pt").read_bytes()
            path.write_bytes(data[: len(data) // 2])
        elif kind == "text":
            path.write_text("not a checkpoint\n")
        elif kind == "folder":
            path = tmp / "empty_run"
            path.mkdir()
        return predict_args(tmp, sh, model=path)
    return setup


def no_cuda(reason="this machine has CUDA") -> list:
    return [pytest.mark.skipif(torch.cuda.is_available(), reason=reason)]


# --- the catalogue of bad inputs -------------------------------------------------------------------------
@dataclass
class Bad:
    id: str
    input: str  # what is wrong, for the table
    setup: Callable[[Path, Shared], list]  # builds the input under tmp, returns the CLI arguments
    expect: tuple[str, ...]  # substrings of the one-line message (the file name first)
    rc: int = 2
    marks: list = field(default_factory=list)


def _labels_not_declared(tmp: Path) -> None:
    rewrite(raw_path(tmp, "label"), array=lambda a: np.where(a == 2, 7, a).astype(np.uint8))


def _clash(tmp: Path) -> None:
    d = tmp / "raw" / LIVER
    (d / "imagesTr" / "liver_0_0000.nii.gz").rename(d / "imagesTr" / "spleen_0_0000.nii.gz")
    (d / "labelsTr" / "liver_0.nii.gz").rename(d / "labelsTr" / "spleen_0.nii.gz")


def _manifest(tmp: Path, obj) -> None:
    (tmp / "raw" / "collection.json").write_text(obj if isinstance(obj, str) else json.dumps(obj))


BAD_INPUTS: list[Bad] = [
    # -- the manifest and dataset.json
    Bad("manifest-missing", "manifest file does not exist",
        lambda tmp, sh: preprocess_args(tmp, manifest=tmp / "nowhere.json"), ("nowhere.json", "not found")),
    Bad("manifest-unparseable", "manifest is not valid JSON",
        preprocess_with(lambda tmp: _manifest(tmp, "{datasets: [")), ("collection.json", "cannot parse")),
    Bad("manifest-missing-folder", "manifest points to a missing dataset folder",
        preprocess_with(lambda tmp: _manifest(tmp, {"datasets": [LIVER, "Dataset009_Gone"]})),
        ("collection.json", "Dataset009_Gone", "missing folder")),
    Bad("manifest-duplicate-ids", "two manifest entries with the same dataset id",
        preprocess_with(lambda tmp: _manifest(tmp, {"datasets": [LIVER, {"path": SPLEEN, "id": "D001"}]})),
        ("collection.json", "D001", "unique id")),
    Bad("dataset-json-missing", "dataset.json missing",
        preprocess_with(lambda tmp: (tmp / "raw" / LIVER / "dataset.json").unlink()),
        ("dataset.json", "missing")),
    Bad("dataset-json-invalid", "dataset.json is not JSON",
        preprocess_with(lambda tmp: (tmp / "raw" / LIVER / "dataset.json").write_text("labels: liver")),
        ("dataset.json", "not valid JSON")),
    Bad("file-ending-missing", "dataset.json without `file_ending`",
        preprocess_with(lambda tmp: edit_dataset_json(tmp, lambda d: d.pop("file_ending"))),
        ("dataset.json", "file_ending")),
    Bad("file-ending-unsupported", "`file_ending` is `.png`",
        preprocess_with(lambda tmp: edit_dataset_json(tmp, lambda d: d.update(file_ending=".png"))),
        ("dataset.json", "'.png'", ".nii.gz")),
    Bad("file-ending-wrong", "`file_ending` is `.nii` but the files are `.nii.gz`",
        preprocess_with(lambda tmp: edit_dataset_json(tmp, lambda d: d.update(file_ending=".nii"))),
        ("labelsTr", "ending in .nii")),
    Bad("channel-names-missing", "dataset.json without `channel_names`",
        preprocess_with(lambda tmp: edit_dataset_json(tmp, lambda d: d.pop("channel_names"))),
        ("dataset.json", "channel_names")),
    Bad("channel-names-two", "`channel_names` with two channels",
        preprocess_with(lambda tmp: edit_dataset_json(
            tmp, lambda d: d.update(channel_names={"0": "CT", "1": "PET"}))),
        ("dataset.json", "exactly one")),
    Bad("labels-missing", "dataset.json without `labels`",
        preprocess_with(lambda tmp: edit_dataset_json(tmp, lambda d: d.pop("labels"))),
        ("dataset.json", "labels")),
    Bad("labels-bad-value", "a label value that is not an integer",
        preprocess_with(lambda tmp: edit_dataset_json(tmp, lambda d: d["labels"].update(liver="one"))),
        ("dataset.json", "liver")),
    Bad("duplicate-head-ids", "two labels that give the same head id (`a b` and `a_b`)",
        preprocess_with(lambda tmp: edit_dataset_json(tmp, lambda d: d.update(
            labels={"background": 0, "a b": 1, "a_b": 2}))), ("dataset.json", "D001_a_b", "rename")),
    Bad("case-id-clash", "the same case id in two datasets",
        preprocess_with(_clash), ("spleen_0.nii.gz", "spleen_0", "unique")),
    # -- the files of a case
    Bad("image-missing", "a label without its image",
        preprocess_with(lambda tmp: raw_path(tmp).unlink()), ("liver_0_0000.nii.gz", "missing image")),
    Bad("image-without-label", "an image without its label",
        preprocess_with(lambda tmp: raw_path(tmp, "label").unlink()),
        ("liver_0_0000.nii.gz", "without a label")),
    Bad("image-unreadable", "an empty (0-byte) image file",
        preprocess_with(lambda tmp: raw_path(tmp).write_bytes(b"")), ("liver_0_0000.nii.gz", "cannot read")),
    Bad("image-truncated", "a truncated .nii.gz",
        preprocess_with(lambda tmp: truncate(raw_path(tmp))), ("liver_0_0000.nii.gz", "truncated")),
    Bad("image-corrupt", "a .nii.gz holding random bytes",
        preprocess_with(lambda tmp: raw_path(tmp).write_bytes(np.random.default_rng(0).bytes(3000))),
        ("liver_0_0000.nii.gz", "cannot read")),
    Bad("image-corrupt-gzip", "a valid gzip stream holding no NIfTI",
        preprocess_with(lambda tmp: raw_path(tmp).write_bytes(gzip.compress(b"hello" * 200))),
        ("liver_0_0000.nii.gz", "cannot read")),
    Bad("image-corrupt-workers", "a truncated .nii.gz, preprocessing with 2 worker processes",
        lambda tmp, sh: [*preprocess_with(lambda t: truncate(raw_path(t)))(tmp, sh), "--workers", "2"],
        ("liver_0_0000.nii.gz", "truncated")),
    Bad("image-2d", "a 2D image",
        preprocess_with(lambda tmp: write_plain(raw_path(tmp), np.zeros((32, 32), np.int16))),
        ("liver_0_0000.nii.gz", "3D")),
    Bad("image-4d", "a 4D image",
        preprocess_with(lambda tmp: write_plain(raw_path(tmp), np.zeros((2, 20, 32, 32), np.int16))),
        ("liver_0_0000.nii.gz", "3D")),
    Bad("label-2d", "a 2D label map",
        preprocess_with(lambda tmp: write_plain(raw_path(tmp, "label"), np.zeros((32, 32), np.uint8))),
        ("liver_0.nii.gz", "3D")),
    Bad("image-nan", "NaN intensities (NIfTI float32)",
        preprocess_with(lambda tmp: rewrite(raw_path(tmp), array=with_nonfinite(np.nan))),
        ("liver_0_0000.nii.gz", "NaN or infinite")),
    Bad("image-inf", "infinite intensities (NIfTI float32)",
        preprocess_with(lambda tmp: rewrite(raw_path(tmp), array=with_nonfinite(np.inf))),
        ("liver_0_0000.nii.gz", "NaN or infinite")),
    Bad("mismatch-shape", "label shape differs from the image",
        preprocess_with(lambda tmp: rewrite(raw_path(tmp, "label"), array=lambda a: a[:-1])),
        ("liver_0.nii.gz", "shape")),
    Bad("mismatch-spacing", "label spacing differs from the image",
        preprocess_with(lambda tmp: rewrite(raw_path(tmp, "label"), geometry=with_spacing((2.0, 1.5, 1.6)))),
        ("liver_0.nii.gz", "spacing")),
    Bad("mismatch-origin", "label origin differs from the image",
        preprocess_with(lambda tmp: rewrite(raw_path(tmp, "label"), geometry=lambda g: io.Geometry(
            g.shape, g.spacing, (0.0, 0.0, 5.0), g.direction))), ("liver_0.nii.gz", "origin")),
    Bad("mismatch-direction", "label direction differs from the image",
        preprocess_with(lambda tmp: rewrite(raw_path(tmp, "label"), geometry=lambda g: io.Geometry(
            g.shape, g.spacing, g.origin, io.direction_for("RAS")))), ("liver_0.nii.gz", "direction")),
    Bad("label-undeclared", "label value 7, not declared in dataset.json",
        preprocess_with(_labels_not_declared), ("liver_0.nii.gz", "[7]", "not declared")),
    Bad("label-non-integer", "a float label map holding 0.5",
        preprocess_with(lambda tmp: rewrite(raw_path(tmp, "label"),
                                            array=lambda a: a.astype(np.float32) / 2)),
        ("liver_0.nii.gz", "non-integer")),
    Bad("label-empty", "an empty label map (allowed, with a warning)",
        preprocess_with(lambda tmp: rewrite(raw_path(tmp, "label"), array=lambda a: np.zeros_like(a))),
        ("liver_0.nii.gz", "empty"), rc=0),
    Bad("spacing-zero", "z spacing 0 in the NIfTI header",
        preprocess_with(lambda tmp: set_nifti_z_spacing(raw_path(tmp), 0.0)),
        ("liver_0_0000.nii.gz", "absurd voxel spacing")),
    Bad("spacing-negative", "z spacing -2 in the NIfTI header",
        preprocess_with(lambda tmp: set_nifti_z_spacing(raw_path(tmp), -2.0)),
        ("liver_0_0000.nii.gz", "absurd voxel spacing")),
    Bad("spacing-tiny", "z spacing 1e-9 mm in the NIfTI header (below 0.01 mm)",
        preprocess_with(lambda tmp: set_nifti_z_spacing(raw_path(tmp), 1e-9)),
        ("liver_0_0000.nii.gz", "absurd voxel spacing")),
    Bad("spacing-nan", "z spacing NaN in the NIfTI header",
        preprocess_with(lambda tmp: set_nifti_z_spacing(raw_path(tmp), float("nan"))),
        ("liver_0_0000.nii.gz", "absurd voxel spacing")),
    Bad("spacing-huge", "z spacing 60 mm",
        preprocess_with(lambda tmp: rewrite(raw_path(tmp), geometry=with_spacing((60.0, 1.5, 1.5)))),
        ("liver_0_0000.nii.gz", "absurd voxel spacing")),
    Bad("preprocess-target-spacing", "`--spacing 0 2 2`",
        lambda tmp, sh: [*preprocess_args(tmp, manifest=sh.manifest), "--spacing", "0", "2", "2"],
        ("--spacing", "positive")),
    Bad("preprocess-output-file", "the output folder is a file",
        lambda tmp, sh: preprocess_args(tmp, manifest=sh.manifest, out=file_at(tmp)), ("out", "is a file")),
    Bad("preprocess-output-under-file", "the output folder lies inside a file",
        lambda tmp, sh: preprocess_args(tmp, manifest=sh.manifest, out=file_at(tmp) / "pre"),
        ("out", "a file is in the way")),
    Bad("preprocess-output-foreign", "the output folder holds other files",
        lambda tmp, sh: preprocess_args(tmp, manifest=sh.manifest, out=foreign_folder(tmp)),
        ("data", "not empty", "refusing to replace")),
    # -- train
    Bad("train-not-preprocessed", "train on a raw folder",
        lambda tmp, sh: ["train", sh.raw, "-o", tmp / "run", *TRAIN_ARGS],
        ("plans.json", "multitalent preprocess")),
    Bad("train-output-file", "the run folder is a file",
        lambda tmp, sh: ["train", sh.pre, "-o", file_at(tmp), *TRAIN_ARGS], ("out", "is a file")),
    Bad("train-cuda", "`--device cuda` without CUDA",
        lambda tmp, sh: ["train", sh.pre, "-o", tmp / "run", *TRAIN_ARGS, "--device", "cuda"],
        ("--device cuda", "CUDA is not available"), marks=no_cuda()),
    Bad("train-existing-run", "the run folder already holds a run (no `--resume`)",
        lambda tmp, sh: ["train", sh.pre, "-o", copy_run(tmp, sh), *TRAIN_ARGS], ("run", "--resume")),
    Bad("train-resume-nothing", "`--resume` with no checkpoint",
        lambda tmp, sh: ["train", sh.pre, "-o", tmp / "run", *TRAIN_ARGS, "--resume"],
        ("checkpoint_latest.pt", "nothing to resume")),
    Bad("train-unknown-dataset", "`--datasets D999`",
        lambda tmp, sh: ["train", sh.pre, "-o", tmp / "run", *TRAIN_ARGS, "--datasets", "D999"],
        ("D999", "unknown")),
    Bad("train-bad-head-prior", "`--head-prior 1.5`",
        lambda tmp, sh: ["train", sh.pre, "-o", tmp / "run", *TRAIN_ARGS, "--head-prior", "1.5"],
        ("--head-prior", "[0, 1)")),
    Bad("train-bad-fg-fraction", "`--fg-fraction 1.5`",
        lambda tmp, sh: ["train", sh.pre, "-o", tmp / "run", *TRAIN_ARGS, "--fg-fraction", "1.5"],
        ("--fg-fraction 1.5", "[0, 1]")),
    Bad("finetune-conflicting-arch", "`finetune --arch resenc_unet` from a plain U-Net checkpoint",
        lambda tmp, sh: ["finetune", "-m", copy_run(tmp, sh), sh.pre, "-o", tmp / "ft", *TRAIN_ARGS,
                         "--arch", "resenc_unet"],
        ("--arch resenc_unet", "conflicts", "plain_unet")),
    Bad("train-bad-num-workers", "`--num-workers -3`",
        lambda tmp, sh: ["train", sh.pre, "-o", tmp / "run", *TRAIN_ARGS, "--num-workers", "-3"],
        ("--num-workers -3", "automatically")),
    Bad("train-unknown-fold", "`--fold 7`",
        lambda tmp, sh: ["train", sh.pre, "-o", tmp / "run", *TRAIN_ARGS[:-2], "--fold", "7"],
        ("--fold 7", "choose one of")),
    # -- predict
    Bad("checkpoint-foreign", "a PyTorch file that is not a multitalent checkpoint",
        fake_checkpoint("foreign"), ("model.pt", "not a multitalent checkpoint")),
    Bad("checkpoint-truncated", "a truncated checkpoint", fake_checkpoint("truncated"),
        ("model.pt", "cannot read the checkpoint")),
    Bad("checkpoint-text", "a text file as checkpoint", fake_checkpoint("text"), ("model.pt", "cannot read")),
    Bad("checkpoint-missing", "a run folder without checkpoints", fake_checkpoint("folder"),
        ("empty_run", "no checkpoint_final.pt")),
    Bad("predict-unknown-dataset", "`predict --datasets D999` (heads do not match)",
        lambda tmp, sh: [*predict_args(tmp, sh), "--datasets", "D999"],
        ("checkpoint_final.pt", "D999", "D001")),
    Bad("predict-unknown-head", "`predict --heads D001_lung`",
        lambda tmp, sh: [*predict_args(tmp, sh), "--heads", "D001_lung"], ("D001_lung", "heads.json")),
    Bad("predict-input-missing", "the input does not exist",
        lambda tmp, sh: predict_args(tmp, sh, scan=tmp / "missing.nii.gz"), ("missing.nii.gz", "not found")),
    Bad("predict-input-truncated", "a truncated .nii.gz", predict_on(truncate),
        ("scan.nii.gz", "truncated")),
    Bad("predict-input-nan", "NaN intensities",
        predict_on(lambda p: rewrite(p, array=with_nonfinite(np.nan))),
        ("scan.nii.gz", "NaN")),
    Bad("predict-input-2d", "a 2D scan", predict_on(lambda p: write_plain(p, np.zeros((32, 32), np.int16))),
        ("scan.nii.gz", "3D")),
    Bad("predict-input-spacing", "z spacing 0 in the NIfTI header",
        predict_on(lambda p: set_nifti_z_spacing(p, 0.0)), ("scan.nii.gz", "absurd voxel spacing")),
    Bad("dicom-two-series", "a DICOM folder with two series",
        lambda tmp, sh: (dicom_series(tmp / "dcm"), add_second_series(tmp / "dcm"),
                         predict_args(tmp, sh, scan=tmp / "dcm"))[-1], ("dcm", "2 DICOM series")),
    Bad("dicom-missing-slice", "a DICOM series with a missing slice",
        lambda tmp, sh: (dicom_series(tmp / "dcm"), (tmp / "dcm" / "slice_0003.dcm").unlink(),
                         predict_args(tmp, sh, scan=tmp / "dcm"))[-1], ("dcm", "missing or duplicate slices")),
    Bad("predict-input-empty-folder", "an input folder with no scans",
        lambda tmp, sh: ((tmp / "in").mkdir(), predict_args(tmp, sh, scan=tmp / "in"))[-1],
        ("in", "no image files")),
    Bad("predict-output-file", "the output folder is a file",
        lambda tmp, sh: predict_args(tmp, sh, out=file_at(tmp)), ("out", "is a file")),
    Bad("predict-existing", "outputs exist (no `--continue`/`--overwrite`)",
        lambda tmp, sh: (shutil.copytree(sh.pred, tmp / "out"),
                         predict_args(tmp, sh, scan=sh.raw / SPLEEN / "imagesTr"))[-1],
        ("spleen_0", "--continue", "--overwrite")),
    Bad("predict-cuda", "`--device cuda` without CUDA",
        lambda tmp, sh: [*predict_args(tmp, sh), "--device", "cuda"],
        ("--device cuda", "CUDA is not available"),
        marks=no_cuda()),
    Bad("predict-step", "`--step 0`", lambda tmp, sh: [*predict_args(tmp, sh), "--step", "0"],
        ("--step", "(0, 1]")),
    # -- evaluate and phantoms
    Bad("evaluate-output-file", "the output folder is a file",
        lambda tmp, sh: ["evaluate", sh.pred, sh.raw / SPLEEN / "labelsTr", "--heads", sh.run / "heads.json",
                         "-o", file_at(tmp), "--workers", "1"], ("out", "is a file")),
    Bad("evaluate-predictions-missing", "the prediction folder does not exist",
        lambda tmp, sh: ["evaluate", tmp / "nopred", sh.raw / SPLEEN / "labelsTr", "--heads",
                         sh.run / "heads.json", "-o", tmp / "eval"], ("nopred", "not found")),
    Bad("evaluate-heads-bad", "`--heads` is not a head registry",
        lambda tmp, sh: ["evaluate", sh.pred, sh.raw / SPLEEN / "labelsTr", "--heads", sh.manifest,
                         "-o", tmp / "eval"], ("collection.json", "head registry")),
    Bad("phantoms-output-file", "the output folder is a file",
        lambda tmp, sh: ["phantoms", file_at(tmp)], ("out", "is a file")),
    Bad("phantoms-output-foreign", "the output folder holds other files",
        lambda tmp, sh: ["phantoms", foreign_folder(tmp)], ("data", "not empty")),
]

OBSERVED: dict[str, dict] = {}


def _shorten(text: str, *roots: Path) -> str:
    for root in roots:
        text = text.replace(f"{root}/", "").replace(str(root), ".")
    return text


def _command(argv: list, *roots: Path) -> str:
    """The command line as shown in the table: paths shortened, the tiny-size options left out."""
    args = [_shorten(str(a), *roots) for a in argv]
    shown, i = [], 0
    while i < len(args):
        for common in (PRE_ARGS, TRAIN_ARGS, TRAIN_ARGS[:-2]):
            if args[i : i + len(common)] == common:
                i += len(common)
                break
        else:
            shown.append(args[i])
            i += 1
    return "multitalent " + " ".join(shown)


@pytest.mark.parametrize("bad", [pytest.param(b, id=b.id, marks=b.marks) for b in BAD_INPUTS])
def test_bad_input_is_refused_with_one_line(bad: Bad, shared: Shared, tmp_path: Path, capfd, caplog):
    argv = bad.setup(tmp_path, shared)
    before = snapshot(tmp_path)
    capfd.readouterr()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="multitalent"):
        rc, out, err = run_cli(capfd, argv)
    after = snapshot(tmp_path)
    message = err.strip()
    if rc == 0:
        message = "\n".join(f"multitalent: WARNING: {r.getMessage()}" for r in caplog.records
                            if r.levelno >= logging.WARNING)
    left = describe_changes(before, after)
    OBSERVED[bad.id] = {"input": bad.input, "command": _command(argv, tmp_path, shared.root),
                        "message": _shorten(message, tmp_path, shared.root), "rc": rc, "left": left}

    assert rc == bad.rc, err
    assert "Traceback" not in err
    assert message.count("\n") == 0 and message, f"not one line: {message!r}"
    for text in bad.expect:
        assert text in message, f"{text!r} not in {message!r}"
    assert not hidden(before, after), f"stray temporary files: {hidden(before, after)}"
    if rc == 2:
        assert message.startswith("multitalent: error: ")
        assert left == "nothing", f"left on disk: {left}"
    else:
        assert (tmp_path / "out" / "plans.json").is_file()


def test_unknown_cli_values_exit_2(shared: Shared, tmp_path: Path, capfd):
    """argparse refuses unknown commands, choices and missing arguments: exit code 2 (usage + one line)."""
    cases = [["train", shared.pre, "-o", tmp_path / "r", "--arch", "transformer9000"],
             ["preprocess", shared.manifest, "-o", tmp_path / "p", "--preset", "huge"],
             ["predict", "-m", shared.run, "-i", shared.scan()],
             ["segment", "x"]]
    for argv in cases:
        rc, _, err = run_cli(capfd, argv)
        assert rc == 2 and "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith("multitalent")
        assert "error:" in err.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []
    OBSERVED["cli-unknown-value"] = {
        "input": "an unknown choice (`--arch transformer9000`)",
        "command": "multitalent train pre -o r --arch transformer9000",
        "message": _shorten(run_cli(capfd, cases[0])[2].strip().splitlines()[-1], tmp_path, shared.root)
        + " (after argparse's usage line)", "rc": 2, "left": "nothing"}


def test_real_stderr_is_one_line_in_a_subprocess(shared: Shared, tmp_path: Path):
    """A refusal as a real process (``python -m multitalent``, Python warnings on): stderr is exactly the one
    error line (a NIfTI header with spacing 0 also makes ITK warn, in several lines, unless silenced)."""
    setup = preprocess_with(lambda t: set_nifti_z_spacing(raw_path(t), 0.0))
    argv = [str(a) for a in setup(tmp_path, shared)]
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    res = subprocess.run([sys.executable, "-m", "multitalent", "-q", *argv], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("multitalent: error: ") and len(res.stderr.splitlines()) == 1, res.stderr
    assert "absurd voxel spacing" in res.stderr and res.stdout == ""
    assert not (tmp_path / "out").exists()


def render_table(observed: dict[str, dict]) -> str:
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "<br>")

    rows = ["| input | command | message (stderr) | exit | left on disk |", "|---|---|---|---|---|"]
    for key in [b.id for b in BAD_INPUTS] + ["cli-unknown-value"]:
        o = observed[key]
        rows.append(f"| {cell(o['input'])} | `{cell(o['command'])}` | {cell(o['message'])} | {o['rc']} | "
                    f"{cell(o['left'])} |")
    return "\n".join(rows)


def test_docs_table_matches_reality():
    """docs/reliability.md's table is what the commands above printed (run the whole file to check it)."""
    wanted = {b.id for b in BAD_INPUTS if not any(getattr(m, "name", "") == "skipif" and m.args[0]
                                                   for m in b.marks)} | {"cli-unknown-value"}
    if not wanted <= set(OBSERVED):
        pytest.skip("run the whole of tests/test_cli.py to compare the table")
    if any(m.name == "skipif" and m.args[0] for b in BAD_INPUTS for m in b.marks):
        pytest.skip("some rows were skipped on this machine (CUDA present)")
    table = render_table(OBSERVED)
    text = DOC.read_text() if DOC.is_file() else ""
    pattern = re.compile(re.escape(TABLE_START) + r".*?" + re.escape(TABLE_END), re.S)
    block = f"{TABLE_START}\n{table}\n{TABLE_END}"
    if os.environ.get("MULTITALENT_WRITE_DOCS") == "1":
        new = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
        DOC.write_text(new)
        return
    found = pattern.search(text)
    assert found, f"{DOC} lacks the table markers; rerun with MULTITALENT_WRITE_DOCS=1"
    assert found.group(0) == block, f"the table in {DOC} is out of date; rerun with MULTITALENT_WRITE_DOCS=1"


def test_global_flags_are_accepted_after_the_subcommand():
    from multitalent.cli import build_parser

    parser = build_parser()
    for argv in (["-q", "predict", "-m", "r", "-i", "x", "-o", "o"],
                 ["predict", "-q", "-m", "r", "-i", "x", "-o", "o"]):
        args = parser.parse_args(argv)
        assert args.quiet is True and args.verbose is False
    args = parser.parse_args(["train", "pre", "-o", "run", "-v"])
    assert args.verbose is True and args.quiet is False
    assert parser.parse_args(["validate", "run"]).quiet is False


# --- every subcommand from a dataclass ------------------------------------------------------------------
def _configs() -> dict[str, type]:
    from multitalent.demo import DemoConfig
    from multitalent.evaluation.config import EvaluateConfig
    from multitalent.inference.config import PredictConfig
    from multitalent.phantoms.config import PhantomsConfig
    from multitalent.preprocessing.config import PreprocessConfig
    from multitalent.training.config import FinetuneConfig, TrainConfig
    from multitalent.training.validation import ValidateConfig

    return {"phantoms": PhantomsConfig, "preprocess": PreprocessConfig, "train": TrainConfig,
            "predict": PredictConfig, "evaluate": EvaluateConfig, "finetune": FinetuneConfig,
            "validate": ValidateConfig, "demo": DemoConfig}


# subcommand -> (its arguments without options, the function it calls)
COMMANDS = {
    "phantoms": (["out"], "multitalent.phantoms.generate_collection"),
    "preprocess": (["m.json", "-o", "pre"], "multitalent.preprocessing.pipeline.run_preprocessing"),
    "train": (["pre", "-o", "run"], "multitalent.training.loop.train"),
    "predict": (["-m", "run", "-i", "x", "-o", "pred"], "multitalent.inference.predict.predict"),
    "evaluate": (["pred", "gt", "--heads", "h.json", "-o", "ev"], "multitalent.evaluation.evaluate"),
    "finetune": (["-m", "run", "pre", "-o", "run2"], "multitalent.finetune.finetune"),
    "validate": (["run"], "multitalent.training.validation.final_validation"),
    "demo": (["-o", "d"], "multitalent.demo.run_demo"),
}


def _subparser(command: str) -> argparse.ArgumentParser:
    from multitalent.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_subcommand_calls_its_function_with_its_dataclass_defaults(command: str, monkeypatch, capsys):
    """``multitalent COMMAND ...`` without options hands the function exactly the configuration dataclass's
    defaults (``quiet`` aside, which -q sets)."""
    from multitalent.registry import HeadRegistry

    cls = _configs()[command]
    argv, target = COMMANDS[command]
    seen = []

    def fake(*args, **kwargs):
        seen.extend(a for a in [*args, *kwargs.values()] if isinstance(a, cls))
        return []

    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name, fake)
    monkeypatch.setattr(HeadRegistry, "load", classmethod(lambda c, path: None))
    monkeypatch.setattr("multitalent.evaluation.format_dataset_table", lambda summary: "")
    assert main(["-q", command, *argv]) == 0
    expected = cls(quiet=True) if "quiet" in {f.name for f in dataclasses.fields(cls)} else cls()
    assert seen == [expected]
    capsys.readouterr()


@pytest.mark.parametrize("command", ["phantoms", "preprocess", "evaluate", "validate", "demo"])
def test_function_defaults_come_from_the_dataclass(command: str):
    """The function behind the command repeats none of its configuration's defaults: it takes the
    configuration (or its fields as keyword options) and nothing else of it."""
    module, name = COMMANDS[command][1].rsplit(".", 1)
    fn = getattr(importlib.import_module(module), name)
    params = inspect.signature(fn).parameters
    fields = {f.name for f in dataclasses.fields(_configs()[command])}
    assert not fields & set(params), f"{name} repeats {sorted(fields & set(params))}"
    assert params["config"].default is None
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def test_preprocess_preset_resolves_the_unset_options():
    from multitalent.preprocessing.config import PreprocessConfig
    from multitalent.preprocessing.plans import PAPER_PATCH, PAPER_SPACING, SMALL_SPACING

    paper = PreprocessConfig().resolved()
    assert (paper.spacing, paper.patch_size, paper.batch_size) == (PAPER_SPACING, PAPER_PATCH, 4)
    small = PreprocessConfig(preset="small", patch_size=[16, 32, 32]).resolved()
    assert (small.spacing, small.patch_size, small.batch_size) == (SMALL_SPACING, (16, 32, 32), 2)
    with pytest.raises(UserInputError, match="unknown preset 'huge'"):
        PreprocessConfig(preset="huge").resolved()


def test_arch_choices_are_the_model_registry():
    from multitalent.models import list_models

    arch = next(a for a in _subparser("train")._actions if a.dest == "arch")
    assert arch.choices == list_models()


LITERAL_FIELDS = [("train", "objective"), ("train", "amp"), ("train", "channels_last"), ("train", "sampling"),
                  ("predict", "checkpoint"), ("preprocess", "preset"), ("phantoms", "scale"),
                  ("validate", "checkpoint")]


@pytest.mark.parametrize(("command", "field"), LITERAL_FIELDS)
def test_literal_fields_give_argparse_choices(command: str, field: str, capsys):
    hint = typing.get_type_hints(_configs()[command])[field]
    assert typing.get_origin(hint) is typing.Literal
    action = next(a for a in _subparser(command)._actions if a.dest == field)
    assert action.choices == list(typing.get_args(hint))
    with pytest.raises(SystemExit) as e:
        _subparser(command).parse_args([*COMMANDS[command][0], action.option_strings[0], "no_such_value"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_add_dataclass_arguments_choices_from_literal_or_explicit():
    from multitalent.config import add_dataclass_arguments, option

    @dataclasses.dataclass
    class Demo:
        mode: typing.Literal["a", "b"] = option("a", "a literal")
        picked: str = option("x", "explicit choices", choices=["x", "y"])
        modes: list[typing.Literal["p", "q"]] = option([], "a list of literals", nargs="+")
        size: int | None = option(None, "no default shown")

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Demo)
    actions = {a.dest: a for a in parser._actions}
    assert actions["mode"].choices == ["a", "b"] and actions["picked"].choices == ["x", "y"]
    assert actions["modes"].choices == ["p", "q"] and actions["size"].type is int
    assert actions["size"].help == "no default shown" and actions["mode"].help == "a literal (default: a)"
    assert vars(parser.parse_args(["--mode", "b", "--modes", "p", "q"])) == {"mode": "b", "modes": ["p", "q"]}
