"""``multitalent demo``: the whole pipeline on the phantom collection, end to end, on a CPU.

phantoms (small) -> preprocess (small preset) -> train a small network -> predict every dataset's test
cases -> evaluate against each dataset's own labels -> print the per-dataset table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multitalent.config import option, with_options
from multitalent.errors import ensure_output_dir, write_json


@dataclass(frozen=True)
class DemoSize:
    epochs: int
    iterations_per_epoch: int
    val_iterations: int
    base_features: int


FULL = DemoSize(epochs=30, iterations_per_epoch=50, val_iterations=4, base_features=8)
# coarser than the "small" preset so that a 2-core CPU gets through 1500 iterations in about 7 minutes, after
# which liver, heart and lungs reach a validation pseudo-Dice above 0.8 (docs/benchmarks.md); at 4 mm and
# patch 32x64x64 the patch holds less context and fewer iterations fit
DEMO_SPACING = (6.0, 6.0, 6.0)
DEMO_PATCH = (32, 48, 48)
QUICK = DemoSize(epochs=2, iterations_per_epoch=4, val_iterations=1, base_features=4)


@dataclass
class DemoConfig:
    """``multitalent demo``: every field is a flag."""

    epochs: int | None = option(None, f"training epochs of {FULL.iterations_per_epoch} iterations "
                                      f"(default: {FULL.epochs})")
    seed: int = option(0, "random seed")
    device: str = option("cpu", "cpu or cuda")
    quick: bool = option(False, "a minute-long smoke run (used by CI)")


def run_demo(out: Path, config: DemoConfig | None = None, *, quiet: bool = False, **options: Any) -> dict:
    """Run the pipeline into ``out``; returns the evaluation summary. ``options`` are :class:`DemoConfig`
    fields and replace those of ``config``."""
    from multitalent.evaluation import evaluate, format_dataset_table
    from multitalent.inference.config import PredictConfig
    from multitalent.inference.predict import predict
    from multitalent.phantoms import generate_collection
    from multitalent.preprocessing.pipeline import run_preprocessing
    from multitalent.registry import HeadRegistry, load_manifest
    from multitalent.training.config import TrainConfig
    from multitalent.training.loop import train

    cfg = with_options(DemoConfig, config, **options)
    seed, device, epochs = cfg.seed, cfg.device, cfg.epochs
    size = QUICK if cfg.quick else FULL
    out = ensure_output_dir(out)
    progress = not quiet
    t0 = time.perf_counter()
    stamps = {}

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)

    raw = out / "raw"
    if not (raw / "collection.json").is_file():
        say("1/5 writing the phantom collection")
        generate_collection(raw, seed=seed, scale="small", progress=progress)
    stamps["phantoms"] = time.perf_counter() - t0
    pre = out / "preprocessed"
    if not (pre / "plans.json").is_file():
        say("2/5 preprocessing")
        run_preprocessing(raw / "collection.json", pre, preset="small", spacing=DEMO_SPACING,
                          patch_size=DEMO_PATCH, progress=progress)
    stamps["preprocess"] = time.perf_counter() - t0
    run = out / "run"
    final = run / "checkpoint_final.pt"
    if not final.is_file():
        say("3/5 training a small MultiTalent network")
        cfg = TrainConfig(epochs=epochs or size.epochs, iterations_per_epoch=size.iterations_per_epoch,
                          val_iterations=size.val_iterations, base_features=size.base_features, seed=seed,
                          device=device, quiet=quiet, fold="all", num_workers=2,
                          resume=(run / "checkpoint_latest.pt").is_file())
        train(pre, run, cfg)
    stamps["train"] = time.perf_counter() - t0

    say("4/5 predicting every dataset's test cases")
    collection = load_manifest(raw / "collection.json")
    pred = out / "predictions"
    gt_dirs = []
    for d in collection.datasets:
        images = d.path / "imagesTs"
        if not images.is_dir() or not any(images.iterdir()):
            continue
        gt_dirs.append(d.path / "labelsTs")
        predict(run, images, pred, PredictConfig(device=device, quiet=quiet, continue_=True, preview=True,
                                                 statistics=False))
    stamps["predict"] = time.perf_counter() - t0

    say("5/5 evaluating against each dataset's own labels")
    registry = HeadRegistry.load(run / "heads.json")
    summary = evaluate(pred, gt_dirs, registry, out / "evaluation", progress=progress)
    stamps["evaluate"] = time.perf_counter() - t0
    write_json(out / "timings.json", {"seconds_since_start": stamps})
    print()
    print(format_dataset_table(summary))
    print()
    say("done")
    print(f"  training log and curves: {run / 'log.jsonl'}, {run / 'progress.png'}")
    print(f"  predictions and previews: {pred}/<case>/")
    print(f"  evaluation: {out / 'evaluation' / 'summary.md'}, {out / 'evaluation' / 'boxplot.png'}")
    return summary
