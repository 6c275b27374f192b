"""How fast MultiTalent learns on the phantom collection on a CPU: validation pseudo-Dice per head over time.

Trains the demo's network (plain U-Net, 8 base features, batch 2) on a preprocessed collection for a fixed
number of iterations, validating every ``--every`` iterations on ``--val-iterations`` batches of the
training cases (fold ``all``), and prints one row per validation: iteration, cumulated training seconds,
training loss and the pseudo-Dice of the heads that rose above 0.05. Runs with different ``--head-prior``
values on the same ``--seed`` see the same batches, so they compare initialisations directly.

    python benchmarks/learning_speed.py --iterations 1500                  # prepares the demo's data
    python benchmarks/learning_speed.py --pre demo_output/preprocessed --iterations 500 --head-prior 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def prepare(workdir: Path) -> Path:
    """The demo's phantom collection, preprocessed on the demo's grid (6 mm, patch 32x48x48)."""
    from multitalent.demo import DEMO_PATCH, DEMO_SPACING
    from multitalent.phantoms import generate_collection
    from multitalent.preprocessing.pipeline import run_preprocessing

    raw, pre = workdir / "raw", workdir / "preprocessed"
    if not (raw / "collection.json").is_file():
        generate_collection(raw, seed=0, scale="small", progress=False)
    if not (pre / "plans.json").is_file():
        run_preprocessing(raw / "collection.json", pre, preset="small", spacing=DEMO_SPACING,
                          patch_size=DEMO_PATCH, progress=False)
    return pre


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pre", type=Path, help="preprocessed collection (default: prepare the demo's in --workdir)")
    ap.add_argument("--workdir", type=Path, default=Path("work_dirs/learning_speed"))
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--every", type=int, default=50, help="iterations between validations")
    ap.add_argument("--val-iterations", type=int, default=16)
    ap.add_argument("--head-prior", type=float, default=0.01)
    ap.add_argument("--base-features", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.iterations % args.every:
        ap.error("--iterations must be a multiple of --every")

    from multitalent.training.config import TrainConfig
    from multitalent.training.loop import train

    pre = args.pre or prepare(args.workdir)
    run = args.workdir / f"run_prior{args.head_prior:g}_seed{args.seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = TrainConfig(epochs=args.iterations // args.every, iterations_per_epoch=args.every,
                      val_iterations=args.val_iterations, base_features=args.base_features, seed=args.seed,
                      device=args.device, quiet=True, fold="all", num_workers=2, head_prior=args.head_prior)
    t0 = time.perf_counter()
    train(pre, run, cfg)
    wall = time.perf_counter() - t0
    print(f"# {run}: {args.iterations} iterations, head prior {args.head_prior:g}, {wall:.0f} s wall")
    print("| iteration | training s | train loss | pseudo-Dice > 0.05 |")
    print("|---:|---:|---:|---|")
    seconds = 0.0
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        seconds += rec["train_time_s"]
        dice = ", ".join(f"{k} {v:.2f}" for k, v in rec["pseudo_dice"].items() if v is not None and v > 0.05)
        print(f"| {rec['iteration']} | {seconds:.0f} | {rec['train_loss']:.2f} | {dice or '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
