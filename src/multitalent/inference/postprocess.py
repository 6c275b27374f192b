"""Postprocessing as nnU-Net's ``determine_postprocessing``: per head, keep only the largest connected
component where doing so raised the head's mean Dice on the run's whole-scan validation predictions.

``final_validation`` (``multitalent validate``, and the end of training) writes the decision to
``RUN/postprocessing.json``; ``predict`` applies it by default (``--no-postprocess`` skips it).
Connected components come from ``cc3d`` (connected-components-3d), 26-connectivity.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import cc3d
import numpy as np

from multitalent import io
from multitalent.errors import UserInputError
from multitalent.registry import HeadRegistry

FILE = "postprocessing.json"
FORMAT = "multitalent-postprocessing/1"
RULE = ("keep the largest 26-connected component of a head when that raises its mean Dice over the "
        "validation cases of its dataset (cases where prediction and reference are both empty are left out)")


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a binary mask (bool; the mask itself with one or none)."""
    labels, n = cc3d.connected_components(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=26,
                                          return_N=True)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two binary masks; NaN when both are empty."""
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    return 2.0 * int(np.count_nonzero(pred & ref)) / total if total else math.nan


def _mean(values: list[float]) -> float | None:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else None


def decide(samples: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, dict]:
    """``(head, prediction, reference)`` per head and case (streamed: one case's masks at a time) ->
    ``{head: {largest_component, dice_before, dice_after, cases}}``; largest_component is true only when
    the mean Dice rises strictly."""
    before: dict[str, list[float]] = {}
    after: dict[str, list[float]] = {}
    for head, pred, ref in samples:
        pred, ref = pred.astype(bool, copy=False), ref.astype(bool, copy=False)
        before.setdefault(head, []).append(dice(pred, ref))
        after.setdefault(head, []).append(dice(largest_component(pred), ref))
    out = {}
    for head in before:
        b, a = _mean(before[head]), _mean(after[head])
        out[head] = {"largest_component": b is not None and a is not None and a > b,
                     "dice_before": b, "dice_after": a, "cases": len(before[head])}
    return out


def _samples(predictions: Path, references: dict[str, tuple[str, Path]],
             registry: HeadRegistry) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for case, (ds, ref_path) in sorted(references.items()):
        pred, _ = io.read_label(predictions / case / f"{ds}.nii.gz")
        ref, _ = io.read_label(ref_path)
        for h in registry.heads_of(ds):
            yield h.id, np.isin(pred, h.labels), np.isin(ref, h.labels)


def determine_postprocessing(predictions: Path, references: dict[str, tuple[str, Path]],
                             registry: HeadRegistry) -> dict:
    """The decision for every head of the validated datasets. ``predictions``: a ``predict`` output folder
    (``<case>/<dataset>.nii.gz``, predicted without postprocessing); ``references``: ``{case: (dataset id,
    label file)}``."""
    return {"format": FORMAT, "rule": RULE, "heads": decide(_samples(predictions, references, registry))}


def load_decision(run: Path) -> dict[str, bool]:
    """``{head: keep largest component}`` from ``run/postprocessing.json`` ({} when there is none)."""
    path = run / FILE
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.get("format") != FORMAT:
            raise ValueError(f"format {d.get('format')!r}")
        return {h: bool(v["largest_component"]) for h, v in d["heads"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserInputError(f"{path}: not a multitalent postprocessing file ({e}); remove it or run "
                             "`multitalent validate` again.") from None
