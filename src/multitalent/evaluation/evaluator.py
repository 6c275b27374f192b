"""The evaluation stage: match predictions to ground truth, score every head of every case, report."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from multitalent.config import with_options
from multitalent.errors import UserInputError, atomic_path, ensure_output_dir, write_json
from multitalent.evaluation.config import EvaluateConfig
from multitalent.evaluation.metrics import diagonal_mm, dice, hd95
from multitalent.evaluation.plots import plot_boxplot
from multitalent.evaluation.summary import format_markdown, summarize
from multitalent.io import read_label
from multitalent.registry import HeadRegistry, region_masks

PRED_ENDING = ".nii.gz"
_DATASET_NAME_RE = re.compile(r"^Dataset(\d{3})_")
_EXPLICIT_RE = re.compile(r"^([A-Za-z0-9_\-]+)=(.+)$")


@dataclass(frozen=True)
class CaseTask:
    """One (dataset, case) pair to score: its two files and the heads (id, label values) to score."""

    dataset: str
    case: str
    pred: Path
    truth: Path
    heads: tuple[tuple[str, tuple[int, ...]], ...]


def parse_gt_dirs(gt_dirs: Sequence[str | os.PathLike], registry: HeadRegistry) -> dict[str, Path]:
    """Map dataset id -> ground-truth label folder.

    Each entry is ``ID=/path`` or a folder whose own or parent's name starts with ``DatasetNNN_``
    (giving id ``DNNN``), e.g. ``.../Dataset001_Liver/labelsTs``.
    """
    out: dict[str, Path] = {}
    for entry in gt_dirs:
        text = os.fspath(entry)
        m = _EXPLICIT_RE.match(text)
        if m and "/" not in m.group(1):
            ds, folder = m.group(1), Path(m.group(2))
        else:
            folder = Path(text)
            found = next((_DATASET_NAME_RE.match(n) for n in (folder.name, folder.resolve().parent.name)
                          if _DATASET_NAME_RE.match(n)), None)
            if found is None:
                raise UserInputError(
                    f"{folder}: cannot tell which dataset these labels belong to; its name or its parent's "
                    "must start with DatasetNNN_, or write it as ID=PATH (e.g. D001=/data/labelsTs).")
            ds = f"D{found.group(1)}"
        if not folder.is_dir():
            raise UserInputError(f"{folder}: ground-truth folder not found.")
        if ds not in registry.datasets:
            raise UserInputError(f"{folder}: dataset {ds} is not in the head registry, which has "
                                 f"{registry.dataset_ids}; pass ID=PATH to name the dataset.")
        if ds in out:
            raise UserInputError(f"{folder}: dataset {ds} is given twice (also {out[ds]}).")
        out[ds] = folder
    if not out:
        raise UserInputError("no ground-truth folder given.")
    return out


def _gt_cases(folder: Path, ending: str) -> dict[str, Path]:
    files = sorted(p for p in folder.iterdir() if p.name.endswith(ending) and not p.name.startswith("."))
    if not files:
        raise UserInputError(f"{folder}: holds no ground-truth label file ending in {ending}.")
    return {p.name[: -len(ending)]: p for p in files}


def collect_tasks(pred_dir: Path, gt: dict[str, Path], registry: HeadRegistry, head_ids: list[str],
                  allow_missing: bool = False) -> tuple[list[CaseTask], list[dict]]:
    """Pair every ground-truth case with its prediction ``pred_dir/<case>/<dataset>.nii.gz``.

    A missing prediction raises UserInputError naming the file, unless ``allow_missing``: then the
    case is skipped and listed in the second return value.
    """
    chosen = set(head_ids)
    tasks: list[CaseTask] = []
    missing: list[dict] = []
    for ds in registry.dataset_ids:
        if ds not in gt:
            continue
        heads = tuple((h.id, tuple(h.labels)) for h in registry.heads_of(ds) if h.id in chosen)
        if not heads:
            continue
        ending = registry.datasets[ds].get("file_ending") or PRED_ENDING
        for case, truth in _gt_cases(gt[ds], ending).items():
            pred = pred_dir / case / f"{ds}{PRED_ENDING}"
            if not pred.is_file():
                if not allow_missing:
                    raise UserInputError(
                        f"{pred}: prediction missing for ground truth {truth}; run `multitalent predict` on "
                        "this case, or pass allow_missing to evaluate only the cases that have one.")
                missing.append({"dataset": ds, "case": case, "prediction": str(pred)})
                continue
            tasks.append(CaseTask(ds, case, pred, truth, heads))
    return tasks, missing


def _union_box(boxes: list[tuple[slice, ...] | None]) -> tuple[slice, ...] | None:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    ndim = len(boxes[0])
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(ndim))


def evaluate_case(task: CaseTask) -> dict[str, dict]:
    """Dice and HD95 of each head of one case: head id -> metrics (see ``docs/evaluation.md``)."""
    truth, tg = read_label(task.truth)
    pred, pg = read_label(task.pred)
    problem = pg.matches(tg)
    if problem is not None:
        raise UserInputError(f"{task.pred}: geometry differs from the ground truth {task.truth} ({problem}); "
                             "predictions must be on the scan's original grid.")
    top = max(max(labels) for _, labels in task.heads)
    # One pass per label map gives each label value's bounding box; every head is then scored
    # inside the box of its own values only (cheap even for 100 small heads in a large scan).
    boxes = [ndimage.find_objects(pred, max_label=top), ndimage.find_objects(truth, max_label=top)]
    diagonal = diagonal_mm(tg.shape, tg.spacing)
    out: dict[str, dict] = {}
    for head_id, labels in task.heads:
        box = _union_box([b[v - 1] for b in boxes for v in labels])
        if box is None:
            p = t = np.zeros((0, 0, 0), dtype=bool)
        else:
            p = region_masks(pred[box], [labels])[0]
            t = region_masks(truth[box], [labels])[0]
        h = hd95(p, t, tg.spacing)
        out[head_id] = {
            "dice": dice(p, t),
            "hd95": h,
            "hd95_counted": diagonal if np.isnan(h) else h,
            "pred_voxels": int(np.count_nonzero(p)),
            "truth_voxels": int(np.count_nonzero(t)),
        }
    return out


def _run(tasks: list[CaseTask], workers: int, progress: bool) -> dict[str, dict[str, dict]]:
    results: dict[str, dict[str, dict]] = {}
    bar = tqdm(total=len(tasks), desc="evaluate", unit="case", disable=not progress)
    try:
        if workers <= 1 or len(tasks) <= 1:
            for t in tasks:
                results.setdefault(t.dataset, {})[t.case] = evaluate_case(t)
                bar.update()
        else:
            pool: Executor = ProcessPoolExecutor(max_workers=min(workers, len(tasks)))
            try:
                futures: dict[Future, CaseTask] = {pool.submit(evaluate_case, t): t for t in tasks}
                for fut in as_completed(futures):
                    t = futures[fut]
                    results.setdefault(t.dataset, {})[t.case] = fut.result()
                    bar.update()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    # restore the deterministic (registry, case) order that parallel completion scrambles
    ordered: dict[str, dict[str, dict]] = {}
    for t in tasks:
        ordered.setdefault(t.dataset, {})[t.case] = results[t.dataset][t.case]
    return ordered


def evaluate(pred_dir: Path, gt_dirs: list[Path], registry: HeadRegistry, out_dir: Path | None = None,
             config: EvaluateConfig | None = None, *, reference: dict[str, float] | None = None,
             heads: list[str] | None = None, progress: bool = True, allow_missing: bool = False,
             **options: Any) -> dict:
    """Score predictions against ground truth; return the summary and, with ``out_dir``, write
    ``summary.json``, ``summary.md`` and ``boxplot.png`` there. ``options`` are :class:`EvaluateConfig`
    fields (``difficult_threshold``, ``workers``) and replace those of ``config``.

    ``reference`` maps head id -> reference Dice in percent (e.g. a single-dataset baseline); heads
    below ``difficult_threshold`` percent form the "difficult" group (own mean Dice when None).
    ``heads`` limits the evaluation to those head ids. See ``docs/evaluation.md`` for all rules.
    """
    cfg = with_options(EvaluateConfig, config, **options)
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise UserInputError(f"{pred_dir}: prediction folder not found.")
    gt = parse_gt_dirs(gt_dirs, registry)
    head_ids = [registry.heads[i].id for i in registry.select(heads=heads)]
    tasks, missing = collect_tasks(pred_dir, gt, registry, head_ids, allow_missing)
    if not tasks:
        raise UserInputError(f"{pred_dir}: no case with both a prediction and a ground truth to evaluate.")
    results = _run(tasks, cfg.workers, progress)
    evaluated = [h for h in head_ids if registry.heads[registry.index(h)].dataset in results]
    summary = summarize(results, registry, evaluated, reference, cfg.difficult_threshold)
    summary["pred_dir"] = str(pred_dir)
    summary["gt_dirs"] = {ds: str(p) for ds, p in gt.items()}
    summary["missing"] = missing
    if out_dir is not None:
        out_dir = ensure_output_dir(out_dir)
        write_json(out_dir / "summary.json", summary)
        with atomic_path(out_dir / "summary.md") as tmp:
            tmp.write_text(format_markdown(summary))
        plot_boxplot(summary, out_dir / "boxplot.png")
    return summary
