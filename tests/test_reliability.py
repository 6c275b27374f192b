"""Reliability: every bad input and every fault, across the commands (docs/reliability.md).

Bad inputs: every entry of ``BAD_INPUTS`` runs ``multitalent.cli.main`` in-process on a fresh copy of the tiny
collection (or of the tiny trained run) and checks: the exit code, a single ``multitalent: error:`` line on
stderr that names the file, no traceback, and that the test folder is unchanged afterwards (no output folder,
no stray temporary file). What each command printed is compared with the table in ``docs/reliability.md`` by
``test_docs_table_matches_reality``, which observes itself the rows no earlier test of the session observed
(``MULTITALENT_WRITE_DOCS=1`` rewrites the table instead).

Faults: real kills of training and prediction (``python -m multitalent ...`` killed with SIGKILL), non-finite
losses, crashes while writing.

The tiny collection, its preprocessed folder, the reference run and its predictions are the session's
``shared`` fixture (``tests/conftest.py``, built on first use); the rows and tests that need the trained run
are marked slow. The property tests (hypothesis) are beside the modules they specify: ``tests/test_registry.py``,
``tests/test_loss.py``, ``tests/data/test_sampling.py``, ``tests/inference/test_sliding_window.py`` and
``tests/test_io.py``.
"""

from __future__ import annotations

import gzip
import io as pyio
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from multitalent import io, objectives
from multitalent.cli import main
from multitalent.errors import write_json
from multitalent.preprocessing import pipeline
from multitalent.training import checkpoint as ckpt_mod
from multitalent.training import loop
from multitalent.training.checkpoint import load_checkpoint, save_checkpoint
from multitalent.training.config import TrainConfig
from tests.helpers import LIVER, PRE_ARGS, SPLEEN, TRAIN_ARGS, Shared

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
TABLE_START, TABLE_END = "<!-- bad-inputs:start -->", "<!-- bad-inputs:end -->"


# ============================================ bad inputs ===================================================
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
    Bad("train-bad-bce-weight", "`--bce-weight -1`",
        lambda tmp, sh: ["train", sh.pre, "-o", tmp / "run", *TRAIN_ARGS, "--bce-weight", "-1"],
        ("--bce-weight -1.0", ">= 0")),
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

# the rows whose setup uses the shared trained run or its predictions (``sh.run``, ``sh.pred``, ``copy_run``,
# ``predict_args`` without a model): the first of them in a session pays for the training, so they are slow
NEEDS_RUN = {"train-existing-run", "finetune-conflicting-arch", "checkpoint-truncated", "predict-unknown-dataset",
             "predict-unknown-head", "predict-input-missing", "predict-input-truncated", "predict-input-nan",
             "predict-input-2d", "predict-input-spacing", "dicom-two-series", "dicom-missing-slice",
             "predict-input-empty-folder", "predict-output-file", "predict-existing", "predict-cuda", "predict-step",
             "evaluate-output-file", "evaluate-predictions-missing", "evaluate-heads-bad"}
assert NEEDS_RUN <= {b.id for b in BAD_INPUTS}

# what each command printed, by row id: filled by the tests below, completed by the docs-table test
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


def observe(bad: Bad, sh: Shared, tmp: Path, capfd, caplog) -> dict:
    """Build the bad input under ``tmp``, run its command and record the table row in ``OBSERVED``; returns
    what the checks need (exit code, stderr, the one-line message, what was left on disk, stray files)."""
    argv = bad.setup(tmp, sh)
    before = snapshot(tmp)
    capfd.readouterr()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="multitalent"):
        rc, out, err = run_cli(capfd, argv)
    after = snapshot(tmp)
    message = err.strip()
    if rc == 0:
        message = "\n".join(f"multitalent: WARNING: {r.getMessage()}" for r in caplog.records
                            if r.levelno >= logging.WARNING)
    left = describe_changes(before, after)
    OBSERVED[bad.id] = {"input": bad.input, "command": _command(argv, tmp, sh.root),
                        "message": _shorten(message, tmp, sh.root), "rc": rc, "left": left}
    return {"rc": rc, "err": err, "message": message, "left": left, "hidden": hidden(before, after)}


def _param(bad: Bad):
    slow = [pytest.mark.slow] if bad.id in NEEDS_RUN else []
    return pytest.param(bad, id=bad.id, marks=[*bad.marks, *slow])


@pytest.mark.parametrize("bad", [_param(b) for b in BAD_INPUTS])
def test_bad_input_is_refused_with_one_line(bad: Bad, shared: Shared, tmp_path: Path, capfd, caplog):
    seen = observe(bad, shared, tmp_path, capfd, caplog)
    rc, err, message, left = seen["rc"], seen["err"], seen["message"], seen["left"]
    assert rc == bad.rc, err
    assert "Traceback" not in err
    assert message.count("\n") == 0 and message, f"not one line: {message!r}"
    for text in bad.expect:
        assert text in message, f"{text!r} not in {message!r}"
    assert not seen["hidden"], f"stray temporary files: {seen['hidden']}"
    if rc == 2:
        assert message.startswith("multitalent: error: ")
        assert left == "nothing", f"left on disk: {left}"
    else:
        assert (tmp_path / "out" / "plans.json").is_file()


def observe_unknown_values(sh: Shared, tmp: Path, capfd) -> list[tuple[int, str]]:
    """Unknown commands, choices and missing arguments (argparse); records the table row of the first one.
    Returns (exit code, stderr) of each."""
    cases = [["train", sh.pre, "-o", tmp / "r", "--arch", "transformer9000"],
             ["preprocess", sh.manifest, "-o", tmp / "p", "--preset", "huge"],
             ["predict", "-m", sh.root / "run", "-i", sh.scan()],  # no -o: refused before the model is read
             ["segment", "x"]]
    seen = [run_cli(capfd, argv)[::2] for argv in cases]
    OBSERVED["cli-unknown-value"] = {
        "input": "an unknown choice (`--arch transformer9000`)",
        "command": "multitalent train pre -o r --arch transformer9000",
        "message": _shorten(seen[0][1].strip().splitlines()[-1], tmp, sh.root)
        + " (after argparse's usage line)", "rc": 2, "left": "nothing"}
    return seen


def test_unknown_cli_values_exit_2(shared: Shared, tmp_path: Path, capfd):
    """argparse refuses unknown commands, choices and missing arguments: exit code 2 (usage + one line)."""
    for rc, err in observe_unknown_values(shared, tmp_path, capfd):
        assert rc == 2 and "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith("multitalent")
        assert "error:" in err.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a subprocess
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


@pytest.mark.slow  # needs every row, the trained run's included
def test_docs_table_matches_reality(shared: Shared, tmp_path: Path, capfd, caplog):
    """docs/reliability.md's table is what the commands print. Self-contained: the rows that no earlier test
    of this session observed (all of them when it runs alone) are observed here, each in its own folder."""
    if any(m.name == "skipif" and m.args[0] for b in BAD_INPUTS for m in b.marks):
        pytest.skip("some rows were skipped on this machine (CUDA present)")
    for bad in BAD_INPUTS:
        if bad.id not in OBSERVED:
            (tmp_path / bad.id).mkdir()
            observe(bad, shared, tmp_path / bad.id, capfd, caplog)
    if "cli-unknown-value" not in OBSERVED:
        (tmp_path / "cli-unknown-value").mkdir()
        observe_unknown_values(shared, tmp_path / "cli-unknown-value", capfd)
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


# ============================================== faults =====================================================
def spawn(args: list, cwd: Path, stderr: Path) -> subprocess.Popen:
    """``python -m multitalent ARGS`` as a real process, with this process's thread count (same numerics)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}
    with open(stderr, "w") as err:
        return subprocess.Popen([sys.executable, "-m", "multitalent", *[str(a) for a in args]], cwd=cwd,
                                env=env, stdout=subprocess.DEVNULL, stderr=err)


def wait_for(proc: subprocess.Popen, ready, timeout: float = 150.0, what: str = "") -> None:
    """Poll ``ready()`` every 10 ms; fail if the process ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def log_epochs(run: Path) -> list[int]:
    path = run / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


# --- training killed with SIGKILL ------------------------------------------------------------------------
@pytest.mark.slow  # a killed subprocess, then the training finished; compares with the trained run
def test_training_killed_mid_epoch_resumes_to_the_same_weights(shared: Shared, tmp_path: Path, capsys):
    """Kill ``multitalent train`` (SIGKILL) during epoch 2 of 3, after epoch 1 was checkpointed; ``--resume``
    finishes it, and the final weights equal those of the uninterrupted run bit for bit (CPU, same seed)."""
    reference = shared.run / "checkpoint_final.pt"  # the uninterrupted run
    run, stderr = tmp_path / "run", tmp_path / "stderr.txt"
    proc = spawn(["train", shared.pre, "-o", run, *TRAIN_ARGS], tmp_path, stderr)
    # tqdm prints the running epoch's bar to stderr: wait until epoch 2 has done at least one iteration
    epoch2_running = re.compile(r"epoch 2/3:[^\r\n]*\| [123]/4 ")
    wait_for(proc, lambda: (run / "checkpoint_latest.pt").is_file()
             and epoch2_running.search(stderr.read_text(encoding="utf-8", errors="replace")) is not None,
             what="epoch 2 started")
    proc.kill()
    assert proc.wait(timeout=30) == -9
    assert log_epochs(run) == [0], "the kill did not land in epoch 2"
    killed = load_checkpoint(run / "checkpoint_latest.pt")
    assert killed.epoch == 1 and killed.iteration == 4
    assert not (run / "checkpoint_final.pt").exists()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")], "temporary files after the kill"

    rc = main(["-q", "train", str(shared.pre), "-o", str(run), *TRAIN_ARGS])
    assert rc == 2 and "--resume" in capsys.readouterr().err  # an existing run is never replaced silently
    assert main(["-q", "train", str(shared.pre), "-o", str(run), *TRAIN_ARGS, "--resume"]) == 0
    assert log_epochs(run) == [0, 1, 2]
    resumed = load_checkpoint(run / "checkpoint_final.pt").state_dict
    straight = load_checkpoint(reference).state_dict
    assert resumed.keys() == straight.keys()
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key


# --- prediction killed with SIGKILL ----------------------------------------------------------------------
def scans(folder: Path, n: int = 3) -> list[str]:
    """``n`` small scans (27 windows each)."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    shape = (32, 64, 64)
    geometry = io.Geometry(shape, (1.5, 1.5, 1.5), (0.0, 0.0, 0.0), io.direction_for("RAS"))
    for i in range(n):
        img = np.full(shape, -1000, np.int16)
        img[3:-3, 8:-8, 8:-8] = 40
        img[10:24, 20:44, 20:44] = 90
        noise = rng.integers(-5, 5, shape).astype(np.int16)
        io.write_image(folder / f"case{i}_0000.nii.gz", img + noise, geometry)
    return [f"case{i}" for i in range(n)]


def complete(case_dir: Path) -> bool:
    if not (case_dir / "case.json").is_file():
        return False
    files = json.loads((case_dir / "case.json").read_text())["files"]
    return all((case_dir / f).is_file() for f in files)


@pytest.mark.slow  # a killed subprocess predicting with the trained run
def test_prediction_killed_mid_case_leaves_only_complete_cases(shared: Shared, tmp_path: Path, capsys):
    """Kill ``multitalent predict`` (SIGKILL) while its second case is being written: every case folder under
    its final name is complete; the rerun is refused without --continue/--overwrite, and with --continue it
    does only the missing cases, leaving the finished ones untouched."""
    cases = scans(tmp_path / "in")
    out = tmp_path / "out"
    proc = spawn(["-q", "predict", "-m", shared.run, "-i", tmp_path / "in", "-o", out], tmp_path,
                 tmp_path / "stderr.txt")

    def second_case_in_progress() -> bool:  # case0 renamed into place, case1's temporary folder exists
        names = [p.name for p in out.iterdir()] if out.is_dir() else []
        return "case0" in names and any(n.startswith(".case1.") for n in names)

    wait_for(proc, second_case_in_progress, what="the second case started")
    proc.kill()
    assert proc.wait(timeout=30) == -9
    finished = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert finished and len(finished) < len(cases), f"the kill did not land inside the run: {finished}"
    stale = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    for name in finished:  # nothing partial under a final name
        assert complete(out / name), name
        for f in (out / name).glob("*.nii.gz"):
            io.read_label(f)
    assert not (out / "heads.json").exists()
    stamps = {f: f.stat().st_mtime_ns for name in finished for f in (out / name).rglob("*")}

    rc = main(["-q", "predict", "-m", str(shared.run), "-i", str(tmp_path / "in"), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--continue" in err and err.count("\n") == 1
    assert main(["-q", "predict", "-m", str(shared.run), "-i", str(tmp_path / "in"), "-o", str(out),
                 "--continue"]) == 0
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == sorted(cases + ["heads.json"])
    assert all(complete(out / c) for c in cases)
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps  # finished cases were skipped, not redone
    # the killed process could not remove its temporary folder (a hidden name); --continue cleans it up
    assert stale and all(n.startswith(".case") for n in stale)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


# --- non-finite loss ----------------------------------------------------------------------------------------
def test_nonfinite_loss_stops_training_through_the_cli(shared: Shared, tmp_path: Path, capsys, caplog,
                                                       monkeypatch):
    """Every step non-finite: each is skipped and logged, and after --max-nonfinite in a row the command
    stops with exit code 1 and one line naming the last good checkpoint."""
    monkeypatch.setattr(objectives, "loss_on_batch", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with caplog.at_level(logging.WARNING, logger="multitalent"):
        rc = main(["-q", "train", str(shared.pre), "-o", str(tmp_path / "run"), *TRAIN_ARGS,
                   "--max-nonfinite", "3"])
    _, err = capsys.readouterr()
    assert rc == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("multitalent: error: the loss was non-finite in 3 consecutive iterations")
    assert "no checkpoint to resume from" in err  # every step failed, so no epoch was checkpointed
    skipped = [r.getMessage() for r in caplog.records if "non-finite loss, step skipped" in r.getMessage()]
    assert len(skipped) == 3


def test_nonfinite_stop_names_only_a_checkpoint_that_exists(shared: Shared, tmp_path: Path, capsys,
                                                             monkeypatch):
    monkeypatch.setattr(objectives, "loss_on_batch", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    run = tmp_path / "run"
    assert main(["-q", "train", str(shared.pre), "-o", str(run), *TRAIN_ARGS, "--max-nonfinite", "2"]) == 1
    err = capsys.readouterr().err
    assert (run / "checkpoint_latest.pt").is_file() or "checkpoint_latest.pt" not in err


def test_an_isolated_nonfinite_step_is_skipped_and_training_goes_on(shared: Shared, tmp_path: Path,
                                                                     monkeypatch):
    real = objectives.loss_on_batch
    calls = {"n": 0}

    def nan_on_second_call(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(objectives, "loss_on_batch", nan_on_second_call)
    args = [*TRAIN_ARGS, "--epochs", "1", "--iterations-per-epoch", "3", "--val-iterations", "0"]
    assert main(["-q", "train", str(shared.pre), "-o", str(tmp_path / "run"), *args]) == 0
    record = json.loads((tmp_path / "run" / "log.jsonl").read_text())
    assert record["skipped_steps"] == 1 and np.isfinite(record["train_loss"])
    weights = load_checkpoint(tmp_path / "run" / "checkpoint_final.pt").state_dict
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


# --- crashes while writing ----------------------------------------------------------------------------------
@pytest.mark.slow  # needs the trained run
def test_crash_while_saving_a_checkpoint_keeps_the_previous_one(shared: Shared, tmp_path: Path, monkeypatch):
    """torch.save writes half the file and fails (disk full): checkpoint_latest.pt is still the old, loadable
    file and no temporary file is left."""
    run = tmp_path / "run"
    shutil.copytree(shared.run, run)
    latest = run / "checkpoint_latest.pt"
    before = latest.read_bytes()
    payload = load_checkpoint(latest).payload()
    payload["epoch"] = 99
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        buf = pyio.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        Path(f).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(latest, payload)
    monkeypatch.undo()
    assert latest.read_bytes() == before
    assert load_checkpoint(latest).epoch == 3
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_background_checkpoint_writes(tmp_path: Path):
    """The loop's checkpoints are written by a background thread from a CPU snapshot: save() returns while
    the file is being written, later in-place changes do not reach the file, and a failed write is raised
    by the next call while the previous file stays intact."""
    path = tmp_path / "c.pt"
    started, release = threading.Event(), threading.Event()

    def slow(p, payload):
        started.set()
        release.wait(10)
        save_checkpoint(p, payload)

    weights = torch.zeros(4)
    saver = ckpt_mod.BackgroundSaver(writer=slow)
    saver.save(path, {"state_dict": {"w": weights}, "epoch": 1})
    assert started.wait(10) and not path.exists()  # returned before the write
    weights += 5  # the training goes on changing the weights in place
    release.set()
    saver.wait()
    assert torch.equal(torch.load(path)["state_dict"]["w"], torch.zeros(4))

    def disk_full(p, payload):
        raise OSError(28, "No space left on device")

    before = path.read_bytes()
    saver.save(path, {"state_dict": {"w": weights}, "epoch": 2}, writer=disk_full)
    with pytest.raises(OSError, match="No space left"):
        saver.save(path, {"state_dict": {"w": weights}, "epoch": 3})  # the next call reports it
    assert path.read_bytes() == before
    # leaving the block waits for the pending write; the run's own error wins over a failed write
    with pytest.raises(ValueError, match="the run's error"):
        with ckpt_mod.BackgroundSaver(writer=disk_full) as failing:
            failing.save(path, {"epoch": 4})
            raise ValueError("the run's error")
    with pytest.raises(OSError):
        with ckpt_mod.BackgroundSaver(writer=disk_full) as failing:
            failing.save(path, {"epoch": 5})
    assert path.read_bytes() == before


def test_training_stops_when_a_background_checkpoint_write_fails(shared: Shared, tmp_path: Path, monkeypatch):
    """Disk full while the loop writes checkpoint_latest.pt in the background: the run stops with that
    error by the next epoch end, and no half-written checkpoint is left under the final name."""
    calls = {"n": 0}
    real = loop.save_checkpoint

    def fail_second(path, payload):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        real(path, payload)

    monkeypatch.setattr(loop, "save_checkpoint", fail_second)
    run = tmp_path / "run"
    cfg = TrainConfig(epochs=3, iterations_per_epoch=1, val_iterations=0, base_features=4, num_workers=0,
                           fold="all", quiet=True)
    with pytest.raises(OSError, match="No space left"):
        loop.train(shared.pre, run, cfg)
    assert load_checkpoint(run / "checkpoint_latest.pt").epoch == 1  # the first epoch's, intact
    assert not (run / "checkpoint_final.pt").exists()


def test_crash_in_the_middle_of_preprocessing_leaves_the_old_folder(shared: Shared, tmp_path: Path,
                                                                    monkeypatch):
    """A crash while the third case is preprocessed: a previous preprocessed folder stays as it was, and no
    temporary folder is left."""
    out = tmp_path / "pre"
    shutil.copytree(shared.pre, out)
    before = snapshot(tmp_path)
    real = pipeline._preprocess_one
    calls = {"n": 0}

    def crash_on_third(job):
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("killed by the test")
        return real(job)

    monkeypatch.setattr(pipeline, "_preprocess_one", crash_on_third)
    with pytest.raises(MemoryError):
        main(["-q", "preprocess", str(shared.manifest), "-o", str(out), *PRE_ARGS])
    assert snapshot(tmp_path) == before
    assert not hidden(before, snapshot(tmp_path))


@pytest.mark.parametrize("writer", ["json", "nifti"])
def test_a_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch, writer):
    """Outputs are written to a temporary name and renamed: a failure mid-write leaves the old file."""
    g = io.Geometry((2, 3, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), io.direction_for("LPS"))
    target = tmp_path / ("x.json" if writer == "json" else "x.nii.gz")
    if writer == "json":
        write_json(target, {"v": 1})
    else:
        io.write_image(target, np.zeros(g.shape, np.int16), g)

        def half(img, path, *a, **k):
            Path(path).write_bytes(b"\x1f\x8b half")
            raise RuntimeError("disk full")

        monkeypatch.setattr(io.sitk, "WriteImage", half)
    before = target.read_bytes()
    with pytest.raises((TypeError, RuntimeError)):
        if writer == "json":
            write_json(target, {"v": 2, "bad": object()})  # fails while serialising
        else:
            io.write_image(target, np.ones(g.shape, np.int16), g)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.slow  # needs the trained run
def test_spleen_predictions_of_the_shared_run_exist(shared: Shared):
    """The shared artefacts the kills compare against are complete (guards the fixture itself)."""
    assert complete(shared.pred / "spleen_0") and (shared.run / "checkpoint_final.pt").is_file()
    assert (shared.raw / SPLEEN / "dataset.json").is_file()
