"""Reproduce the MultiTalent paper's experiments on the phantom collection and write ``docs/results.md``.

What is run (all on one phantom collection, seed fixed, inside ``--out``):

1. **Table 1 / Fig. 2** -- MultiTalent (one network, one sigmoid head per (dataset, class), masked
   BCE + batch Dice, 1/sqrt(n) sampling) trained for 2N iterations on all datasets, against one
   single-dataset model per dataset (N iterations each, ``TrainConfig(datasets=[D])``) and the merged
   softmax baseline (``objective="merged_softmax"``, 2N iterations). Same topology, patch and batch for
   all. Dice per head and dataset on every dataset's test cases; averages over datasets, heads, lesion
   heads and difficult heads (single-dataset Dice below 75 %); a box plot like the paper's Fig. 2.
2. **Protocol fidelity** -- the conflicting heads (aorta D005 vs D006, heart with/without the aortic
   root, spleen fine D005 vs coarse D007) scored against each protocol's truth on the same test cases
   (the phantom ground truth holds every protocol for every case).
3. **Table 2 (transfer)** -- the target ``Dataset005_AbdomenMultiOrgan`` (few cases, like BTCV) is left
   out of a second pre-training collection. Fine-tuning (three-phase schedule) from (a) MultiTalent
   pre-trained on the other datasets, (b) supervised pre-training on ``Dataset090_FullyLabelled`` (every
   structure of the other datasets' training cases annotated, built from the phantom ground truth: the
   TotalSegmentator-like baseline) and (c) from scratch, over several seeds; one-sided paired t-tests.
4. **Cost** -- training time of MultiTalent vs the sum of the single-dataset models (from the training
   logs) and inference time of one MultiTalent model vs the ensemble of the single-dataset models on
   the same scans.
5. **Adding a dataset** (``--extend``) -- the MultiTalent pre-training (every dataset but the target) extended
   with the target by ``multitalent extend``, with the original data (the union) and without it
   (distillation): the old heads' Dice before and after (forgetting) and the new heads' Dice against a model
   from scratch on all datasets with the same total iterations and against fine-tuning to the target alone.

**Convergence** (section 0) decides whether a comparison is judged: a run has converged when the same run with
twice the iterations (a *budget pair*) gains less than one Dice point on its held-out fold's whole scans.
``--pairs`` trains the pairs' runs: every judged run at half its budget (``half_<run>``; an ablation at half the
budget stands in where the table has one) and ``Sizes.double_runs`` at twice it (``double_<run>``; ``--double``
adds to them, a doubled run or a fine-tuning too). A single-dataset model or fine-tuning that converges only at
a longer budget of its chain is compared through that run (its *stand-in*, ``statistics.stand_ins``). The earlier
criterion (gain over the last quarter of the patch pseudo-Dice curve) is reported beside it.

Everything is resumable: a training run is skipped when its ``checkpoint_final.pt`` exists and resumed
(``resume=True``) when only ``checkpoint_latest.pt`` does; predictions skip finished cases; an
evaluation is skipped when its ``summary.json`` exists; timings are cached under ``OUT/results/``.

    python benchmarks/reproduce.py --quick         # checks the machinery, < 10 min on 2 CPU cores
    python benchmarks/reproduce.py --full --pairs  # 155 min once on 2 idle CPU cores; docs/results.md
    python benchmarks/reproduce.py --full --extend # and the extension experiment (section 5)
    python benchmarks/reproduce.py --full --extend-only  # that experiment alone: docs/results_extension.md
    python benchmarks/reproduce.py --full          # without the budget pairs: no run can be shown converged
    python benchmarks/reproduce.py --full --out work_dirs/reproduce_full --seed 0 --device cpu
    python benchmarks/reproduce.py --gpu --device cuda   # one H200, <= 10 min; docs/results_gpu.md

``--quick`` writes its report to ``OUT/results.md`` only; ``--full`` also to ``docs/results.md`` (and the
box plot to ``docs/results_boxplot.png``), ``--gpu`` to ``docs/results_gpu.md``; ``--report PATH``
overrides. Beside every report goes its evidence (``results_evidence/``, ``repro.evidence``): the records
every number of it comes from, small enough to keep with the report when the output folder is gone. The sizes
are the ``Sizes`` dataclasses of ``benchmarks/repro/sizes.py`` (``FULL``, ``QUICK``, ``GPU``, ``TINY``; ``--tiny``
is the reduced form the tests run).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from repro.common import (
    FT_PRETRAINING,
    REPO,
    TARGET,
    _date_utc,
    _read_json,
    _write_json,
    base_run,
    machine_description,
    run_stats,
    shorter_runs,
)
from repro.evidence import evidence_path, write_evidence
from repro.experiments import Reproduction
from repro.report import write_extension_report, write_report
from repro.sizes import SIZES, Sizes, calibration_note
from repro.statistics import (
    analysis,
    apply_stand_ins,
    extension_findings,
    findings,
    last_quarter,
    samples_per_dataset,
    within_noise,
)

# the report written besides OUT/results.md when --report is not given
DEFAULT_REPORTS = {"full": REPO / "docs" / "results.md", "gpu": REPO / "docs" / "results_gpu.md"}
EXTENSION_REPORTS = {"full": REPO / "docs" / "results_extension.md"}


def _experiments(rep: Reproduction) -> dict:
    """Every stage, in order (each skips what is done); returns what the report needs from them."""
    rep.prepare_data()
    rep.train_all()
    summaries = rep.table1()
    transfer = rep.transfer()
    inference = rep.inference_timing()
    rep.extra_archs(summaries)
    rep.ablation_runs(summaries)
    rep.double_runs(summaries)
    swin = rep.swin_probe()
    fidelity = rep.protocol_fidelity([m for m in summaries if not m.startswith("single")])
    extension = rep.extension()
    pairs = rep.budget_pairs()
    chains = rep.chain_runs()
    return {"summaries": summaries, "transfer": transfer, "inference": inference, "swin": swin,
            "fidelity": fidelity, "extension": extension, "pairs": pairs, "chains": chains}


def _cost(rep: Reproduction, runs: dict) -> dict:
    """Training time and iterations of MultiTalent (main backbone) against its K single-dataset models."""
    main = f"multitalent_{rep.sizes.archs[0]}"
    singles = [v for name, v in runs.items() if name.removeprefix("single_") in rep.dataset_ids]
    # median epoch time x epochs: a burst of other work on the shared cores (a test run beside a background
    # reproduction) slows some epochs several-fold and would decide a ratio of summed times
    cost = {"multitalent_s": runs[main]["robust_time_s"], "singles_s": sum(v["robust_time_s"] for v in singles),
            "multitalent_summed_s": runs[main]["epoch_time_s"],
            "singles_summed_s": sum(v["epoch_time_s"] for v in singles),
            "multitalent_it": runs[main]["iterations"], "singles_it": sum(v["iterations"] for v in singles),
            "expected": len(rep.dataset_ids) / rep.sizes.multitalent_factor}
    cost["ratio"] = cost["singles_s"] / max(cost["multitalent_s"], 1e-9)
    cost["ratio_summed"] = cost["singles_summed_s"] / max(cost["multitalent_summed_s"], 1e-9)
    return cost


def _context(rep: Reproduction, stages: dict, command: str, wall_s: float) -> dict:
    """The report's context: the stages' results, the runs' statistics and the run's circumstances."""
    from multitalent.preprocessing.pipeline import Preprocessed

    sizes, seed, device = rep.sizes, rep.seed, rep.device
    runs = {p.name: run_stats(p) for p in rep.reported_runs()}
    cost = _cost(rep, runs)
    invocations = rep.invocations()
    pre_all = Preprocessed.open(rep.pre["all"])
    ctx = {
        **stages, "sizes": sizes, "registry": rep.registry, "cost": cost, "run_stats": runs,
        "dataset_ids": rep.dataset_ids, "n_train": len(pre_all.cases),
        "n_test": sum(len(v) for v in rep.test_cases.values()),
        "n_target_train": sum(1 for c in pre_all.cases if c["dataset"] == TARGET),
        "n_target_test": len(rep.test_cases[TARGET]),
        "n_fully": len(Preprocessed.open(rep.pre["fully"]).cases),
        "plans": {"spacing": pre_all.plans.spacing, "patch_size": pre_all.plans.patch_size,
                  "batch_size": pre_all.plans.batch_size},
        "command": command,
        "seed": seed, "ft_seeds": [seed + i for i in range(sizes.ft_seeds)], "date": _date_utc(),
        "machine": machine_description(device), "device": device, "wall_s": wall_s,
        "wall_total_s": sum(i["wall_s"] for i in invocations), "n_invocations": len(invocations),
        "wall_times": _read_json(rep.results / "wall_times.json", {}) or {},
        "calibration_note": calibration_note(sizes),
    }
    ctx.update(analysis(rep, runs, pre_all, sizes, pre_all.plans.spacing, stages["pairs"]))
    # a model converged only at a longer budget is compared through that run
    ctx.update(apply_stand_ins(ctx, lambda run: samples_per_dataset(rep.runs / run, pre_all.cases)))
    ctx["findings"] = findings(ctx)
    # the same claims judged by the earlier criterion, the gain over the last quarter of the patch pseudo-Dice
    # curve, and by its noise-aware reading (secondary; see section 0)
    ctx["findings_last_quarter"] = findings({**ctx, "convergence": last_quarter(ctx["convergence"])})
    ctx["findings_noise"] = findings({**ctx, "convergence": within_noise(ctx["convergence"])})
    return ctx


def run(sizes: Sizes, out: Path, seed: int = 0, device: str = "cpu", quiet: bool = True,
        report: Path | None = None, command: str | None = None, extend: bool = False, pairs: bool = False,
        jobs: int | None = None, withdrawn: tuple[str, ...] = ()) -> dict:
    """Run (or resume) every experiment in ``out`` (with ``extend`` also the extension experiment, with ``pairs``
    the budget pairs' runs; ``jobs`` training runs at once instead of ``sizes.jobs``; ``withdrawn``: doublings an
    earlier invocation asked for that are no longer wanted) and write the report; returns the report context."""
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _only_invocation(out):
        return _run(sizes, out, seed, device, quiet, report, command, extend, pairs, t_start, jobs, withdrawn)


@contextlib.contextmanager
def _only_invocation(out: Path) -> Iterator[None]:
    """An exclusive lock on ``out`` for one invocation: a second one on the same folder (which would train the same
    unfinished run twice, both writing its log and checkpoints) stops at once with exit code 2. The lock is the
    operating system's (``fcntl``), so it goes with the process that held it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(out / ".reproduce.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"error: {out}: another reproduce.py invocation is running on this folder ({out / '.reproduce.lock'} "
              "is held); wait for it to finish or choose another --out", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        yield
    finally:
        lock.release()


def _run(sizes: Sizes, out: Path, seed: int, device: str, quiet: bool, report: Path | None, command: str | None,
         extend: bool, pairs: bool, t_start: float, jobs: int | None = None, withdrawn: tuple[str, ...] = ()) -> dict:
    rep = Reproduction(sizes, out, seed, device, quiet, extend=extend, pairs=pairs, jobs=jobs, withdrawn=withdrawn)
    rep.check_sizes()
    command = command or (f"python benchmarks/reproduce.py --{sizes.name} --out {out} --seed {seed}"
                          + (" --extend" if extend else "") + (" --pairs" if pairs else ""))
    rep.start_invocation(command)
    rep.say(f"reproduce ({sizes.name} sizes, seed {seed}, device {device}) -> {out}")
    stages = _experiments(rep)
    ctx = _context(rep, stages, command, time.perf_counter() - t_start)
    _write_json(rep.results / "findings.json", ctx["findings"])
    _write_json(rep.results / "findings_last_quarter.json", ctx["findings_last_quarter"])
    _write_json(rep.results / "findings_noise_aware.json", ctx["findings_noise"])
    _write_reports(rep, write_report, ctx, [out / "results.md"] + ([Path(report)] if report else []))
    return ctx


def _write_reports(rep: Reproduction, writer: Callable[[Path, dict], str], ctx: dict, reports: list[Path],
                   paired: list[Path] = ()) -> None:
    """Each report by ``writer``, then the folder's evidence (``repro.evidence``; ``paired``: run folders of other
    output folders that the report reads) beside each, after the reports it holds."""
    for path in reports:
        writer(path, ctx)
        rep.say(f"report written: {path}")
    paths = [evidence_path(p) for p in reports]
    n = write_evidence(rep.out, *paths, paired=paired)
    rep.say(f"evidence ({n} files) written: {', '.join(map(str, paths))}")


def run_extension_only(sizes: Sizes, out: Path, seed: int = 0, device: str = "cpu", quiet: bool = True,
                       report: Path | None = None, command: str | None = None, jobs: int | None = None) -> dict:
    """Only the extension experiment and the runs it reads (base, run from scratch, fine-tunings); writes
    ``OUT/results_extension.md`` (and ``report``); returns the report context."""

    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _only_invocation(out):
        return _run_extension_only(sizes, out, seed, device, quiet, report, command, t_start, jobs)


def _run_extension_only(sizes: Sizes, out: Path, seed: int, device: str, quiet: bool, report: Path | None,
                        command: str | None, t_start: float, jobs: int | None = None) -> dict:
    from multitalent.preprocessing.pipeline import Preprocessed
    from multitalent.registry import HeadRegistry

    rep = Reproduction(sizes, out, seed, device, quiet, extend=True, jobs=jobs)
    rep.check_sizes()
    command = command or f"python benchmarks/reproduce.py --{sizes.name} --extend-only --out {out} --seed {seed}"
    rep.start_invocation(command)
    rep.say(f"extension experiment ({sizes.name} sizes, seed {seed}, device {device}) -> {out}")
    rep.prepare_data()
    names = rep.extension_jobs()
    rep.train_all(only=names)
    rep.registry = HeadRegistry.load(rep.pre["all"] / "heads.json")
    extension = rep.extension()
    pre_all = Preprocessed.open(rep.pre["all"])
    runs = {n: run_stats(rep.runs / n) for n in names}
    invocations = rep.invocations()
    ctx = {"extension": extension, "sizes": sizes, "command": command, "date": _date_utc(),
           "machine": machine_description(device), "wall_s": time.perf_counter() - t_start,
           "wall_total_s": sum(i["wall_s"] for i in invocations), "n_invocations": len(invocations),
           "run_stats": runs, "dataset_ids": rep.dataset_ids,
           "plans": {"spacing": pre_all.plans.spacing, "patch_size": pre_all.plans.patch_size,
                     "batch_size": pre_all.plans.batch_size}}
    ctx.update(analysis(rep, runs, pre_all, sizes, pre_all.plans.spacing, rep.budget_pairs()))
    ctx["findings"] = extension_findings(ctx)
    _write_json(rep.results / "findings_extension.json", ctx["findings"])
    _write_reports(rep, write_extension_report, ctx,
                   [out / "results_extension.md"] + ([Path(report)] if report else []))
    return ctx


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true", help="toy sizes: checks the machinery (minutes)")
    mode.add_argument("--full", action="store_true",
                      help="the sizes meant for ~150 min on 2 idle CPU cores (one --pairs invocation took 155 min; "
                           "the longer budgets that show convergence take more invocations: docs/benchmarks.md)")
    mode.add_argument("--gpu", action="store_true",
                      help="the sizes for <= 10 min on one H200 with 16 CPU cores (use with --device cuda)")
    mode.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the reduced form the tests run
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: work_dirs/reproduce_<mode>)")
    p.add_argument("--seed", type=int, default=0, help="training seed; fine-tuning uses seed, seed+1, ...")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--report", type=Path, default=None,
                   help="also write the report here (default for --full: docs/results.md, for --gpu: "
                        "docs/results_gpu.md); it is always written to OUT/results.md. Beside each report goes its "
                        "evidence, NAME_evidence/: the logs and scores it comes from, without checkpoints")
    p.add_argument("--extend", action="store_true",
                   help="also the extension experiment (`multitalent extend`: the MultiTalent pre-training gains the "
                        "left-out target, with and without its original data); adds two training runs")
    p.add_argument("--extend-only", action="store_true",
                   help="only the extension experiment and the runs it compares (about a third of --full's "
                        "training); writes OUT/results_extension.md (and, for --full, docs/results_extension.md)")
    p.add_argument("--pairs", action="store_true",
                   help="also the budget pairs that decide convergence: every judged run again at half its budget "
                        "(and Sizes.double_runs at twice it), each scored on its held-out fold's whole scans; at the "
                        "--full sizes a third more training, in the same invocation or a later one on the same --out")
    p.add_argument("--double", action="append", default=[], metavar="RUN",
                   help="with --pairs: also train the plain run or fine-tuning RUN (multitalent_plain_unet, "
                        "single_D001, finetune_scratch_seed0, ...) at twice its budget (double_RUN; a fine-tuning "
                        "with each phase doubled), to show that RUN has converged when its half-budget pair has "
                        "not; RUN may be a doubled run (double_single_D001: 4x, and 2x with it); repeatable; may "
                        "be added to a finished --out")
    p.add_argument("--finetune-from", action="append", default=[], metavar="RUN",
                   help="with --pairs: the MultiTalent or supervised fine-tunings (Table 2) start from RUN, a longer "
                        "run of that pre-training's budget chain (double_pretrain_multitalent, "
                        "double_double_pretrain_supervised, ...; trained first if needed) instead of the table's own "
                        "pre-training, which has not converged; they are runs of their own "
                        "(finetune_multitalent_x2_seed0, ...), from scratch is unchanged; remembered by --out")
    p.add_argument("--no-double", action="append", default=[], metavar="RUN",
                   help="forget the --double RUN an earlier invocation on --out asked for: double_RUN is no longer "
                        "trained or reported (its folder is kept, so --double RUN later resumes it); refused for a "
                        "run that a longer doubling or a --finetune-from start still needs; repeatable")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="training runs at once, each a process with C // N torch threads, C the cores this process "
                        "may use (taskset) (default: the sizes' own: 1 for --quick, 2 for --full, 6 for --gpu); "
                        "changes how the runs share the machine, not the runs, so a resumed --out takes any N")
    p.add_argument("--verbose", action="store_true", help="progress bars of every stage")
    args = p.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        p.error(f"--jobs: {args.jobs} is not a number of runs (1 or more)")
    name = "full" if args.full else "quick" if args.quick else "gpu" if args.gpu else "tiny"
    out = args.out or REPO / "work_dirs" / f"reproduce_{name}"
    report = args.report or DEFAULT_REPORTS.get(name)
    argv = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/reproduce.py " + " ".join(shlex.quote(a) for a in argv)
    if args.extend_only:
        report = args.report or EXTENSION_REPORTS.get(name)
        run_extension_only(SIZES[name], out, args.seed, args.device, quiet=not args.verbose, report=report,
                           command=command, jobs=args.jobs)
        return 0
    sizes = SIZES[name]
    if args.finetune_from:
        if not args.pairs:
            p.error("--finetune-from needs --pairs (its RUN is a run of a pre-training's budget chain)")
        wrong = [r for r in args.finetune_from
                 if base_run(r) not in FT_PRETRAINING.values() or r.startswith("half_")]
        if wrong:
            p.error(f"--finetune-from: {', '.join(wrong)} is not a run of a pre-training's budget chain "
                    "(pretrain_multitalent, double_pretrain_multitalent, ...; pretrain_supervised, ...)")
        # its chain is trained with it: RUN is doubled up to its budget like --double's
        chains = [n for r in args.finetune_from for n in shorter_runs(r)]
        sizes = dataclasses.replace(sizes, ft_from=tuple(args.finetune_from),
                                    double_runs=tuple(dict.fromkeys(sizes.double_runs + tuple(chains))))
    if args.double:
        if not args.pairs:
            p.error("--double needs --pairs (a doubled run is one side of a budget pair)")
        from multitalent.phantoms.collection import DATASETS

        table = Reproduction(sizes, out)
        table.sizes = table.remembered()  # and the fine-tunings from the starts an earlier invocation named
        table.dataset_ids = list(sizes.datasets or (d.id for d in DATASETS))
        # the table's own plain runs and fine-tunings, or their doubled runs (double_RUN: a chain N, 2N, 4N);
        # not a half_ run, nor an extension
        known = {n for n, j in table.training_jobs().items()
                 if j["kind"] in ("plain", "finetune") and not j.get("pairs") and not j.get("extension")}
        unknown = [n for n in args.double if base_run(n) not in known or n.startswith("half_")]
        if unknown:
            p.error(f"--double: no plain run or fine-tuning named {', '.join(unknown)} at the {name} sizes "
                    f"(there are: {', '.join(sorted(known))}, and double_RUN of each)")
        # doubling double_RUN needs double_RUN itself: every shorter run of the chain is doubled too
        chains = [n for r in args.double for n in shorter_runs(f"double_{r}")]
        sizes = dataclasses.replace(sizes, double_runs=tuple(dict.fromkeys(sizes.double_runs + tuple(chains))))
    if args.no_double:
        remembered = Reproduction(sizes, out).remembered()
        asked = remembered.double_runs
        kept = [n for n in asked if n not in args.no_double]
        unknown = [n for n in args.no_double if n not in asked]
        if unknown:
            p.error(f"--no-double: {', '.join(unknown)} was not asked for with --double on {out} "
                    f"(asked for: {', '.join(asked) or 'nothing'})")
        own = [n for n in args.no_double if n in SIZES[name].double_runs]
        if own:
            p.error(f"--no-double: {', '.join(own)} is one of the {name} sizes' own doublings")
        if args.double and set(args.double) & set(args.no_double):
            p.error("--no-double: a run named by --double too")
        # a longer doubling of a kept run, or a kept fine-tuning start, trains from the run to forget
        needs = {n: k for k in kept for n in shorter_runs(f"double_{k}")[:-1]}
        needs |= {n: f"--finetune-from {r}" for r in remembered.ft_from for n in shorter_runs(r)}
        needed = [f"{n} (needed by {needs[n]})" for n in args.no_double if n in needs]
        if needed:
            p.error(f"--no-double: {', '.join(needed)}")
    run(sizes, out, args.seed, args.device, quiet=not args.verbose, report=report, command=command,
        extend=args.extend, pairs=args.pairs, jobs=args.jobs, withdrawn=tuple(args.no_double))
    return 0
