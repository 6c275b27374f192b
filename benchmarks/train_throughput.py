"""Training throughput: iterations per second, time spent waiting for data, and peak memory.

What is measured (the output says it again, next to the numbers):

* ``small``: the small CPU config: a tiny synthetic collection (blob phantoms, preset small: 4 mm, patch
  32x64x64, batch 2) or any preprocessed folder (``--preprocessed``), the real loader (``PatchBatches`` in
  ``--num-workers`` background processes), the real loss, optimiser and gradient clipping. Data wait = time
  blocked on the next batch / total step time.
* ``scaling``: the small config in 1 process and in 2 gloo processes (DDP, the global-batch Dice, one thread
  and no loader workers per process, the same per-process batch). Efficiency = samples/s of 2 processes /
  (2 x samples/s of 1 process).
* ``paper``: the paper config (patch 96x192x192, 47 heads, full-width U-Nets): model + loss + optimiser on
  random tensors resident on the device, so no data wait by construction.
* ``paper-loader``: the time to build one paper-config batch in one loader worker, on a synthetic
  collection at 1.5x1x1 mm with the paper's 13 datasets and 47 heads.
* ``paper-real``: the paper config fed by the real loader from that collection, with ``--paper-workers``
  background processes (one measurement per value) and pinned memory on CUDA: iterations/s, data wait and
  memory as a user's run would see them. This is the GPU check; on the CPU it only tries the code path.

Each CPU measurement runs in a fresh process, so its peak RSS is its own. Step times are medians over the
measured iterations after warm-up; it/s = 1 / median step time.

Examples::

    python benchmarks/train_throughput.py                          # CPU: small, scaling, paper-loader
    python benchmarks/train_throughput.py --parts small --num-workers 2 --preprocessed work/pre
    python benchmarks/train_throughput.py --parts paper --archs plain_unet --paper-batch 1
    python benchmarks/train_throughput.py --device cuda --parts paper --amp bf16 --channels-last
    python benchmarks/train_throughput.py --gpu-suite --out gpu.md  # every CUDA variant, one table
    python benchmarks/train_throughput.py --device cuda --parts paper-real --amp bf16 --paper-workers 4 8 12
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from multitalent.data.targets import batch_to_device
from multitalent.training.distributed import DistInfo

PAPER_HEADS = 47
# 47 heads split into 13 datasets (sizes as in the paper's collection); sample b of a synthetic batch is
# annotated with the heads of dataset b mod 13, so a batch of 4 has 13 + 15 + 2 + 3 annotated pairs
PAPER_DATASET_HEADS = (13, 15, 2, 3, 1, 2, 2, 1, 3, 1, 2, 1, 1)
KIB = 1024


@dataclass
class Result:
    """One measured configuration."""

    name: str
    device: str
    arch: str
    patch: str
    batch: int  # global batch
    processes: int = 1
    threads: int = 1
    workers: int = 0
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    iterations: int = 0
    step_s: float = math.nan  # median step time
    first_step_s: float = math.nan  # includes warm-up effects (and compilation)
    data_wait: float | None = None  # fraction of the measured time spent waiting for data
    peak_rss_gb: float = math.nan
    peak_cuda_gb: float | None = None
    note: str = ""
    error: str = ""

    @property
    def it_per_s(self) -> float:
        return 1.0 / self.step_s if self.step_s > 0 else math.nan

    @property
    def samples_per_s(self) -> float:
        return self.batch * self.it_per_s


@dataclass
class StepTimes:
    wait: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- helpers
def peak_rss_gb() -> float:
    """Peak resident memory of this process (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB / 1e9


def mem_available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * KIB / 1e9
    except OSError:
        pass
    return math.inf


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """``multitalent train``'s own step (:class:`multitalent.training.step.TrainStep`: the objective's loss,
    SGD with the TrainConfig defaults, gradient clipping, GradScaler for fp16, the non-finite policy), without
    the loop's bookkeeping, so each step can be timed."""

    def __init__(self, model: torch.nn.Module, n_outputs: int, heads: int, device: torch.device,
                 amp: str = "off", channels_last: bool = False, compile: bool = False,
                 info: DistInfo | None = None) -> None:
        from multitalent.loss import deep_supervision_weights
        from multitalent.objectives import MultiTalentObjective
        from multitalent.registry import Head, HeadRegistry
        from multitalent.training.config import TrainConfig
        from multitalent.training.distributed import all_reduce_sum
        from multitalent.training.schedule import standard_phases
        from multitalent.training.step import TrainStep

        self.info = info or DistInfo()
        self.device = device
        self.channels_last = channels_last
        weights = deep_supervision_weights(n_outputs)
        self.used = max([i for i, w in enumerate(weights) if w > 0] or [0]) + 1
        model = model.to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        registry = HeadRegistry([Head(f"D000_h{i}", "D000", f"h{i}", (i + 1,)) for i in range(heads)])
        objective = MultiTalentObjective(registry, weights[: self.used],
                                         sum_fn=all_reduce_sum if self.info.enabled else None,
                                         bce_scale=float(self.info.world_size))
        cfg = TrainConfig(amp=amp, compile=compile, device=str(device), epochs=1, iterations_per_epoch=10**6)
        self.train_step = TrainStep(model, objective, cfg, standard_phases(cfg), device, self.info,
                                    keep_outputs=self.used if self.used < n_outputs else None,
                                    channels_last=channels_last)
        self.amp = self.train_step.amp
        self.iteration = 0

    def step(self, batch: dict) -> float | None:
        self.train_step.set_iteration(self.iteration)
        loss = self.train_step(batch, self.iteration)  # float(loss) synchronises, like the loop's logging
        self.iteration += 1
        return loss


def timed_steps(trainer: Trainer, batches: Iterator[dict], n: int) -> StepTimes:
    """Run ``n`` steps; per step the time blocked on the next batch and the whole step time."""
    times = StepTimes()
    for _ in range(n):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        trainer.step(batch_to_device(batch, trainer.device, trainer.channels_last))
        sync(trainer.device)
        t2 = time.perf_counter()
        times.wait.append(t1 - t0)
        times.total.append(t2 - t0)
    return times


def fill(result: Result, times: StepTimes, warmup: int, with_data: bool, device: torch.device) -> Result:
    measured_total = times.total[warmup:] or times.total
    measured_wait = times.wait[warmup:] or times.wait
    result.iterations = len(measured_total)
    result.step_s = statistics.median(measured_total)
    result.first_step_s = times.total[0]
    result.data_wait = sum(measured_wait) / sum(measured_total) if with_data else None
    result.peak_rss_gb = peak_rss_gb()
    if device.type == "cuda":
        result.peak_cuda_gb = torch.cuda.max_memory_allocated(device) / 1e9
    return result


# ----------------------------------------------------------------------------------- synthetic collections
def write_blob_collection(root: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                          label_counts: tuple[int, ...] = (4, 2, 1), cases: int = 3, seed: int = 0) -> Path:
    """Raw nnU-Net datasets of a body in air with nested boxes as structures; returns the manifest.

    Dataset i annotates ``label_counts[i]`` structures (label values 1..n, later ones inside earlier ones).
    """
    from multitalent import io

    rng = np.random.default_rng(seed)
    entries = []
    for d, n_labels in enumerate(label_counts, start=1):
        folder = root / f"Dataset{d:03d}_Synthetic{d}"
        (folder / "imagesTr").mkdir(parents=True)
        (folder / "labelsTr").mkdir()
        labels = {"background": 0, **{f"structure{v}": v for v in range(1, n_labels + 1)}}
        (folder / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "CT"}, "labels": labels, "numTraining": cases, "file_ending": ".nii.gz"}))
        geom = io.Geometry(shape, spacing, (0.0, 0.0, 0.0), io.direction_for("LPS"))
        z, y, x = shape
        for c in range(cases):
            img = rng.normal(40, 20, shape).astype(np.float32)
            img[:, :, : x // 10] = -1000
            img[:, :, -x // 10 :] = -1000
            seg = np.zeros(shape, np.uint8)
            for v in range(1, n_labels + 1):
                m = [int(s * (0.08 + 0.35 * v / (n_labels + 1)) + rng.integers(0, 3)) for s in shape]
                seg[m[0] : z - m[0], m[1] : y - m[1], m[2] : x - m[2]] = v
                img[seg == v] += 15 * v
            io.write_image(folder / "imagesTr" / f"syn{d}_{c:03d}_0000.nii.gz", img.astype(np.int16), geom)
            io.write_label(folder / "labelsTr" / f"syn{d}_{c:03d}.nii.gz", seg, geom)
        entries.append({"path": folder.name})
    manifest = root / "collection.json"
    manifest.write_text(json.dumps({"datasets": entries}))
    return manifest


def small_preprocessed(workdir: Path) -> Path:
    """The small CPU config's collection (3 datasets, 7 heads, 4 mm), preprocessed once per workdir."""
    from multitalent.preprocessing.pipeline import run_preprocessing

    pre = workdir / "small_pre"
    if not (pre / "plans.json").is_file():
        raw = workdir / "small_raw"
        shutil.rmtree(raw, ignore_errors=True)
        manifest = write_blob_collection(raw, (48, 96, 96), (4.0, 4.0, 4.0), label_counts=(4, 2, 1), cases=4)
        run_preprocessing(manifest, pre, preset="small", workers=1, progress=False)
    return pre


def paper_preprocessed(workdir: Path, patch: tuple[int, int, int] | None = None, workers: int = 1) -> Path:
    """The paper-config collection: 13 datasets at 1.5x1x1 mm annotating 47 structures in all (the paper's
    dataset sizes, ``PAPER_DATASET_HEADS``), two cases each, preprocessed once per workdir and patch.

    The volumes are 112x224x224 voxels (smaller than the 144x263x263 box the loader cuts before rotating,
    so every patch is partly padding, as near a real scan's border); with ``patch`` (to try the code paths
    quickly) the volumes are 7/6 of the patch and the plans use that patch.
    """
    from multitalent.preprocessing.pipeline import run_preprocessing

    # "paper47": a workdir from before holds a 3-dataset collection under "paper_pre"
    name = "paper47_pre" if patch is None else "paper47_pre_" + "x".join(map(str, patch))
    pre = workdir / name
    if not (pre / "plans.json").is_file():
        raw = workdir / (name.replace("_pre", "_raw"))
        shutil.rmtree(raw, ignore_errors=True)
        shape = (112, 224, 224) if patch is None else tuple(int(math.ceil(v * 7 / 6)) for v in patch)
        manifest = write_blob_collection(raw, shape, (1.5, 1.0, 1.0), label_counts=PAPER_DATASET_HEADS, cases=2)
        run_preprocessing(manifest, pre, preset="paper", patch_size=patch, workers=workers, progress=False)
        shutil.rmtree(raw, ignore_errors=True)
    return pre


# ------------------------------------------------------------------------------------------- measurements
def _real_loader_steps(pre_root: str, opts: dict, rank: int = 0, world: int = 1, port: int = 0) -> dict:
    """Training steps fed by the real loader (``opts["workers"]`` background processes, pinned memory on
    CUDA), on the collection ``pre_root``; in rank ``rank`` of ``world`` gloo processes.

    ``opts["base_features"]`` None builds the full-width network of the plans (the paper config)."""
    from multitalent.data.loader import PatchBatches, make_loader, unpack_all
    from multitalent.models import create_model, deep_supervision_scales
    from multitalent.preprocessing.pipeline import Preprocessed
    from multitalent.training.distributed import DistInfo, cleanup, init_distributed

    torch.set_num_threads(opts["threads"])
    info = DistInfo()
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
        info = init_distributed(opts["device"], timeout_s=300)
    try:
        device = torch.device(opts["device"] if world == 1 or opts["device"] == "cpu" else f"cuda:{rank}")
        pre = Preprocessed.open(pre_root)
        cases = [c["case"] for c in pre.cases]
        unpack_all(pre, cases)
        torch.manual_seed(0)
        width = {} if opts.get("base_features") is None else {"base_features": opts["base_features"]}
        model = create_model(opts["arch"], pre.plans, len(pre.registry), deep_supervision=True, **width)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            torch.backends.cudnn.benchmark = bool(opts.get("cudnn_benchmark"))
        scales = deep_supervision_scales(pre.plans)
        trainer = Trainer(model, len(scales), len(pre.registry), device, opts["amp"], opts["channels_last"],
                          opts["compile"], info)
        batch = opts["batch"] * world  # the same batch per process
        n = opts["warmup"] + opts["iterations"]
        data = PatchBatches(pre, cases, batch, pre.plans.patch_size, scales[: trainer.used], seed=0,
                            rank=info.rank, world_size=info.world_size)
        loader = make_loader(data, 0, n, opts["workers"], pin_memory=device.type == "cuda")
        times = timed_steps(trainer, iter(loader), n)
        result = Result(
            name=opts["name"], device=str(device), arch=opts["arch"],
            patch="x".join(map(str, pre.plans.patch_size)), batch=batch, processes=world,
            threads=opts["threads"], workers=opts["workers"], amp=opts["amp"],
            channels_last=opts["channels_last"], compile=opts["compile"],
            note=f"{len(pre.registry)} heads, base features {opts.get('base_features') or 'full'}, real loader")
        fill(result, times, opts["warmup"], True, device)
        if world > 1:  # DDP keeps the ranks in step: average their medians
            from multitalent.training.distributed import reduce_detached

            result.step_s = float(reduce_detached(torch.tensor([result.step_s]), info)[0]) / world
            result.peak_rss_gb = float(reduce_detached(torch.tensor([result.peak_rss_gb]), info)[0])
            result.note += "; RSS summed over processes"
        return asdict(result)
    finally:
        cleanup(info)


def paper_batch_tensors(batch: int, patch: tuple[int, int, int], scales: list, device: torch.device,
                        seed: int = 0) -> dict:
    """A random paper-config batch: image, the annotated (sample, head) pairs and their binary targets."""
    g = torch.Generator().manual_seed(seed)
    starts = np.cumsum((0, *PAPER_DATASET_HEADS))
    pairs = []
    for b in range(batch):
        d = b % len(PAPER_DATASET_HEADS)
        pairs += [(b, h) for h in range(starts[d], starts[d + 1])]
    pairs_t = torch.tensor(pairs, dtype=torch.long)
    targets = []
    for sc in scales:
        shape = [p // s for p, s in zip(patch, sc)]
        targets.append((torch.rand(len(pairs), *shape, generator=g) > 0.8).to(torch.uint8).to(device))
    image = torch.randn(batch, 1, *patch, generator=g).to(device)
    return {"image": image, "pairs": pairs_t.to(device), "targets": targets}


def _paper_step(opts: dict) -> dict:
    """Steps of the paper config (model + loss + optimiser) on random tensors resident on the device."""
    from multitalent.models import create_model, deep_supervision_scales
    from multitalent.preprocessing.plans import PAPER_PATCH, PAPER_SPACING, Plans

    if opts.get("threads"):
        torch.set_num_threads(opts["threads"])
    device = torch.device(opts["device"])
    patch = tuple(opts.get("patch") or PAPER_PATCH)
    plans = Plans(spacing=list(PAPER_SPACING), patch_size=list(patch), batch_size=opts["batch"])
    torch.manual_seed(0)
    model = create_model(opts["arch"], plans, PAPER_HEADS, deep_supervision=True)
    scales = deep_supervision_scales(plans)
    result = Result(name=opts["name"], device=str(device), arch=opts["arch"],
                    patch="x".join(map(str, patch)), batch=opts["batch"],
                    threads=torch.get_num_threads(), amp=opts["amp"],
                    channels_last=opts["channels_last"], compile=opts["compile"],
                    note=f"{PAPER_HEADS} heads, random tensors on the device (no loader)")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = bool(opts.get("cudnn_benchmark"))
    trainer = Trainer(model, len(scales), PAPER_HEADS, device, opts["amp"], opts["channels_last"],
                      opts["compile"])
    batch = paper_batch_tensors(opts["batch"], patch, scales[: trainer.used], device)
    n = opts["warmup"] + opts["iterations"]
    times = timed_steps(trainer, iter([batch] * n), n)
    fill(result, times, opts["warmup"], False, device)
    del trainer, batch, model
    return asdict(result)


def _paper_loader(pre_root: str, opts: dict) -> dict:
    """Time to build paper-config batches in one loader worker (one thread, augmentation on); the targets
    are expanded from the label maps where the batch is used, on the device (timed apart on the CPU)."""
    from multitalent.data.loader import PatchBatches, unpack_all
    from multitalent.models import deep_supervision_scales
    from multitalent.preprocessing.pipeline import Preprocessed

    torch.set_num_threads(1)
    pre = Preprocessed.open(pre_root)
    cases = [c["case"] for c in pre.cases]
    unpack_all(pre, cases)
    scales = deep_supervision_scales(pre.plans)[:-1]
    data = PatchBatches(pre, cases, opts["batch"], pre.plans.patch_size, scales, seed=0)
    times, expand, shipped = [], [], []
    for i in range(opts["warmup"] + opts["iterations"]):
        t = time.perf_counter()
        batch = data[i]
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        batch_to_device(batch, torch.device("cpu"))
        expand.append(time.perf_counter() - t)
        shipped.append(sum(v.numel() * v.element_size() for v in [batch["image"], *batch["labels"]]))
    measured = times[opts["warmup"]:] or times
    res = Result(name=opts["name"], device="cpu", arch="-", patch="x".join(map(str, pre.plans.patch_size)),
                 batch=opts["batch"], threads=1, workers=1, iterations=len(measured),
                 step_s=statistics.median(measured), first_step_s=times[0], peak_rss_gb=peak_rss_gb(),
                 note=f"loader only: s per batch in one worker ({len(pre.registry)} heads in "
                      f"{len(pre.registry.dataset_ids)} datasets, augmentation on); "
                      f"{statistics.median(shipped) / 1e6:.3g} MB shipped per batch; expanding the targets on "
                      f"the CPU {statistics.median(expand[opts['warmup']:] or expand):.3f} s")
    return asdict(res)


def _child(fn: Callable[..., dict], args: tuple, out: str, start_method: str) -> None:
    # loader workers start as they would in `multitalent train` (the parent's default), not by spawn
    mp.set_start_method(start_method, force=True)
    try:
        res = fn(*args)
    except Exception as e:  # noqa: BLE001 - reported in the table
        res = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]}
    if res is not None:
        Path(out).write_text(json.dumps(res))


def isolated(fn: Callable[..., dict], *args: object, processes: int = 1, port_arg: bool = False) -> dict:
    """Run ``fn(*args)`` (or ``fn(*args, rank, world, port)``) in fresh processes; rank 0's result."""
    ctx = mp.get_context("spawn")
    start_method = mp.get_start_method()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        procs = []
        for rank in range(processes):
            a = (*args, rank, processes, port) if port_arg else args
            p = ctx.Process(target=_child, args=(fn, a, os.path.join(tmp, f"r{rank}.json"), start_method))
            p.start()
            procs.append(p)
        for p in procs:
            p.join()
        out = Path(tmp, "r0.json")
        if not out.is_file():
            return {"error": f"process exited with code {procs[0].exitcode} (out of memory?)"}
        return json.loads(out.read_text())


# -------------------------------------------------------------------------------------------------- output
def result_from(d: dict, **defaults: object) -> Result:
    if "error" in d and len(d) == 1:
        return Result(**{"name": "?", "device": "?", "arch": "?", "patch": "?", "batch": 0, **defaults,
                         "error": d["error"]})
    return Result(**d)


def fmt(v: float | None, spec: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def table(results: list[Result]) -> str:
    head = ("| measurement | device | arch | patch | batch | procs x threads | workers | amp | ch.-last "
            "| compile | it/s | samples/s | step s (median) | first step s | data wait | peak RSS GB "
            "| peak CUDA GB | n | note |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if r.error:
            lines.append(f"| {r.name} | {r.device} | {r.arch} | {r.patch} | {r.batch} | | | {r.amp} | | | "
                         f"| | | | | | | | failed: {r.error} |")
            continue
        wait = "-" if r.data_wait is None else f"{100 * r.data_wait:.1f}%"
        lines.append(
            f"| {r.name} | {r.device} | {r.arch} | {r.patch} | {r.batch} | {r.processes} x {r.threads} "
            f"| {r.workers} | {r.amp} | {yes(r.channels_last)} | {yes(r.compile)} "
            f"| {fmt(r.it_per_s)} | {fmt(r.samples_per_s)} | {fmt(r.step_s)} | {fmt(r.first_step_s)} "
            f"| {wait} | {fmt(r.peak_rss_gb, '.2f')} | {fmt(r.peak_cuda_gb, '.2f')} | {r.iterations} "
            f"| {r.note} |")
    return "\n".join(lines)


def environment() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return (f"torch {torch.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPU cores, "
            f"{dev}, load average {os.getloadavg()[0]:.1f}")


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--parts", nargs="+", choices=["small", "scaling", "paper", "paper-loader", "paper-real"],
                   help="what to measure (default: small scaling paper-loader on cpu, small paper on cuda)")
    add = p.add_argument
    add("--amp", default="off", choices=["off", "bf16", "fp16"], help="mixed precision (on the CPU: bf16 or off)")
    add("--channels-last", action="store_true", help="channels-last 3D memory format")
    add("--compile", action="store_true", help="torch.compile the network")
    add("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True (CUDA)")
    add("--archs", nargs="+", default=["plain_unet", "resenc_unet"], help="paper-config architectures")
    add("--num-workers", type=int, default=2, help="loader processes of the small config (default 2)")
    add("--threads", type=int, default=0, help="torch threads of the small config (0: all cores)")
    add("--base-features", type=int, default=16, help="U-Net width of the small config (default 16)")
    add("--small-batch", type=int, default=2, help="small-config batch per process (default 2)")
    add("--paper-batch", type=int, default=0, help="paper-config batch (default: 2 on cpu, 4 on cuda)")
    add("--warmup", type=int, default=-1, help="warm-up iterations (default: 3; paper on cpu 0, paper loader 1, "
        "--gpu-suite 2)")
    add("--iterations", type=int, default=0,
        help="measured iterations (default: 20 small, 10 paper on cuda, 1 paper on cpu, 4 paper loader, "
             "paper-real 20 on cuda and 2 on cpu, --gpu-suite 6)")
    add("--preprocessed", type=Path, help="use this preprocessed folder for the small config")
    add("--workdir", type=Path, help="keep the synthetic collections here (default: a temp folder)")
    add("--gpu-suite", action="store_true", help="all CUDA measurements of the paper config in one go "
        "(plain and residual U-Net, batch 4, amp off/bf16/fp16, channels-last, compile)")
    add("--paper-patch", type=int, nargs=3, metavar=("Z", "Y", "X"), help="patch of the paper config "
        "(default 96 192 192; smaller only to try the code paths quickly)")
    add("--paper-workers", type=int, nargs="+", help="loader processes of paper-real, one measurement per "
        "value (default: what `multitalent train` chooses: on CUDA CPU cores - 1, at most 12; on CPU 2)")
    add("--force", action="store_true", help="run the CPU paper config even if it may not fit in memory")
    add("--out", type=Path, help="also write the Markdown report here")
    return p.parse_args(argv)


# rough fp32 training memory (peak RSS on CPU) of the full-width U-Nets with 47 heads per voxel of the batch:
# plain_unet measured at 96x192x192, batch 1 (10.1 GB); resenc_unet scaled by its ratio at a smaller patch.
# Used only to skip what cannot fit.
BYTES_PER_VOXEL = {"plain_unet": 2.9e3, "resenc_unet": 4.7e3}


def gpu_suite(args: argparse.Namespace) -> list[Result]:
    """Every CUDA variant of the paper config, in this process (GPU peak memory is reset for each).

    The compiled variants come last: if time runs out, the others are in. Each row is printed when done.
    """
    if not torch.cuda.is_available():
        raise SystemExit("--gpu-suite needs CUDA")
    batch = args.paper_batch or 4
    warmup = 2 if args.warmup < 0 else args.warmup
    iters = args.iterations or 6
    # (amp, channels-last, compile, cudnn.benchmark)
    plain = [("off", False, False, False), ("bf16", False, False, False), ("fp16", False, False, False),
             ("bf16", True, False, False), ("bf16", False, False, True)]
    runs = [(arch, *v) for arch in args.archs for v in plain]
    runs += [(arch, "bf16", False, True, False) for arch in args.archs]
    print(table([]), flush=True)
    results = []
    for arch, amp, cl, comp, bench in runs:
        opts = dict(name="paper step" + (" (cudnn.benchmark)" if bench else ""), device="cuda", arch=arch,
                    batch=batch, amp=amp, channels_last=cl, compile=comp, cudnn_benchmark=bench,
                    warmup=warmup, iterations=iters, patch=args.paper_patch)
        t = time.perf_counter()
        try:
            res = Result(**_paper_step(opts))
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: reported in the table
            res = result_from({"error": f"{type(e).__name__}: {str(e).splitlines()[0][:150]}"},
                              name=opts["name"], device="cuda", arch=arch, batch=batch, amp=amp)
        res.note += f"; wall {time.perf_counter() - t:.0f} s"
        results.append(res)
        print(table([res]).splitlines()[-1], flush=True)
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    if args.gpu_suite:
        results = gpu_suite(args)
        parts: list[str] = []
    else:
        default = ["small", "paper"] if device.type == "cuda" else ["small", "scaling", "paper-loader"]
        parts = args.parts or default
        results = []
    cores = os.cpu_count() or 1
    tmp = None
    workdir = args.workdir
    if workdir is None and any(p in parts for p in ("small", "scaling", "paper-loader", "paper-real")):
        tmp = tempfile.mkdtemp(prefix="mt_bench_")
        workdir = Path(tmp)
    try:
        if "small" in parts or "scaling" in parts:
            workdir.mkdir(parents=True, exist_ok=True)
            pre = args.preprocessed or small_preprocessed(workdir)
            base = dict(device=args.device, arch="plain_unet", base_features=args.base_features,
                        batch=args.small_batch, amp=args.amp, channels_last=args.channels_last,
                        compile=args.compile,
                        warmup=3 if args.warmup < 0 else args.warmup, iterations=args.iterations or 20)
            if "small" in parts:
                opts = {**base, "name": "small config", "threads": args.threads or cores,
                        "workers": args.num_workers}
                results.append(result_from(isolated(_real_loader_steps, str(pre), opts), name="small config"))
            if "scaling" in parts:
                if device.type == "cuda":
                    print("scaling is measured with gloo on CPU only; skipped", file=sys.stderr)
                else:
                    opts = {**base, "threads": 1, "workers": 0, "name": "scaling, 1 process"}
                    one = result_from(isolated(_real_loader_steps, str(pre), opts, processes=1, port_arg=True))
                    opts = {**opts, "name": "scaling, 2 processes"}
                    two = result_from(isolated(_real_loader_steps, str(pre), opts, processes=2, port_arg=True))
                    if not (one.error or two.error):
                        eff = two.samples_per_s / (2 * one.samples_per_s)
                        two.note += f"; scaling efficiency {100 * eff:.0f}%"
                    results += [one, two]
        if "paper" in parts:
            batch = args.paper_batch or (4 if device.type == "cuda" else 2)
            for arch in args.archs:
                opts = dict(name="paper step", device=args.device, arch=arch, batch=batch, amp=args.amp,
                            channels_last=args.channels_last, compile=args.compile, patch=args.paper_patch,
                            cudnn_benchmark=args.cudnn_benchmark,
                            warmup=(3 if device.type == "cuda" else 0) if args.warmup < 0 else args.warmup,
                            iterations=args.iterations or (10 if device.type == "cuda" else 1))
                voxels = batch * math.prod(args.paper_patch or (96, 192, 192))
                need = BYTES_PER_VOXEL.get(arch, 4e3) * voxels / 1e9
                if device.type == "cpu" and need > 0.8 * mem_available_gb() and not args.force:
                    results.append(result_from({"error": f"skipped: needs roughly {need:.0f} GB, "
                                                         f"{mem_available_gb():.0f} GB available (--force)"},
                                               name="paper step", device="cpu", arch=arch, batch=batch))
                    continue
                if device.type == "cuda":
                    results.append(Result(**_paper_step(opts)))
                else:
                    results.append(result_from(isolated(_paper_step, opts), name="paper step", device="cpu",
                                               arch=arch, batch=batch))
        if "paper-loader" in parts or "paper-real" in parts:
            workdir.mkdir(parents=True, exist_ok=True)
            patch = tuple(args.paper_patch) if args.paper_patch else None
            paper_pre = paper_preprocessed(workdir, patch, workers=min(8, cores))
        if "paper-loader" in parts:
            opts = dict(name="paper loader", batch=args.paper_batch or 4,
                        warmup=1 if args.warmup < 0 else args.warmup, iterations=args.iterations or 4)
            results.append(result_from(isolated(_paper_loader, str(paper_pre), opts), name="paper loader"))
        if "paper-real" in parts:
            from multitalent.data.loader import auto_num_workers

            batch = args.paper_batch or (4 if device.type == "cuda" else 2)
            for arch in args.archs:
                for workers in args.paper_workers or [auto_num_workers(-1, device.type)]:
                    opts = dict(name="paper step, real loader", device=args.device, arch=arch, base_features=None,
                                batch=batch, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
                                cudnn_benchmark=args.cudnn_benchmark, threads=args.threads or cores,
                                workers=workers, warmup=3 if args.warmup < 0 else args.warmup,
                                iterations=args.iterations or (20 if device.type == "cuda" else 2))
                    res = result_from(isolated(_real_loader_steps, str(paper_pre), opts), name=opts["name"],
                                      device=args.device, arch=arch, batch=batch, amp=args.amp)
                    results.append(res)
                    print(table([res]).splitlines()[-1], flush=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python benchmarks/train_throughput.py", *given])
    report = "\n".join([
        "# Training throughput", "", f"`{command}`", "", environment(), "", table(results), "",
        "it/s = 1 / median step time after warm-up; data wait = time blocked on the next batch / total step "
        "time over the measured steps; peak RSS = the measuring process's resident peak (loader workers not "
        "included).",
    ])
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
