"""Final validation on whole scans, as nnU-Net does at the end of training.

The held-out fold's cases (``RUN/config.json``: ``val_cases``) are predicted from their raw images with the
real predictor, in their original geometry, and evaluated against their labels:
``RUN/validation/summary.json`` and ``summary.md`` (Dice and HD95 per head, dataset and case), beside
``RUN/validation/predictions/``. The patch pseudo-Dice of the training log stays for the curves.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from multitalent.config import option, with_options
from multitalent.errors import UserInputError, write_json

log = logging.getLogger("multitalent")


@dataclass
class ValidateConfig:
    """``multitalent validate``: every field is a flag."""

    checkpoint: Literal["final", "best"] = option(
        "final", "final or best (best moving average of the validation pseudo-Dice)")
    device: str = option("cpu", "cpu, cuda or cuda:N")
    workers: int = option(1, "parallel evaluation processes")


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    try:
        dst.symlink_to(Path(src).resolve())
    except OSError:  # file systems without symbolic links
        shutil.copyfile(src, dst)


def validation_cases(run: Path) -> tuple[list[dict], str]:
    """The held-out cases of a run (records with ``case``, ``dataset``, ``image``, ``label``) and its fold."""
    config_path = run / "config.json"
    if not config_path.is_file():
        raise UserInputError(f"{config_path}: missing; is {run} a run folder made by `multitalent train`?")
    meta = json.loads(config_path.read_text(encoding="utf-8"))
    fold = str(meta["config"].get("fold", "0"))
    pre = Path(meta["preprocessed"])
    cases_json = pre / "cases.json"
    if not cases_json.is_file():
        raise UserInputError(f"{cases_json}: missing; the run's preprocessed folder is needed to find the "
                             "validation cases' scans.")
    records = {c["case"]: c for c in json.loads(cases_json.read_text(encoding="utf-8"))}
    wanted = [] if fold == "all" else meta.get("val_cases", [])
    missing = [c for c in wanted if c not in records]
    if missing:
        raise UserInputError(f"{cases_json}: validation case(s) {missing[:3]} of {run} are not in it.")
    return [records[c] for c in wanted], fold


def final_validation(run: str | os.PathLike, config: ValidateConfig | None = None, *, quiet: bool = True,
                     **options: Any) -> dict | None:
    """Predict and evaluate the run's held-out fold on whole scans; returns the summary (None for fold 'all',
    which holds nothing out). ``options`` are :class:`ValidateConfig` fields and replace those of ``config``."""
    from multitalent.evaluation import evaluate
    from multitalent.inference.config import PredictConfig
    from multitalent.inference.postprocess import FILE as POSTPROCESSING_FILE
    from multitalent.inference.postprocess import determine_postprocessing
    from multitalent.inference.predict import predict
    from multitalent.registry import HeadRegistry

    cfg = with_options(ValidateConfig, config, **options)
    run = Path(run)
    cases, fold = validation_cases(run)
    if not cases:
        log.info("final validation skipped: fold %s holds out no case", fold)
        return None
    out = run / "validation"
    work = out / "inputs"
    shutil.rmtree(work, ignore_errors=True)
    for c in cases:
        for key in ("image", "label"):
            if not Path(c[key]).is_file():
                raise UserInputError(f"{c[key]}: the validation case {c['case']}'s {key} is missing.")
        _link(Path(c["image"]), work / "images" / f"{c['case']}_0000.nii.gz")
        _link(Path(c["label"]), work / "labels" / c["dataset"] / f"{c['case']}.nii.gz")
    preds = out / "predictions"
    shutil.rmtree(preds, ignore_errors=True)
    predict(run, work / "images", preds, PredictConfig(device=cfg.device, quiet=quiet, checkpoint=cfg.checkpoint,
                                                       postprocess=False))
    registry = HeadRegistry.load(run / "heads.json")
    datasets = sorted({c["dataset"] for c in cases})
    gts = [f"{ds}={work / 'labels' / ds}" for ds in datasets]
    summary = evaluate(preds, gts, registry.subset(datasets), out, progress=not quiet, workers=cfg.workers)
    (out / "validation.json").write_text(json.dumps(
        {"fold": fold, "checkpoint": cfg.checkpoint, "cases": [c["case"] for c in cases]}, indent=1))
    refs = {c["case"]: (c["dataset"], work / "labels" / c["dataset"] / f"{c['case']}.nii.gz") for c in cases}
    decision = determine_postprocessing(preds, refs, registry)
    write_json(run / POSTPROCESSING_FILE, {**decision, "checkpoint": cfg.checkpoint, "fold": fold})
    return summary
