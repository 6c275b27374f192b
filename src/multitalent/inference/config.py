"""Prediction configuration: every field is a ``multitalent predict`` flag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from multitalent.config import option


@dataclass
class PredictConfig:
    checkpoint: Literal["final", "best"] = option(
        "final", "which checkpoint of a run folder: final (the end of training) or best (best moving average of "
        "the validation pseudo-Dice, nnU-Net's rule)")
    step: float = option(0.5, "sliding-window step as a fraction of the patch size")
    mirror: bool = option(False, "test-time augmentation by mirroring (the training mirror axes)")
    window_batch: int = option(2, "windows per forward pass")
    device: str = option("cpu", "cpu, cuda or cuda:N")
    postprocess: bool = option(True, "apply the run's postprocessing (RUN/postprocessing.json, decided by the "
                                     "final validation: largest connected component per head where it raised "
                                     "the validation Dice)")
    datasets: list[str] = option([], "write only these datasets' label maps (ids like D001)", nargs="+")
    heads: list[str] = option([], "predict only these heads (ids like D001_liver); label maps then hold "
                                  "only them", nargs="+")
    save_heads: bool = option(False, "also write one binary mask per head")
    merged: bool = option(False, "also write one multi-label map over all (selected) heads, merged.nii.gz, "
                                 "with its label table OUT/merged_labels.json/.csv; where heads overlap the "
                                 "smaller predicted structure is on top")
    dicom_seg: bool = option(False, "also write a DICOM-SEG (segmentation.dcm, one segment per selected head) "
                                    "referencing the input series; DICOM inputs only")
    save_probabilities: bool = option(False, "also write per-head probabilities (float16 .npz, on the grid "
                                              "--probabilities-grid names)")
    probabilities_grid: Literal["original", "network"] = option(
        "original", "grid of --save-probabilities: original (the input's shape and geometry, like the label "
        "maps; heads x input volume x 2 bytes) or network (canonical, body crop, target spacing; smaller, "
        "restore with the stored properties)")
    statistics: bool = option(False, "write the volume in ml of every head per case (JSON and CSV)")
    preview: bool = option(False, "write a PNG per case: three orthogonal slices with coloured outlines")
    continue_: bool = option(False, "skip cases whose outputs are already complete")
    overwrite: bool = option(False, "replace existing outputs of a case")
    prefetch: bool = option(True, "read and prepare the next case while the current one is predicted "
                                  "(more memory: two cases' images at once)")
    quiet: bool = option(False, "no progress bars")
