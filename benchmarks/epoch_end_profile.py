"""Where the time of a training epoch goes: ``jobs`` short training runs at once (as ``reproduce.py --gpu`` runs
them), the training loop's functions timed in each and the first run under cProfile.

    python benchmarks/epoch_end_profile.py --raw /tmp/raw --pre /tmp/pre --device cuda --jobs 6 --epochs 6 --workers 1

Trains at the reproduction's GPU sizes (``repro.sizes.GPU``: grid, patch, width, iterations per epoch, validation
batches); makes the phantom collection and preprocesses it on that grid when ``--pre`` holds no preprocessed
folder yet. Prints, per run, the seconds spent in each timed function and each
epoch's ``epoch_time_s`` / ``train_time_s``, then the first run's profile (sorted by cumulative time). On an
H200 this found the 5.3 s per epoch that PyTorch waited for a per-epoch validation loader's worker to exit
(docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import multiprocessing as mp
import os
import pstats
import time
from concurrent.futures import ProcessPoolExecutor

from repro.sizes import GPU

TIMED = ("validate", "plot_progress", "append_log", "read_log", "_train_epoch")


def one(i: int, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // args.jobs))
    from multitalent.training import loop
    from multitalent.training.config import TrainConfig

    spent: dict = {}

    def timed(owner: object, name: str) -> None:
        f = getattr(owner, name)

        @functools.wraps(f)
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t

        setattr(owner, name, wrapper)

    for name in TIMED:
        timed(loop, name)
    timed(loop._Checkpointer, "save")
    cfg = TrainConfig(epochs=args.epochs, iterations_per_epoch=GPU.iterations_per_epoch,
                      val_iterations=GPU.val_iterations, base_features=GPU.base_features, num_workers=args.workers,
                      device=args.device, final_validation=False, quiet=True, seed=i)
    out = os.path.join(args.runs, f"run{i}")
    prof = cProfile.Profile() if i == 0 else None
    t = time.perf_counter()
    if prof:
        prof.enable()
    loop.train(args.pre, out, cfg)
    if prof:
        prof.disable()
    spent["total"] = time.perf_counter() - t
    log = [json.loads(x) for x in open(os.path.join(out, "log.jsonl"))]
    spent["epoch_time_s"] = [round(r["epoch_time_s"], 2) for r in log]
    spent["train_time_s"] = [round(r["train_time_s"], 2) for r in log]
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(45)
        spent["profile"] = s.getvalue()
    return spent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--raw", required=True, help="phantom collection folder (made if missing)")
    p.add_argument("--pre", required=True, help="preprocessed folder (made if missing)")
    p.add_argument("--runs", default="/tmp/epoch_end_profile", help="training runs' folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=6, help="training runs at once")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--workers", type=int, default=1, help="loader workers per run")
    args = p.parse_args()
    t0 = time.perf_counter()
    if not os.path.isfile(os.path.join(args.pre, "plans.json")):
        from multitalent.phantoms import generate_collection
        from multitalent.preprocessing.pipeline import run_preprocessing

        if not os.path.isfile(os.path.join(args.raw, "collection.json")):
            generate_collection(args.raw, seed=0, scale="small", progress=False)
        print("phantoms", round(time.perf_counter() - t0, 1), flush=True)
        run_preprocessing(os.path.join(args.raw, "collection.json"), args.pre, preset="small",
                          spacing=GPU.spacing, patch_size=GPU.patch_size, workers=GPU.preprocess_workers,
                          progress=False)
        print("preprocessed", round(time.perf_counter() - t0, 1), flush=True)
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        results = list(pool.map(functools.partial(one, args=args), range(args.jobs)))
    for i, r in enumerate(results):
        profile = r.pop("profile", None)
        print(i, json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}))
        if profile:
            print(profile)
    print("wall", round(time.perf_counter() - t0, 1))


if __name__ == "__main__":
    main()
