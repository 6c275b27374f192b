"""Calibrate ``multitalent.training.memory``: measure the peak RSS of one CPU training step (the paper's
topology, model + loss + SGD on random tensors, ``train_throughput._paper_step``) for both U-Nets at two
patch sizes and two head counts, each in a fresh process, and fit ``peak = c + 16 B x params + a x 4 B x
feature-map elements + b x 4 B x head-map elements`` per architecture. Prints the measurements, the fit and
the estimate's error on every point, as a Markdown table for docs/benchmarks.md.

    python benchmarks/memory_calibration.py [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PATCHES = ((32, 64, 64), (48, 96, 96))
HEADS = (1, 47)
ARCHS = ("plain_unet", "resenc_unet")
BATCH = 2

CHILD = """
import json, sys
sys.path.insert(0, {here!r})
import train_throughput as tt
tt.PAPER_HEADS = {heads}
opts = dict(name="calibration", device="cpu", arch={arch!r}, patch={patch!r}, batch={batch}, amp="off",
            channels_last=True, compile=False, warmup=1, iterations=1, threads=2)
r = tt._paper_step(opts)
print("RESULT " + json.dumps({{"peak_rss_gb": r["peak_rss_gb"]}}))
"""


def measure(arch: str, patch: tuple[int, int, int], heads: int) -> float:
    code = CHILD.format(here=str(HERE), heads=heads, arch=arch, patch=list(patch), batch=BATCH)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])["peak_rss_gb"] * 1e9


def elements(arch: str, patch: tuple[int, int, int], heads: int) -> tuple[float, float, int]:
    from multitalent.models import create_model, deep_supervision_scales
    from multitalent.preprocessing.plans import PAPER_SPACING, Plans
    from multitalent.training.memory import step_elements

    plans = Plans(spacing=list(PAPER_SPACING), patch_size=list(patch), batch_size=BATCH)
    model = create_model(arch, plans, heads)
    features = list(model.backbone.encoder.output_channels)
    strides = [list(s) for s in plans.topology.strides[: len(features)]]
    feat, head = step_elements(features, strides, list(patch), BATCH, heads, len(deep_supervision_scales(plans)))
    return feat, head, sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="also write the measurements and the fit here")
    args = p.parse_args(argv)
    rows, fits = [], {}
    for arch in ARCHS:
        pts = []
        for patch in PATCHES:
            for heads in HEADS:
                peak = measure(arch, patch, heads)
                feat, head, n = elements(arch, patch, heads)
                pts.append((patch, heads, peak, feat, head, n))
                print(f"{arch} {patch} heads {heads}: {peak / 1e9:.2f} GB", flush=True)
        X = np.array([[1.0, 4 * f, 4 * h] for _, _, _, f, h, _ in pts])
        y = np.array([pk - 16 * n for _, _, pk, _, _, n in pts])
        (c, a, b), *_ = np.linalg.lstsq(X, y, rcond=None)
        fits[arch] = {"base": float(c), "a": float(a), "b": float(b)}
        for patch, heads, peak, f, h, n in pts:
            est = c + 16 * n + 4 * (a * f + b * h)
            rows.append({"arch": arch, "patch": list(patch), "heads": heads, "batch": BATCH, "measured_gb": peak / 1e9,
                         "estimate_gb": est / 1e9, "error": est / peak - 1})
    print("\n| arch | patch | heads | batch | measured peak RSS | estimate | error |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['arch']} | {'x'.join(map(str, r['patch']))} | {r['heads']} | {r['batch']} | "
              f"{r['measured_gb']:.2f} GB | {r['estimate_gb']:.2f} GB | {100 * r['error']:+.0f} % |")
    print("\nfit:", json.dumps(fits))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "fits": fits}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
