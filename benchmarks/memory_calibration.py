"""Calibrate ``multitalent.training.memory``: measure the peak memory of real training steps and fit the
estimate's coefficients.

Each point runs in a fresh process: the network of the paper's topology for the patch (``create_model``,
32 base features capped at 320, deep supervision), random image and targets, and two steps of
``multitalent train``'s own step (``train_throughput.Trainer``, i.e. ``TrainStep``: forward, the MultiTalent
loss on the annotated (sample, head) pairs, backward, gradient clipping, SGD with Nesterov momentum; the first
step allocates the momentum, the second is the steady state). On the CPU the peak is ``ru_maxrss`` (peak RSS)
minus the RSS before the network was built, with channels-last as the loop uses it there; on CUDA it would be
``torch.cuda.max_memory_allocated`` (``--device cuda``; not measured yet: no GPU was lent to the session that
wrote this). The fit (``multitalent.training.memory``'s formula, non-negative least squares on the
relative error) is
checked on points it did not see (a larger patch, hence one more stage) and on earlier measurements of the
paper config (docs/distributed.md). Writes ``src/multitalent/training/memory_calibration.json`` and prints a
Markdown table for docs/benchmarks.md.

    python benchmarks/memory_calibration.py [--out FILE] [--threads 2] [--device cpu]

About 10 minutes on 2 CPU cores; the largest point needs about 8 GB of RAM.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "src" / "multitalent" / "training" / "memory_calibration.json"
ARCHS = ("plain_unet", "resenc_unet")
BATCH = 2
HEADS = 47
# (patch, heads, pairs per sample: "all" = every head annotated in every sample), role
POINTS = (
    ((32, 64, 64), 1, "all", "fit"),
    ((32, 64, 64), HEADS, "all", "fit"),
    ((48, 96, 96), 1, "all", "fit"),
    ((48, 96, 96), HEADS, "all", "fit"),
    ((48, 96, 96), HEADS, 1, "fit"),
    ((64, 128, 128), HEADS, "all", "check"),
)
MODEL_KWARGS = {"base_features": 32, "max_features": 320}


# ------------------------------------------------------------------------------------------- one point


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(arch: str, patch: list[int], heads: int, per_sample: int | str, batch: int, device: str,
            threads: int) -> dict:
    """Two training steps in this (fresh) process; the peak bytes above the memory before the network."""
    import torch

    sys.path.insert(0, str(HERE))
    import train_throughput as tt

    from multitalent.models import create_model
    from multitalent.preprocessing.plans import PAPER_SPACING, Plans

    torch.set_num_threads(threads)
    dev = torch.device(device)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = _rss()
    plans = Plans(spacing=list(PAPER_SPACING), patch_size=list(patch), batch_size=batch)
    torch.manual_seed(0)
    model = create_model(arch, plans, heads, deep_supervision=True, **MODEL_KWARGS)
    params = sum(p.numel() for p in model.parameters())
    scales = model.output_strides()
    trainer = tt.Trainer(model, len(scales), heads, dev, "off", channels_last=dev.type == "cpu")
    g = torch.Generator().manual_seed(0)
    per = heads if per_sample == "all" else int(per_sample)
    pairs = torch.tensor([(b, h) for b in range(batch) for h in range(per)], dtype=torch.long)
    targets = [(torch.rand(len(pairs), *[p // s for p, s in zip(patch, sc)], generator=g) > 0.8).to(torch.uint8)
               for sc in scales[: trainer.used]]
    image = torch.randn(batch, 1, *patch, generator=g)
    if dev.type == "cpu":
        image = image.contiguous(memory_format=torch.channels_last_3d)
    data = {"image": image.to(dev), "pairs": pairs.to(dev), "targets": [t.to(dev) for t in targets]}
    times = []
    for _ in range(2):
        t = time.perf_counter()
        trainer.step(data)
        times.append(time.perf_counter() - t)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"arch": arch, "patch": list(patch), "heads": heads, "pairs": len(pairs), "batch": batch,
            "parameters": params, "baseline_bytes": base, "peak_bytes": peak, "measured_bytes": peak - base,
            "step_s": times}


def run_point(arch: str, patch: tuple, heads: int, per_sample, device: str, threads: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child",
           json.dumps([arch, list(patch), heads, per_sample, BATCH, device, threads])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


# ---------------------------------------------------------------------------------------------- the fit


def _features(arch: str, patch, heads: int, pairs: int, batch: int) -> tuple[float, float, float, int]:
    """(feature-map elements, output elements, pair elements, parameters) of a point."""
    from multitalent.preprocessing.plans import PAPER_SPACING, Plans
    from multitalent.training.memory import count_parameters, step_elements

    plans = Plans(spacing=list(PAPER_SPACING), patch_size=list(patch), batch_size=batch)
    feat, out_vox = step_elements(arch, plans, MODEL_KWARGS, True)
    return batch * feat, batch * heads * out_vox, pairs * out_vox, count_parameters(arch, plans, heads, MODEL_KWARGS)


def fit(points: list[dict]) -> dict:
    """Least squares on the relative error, coefficients >= 0:
    measured - 16 B x params = a[arch] F + b_out O + b_pair P + c."""
    from scipy.optimize import nnls

    from multitalent.training.memory import PARAMETER_BYTES

    rows, y = [], []
    for p in points:
        feat, out, pair, n = _features(p["arch"], p["patch"], p["heads"], p["pairs"], p["batch"])
        rows.append([feat if p["arch"] == a else 0.0 for a in ARCHS] + [out, pair, 1.0])
        y.append(p["measured_bytes"] - PARAMETER_BYTES * n)
    x, yv = np.array(rows), np.array(y)
    w = 1.0 / np.array([p["measured_bytes"] for p in points])
    coef, _ = nnls(x * w[:, None], yv * w)  # every term is memory: none may be negative
    return {"activation_bytes": {a: float(coef[i]) for i, a in enumerate(ARCHS)},
            "output_bytes": float(coef[len(ARCHS)]), "pair_bytes": float(coef[len(ARCHS) + 1]),
            "overhead_bytes": float(coef[len(ARCHS) + 2])}


def predict(coefficients: dict, arch: str, patch, heads: int, pairs: int, batch: int, amp: bool = False) -> float:
    """The estimate of ``multitalent.training.memory`` with these coefficients (before they are written)."""
    from multitalent.training.memory import PARAMETER_BYTES

    feat, out, pair, n = _features(arch, patch, heads, pairs, batch)
    half = 0.5 if amp else 1.0
    return (PARAMETER_BYTES * n + half * coefficients["activation_bytes"][arch] * feat
            + half * coefficients["output_bytes"] * out + coefficients["pair_bytes"] * pair
            + coefficients["overhead_bytes"])


# earlier measurements of the paper config (patch 96x192x192, 47 heads), docs/distributed.md: the benchmark's
# batches annotate each sample with one paper dataset's heads (13, 15, 2, 3, ...: 28 pairs at batch 2, 33 at 4)
EARLIER = (
    {"what": "CPU, peak RSS of the process (baseline included)", "arch": "plain_unet", "batch": 2, "pairs": 28,
     "amp": False, "measured_gb": 19.35, "includes_baseline": True},
    {"what": "CPU, peak RSS of the process (baseline included; busy machine)", "arch": "plain_unet", "batch": 1,
     "pairs": 13, "amp": False, "measured_gb": 10.1, "includes_baseline": True},
    {"what": "H200, max_memory_allocated, fp32", "arch": "plain_unet", "batch": 4, "pairs": 33, "amp": False,
     "measured_gb": 37.5},
    {"what": "H200, max_memory_allocated, bf16", "arch": "plain_unet", "batch": 4, "pairs": 33, "amp": True,
     "measured_gb": 19.3},
    {"what": "H200, max_memory_allocated, fp32", "arch": "resenc_unet", "batch": 4, "pairs": 33, "amp": False,
     "measured_gb": 43.5},
    {"what": "H200, max_memory_allocated, bf16", "arch": "resenc_unet", "batch": 4, "pairs": 33, "amp": True,
     "measured_gb": 22.7},
)


def _round_up(x: float, step: float = 0.05, minimum: float = 0.10) -> float:
    return round(max(minimum, math.ceil(x / step - 1e-9) * step), 4)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the calibration file to write")
    p.add_argument("--threads", type=int, default=2, help="torch threads per measurement (default 2)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (peaks from torch.cuda.max_memory_allocated)")
    p.add_argument("--refit", type=Path, metavar="FILE",
                   help="fit again the measurements stored in a calibration file, without measuring")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(measure(*json.loads(args.child))), flush=True)
        return 0

    import torch

    from multitalent.preprocessing.plans import PAPER_PATCH

    started = time.time()
    if args.refit:
        stored = json.loads(args.refit.read_text())
        points, minutes, date = stored["points"], stored["minutes"], stored["date"]
    else:
        points = []
        for arch in ARCHS:
            for patch, heads, per, role in POINTS:
                r = run_point(arch, patch, heads, per, args.device, args.threads)
                r["role"] = role
                points.append(r)
                print(f"{arch} {'x'.join(map(str, patch))} heads {heads} pairs {r['pairs']}: "
                      f"{r['measured_bytes'] / 1e9:.2f} GB above a baseline of {r['baseline_bytes'] / 1e9:.2f} GB "
                      f"({r['step_s'][-1]:.1f} s/step)", flush=True)
        minutes, date = round((time.time() - started) / 60, 1), datetime.date.today().isoformat()
    coefficients = fit([q for q in points if q["role"] == "fit"])
    for q in points:
        q["predicted_bytes"] = predict(coefficients, q["arch"], q["patch"], q["heads"], q["pairs"], q["batch"])
        q["error"] = q["predicted_bytes"] / q["measured_bytes"] - 1
    margin = _round_up(max(abs(q["error"]) for q in points))
    baseline = float(np.median([q["baseline_bytes"] for q in points]))
    earlier = []
    for e in EARLIER:
        pred = predict(coefficients, e["arch"], PAPER_PATCH, HEADS, e["pairs"], e["batch"], e["amp"])
        if e.get("includes_baseline"):
            pred += baseline
        earlier.append({**e, "predicted_gb": pred / 1e9, "error": pred / (e["measured_gb"] * 1e9) - 1})
    # CUDA: four earlier measurements of another harness, and the caching allocator reserves more than it
    # allocates (fragmentation, cuDNN workspaces), which max_memory_allocated does not show: at least 20 %
    cuda_margin = _round_up(max([margin] + [abs(e["error"]) for e in earlier if "H200" in e["what"]]), minimum=0.2)
    result = {
        "format": "multitalent-memory-calibration/1",
        "command": "python benchmarks/memory_calibration.py" + (f" --device {args.device}" if args.device != "cpu"
                                                                else ""),
        "date": date,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{args.threads} torch threads, torch {torch.__version__}, python {platform.python_version()}",
        "device": args.device,
        "measure": "ru_maxrss - RSS before the network (CPU); torch.cuda.max_memory_allocated (CUDA)",
        "minutes": minutes,
        "coefficients": coefficients,
        "margin": margin,
        "cuda_margin": cuda_margin,
        "baseline_bytes": baseline,
        "points": points,
        "earlier_measurements": earlier,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}; margin {100 * margin:.0f} % (CUDA {100 * cuda_margin:.0f} %)")
    print("coefficients:", json.dumps(coefficients))
    print("\n| arch | patch | heads | pairs | role | measured | estimate | error |")
    print("|---|---|---:|---:|---|---:|---:|---:|")
    for q in points:
        print(f"| {q['arch']} | {'x'.join(map(str, q['patch']))} | {q['heads']} | {q['pairs']} | {q['role']} | "
              f"{q['measured_bytes'] / 1e9:.2f} GB | {q['predicted_bytes'] / 1e9:.2f} GB | {100 * q['error']:+.1f} % |")
    print("\n| earlier measurement (paper config) | arch | batch | measured | estimate | error |")
    print("|---|---|---:|---:|---:|---:|")
    for e in earlier:
        print(f"| {e['what']} | {e['arch']} | {e['batch']} | {e['measured_gb']:.2f} GB | {e['predicted_gb']:.2f} GB "
              f"| {100 * e['error']:+.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
