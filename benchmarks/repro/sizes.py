"""The sizes of the reproduction (``Sizes``: FULL, QUICK, TINY, GPU) and the projection of their cost."""

from __future__ import annotations

from dataclasses import dataclass

from repro.common import base_run, doublings


@dataclass(frozen=True)
class Sizes:
    """Everything that sets how long the reproduction takes.

    Iterations: a single-dataset model trains ``N = single_epochs * iterations_per_epoch`` iterations;
    MultiTalent, the merged softmax and both pre-trainings ``multitalent_factor * N`` (the paper: 1000
    vs 2000 epochs). Fine-tuning: ``ft_head_warmup_epochs`` (heads only, AdamW), ``ft_full_warmup_epochs``
    (whole network, SGD, lr ramp) and ``ft_epochs`` (poly) of ``ft_iterations_per_epoch``; from scratch
    gets the same total number of iterations, all poly.
    """

    name: str
    # the collection: None = the whole small phantom collection; else these datasets, the first
    # ``max_train`` / ``max_test`` cases of each
    datasets: tuple[str, ...] | None = None
    max_train: int | None = None
    max_test: int | None = None
    collection_seed: int = 0
    in_plane_step: int = 1  # >1 (tests only): keep every step-th voxel in plane of the sub-collection's scans
    lesion_scale: float = 1.0  # lesion radii x this (CasePlan.lesion_scale): 2 keeps lesions resolved at 6 mm
    # the plans: None = preset "small" (4 mm, patch 32x64x64, batch 2)
    spacing: tuple[float, float, float] | None = None
    patch_size: tuple[int, int, int] | None = None
    # the networks
    base_features: int = 8
    archs: tuple[str, ...] = ("plain_unet",)  # backbones: MultiTalent and the K single-dataset models
    # of each; the first is the main one (merged softmax, pre-training, fine-tuning)
    swin_probe_iterations: int = 0  # >0: time a few SwinUNETR iterations to report its cost
    swin_feature_size: int = 12  # SwinUNETR's size when probed or listed in ``archs``
    # training
    iterations_per_epoch: int = 25
    single_epochs: int = 6
    multitalent_factor: int = 2
    # the merged softmax and both pre-trainings: this many epochs instead of ``multitalent_factor *
    # single_epochs`` (None: the same as MultiTalent); FULL keeps them at the previous run's budget
    baseline_epochs: int | None = None
    num_workers: int = 0
    # mixed precision of every run (TrainConfig.amp): "auto" is float32 on the CPU and bf16 on a GPU that has it;
    # "bf16" on the CPU makes steps 2.2x faster on a CPU with AMX (docs/benchmarks.md)
    amp: str = "auto"
    # validation curves: every run holds out this fold of its training cases (nnU-Net's 5-fold split) and
    # scores ``val_iterations`` fixed batches of them after every epoch (patch pseudo-Dice), which is the
    # convergence evidence; "all" trains on every case and validates on the training cases
    fold: str = "0"
    val_iterations: int = 8
    # fine-tuning
    ft_iterations_per_epoch: int = 10
    ft_head_warmup_epochs: int = 1
    ft_full_warmup_epochs: int = 5
    ft_epochs: int = 9
    ft_seeds: int = 3
    # inference and evaluation
    timing_scans: int = 3
    eval_workers: int = 2
    preprocess_workers: int = 2
    # training runs at once, each a process with ``cpu_count // jobs`` torch threads (a lone run: all): on 2 cores two
    # 1-thread runs gave 1.36x the iterations per second of one 2-thread run (0.27 s/it each vs 0.185 s/it)
    jobs: int = 1
    # ablations of MultiTalent (main backbone, 2N iterations): (name, ((TrainConfig field, value), ...))
    ablations: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()
    # adding a dataset (``multitalent extend``, ``reproduce.py --extend``): the MultiTalent pre-training (every
    # dataset but the target) extended with the target, with and without the original data, for
    # ``ext_total_epochs`` epochs of ``iterations_per_epoch``: heads only, whole-network warm-up, then poly.
    # ``ext_scratch``: the run from scratch on all datasets with the base + extension iterations ("": the main
    # MultiTalent run, whatever its iterations)
    ext_head_warmup_epochs: int = 1
    ext_full_warmup_epochs: int = 1
    ext_epochs: int = 1
    ext_scratch: str = ""
    # convergence by budget doubling (``reproduce.py --pairs``): every judged run also trains at half its budget
    # (``half_<run>``; a run of the table with the same settings at half the budget, such as an ablation, stands in
    # for it), and the runs named here also at twice theirs (``double_<run>``); see ``Reproduction.budget_pairs``
    double_runs: tuple[str, ...] = ()
    # the pre-training runs the fine-tunings start from where the table's own has not converged (``--finetune-from``):
    # a longer run of a pre-training's budget chain (``double_pretrain_multitalent``, ...); its fine-tunings are runs
    # of their own, named after its budget (``finetune_multitalent_x2_seed0``: from twice the table's pre-training)
    ft_from: tuple[str, ...] = ()

    @property
    def n_single(self) -> int:
        return self.single_epochs * self.iterations_per_epoch

    @property
    def n_multi(self) -> int:
        return self.multitalent_factor * self.n_single

    @property
    def baseline_its(self) -> int:
        """Iterations of the merged softmax and of each pre-training."""
        return (self.baseline_epochs or self.multitalent_factor * self.single_epochs) * self.iterations_per_epoch

    @property
    def ft_total_epochs(self) -> int:
        return self.ft_head_warmup_epochs + self.ft_full_warmup_epochs + self.ft_epochs

    def ft_phase_epochs(self, scale: float = 1) -> tuple[int, int, int]:
        """Epochs of a fine-tuning's three phases (head warm-up, whole-network warm-up, the rest), each ``scale``
        times as long (a budget pair's run), at least one epoch each."""
        return tuple(max(1, int(e * scale)) for e in (self.ft_head_warmup_epochs, self.ft_full_warmup_epochs,
                                                      self.ft_epochs))

    @property
    def ext_total_epochs(self) -> int:
        return self.ext_head_warmup_epochs + self.ext_full_warmup_epochs + self.ext_epochs

    @property
    def ext_its(self) -> int:
        """Iterations of each extension run."""
        return self.ext_total_epochs * self.iterations_per_epoch


# FULL uses the demo's grid (6 mm, patch 32x48x48): on 2 CPU cores MultiTalent learns the large organs
# there within ~1000 iterations (docs/benchmarks.md). Only the plain U-Net on the CPU (the residual U-Net's
# runs would not fit; --gpu runs both and SwinUNETR); two training runs at a time with one thread each.
# Budgets, from the three previous --full runs (all seven datasets, float32, measured 2026-12-02/03): by
# budget doubling on held-out whole scans no run but one single-dataset model had converged at N = 3200 and
# MultiTalent at 4N = 12,800 still gained 1.2 points at 8N; seven datasets at a converging budget would take
# 7-10 h here. So this round trades breadth for budget: bf16 (2.2x faster steps on this AMX Xeon, no slower
# learning per iteration, docs/benchmarks.md) and five of the seven datasets (D001 and D003 for the lesions,
# D005/D006/D007 for every conflicting protocol and the transfer target; D002 and D004, whose vessel and
# tumour heads no model learned, are left out), which buys N = 4000 and MultiTalent 4N = 16,000 with every
# budget pair (``--pairs``) inside one invocation: the single-dataset models also at N/2, MultiTalent also at
# the paper's 2N (the ablation mt_2n, its half-budget twin), the merged softmax and both pre-trainings at 2400
# and 1200, the fine-tunings at 700 and 350 iterations. (``--extend``: the pre-training's 2400 iterations plus
# 5600 of extension = the 8000 of MultiTalent from scratch, mt_2n.) Measured (docs/benchmarks.md): `--full --pairs`
# 155 min; then `--double multitalent_plain_unet --double single_D001 --double single_D003 --double single_D005` on the
# same folder 111 min more: MultiTalent converged at 16,000 (-1.0 at 32,000), single D003 at 4000; D001 and D005 still
# gained 5.9 / 4.6 at 8000, so a converged comparison over every dataset needs more than two such invocations here.
# A third (`--double double_single_D001 --double double_single_D005` and the nine fine-tunings, 86 min): D001
# converged at 8000 (-3.8 at 16,000), D005 not at 16,000 (+1.9 on its one held-out case); the fine-tunings gained
# 10-35 points from 700 to 1400 iterations. A fourth (118 min): D005 converged at 16,000 (-0.5 at 32,000), so every
# single-dataset model is compared converged; the supervised pre-training converged at 4800 (MultiTalent's not yet
# at 9600: +2.2); --finetune-from starts the fine-tunings from a converged run of such a chain. A fifth and sixth
# (116 + 83 min): MultiTalent's pre-training converged at 9600 (-0.9 at 19,200), every fine-tuning from scratch
# at 2800-5600; the fine-tunings from the two pre-trainings not yet at 2800. A seventh (87 min): two of three from
# the supervised pre-training converged (1400, 2800), none from MultiTalent's at 5600 (+4.8 to +5.7 at 5600).
# An eighth (57 + 106 min, resumed): one of three from MultiTalent converged at 5600 (-0.5 at 11,200), the other
# two and supervised seed 2 not at 11,200 (+5.3, +2.0, +2.4); the merged softmax 10.1 -> 22.4 from 4800 to 9600.
# A ninth (24 + 1 + 77 min, resumed; the merged softmax and supervised seed 2 withdrawn with --no-double to fit
# the session): the two MultiTalent fine-tunings still gained at 22,400 (+2.6, +3.4 on their one held-out case),
# while their patch pseudo-Dice had flattened (+0.1, +0.2 over the last quarter). 1041 min over 27 invocations.
# A tenth (the two at 44,800, supervised seed 2 at 22,400; ~205 min) was lost before it finished, with the machine
# and the folder, which held the only copy of the evidence; reports now keep theirs beside them (repro.evidence).
FULL = Sizes(name="full", datasets=("D001", "D003", "D005", "D006", "D007"), base_features=8,
             archs=("plain_unet",), swin_probe_iterations=4, spacing=(6.0, 6.0, 6.0), patch_size=(32, 48, 48),
             lesion_scale=2.0, amp="bf16", iterations_per_epoch=50, single_epochs=80, multitalent_factor=4,
             baseline_epochs=48, fold="0", val_iterations=12, ft_iterations_per_epoch=25, ft_head_warmup_epochs=2,
             ft_full_warmup_epochs=4, ft_epochs=22, ft_seeds=3, timing_scans=3, jobs=2,
             ablations=(("mt_2n", (("epochs", 160),)),), ext_head_warmup_epochs=2, ext_full_warmup_epochs=4,
             ext_epochs=106, ext_scratch="ablation_mt_2n")
QUICK = Sizes(name="quick", max_train=3, max_test=1, base_features=4, archs=("plain_unet", "resenc_unet"),
              lesion_scale=2.0, swin_probe_iterations=2, iterations_per_epoch=4, single_epochs=2,
              val_iterations=1, ft_iterations_per_epoch=1, ft_head_warmup_epochs=1, ft_full_warmup_epochs=5,
              ft_epochs=4, ft_seeds=2, timing_scans=1)
TINY = Sizes(name="tiny", datasets=("D005", "D006", "D007"), max_train=2, max_test=1, in_plane_step=2,
             spacing=(8.0, 8.0, 8.0), patch_size=(16, 32, 32), base_features=4, iterations_per_epoch=2,
             single_epochs=1, val_iterations=1, ft_iterations_per_epoch=1, ft_head_warmup_epochs=1,
             ft_full_warmup_epochs=2, ft_epochs=1, ft_seeds=1, timing_scans=1, eval_workers=1,
             preprocess_workers=1, jobs=2, ablations=(("width16", (("base_features", 8),)),),
             double_runs=("multitalent_plain_unet", "single_D005", "finetune_scratch_seed0"))
# GPU: one NVIDIA H200 with 16 CPU cores, at most 10 minutes of wall time (``--gpu --device cuda``; the
# script for a lent machine is benchmarks/device/reproduce_gpu.sh). The preset grid (4 mm, patch 32x64x64:
# SwinUNETR needs every axis divisible by 32), networks twice as wide as FULL's, all three backbones, six
# training runs at a time sharing the GPU (16 // 6 = 2 torch threads and one loader worker each). The whole
# phantom collection at its own lesion sizes (at 4 mm the lesions, 12-30 mm across, are resolved).
# N = 10 x 16 = 160, 2N = 320: far below FULL's budget, so most runs will not meet the convergence criterion;
# the 10 minutes decide. The projection is ``gpu_projection`` below: about 7 min (3.4 of them training; the
# first run on an H200 measured its speeds), which leaves benchmarks/device/reproduce_gpu.sh its installation
# and copies inside the 10 min of one call.
GPU = Sizes(name="gpu", spacing=(4.0, 4.0, 4.0), patch_size=(32, 64, 64), base_features=16,
            archs=("plain_unet", "resenc_unet", "swin_unetr"), swin_feature_size=24, iterations_per_epoch=16,
            single_epochs=10, num_workers=1, fold="0", val_iterations=4, ft_iterations_per_epoch=10,
            ft_head_warmup_epochs=1, ft_full_warmup_epochs=2, ft_epochs=9, ft_seeds=3, timing_scans=3,
            eval_workers=8, preprocess_workers=8, jobs=6, ablations=(("width32", (("base_features", 32),)),))
SIZES = {"full": FULL, "quick": QUICK, "tiny": TINY, "gpu": GPU}

# Calibration, measured while writing this script (2-core Xeon @ 2.5 GHz, torch 2.13 CPU with 2 threads,
# the whole phantom collection at 6 mm, patch 32x48x48, batch 2, num_workers=0, idle machine). Used to size
# FULL and for the projection in the report. s/it at 8 base features (SwinUNETR: feature size 12, at 4 mm /
# 32x64x64, as it needs a patch divisible by 32).
CALIBRATION_S_PER_IT = {"plain_unet": 0.3, "resenc_unet": 0.37, "swin_unetr": 1.8}
CALIBRATION_S_PER_IT_FAST = {"plain_unet": 0.185, "resenc_unet": 0.23, "swin_unetr": 1.8}  # the AMD EPYC
CALIBRATION_S_PER_EPOCH = 0.5  # checkpoint and progress plot after every epoch
CALIBRATION_FULL_FIXED_MIN = 12.0  # FULL: phantoms, 4 preprocessings, ~100 predictions, 13 evaluations


# iterations per second of ``jobs`` one-thread training runs at once relative to one two-thread run (measured on
# 2 cores: two runs at 0.27 s/it each against one at 0.185 s/it)
PARALLEL_SPEEDUP = {1: 1.0, 2: 1.36}
# ``amp="bf16"`` on the CPU (this AMX Xeon, 2026-12-03): two one-thread FULL runs at once took 0.165 s/it each in
# bf16 against 0.27 s/it in float32 (train_throughput.py --parts small --threads 1, two at a time)
BF16_SPEEDUP = 0.27 / 0.165


def n_datasets(sizes: Sizes) -> int:
    """The number of datasets the sizes train on (the whole collection: 7)."""
    return len(sizes.datasets) if sizes.datasets else 7


def projection(sizes: Sizes, speeds: dict[str, float] | None = None) -> tuple[dict[str, int], int, float]:
    """(iterations per architecture, epoch ends, training minutes) of ``sizes`` at the calibrated speeds
    (default: the slower machine's), without the ``--pairs`` runs (``pairs_iterations``)."""
    k = n_datasets(sizes)
    ft_its = sizes.ft_total_epochs * sizes.ft_iterations_per_epoch
    its = {sizes.archs[0]: k * sizes.n_single + sizes.n_multi + 3 * sizes.baseline_its + 3 * sizes.ft_seeds * ft_its}
    for arch in sizes.archs[1:]:
        its[arch] = its.get(arch, 0) + k * sizes.n_single + sizes.n_multi
    epochs = (k * len(sizes.archs) * sizes.single_epochs
              + len(sizes.archs) * sizes.multitalent_factor * sizes.single_epochs  # MultiTalent per arch
              + 3 * sizes.baseline_its // sizes.iterations_per_epoch  # merged softmax, two pre-trainings
              + 3 * sizes.ft_seeds * sizes.ft_total_epochs)
    for _, kw in sizes.ablations:  # on the main backbone; a wider one costs about (width ratio) x per iteration
        kw = dict(kw)
        ab_epochs = int(kw.get("epochs", sizes.multitalent_factor * sizes.single_epochs))
        width = float(kw.get("base_features", sizes.base_features)) / sizes.base_features
        its[sizes.archs[0]] += int(ab_epochs * sizes.iterations_per_epoch * max(1.0, width))
        epochs += ab_epochs
    seconds = sum((speeds or CALIBRATION_S_PER_IT).get(a, 1.0) * n for a, n in its.items()) / _amp_speedup(sizes)
    seconds += CALIBRATION_S_PER_EPOCH * epochs
    return its, epochs, seconds / 60 / PARALLEL_SPEEDUP.get(sizes.jobs, 1.0)


def _amp_speedup(sizes: Sizes) -> float:
    return BF16_SPEEDUP if sizes.amp == "bf16" else 1.0


def pairs_iterations(sizes: Sizes) -> int:
    """Training iterations that ``--pairs`` adds: the half runs (every plain run and fine-tuning; MultiTalent's
    half only where no ablation at half its budget stands in for it) and the ``double_runs`` (each twice its run's
    budget; a chain's ``double_<run>`` twice that)."""
    ft_half = sum(sizes.ft_phase_epochs(0.5)) * sizes.ft_iterations_per_epoch
    ft_its = sizes.ft_total_epochs * sizes.ft_iterations_per_epoch
    doubles = 0
    for name in sizes.double_runs:  # double_<name>: twice <name>, which is 2^k times its table run's budget
        base = base_run(name)
        its = sizes.n_single if base.startswith("single_") else ft_its if base.startswith("finetune_") \
            else sizes.baseline_its if base.startswith(("pretrain_", "merged_softmax")) else sizes.n_multi
        doubles += its * 2 ** (doublings(name) + 1)
    half_epochs = sizes.multitalent_factor * sizes.single_epochs // 2
    mt_twin = any(dict(kw).get("epochs") == half_epochs and len(kw) == 1 for _, kw in sizes.ablations)
    mt_half = 0 if mt_twin else len(sizes.archs) * sizes.n_multi // 2
    return (len(sizes.archs) * n_datasets(sizes) * sizes.n_single // 2 + mt_half + 3 * sizes.baseline_its // 2
            + 3 * sizes.ft_seeds * ft_half + doubles)


def calibration_note(sizes: Sizes) -> str:
    """What the sizes were chosen from, and the projected training time of ``sizes`` on 2 idle cores (on the
    GPU sizes: ``gpu_note``)."""
    if sizes.name == "gpu":
        return gpu_note(sizes)
    its, epochs, minutes = projection(sizes)
    fast = projection(sizes, CALIBRATION_S_PER_IT_FAST)[2]
    pairs = pairs_iterations(sizes)
    pairs_min, pairs_fast = (pairs * sp["plain_unet"] / _amp_speedup(sizes) / 60 / PARALLEL_SPEEDUP.get(sizes.jobs, 1.0)
                             for sp in (CALIBRATION_S_PER_IT, CALIBRATION_S_PER_IT_FAST))
    full_pairs = pairs_iterations(FULL) * CALIBRATION_S_PER_IT_FAST["plain_unet"] / _amp_speedup(FULL) / 60 \
        / PARALLEL_SPEEDUP.get(FULL.jobs, 1.0)
    full_min = projection(FULL)[2] + CALIBRATION_FULL_FIXED_MIN
    full_fast = projection(FULL, CALIBRATION_S_PER_IT_FAST)[2] + CALIBRATION_FULL_FIXED_MIN
    total = " + ".join(f"{n} {a}" for a, n in its.items())
    amp = (f"; bf16 counted {BF16_SPEEDUP:.2f}x faster, as measured for two one-thread runs at once"
           if sizes.amp == "bf16" else "")
    return (
        "Calibration (measured on 2-core machines while sizing the script, 6 mm, patch 32x48x48, batch 2, "
        "`num_workers=0`, float32): the plain U-Net with 8 base features took 0.18-0.30 s per iteration, the "
        "residual U-Net 0.23-0.37 s (the lower figures on an AMD EPYC and on this AMX Xeon, the higher on a Xeon "
        f"@ 2.5 GHz){amp}; another CPU-heavy process on the same 2 cores makes iterations 2-7x slower. "
        f"Projection for these sizes at the slower / faster speeds: {total} iterations and {epochs} epoch ends, "
        f"~{minutes:.0f} / ~{fast:.0f} min of training on 2 idle cores ({sizes.jobs} run(s) at a time); `--pairs` "
        f"adds {pairs} iterations (~{pairs_min:.0f} / ~{pairs_fast:.0f} min, in the same invocation or a later one "
        f"on the same folder). The `--full` sizes project to ~{full_min:.0f} / ~{full_fast:.0f} min in all "
        f"(~{CALIBRATION_FULL_FIXED_MIN:.0f} min of it for data, prediction and evaluation), "
        f"~{full_fast + full_pairs:.0f} min with `--pairs` at the faster speed, for the 150 min the issue allows. "
        "The measured wall time is in the Run section."
    )


# GPU projection, from the first --gpu run on an H200 (2026-12-04, benchmarks/device/reproduce_gpu.sh; cut off by
# its 540 s timeout after 29 of the 37 training runs: docs/benchmarks.md). Measured there, six runs sharing the
# GPU (median over each run's epochs after the first): 0.03 s per iteration of the plain U-Net (the width32
# ablation too), 0.08 of the residual U-Net and of SwinUNETR; ~11 s per run beyond its epochs (start, CUDA and
# cuDNN warm-up in the first epoch, final checkpoint); 0.7 min for the phantoms and the 4 preprocessings. An
# epoch's end took 5.5 s, 5.3 s of it PyTorch waiting for the validation loader's worker to exit, a loader
# that was started and shut down at every epoch; the loop now keeps one for the whole run (training/loop.py),
# and the 1 s per epoch end below (validation batches, checkpoint, progress plot) is the remainder, assumed
# until a GPU run confirms it. The 3.5 min for everything but training (~200 predicted cases with head masks,
# 14 evaluations with 8 workers, the report, mostly serial; data 0.7 of it) is assumed too: the run did not get
# that far. Training packs into ``jobs`` slots except for the critical path (pre-training, then fine-tuning).
GPU_S_PER_IT = {"plain_unet": 0.03, "resenc_unet": 0.08, "swin_unetr": 0.08}
GPU_ASSUMED_S_PER_EPOCH = 1.0
GPU_S_PER_RUN = 11.0
GPU_ASSUMED_FIXED_MIN = 3.5
GPU_WALL_LIMIT_MIN = 10.0


def gpu_projection(sizes: Sizes, k: int = 7) -> dict:
    """Projected wall time of ``sizes`` on one GPU at the assumed speeds above, ``sizes.jobs`` runs at a time
    (``k`` datasets): iterations per architecture, epoch ends, runs, job-seconds and minutes."""
    main, speed = sizes.archs[0], GPU_S_PER_IT
    ft_its = sizes.ft_total_epochs * sizes.ft_iterations_per_epoch
    multi = len(sizes.archs) + 3 + len(sizes.ablations)  # MultiTalent per arch, merged, 2 pre-trainings, ablations
    its = {main: k * sizes.n_single + (4 + len(sizes.ablations)) * sizes.n_multi + 3 * sizes.ft_seeds * ft_its}
    for arch in sizes.archs[1:]:
        its[arch] = its.get(arch, 0) + k * sizes.n_single + sizes.n_multi
    epochs = (k * len(sizes.archs) * sizes.single_epochs + multi * sizes.multitalent_factor * sizes.single_epochs
              + 3 * sizes.ft_seeds * sizes.ft_total_epochs)
    runs = k * len(sizes.archs) + multi + 3 * sizes.ft_seeds
    job_s = (sum(speed.get(a, 0.3) * n for a, n in its.items()) + GPU_ASSUMED_S_PER_EPOCH * epochs
             + GPU_S_PER_RUN * runs)
    critical_s = (speed.get(main, 0.3) * (sizes.n_multi + ft_its) + GPU_S_PER_RUN * 2
                  + GPU_ASSUMED_S_PER_EPOCH * (sizes.multitalent_factor * sizes.single_epochs + sizes.ft_total_epochs))
    train_min = max(job_s / max(sizes.jobs, 1), critical_s) / 60
    return {"iterations": its, "epochs": epochs, "runs": runs, "job_s": job_s, "train_min": train_min,
            "total_min": train_min + GPU_ASSUMED_FIXED_MIN}


def gpu_note(sizes: Sizes) -> str:
    """The report's calibration paragraph for the GPU sizes: the projection, and which of its figures were
    measured on a GPU and which are assumed."""
    p = gpu_projection(sizes)
    total = " + ".join(f"{n} {a}" for a, n in p["iterations"].items())
    speeds = ", ".join(f"{a} {s:.2f} s" for a, s in GPU_S_PER_IT.items())
    return (
        "Projection from the speeds of the first, cut-off --gpu run on an H200 (per iteration of one of "
        f"{sizes.jobs} runs sharing it: {speeds}; {GPU_S_PER_RUN:g} s per run start), with "
        f"{GPU_ASSUMED_S_PER_EPOCH:g} s per epoch end and ~{GPU_ASSUMED_FIXED_MIN:g} min for data, prediction and "
        f"evaluation assumed (benchmarks/repro/sizes.py): {total} iterations, {p['epochs']} epoch ends and "
        f"{p['runs']} runs, ~{p['train_min']:.1f} min of training and ~{p['total_min']:.1f} min in all, for a "
        f"limit of {GPU_WALL_LIMIT_MIN:.0f} min. "
        "The s/it column above gives the speeds this run measured."
    )

