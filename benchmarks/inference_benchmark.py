"""Sliding-window inference: MONAI's ``sliding_window_inference`` against multitalent's streaming one.

Both run the same small network (``plain_unet``, few features) over the same random volume with the same
patch, 50 % overlap, Gaussian weighting (sigma = patch/8) and window batch. Every run is a fresh
subprocess, so the peak resident memory (``ru_maxrss`` of the child) belongs to one method alone.

- (a) MONAI: ``monai.inferers.sliding_window_inference(x, patch, window_batch, net, overlap=0.5,
  mode="gaussian", sigma_scale=0.125)``: returns the full [heads, z, y, x] float32 logits.
- (b) multitalent: ``multitalent.inference.sliding_window.sliding_window`` with a consumer that counts the
  positive voxels of every head in each finished slab (the predict command thresholds and bit-packs
  them there instead); it never holds more than one patch depth of logits.

With ``--masks`` both end where a user needs them, with one binary mask per head on the host: MONAI's output
thresholded on its device and copied over (bool), against the streaming window feeding predict's own
``MaskAssembler`` (thresholding and the crop of each head's positive box on the device, bit-packed masks on
the host; the volume is on the output grid, so no resampling). This is the GPU comparison of issue 15
(benchmarks/device/gpu_check.sh runs it with ``--device cuda``).

    python benchmarks/inference_benchmark.py --quick
    python benchmarks/inference_benchmark.py --heads 2 47 --shape 300 512 512 --repeats 3 --out results.md

Results are Markdown on stdout (and in ``--out``). A MONAI run that would not fit into the available memory
is skipped and reported as such rather than started.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

QUICK_SHAPE = (64, 160, 160)
QUICK_PATCH = (32, 64, 64)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heads", type=int, nargs="+", default=[2, 47],
                   help="head counts to compare (default: 2 47)")
    p.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], metavar=("Z", "Y", "X"),
                   help="volume on the network's grid (default: 300 512 512)")
    p.add_argument("--patch", type=int, nargs=3, default=[64, 128, 128], metavar=("Z", "Y", "X"),
                   help="patch size (default: 64 128 128)")
    p.add_argument("--base-features", type=int, default=4,
                   help="features of the first U-Net stage (default: 4)")
    p.add_argument("--n-stages", type=int, default=4, help="U-Net stages (default: 4)")
    p.add_argument("--window-batch", type=int, default=2, help="windows per forward pass (default: 2)")
    p.add_argument("--repeats", type=int, default=3, help="runs per method; the median wall time is reported")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--methods", nargs="+", default=["monai", "streaming"], choices=["monai", "streaming"])
    p.add_argument("--quick", action="store_true",
                   help=f"small smoke run: shape {QUICK_SHAPE}, patch {QUICK_PATCH}, one repeat")
    p.add_argument("--masks", action="store_true",
                   help="both methods end with one binary mask per head on the host (predict's export for ours)")
    p.add_argument("--out", type=Path, help="also write the Markdown report here")
    p.add_argument("--child", choices=["monai", "streaming"], help=argparse.SUPPRESS)
    p.add_argument("--child-heads", type=int, help=argparse.SUPPRESS)
    return p


# --- child: one method, one run ------------------------------------------------------------------
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _run_child(a: argparse.Namespace) -> None:
    import torch

    from multitalent.inference.sliding_window import _autocast, sliding_window
    from multitalent.models import create_model
    from multitalent.preprocessing.plans import Plans

    torch.manual_seed(0)
    device = torch.device(a.device)
    heads = a.child_heads
    plans = Plans(spacing=[1.0, 1.0, 1.0], patch_size=list(a.patch))
    net = create_model("plain_unet", plans, num_heads=heads, deep_supervision=False,
                       base_features=a.base_features, n_stages=a.n_stages).to(device).eval()
    image = torch.randn(1, 1, *a.shape)
    if device.type == "cuda":
        image = image.to(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _rss_mb()
    result: dict = {"method": a.child, "heads": heads}
    asm = None
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        if a.child == "monai":
            from monai.inferers import sliding_window_inference

            with _autocast(device):  # the same mixed precision as ours
                out = sliding_window_inference(image, tuple(a.patch), a.window_batch, net, overlap=0.5,
                                               mode="gaussian", sigma_scale=0.125)
            if a.masks:
                masks = (out[0] > 0).cpu().numpy()
                positives = torch.from_numpy(masks.sum(axis=(1, 2, 3)))
            else:
                positives = (out[0] > 0).sum(dim=(1, 2, 3)).cpu()
        else:
            positives = torch.zeros(heads, dtype=torch.long, device=device)

            def consume(z: int, slab: torch.Tensor) -> None:
                positives.add_((slab > 0).sum(dim=(1, 2, 3)))

            asm = _assembler(a.shape, heads) if a.masks else None  # predict's export: masks on the host
            stats: dict = {}
            sliding_window(net, image[0], a.patch, 0.5, a.window_batch, (), asm or consume, device=device,
                           stats=stats)
            result.update(forward_s=stats["forward_s"], sw_total_s=stats["total_s"], windows=stats["windows"],
                          accumulator_mb=stats["accumulator_bytes"] / 2**20,
                          accumulator_dtype=stats["accumulator_dtype"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result["wall_s"] = time.perf_counter() - t0
    if asm is not None:
        positives = torch.from_numpy(asm.counts)
    result["positives"] = int(positives.sum())
    result["rss_before_mb"] = rss_before
    result["peak_rss_mb"] = _rss_mb()
    if device.type == "cuda":
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    print("RESULT " + json.dumps(result))


def _assembler(shape: list[int], heads: int):
    """predict's ``MaskAssembler`` for a volume already on the output grid (identity geometry, no crop)."""
    from multitalent.inference.export import MaskAssembler
    from multitalent.io import Geometry

    geom = Geometry(tuple(shape), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)).to_dict()
    props = {"resampled_shape": list(shape), "crop_box": [[0, n] for n in shape], "spacing": [1.0, 1.0, 1.0],
             "canonical_geometry": geom, "original_geometry": geom}
    return MaskAssembler(props, heads)


# --- parent: orchestration and report ------------------------------------------------------------
def _available_mb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("inf")


def _monai_need_mb(heads: int, shape: list[int], device: str) -> tuple[float, float]:
    """Rough memory MONAI needs: the full output (float32, and once more while it is normalised and cropped),
    the weight-count map and the input. Returns (needed, available) in MB for the device that holds them."""
    vox = shape[0] * shape[1] * shape[2]
    need = (2 * heads + 2) * vox * 4 / 2**20
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return need, free / 2**20
    return need, _available_mb()


def _spawn(a: argparse.Namespace, method: str, heads: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", method, "--child-heads", str(heads),
           "--shape", *map(str, a.shape), "--patch", *map(str, a.patch),
           "--base-features", str(a.base_features), "--n-stages", str(a.n_stages),
           "--window-batch", str(a.window_batch), "--device", a.device] + (["--masks"] if a.masks else [])
    res = subprocess.run(cmd, capture_output=True, text=True)
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
    return {"method": method, "heads": heads, "error": f"exit code {res.returncode}: {' | '.join(tail)}"}


def _fmt(v: float | None, nd: int = 1) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(args)
    if a.quick:
        a.shape, a.patch, a.repeats = list(QUICK_SHAPE), list(QUICK_PATCH), 1
    if a.child:
        _run_child(a)
        return 0
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("CUDA is not available; use --device cpu", file=sys.stderr)
            return 2

    runs: dict[tuple[int, str], list[dict]] = {}
    notes: list[str] = []
    for heads in a.heads:
        for method in a.methods:
            if method == "monai":
                need, avail = _monai_need_mb(heads, a.shape, a.device)
                if need > 0.8 * avail:
                    notes.append(f"MONAI with {heads} heads skipped: needs about {need / 1024:.1f} GB for "
                                 f"the full-volume output, {avail / 1024:.1f} GB available on {a.device}.")
                    runs[(heads, method)] = []
                    continue
            for r in range(a.repeats):
                res = _spawn(a, method, heads)
                done = res.get("error") or f"{res['wall_s']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB"
                print(f"# {method} heads={heads} run {r + 1}/{a.repeats}: {done}", file=sys.stderr,
                      flush=True)
                runs.setdefault((heads, method), []).append(res)

    lines = ["# Sliding-window inference: MONAI vs multitalent streaming", ""]
    cpu = platform.processor() or platform.machine()
    lines += [f"- machine: {os.cpu_count()} CPU cores ({cpu}), {a.device}; torch threads default",
              f"- volume {tuple(a.shape)} (z, y, x), patch {tuple(a.patch)}, overlap 0.5, Gaussian "
              f"sigma = patch/8, window batch {a.window_batch}; network plain_unet, base features "
              f"{a.base_features}, {a.n_stages} stages; {a.repeats} run(s) per method, each in a fresh "
              "process",
              f"- command: `python benchmarks/{Path(__file__).name} {' '.join(args)}`",
              ""]
    gpu = a.device == "cuda"
    header = "| heads | method | wall median (s) | runs (s) | peak RSS (MB) | RSS growth (MB) |"
    header += " GPU peak (MB) |" if gpu else ""
    header += " accumulator | forward share |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    summary = []
    for heads in a.heads:
        medians = {}
        for method in a.methods:
            rs = [r for r in runs.get((heads, method), []) if "error" not in r]
            errs = [r["error"] for r in runs.get((heads, method), []) if "error" in r]
            if errs:
                notes.append(f"{method} with {heads} heads failed: {errs[0]}")
            if not rs:
                continue
            walls = [r["wall_s"] for r in rs]
            medians[method] = statistics.median(walls)
            peak = max(r["peak_rss_mb"] for r in rs)
            growth = max(r["peak_rss_mb"] - r["rss_before_mb"] for r in rs)
            listed = ", ".join(f"{w:.1f}" for w in walls)
            row = (f"| {heads} | {method} | {_fmt(medians[method])} | {listed} | {_fmt(peak, 0)} | "
                   f"{_fmt(growth, 0)} |")
            if gpu:
                row += f" {_fmt(max(r.get('gpu_peak_mb', 0) for r in rs), 0)} |"
            if method == "streaming":
                share = statistics.median(r["forward_s"] / r["sw_total_s"] for r in rs)
                acc = f"{rs[0]['accumulator_mb']:.0f} MB {rs[0]['accumulator_dtype']}"
                row += f" {acc} | {100 * share:.0f} % |"
            else:
                row += " full volume float32 | - |"
            lines.append(row)
        if len(medians) == 2:
            summary.append(f"- {heads} heads: streaming / MONAI wall time = "
                           f"{medians['streaming'] / medians['monai']:.2f}")
    lines += ["", *summary, *[f"- {n}" for n in notes], "",
              "RSS growth = peak RSS of the child minus its peak before inference started (model and input "
              "built). Forward share = time inside the network's forward pass / wall time of our sliding "
              "window."]
    report = "\n".join(lines) + "\n"
    print(report)
    if a.out:
        a.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
