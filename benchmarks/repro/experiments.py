"""The experiments of the reproduction: ``Reproduction`` (one output folder; the table of every training
run, their parallel training, the stages Table 1, transfer, inference timing, protocol fidelity and the
ablations) and the worker functions of the parallel training."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from repro.common import (
    DIFFICULT_THRESHOLD,
    FT_PRETRAINING,
    FULLY_FOLDER,
    TARGET,
    _date_utc,
    _link,
    _read_json,
    _train_log,
    _write_json,
    base_run,
    doublings,
    finetune_run,
    run_stats,
    single_key,
)
from repro.data import write_fully_labelled, write_subset_collection
from repro.sizes import Sizes

# protocol conflicts: the heads involved and the truths each is scored against ("head:<id>" = that
# head's protocol repainted from the ground truth, "structure:<name>" = one ground-truth structure)
CONFLICT_CHECKS = {
    "aorta": {"heads": ["D005_aorta", "D006_aorta"],
              "truths": {"D005 protocol (root to bifurcation)": "head:D005_aorta",
                         "D006 protocol (above the root, stops at the diaphragm)": "head:D006_aorta"},
              "own": {"D005_aorta": "D005 protocol (root to bifurcation)",
                      "D006_aorta": "D006 protocol (above the root, stops at the diaphragm)"}},
    "heart": {"heads": ["D006_heart"],
              "truths": {"D006 protocol (with aortic root)": "head:D006_heart",
                         "anatomical (without aortic root)": "structure:heart"},
              "own": {"D006_heart": "D006 protocol (with aortic root)"}},
    "spleen": {"heads": ["D005_spleen", "D007_spleen"],
               "truths": {"D005 protocol (fine)": "head:D005_spleen",
                          "D007 protocol (coarse)": "head:D007_spleen"},
               "own": {"D005_spleen": "D005 protocol (fine)", "D007_spleen": "D007 protocol (coarse)"}},
}


# fine-tuning conditions: from scratch? (each starts from ``Reproduction.ft_start``)
FT_CONDITIONS = {"scratch": True, "multitalent": False, "supervised": False}


# fields of Sizes that an invocation adds to its folder's (``Reproduction.remembered``) instead of changing it
REMEMBERED = ("double_runs", "ft_from")

# the extension experiment: the run extended, and each extension run with whether it keeps the original data
EXT_BASE = "pretrain_multitalent"
EXT_RUNS = {"extend_union": True, "extend_distill": False}


def _start_worker(threads: int, invocation: int) -> None:
    """A training worker's set-up (``Reproduction.train_all``): its torch threads, and its end with the invocation
    (process ``invocation``) that started it. A killed invocation's workers would otherwise go on training their
    runs, unseen and without the folder's lock, while the next invocation resumes the same runs from their
    checkpoints (written atomically, so ending a worker at any time is safe)."""
    import torch

    from multitalent.procfs import die_with_parent

    torch.set_num_threads(threads)
    die_with_parent(invocation)


def _train_job(sizes: Sizes, out: Path, seed: int, device: str, quiet: bool, name: str) -> str:
    """One training run of ``Reproduction.training_jobs`` in a worker process (``Reproduction.train_all``)."""
    from multitalent.registry import load_manifest

    rep = Reproduction(sizes, out, seed, device, quiet)
    rep.dataset_ids = [d.id for d in load_manifest(rep.raw / "collection.json").datasets]
    rep.train(name)
    return name


class Reproduction:
    """All experiments inside one output folder; each step skips what is already done."""

    def __init__(self, sizes: Sizes, out: Path, seed: int = 0, device: str = "cpu", quiet: bool = True,
                 extend: bool = False, pairs: bool = False, jobs: int | None = None,
                 withdrawn: tuple[str, ...] = ()):
        self.sizes = sizes
        # training runs at once (``--jobs``; default ``sizes.jobs``): how the runs share the machine, not what they
        # are, so an output folder takes any number
        self.jobs = jobs or sizes.jobs
        # doublings an earlier invocation asked for that this one forgets (``--no-double``)
        self.withdrawn = tuple(withdrawn)
        self.extend = extend  # also the extension experiment (``--extend``)
        self.pairs = pairs  # also the half- and double-budget runs that decide convergence (``--pairs``)
        self.out = Path(out)
        self.seed = seed
        self.device = device
        self.quiet = quiet
        self.raw = self.out / "raw"
        self.pre = {k: self.out / "preprocessed" / k for k in ("all", "pretrain", "target", "fully")}
        self.runs = self.out / "runs"
        self.preds = self.out / "predictions"
        self.evals = self.out / "evaluation"
        self.results = self.out / "results"
        self.t0 = time.perf_counter()
        self.log_file = self.out / "reproduce.log"

    # -- bookkeeping
    def start_invocation(self, command: str) -> None:
        """Record this invocation in ``results/invocations.json``; ``say`` keeps its wall time current, so an
        interrupted invocation still counts up to its last logged step."""
        path = self.results / "invocations.json"
        records = _read_json(path, []) or []
        records.append({"date": _date_utc(), "command": command, "wall_s": 0.0})
        self.invocation = len(records) - 1
        _write_json(path, records)

    def invocations(self) -> list[dict]:
        path = self.results / "invocations.json"
        records = _read_json(path, []) or []
        if getattr(self, "invocation", None) is not None and self.invocation < len(records):
            records[self.invocation]["wall_s"] = time.perf_counter() - self.t0
            _write_json(path, records)
        return records

    def say(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a") as fh:
            fh.write(line + "\n")
        self.invocations()

    def _add_wall(self, kind: str, name: str, seconds: float) -> None:
        from filelock import FileLock  # training runs in parallel processes add their times too

        path = self.results / "wall_times.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            data = _read_json(path, {}) or {}
            data.setdefault(kind, {})
            data[kind][name] = data[kind].get(name, 0.0) + seconds
            _write_json(path, data)

    def check_sizes(self) -> None:
        """Refuse to mix runs of different sizes (or seeds) in one output folder."""
        path = self.results / "sizes.json"
        now = {"sizes": asdict(self.sizes), "seed": self.seed}
        before = _read_json(path)
        if before is not None:  # a field added to Sizes later describes an experiment, not the runs made before
            now_cmp = json.loads(json.dumps(now))
            now_cmp["sizes"] = {k: v for k, v in now_cmp["sizes"].items() if k in before.get("sizes", {})}
            # so does an ablation added to the others, wherever it goes in the list: the runs made before keep
            # their settings (``benchmarks/ablate.py`` puts its single-dataset models after every ablation)
            old = before.get("sizes", {}).get("ablations")
            if old is not None and all(a in now_cmp["sizes"].get("ablations", []) for a in old):
                now_cmp["sizes"]["ablations"] = old
            # and so do budget doublings (``--double``, added or not named again) and the fine-tunings' starts
            # (``--finetune-from``): extra runs, nothing made before
            for field in REMEMBERED:
                if field in before.get("sizes", {}):
                    now_cmp["sizes"][field] = before["sizes"][field]
        if before is not None and now_cmp != before:
            raise SystemExit(f"{self.out} holds runs made with other sizes or another seed ({path}); "
                             "choose a new --out (or delete that folder).")
        # a later invocation (a report only) keeps the doubled runs and the starts without naming them again
        self.sizes = self.remembered()
        now["sizes"].update({field: list(getattr(self.sizes, field)) for field in REMEMBERED})
        _write_json(path, now)

    def remembered(self) -> Sizes:
        """``sizes`` with what earlier invocations on this folder asked for added (``results/sizes.json``): the
        doublings of every invocation so far, in the order they were asked for, and the fine-tunings' starts (one
        named now replaces an earlier one of the same pre-training)."""
        before = (_read_json(self.results / "sizes.json") or {}).get("sizes", {})
        doubles = list(before.get("double_runs", []))
        doubles += [n for n in self.sizes.double_runs if n not in doubles]
        doubles = [n for n in doubles if n not in self.withdrawn]
        named = {base_run(r) for r in self.sizes.ft_from}
        starts = [r for r in before.get("ft_from", []) if base_run(r) not in named]
        return replace(self.sizes, double_runs=tuple(doubles), ft_from=tuple(starts + list(self.sizes.ft_from)))

    # -- data
    def prepare_data(self) -> None:
        from multitalent.phantoms import generate_collection
        from multitalent.preprocessing.pipeline import run_preprocessing
        from multitalent.registry import load_manifest

        s = self.sizes
        manifest = self.raw / "collection.json"
        if not manifest.is_file():
            t = time.perf_counter()
            whole = s.datasets is None and s.max_train is None and s.max_test is None
            if whole and s.in_plane_step == 1 and s.lesion_scale == 1.0:
                self.say(f"phantom collection (seed {s.collection_seed}, scale small) -> {self.raw}")
                generate_collection(self.raw, seed=s.collection_seed, scale="small", progress=not self.quiet)
            else:
                self.say(f"phantom sub-collection {s.datasets or 'all datasets'}, <= {s.max_train} "
                         f"training / {s.max_test} test cases each, lesions x{s.lesion_scale} -> {self.raw}")
                write_subset_collection(self.raw, s.collection_seed, s.datasets, s.max_train, s.max_test,
                                        s.preprocess_workers, s.in_plane_step, s.lesion_scale)
            self._add_wall("data", "phantoms", time.perf_counter() - t)
        collection = load_manifest(manifest)
        self.dataset_ids = [d.id for d in collection.datasets]
        self.dataset_dirs = {d.id: d.path for d in collection.datasets}
        if TARGET not in self.dataset_ids:
            raise SystemExit(f"the collection must hold the transfer target {TARGET}")
        self.test_cases = {d.id: d.cases("Ts") for d in collection.datasets}

        man = self.out / "manifests"
        others = [d.path for d in collection.datasets if d.id != TARGET]
        _write_json(man / "pretrain.json", {"datasets": [{"path": str(p.resolve())} for p in others]})
        _write_json(man / "target.json", {"datasets": [{"path": str(self.dataset_dirs[TARGET].resolve())}]})
        fully = write_fully_labelled(self.raw, TARGET, self.out / "raw_fully" / FULLY_FOLDER,
                                     s.preprocess_workers)
        _write_json(man / "fully.json", {"datasets": [{"path": str(fully.resolve())}]})

        # every test scan in one folder (symbolic links), and the scans timed for inference
        tests = self.out / "test_images"
        for ds, cases in self.test_cases.items():
            for c in cases:
                _link(self.dataset_dirs[ds] / "imagesTs" / f"{c}_0000.nii.gz", tests / f"{c}_0000.nii.gz")
        self.test_images = tests
        order = [c for i in range(max(len(v) for v in self.test_cases.values()))
                 for v in self.test_cases.values() if i < len(v) for c in [v[i]]]
        self.timing_cases = order[: s.timing_scans]
        timing = self.out / "timing_images"
        for c in self.timing_cases:
            _link(tests / f"{c}_0000.nii.gz", timing / f"{c}_0000.nii.gz")
        self.timing_images = timing

        for key, m in (("all", manifest), ("pretrain", man / "pretrain.json"),
                       ("target", man / "target.json"), ("fully", man / "fully.json")):
            if not (self.pre[key] / "plans.json").is_file():
                self.say(f"preprocessing {key} ({m.name}) -> {self.pre[key]}")
                t = time.perf_counter()
                run_preprocessing(m, self.pre[key], preset="small", spacing=s.spacing,
                                  patch_size=s.patch_size, workers=s.preprocess_workers,
                                  progress=not self.quiet)
                self._add_wall("data", f"preprocess_{key}", time.perf_counter() - t)

    # -- training
    def _train_cfg(self, epochs: int, **kw):
        from multitalent.training.config import TrainConfig

        s = self.sizes
        fields = dict(epochs=epochs, iterations_per_epoch=s.iterations_per_epoch, val_iterations=s.val_iterations,
                      base_features=s.base_features, fold=s.fold, final_validation=False,
                      num_workers=s.num_workers, seed=self.seed, device=self.device, quiet=self.quiet, amp=s.amp)
        return TrainConfig(**{**fields, **kw})  # an ablation may change a default (base_features)

    def train_run(self, name: str, fn: Callable[[Path, bool], object]) -> Path:
        """Run ``fn(run_dir, resume)`` unless ``run_dir/checkpoint_final.pt`` exists."""
        run = self.runs / name
        if (run / "checkpoint_final.pt").is_file():
            return run
        resume = (run / "checkpoint_latest.pt").is_file()
        self.say(f"training {name}" + (" (resuming)" if resume else ""))
        t = time.perf_counter()
        fn(run, resume)
        wall = time.perf_counter() - t
        self._add_wall("train", name, wall)
        st = run_stats(run)
        self.say(f"  {name}: {st['iterations']} iterations, {wall:.0f}s wall"
                 + (f", {st['s_per_it']:.2f} s/it, data wait {100 * st['data_wait_fraction']:.0f}%"
                    if st["s_per_it"] else ""))
        return run

    def train_plain(self, name: str, pre: Path, epochs: int, **kw) -> Path:
        from multitalent.training.loop import train

        if kw.get("arch") == "swin_unetr":
            kw["feature_size"] = self.sizes.swin_feature_size

        def fn(run: Path, resume: bool) -> None:
            train(pre, run, self._train_cfg(epochs, resume=resume, **kw))

        return self.train_run(name, fn)

    def train_finetune(self, name: str, pretrained: Path, seed: int, from_scratch: bool, scale: float = 1) -> Path:
        """A fine-tuning run with each of its three phases ``scale`` times as long (a budget pair's run: 1/2 for
        ``half_<run>``, 2, 4, ... for ``double_<run>``; at least one epoch each)."""
        from multitalent.finetune import FinetuneConfig, finetune

        s = self.sizes
        head, full, rest = s.ft_phase_epochs(scale)

        def fn(run: Path, resume: bool) -> None:
            # from scratch: one poly phase as long as the three phases (finetune_phases)
            cfg = FinetuneConfig(epochs=rest, iterations_per_epoch=s.ft_iterations_per_epoch,
                                 val_iterations=s.val_iterations, base_features=s.base_features,
                                 head_warmup_epochs=head, full_warmup_epochs=full, from_scratch=from_scratch,
                                 fold=s.fold, final_validation=False, num_workers=s.num_workers, seed=seed,
                                 device=self.device, amp=s.amp,
                                 quiet=self.quiet, resume=resume)
            finetune(pretrained, self.pre["target"], run, cfg)

        return self.train_run(name, fn)

    # -- every training run, in one table: the stages train by name, ``train_all`` runs them in parallel
    def training_jobs(self) -> dict[str, dict]:
        """Every training run of the reproduction: name -> spec (``kind`` plain/finetune, its arguments,
        ``after``: runs it starts from). Ordered longest first, so that parallel runs finish together."""
        s = self.sizes
        main = s.archs[0]
        mt_epochs = s.multitalent_factor * s.single_epochs
        base_epochs = s.baseline_its // s.iterations_per_epoch
        jobs: dict[str, dict] = {}

        def plain(name: str, pre: str, epochs: int, **kw) -> None:
            jobs[name] = {"name": name, "kind": "plain", "pre": pre, "epochs": epochs, "kw": kw, "after": []}

        for arch in s.archs:
            plain(f"multitalent_{arch}", "all", mt_epochs, arch=arch)
        plain("pretrain_multitalent", "pretrain", base_epochs, arch=main)
        plain("pretrain_supervised", "fully", base_epochs, arch=main)
        plain("merged_softmax", "all", base_epochs, arch=main, objective="merged_softmax")
        for name, kw in s.ablations:  # an ablation may change the budget (epochs) or any TrainConfig field
            kw = dict(kw)
            if "datasets" in kw:  # a single-dataset model with the ablation's change (``benchmarks/ablate.py``)
                kw["datasets"] = list(kw["datasets"])
            plain(f"ablation_{name}", "all", kw.pop("epochs", mt_epochs), **{"arch": main, **kw})
        for arch in s.archs:
            for ds in self.dataset_ids:
                plain(f"{single_key(arch, main)}_{ds}", "all", s.single_epochs, datasets=[ds], arch=arch)
        # from scratch needs a checkpoint only for the architecture; its weights are not used
        for k in range(s.ft_seeds):
            for cond, scratch in FT_CONDITIONS.items():
                name, pretrained = self.ft_run(cond, self.seed + k), self.ft_start(cond)
                jobs[name] = {"name": name, "kind": "finetune", "pretrained": pretrained, "seed": self.seed + k,
                              "from_scratch": scratch, "after": [pretrained]}
        # adding the target to the MultiTalent pre-training (``--extend`` only), compared with the fine-tunings of
        # that pre-training (the table's own, unless the table's start from a longer run: then extension runs too)
        for name, original in EXT_RUNS.items():
            jobs[name] = {"name": name, "kind": "extend", "original": original, "after": [EXT_BASE],
                          "extension": True}
        for k in range(s.ft_seeds):
            name = finetune_run("multitalent", self.seed + k)
            jobs.setdefault(name, {"name": name, "kind": "finetune", "pretrained": EXT_BASE, "seed": self.seed + k,
                                   "from_scratch": False, "after": [EXT_BASE], "extension": True})
        return self._pair_jobs(jobs)

    def ft_start(self, cond: str) -> str:
        """The pre-training run the fine-tunings of ``cond`` start from: the table's own, or the longer run of its
        budget chain that ``sizes.ft_from`` names (the last one named; never for from scratch, which takes only the
        architecture)."""
        default = FT_PRETRAINING[cond]
        chosen = [r for r in self.sizes.ft_from if base_run(r) == default and not r.startswith("half_")]
        return chosen[-1] if chosen and cond != "scratch" else default

    def ft_run(self, cond: str, seed: int) -> str:
        """The table's fine-tuning run of ``cond`` and ``seed`` (named after its start's budget)."""
        return finetune_run(cond, seed, self.ft_start(cond))

    def _pair_jobs(self, jobs: dict[str, dict]) -> dict[str, dict]:
        """``jobs`` and, after them, the budget pairs' runs (``--pairs`` only, marked ``pairs``): every plain run
        but the ablations and every fine-tuning at half its budget (``half_<name>``) unless a run with the same
        settings at half the budget is already in the table, and the runs of ``sizes.double_runs`` at twice it
        (``double_<name>``: a plain run, a fine-tuning with every phase doubled, or a ``double_`` run itself, so
        that a chain N, 2N, 4N, ... goes on until a pair gains less than a point)."""
        extra: dict[str, dict] = {}
        for name, spec in jobs.items():
            if spec.get("extension"):
                continue  # not judged: no budget pair
            if spec["kind"] == "finetune":
                extra[f"half_{name}"] = {**spec, "name": f"half_{name}", "scale": 0.5, "pairs": True}
            elif spec["kind"] == "plain" and not name.startswith("ablation_") and spec["epochs"] >= 2:
                if not _halves(jobs, spec):
                    extra[f"half_{name}"] = {**spec, "name": f"half_{name}", "epochs": spec["epochs"] // 2,
                                             "pairs": True}
        for name in sorted(self.sizes.double_runs, key=doublings):  # a chain's shorter runs first
            spec = jobs.get(name) or extra.get(name)
            if spec is None or spec.get("extension") or name.startswith("half_"):
                continue  # refused by the command line; a folder's doubling of a run these sizes lack
            longer = {**spec, "name": f"double_{name}", "pairs": True}
            if spec["kind"] == "plain":
                longer["epochs"] = 2 * spec["epochs"]
            else:
                longer["scale"] = 2 * spec.get("scale", 1)
            extra[longer["name"]] = longer
        return {**jobs, **extra}

    def pair_list(self) -> list[tuple[str, str]]:
        """The budget pairs of the table: (shorter, longer) runs with the same settings, the longer one twice as
        many iterations (plain runs: the same data, options and seed; fine-tunings: every phase doubled)."""
        jobs = self.training_jobs()
        out = []
        for name, spec in jobs.items():
            if spec["kind"] == "finetune" and spec.get("scale", 1) == 1:
                out.append((f"half_{name}", name))
            elif spec["kind"] == "finetune" and spec["scale"] > 1:  # double_<run>: <run> is its shorter run
                out.append((name.removeprefix("double_"), name))
            elif spec["kind"] == "plain":
                out += [(n, name) for n in _halves(jobs, spec)]
        return out

    def train(self, name: str) -> Path:
        """Train (or resume, or skip when finished) the run ``name`` of ``training_jobs``."""
        spec = self.training_jobs()[name]
        if spec["kind"] == "finetune":
            return self.train_finetune(name, self.runs / spec["pretrained"], spec["seed"], spec["from_scratch"],
                                       spec.get("scale", 1))
        if spec["kind"] == "extend":
            return self.train_extend(name, spec["original"])
        return self.train_plain(name, self.pre[spec["pre"]], spec["epochs"], **spec["kw"])

    def train_extend(self, name: str, original: bool) -> Path:
        """``multitalent extend``: the MultiTalent pre-training (every dataset but the target) gains the target's
        heads; with its original data (the union) or without (distillation)."""
        from multitalent.extend import extend
        from multitalent.training.config import ExtendConfig

        s = self.sizes

        def fn(run: Path, resume: bool) -> None:
            cfg = ExtendConfig(epochs=s.ext_epochs, iterations_per_epoch=s.iterations_per_epoch,
                               val_iterations=s.val_iterations, base_features=s.base_features,
                               head_warmup_epochs=s.ext_head_warmup_epochs, full_warmup_epochs=s.ext_full_warmup_epochs,
                               without_original_data=not original, fold=s.fold, final_validation=False,
                               num_workers=s.num_workers, seed=self.seed, device=self.device, quiet=self.quiet,
                               resume=resume, preprocess_workers=1, amp=s.amp)
            extend(self.runs / EXT_BASE, self.out / "manifests" / "target.json", run, cfg)

        return self.train_run(name, fn)

    def train_all(self, only: list[str] | None = None) -> None:
        """Every unfinished training run (``only``: just these), ``self.jobs`` at a time in worker processes (each
        with ``usable_cores() // jobs`` torch threads, the cores this process may run on; fewer runs to train than
        ``jobs``: the cores shared among them), a fine-tuning only after its pre-training. Nothing to do when
        ``self.jobs`` is 1: the stages then train one run after the other."""
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, wait

        s, n_jobs = self.sizes, self.jobs
        if n_jobs <= 1:
            return
        table = self.training_jobs()
        jobs = {n: j for n, j in table.items()
                if (self.extend or not j.get("extension")) and (self.pairs or not j.get("pairs"))
                and (only is None or n in only)}
        wanted = list(jobs)
        while wanted:  # and the runs they start from (a fine-tuning from a budget chain's pre-training)
            for a in table[wanted.pop()]["after"]:
                if a not in jobs:
                    jobs[a] = table[a]
                    wanted.append(a)
        done = {n for n in jobs if (self.runs / n / "checkpoint_final.pt").is_file()}
        # the longest remaining training first (a resumed run counts what is left of it, at its own measured speed),
        # so that the parallel runs finish together: the table's order puts a chain's doubled runs after every other
        # run, and a wider network's iterations cost more than a narrow one's
        todo = [n for n in jobs if n not in done]
        left = self.seconds_left({n: jobs[n] for n in todo})
        todo.sort(key=lambda n: -left[n])
        if not todo:
            return
        from multitalent.device import usable_cores

        # the cores shared by the runs that can run at once (one run left: it gets them all)
        threads = max(1, usable_cores() // min(n_jobs, len(todo)))
        self.say(f"training {len(todo)} runs, {n_jobs} at a time ({threads} torch thread(s) each)")
        running: dict = {}
        here = str(Path(__file__).resolve().parents[1])  # benchmarks/, the folder that holds ``repro``
        if here not in sys.path:  # the workers unpickle ``_train_job`` by importing ``repro.experiments``
            sys.path.insert(0, here)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(n_jobs, mp_context=ctx, initializer=_start_worker,
                                 initargs=(threads, os.getpid())) as pool:
            while todo or running:
                for n in [n for n in todo if all(a in done for a in jobs[n]["after"])]:
                    if len(running) >= n_jobs:
                        break
                    todo.remove(n)
                    running[pool.submit(_train_job, s, self.out, self.seed, self.device, self.quiet, n)] = n
                if not running:
                    raise RuntimeError(f"training runs wait for runs that never finish: {todo}")
                # a minute at a time, so that this invocation's wall time stays current if it is stopped
                finished, _ = wait(running, timeout=60, return_when=FIRST_COMPLETED)
                self.invocations()
                for f in finished:
                    n = running.pop(f)
                    f.result()  # a failed run stops the reproduction with its error
                    done.add(n)

    def reported_runs(self) -> list[Path]:
        """The run folders the report describes: every run of the table that has begun, and every finished run (an
        earlier form of the table, such as fine-tunings from a pre-training since replaced by ``--finetune-from``);
        not an unfinished run that is no longer asked for (``--no-double``)."""
        table = self.training_jobs()
        return [p for p in sorted(self.runs.iterdir()) if (p / "log.jsonl").is_file()
                and (p.name in table or (p / "checkpoint_final.pt").is_file())]

    def seconds_left(self, specs: dict[str, dict]) -> dict[str, float]:
        """Estimated training seconds left of each run of ``specs`` (name -> ``training_jobs`` entry): its iterations
        left at the seconds per iteration its own log measured; a run not begun at the median speed of those begun
        (or one second: then iterations decide the order)."""
        speed = {n: run_stats(self.runs / n)["s_per_it"] for n in specs}
        known = [v for v in speed.values() if v]
        default = float(np.median(known)) if known else 1.0
        return {n: self.iterations_left(spec) * (speed[n] or default) for n, spec in specs.items()}

    def iterations_left(self, spec: dict) -> int:
        """Training iterations that the run of ``spec`` (a ``training_jobs`` entry) still has to do: its budget
        less the iterations in its ``log.jsonl`` (a run begun by an earlier invocation resumes from there)."""
        s = self.sizes
        if spec["kind"] == "plain":
            total = spec["epochs"] * s.iterations_per_epoch
        elif spec["kind"] == "finetune":
            total = sum(s.ft_phase_epochs(spec.get("scale", 1))) * s.ft_iterations_per_epoch
        else:  # the extension
            total = s.ext_its
        done = 0
        log = self.runs / spec["name"] / "log.jsonl"
        if log.is_file():
            lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
            try:
                done = int(json.loads(lines[-1]).get("iteration", 0)) if lines else 0
            except (json.JSONDecodeError, TypeError, ValueError):
                done = 0  # a line cut by a kill: the run's length decides
        return max(0, total - done)

    # -- prediction and evaluation
    def predict(self, run: Path, images: Path, out: Path, save_heads: bool = False) -> float:
        """Predict every scan of ``images`` (finished cases are skipped); returns the wall time."""
        from multitalent.inference.config import PredictConfig
        from multitalent.inference.predict import predict

        t = time.perf_counter()
        # no postprocessing: every model is scored on its network's output (the held-out validation of
        # ``budget_pairs`` decides a postprocessing for its runs, which would otherwise apply to later predictions)
        cfg = PredictConfig(device=self.device, quiet=self.quiet, continue_=True, save_heads=save_heads,
                            postprocess=False)
        predict(run, images, out, cfg)  # merged-softmax runs predict one logit per head too
        return time.perf_counter() - t

    def evaluate(self, pred: Path, datasets: list[str], registry, name: str,
                 reference: dict[str, float] | None = None) -> dict:
        from multitalent.evaluation import evaluate

        out = self.evals / name
        if (out / "summary.json").is_file():
            return json.loads((out / "summary.json").read_text())
        gt = [f"{ds}={self.dataset_dirs[ds] / 'labelsTs'}" for ds in datasets]
        return evaluate(pred, gt, registry, out, reference=reference, difficult_threshold=DIFFICULT_THRESHOLD,
                        progress=not self.quiet, workers=self.sizes.eval_workers)

    # -- the experiments
    def table1(self) -> dict:
        from multitalent.evaluation import reference_from_summary
        from multitalent.registry import HeadRegistry

        s = self.sizes
        registry = HeadRegistry.load(self.pre["all"] / "heads.json")
        singles, summary = self.single_models(s.archs[0], registry, None)
        summaries = {"single": summary}
        reference = reference_from_summary(summaries["single"])
        _write_json(self.results / "reference_dice.json", reference)

        runs = {"single": singles}
        main_arch = s.archs[0]
        key = f"multitalent_{main_arch}"
        runs[key] = self.train(key)
        runs["merged_softmax"] = self.train("merged_softmax")
        for key in (f"multitalent_{main_arch}", "merged_softmax"):
            summaries[key] = self.predict_and_evaluate(key, runs[key], registry, reference)
        self.table1_runs, self.registry, self.reference = runs, registry, reference
        return summaries

    def single_models(self, arch: str, registry, reference: dict | None) -> tuple[dict[str, Path], dict]:
        """Train, predict and evaluate the K single-dataset models of ``arch`` (N iterations each)."""
        key = single_key(arch, self.sizes.archs[0])
        return self.single_models_named(key, registry, reference)

    def single_models_named(self, key: str, registry, reference: dict | None) -> tuple[dict[str, Path], dict]:
        """Train the single-dataset models ``<key>_<dataset>`` of every dataset, predict each on its dataset's
        test cases into ``preds/key`` and evaluate them together as ``key``: ({dataset: run folder}, summary)."""
        runs = {ds: self.train(f"{key}_{ds}") for ds in self.dataset_ids}
        pred = self.preds / key
        for ds, run in runs.items():
            if any(not (pred / c / "case.json").is_file() for c in self.test_cases[ds]):
                self.say(f"predicting {key}_{ds} on its {len(self.test_cases[ds])} test cases")
                self.predict(run, self.dataset_dirs[ds] / "imagesTs", pred)
        return runs, self.evaluate(pred, self.dataset_ids, registry, key, reference)

    def predict_and_evaluate(self, key: str, run: Path, registry, reference: dict) -> dict:
        pred = self.preds / f"{key}_test"
        if not all((pred / c / "case.json").is_file() for v in self.test_cases.values() for c in v):
            n = sum(map(len, self.test_cases.values()))
            self.say(f"predicting {key} on all {n} test cases (head masks kept)")
            self.predict(run, self.test_images, pred, save_heads=True)
        return self.evaluate(pred, self.dataset_ids, registry, key, reference)

    def extra_archs(self, summaries: dict) -> None:
        s = self.sizes
        for arch in s.archs[1:]:
            runs, summaries[single_key(arch, s.archs[0])] = self.single_models(arch, self.registry, self.reference)
            self.table1_runs[single_key(arch, s.archs[0])] = runs
            key = f"multitalent_{arch}"
            run = self.train(key)
            self.table1_runs[key] = run
            summaries[key] = self.predict_and_evaluate(key, run, self.registry, self.reference)

    def ablation_runs(self, summaries: dict) -> None:
        """Each ablation of MultiTalent (``sizes.ablations``): trained, predicted and evaluated like it."""
        for name, _ in self.sizes.ablations:
            key = f"ablation_{name}"
            self.table1_runs[key] = run = self.train(key)
            summaries[key] = self.predict_and_evaluate(key, run, self.registry, self.reference)

    def double_runs(self, summaries: dict) -> None:
        """The multi-dataset runs of ``sizes.double_runs`` at twice their budget (``--pairs``, or found finished),
        scored on the test cases like an ablation."""
        for name in self.sizes.double_runs:
            key = f"double_{name}"
            if not base_run(name).startswith(("multitalent_", "merged_softmax", "ablation_")) \
                    or not (self.pairs or (self.runs / key / "checkpoint_final.pt").is_file()):
                continue
            self.table1_runs[key] = run = self.train(key)
            summaries[key] = self.predict_and_evaluate(key, run, self.registry, self.reference)

    def chain_runs(self) -> dict[str, dict]:
        """The longer runs of the single-dataset models' and the fine-tunings' budget chains (``double_<run>``,
        ``double_double_<run>``, ... of ``sizes.double_runs``), each scored on the test cases of its table run (a
        single-dataset model on its dataset's, a fine-tuning on the target's): {run: evaluation summary}. A run that
        has converged only at a longer budget is compared through the first converged run of its chain
        (``statistics.stand_ins``, chosen on the held-out folds, never on a test case). After ``budget_pairs``,
        which trains the chains' runs. The chains of fine-tunings from a start the table no longer takes (an earlier
        start, before ``--finetune-from`` named a longer one) stay on disk but are not scored."""
        from multitalent.registry import HeadRegistry

        out: dict[str, dict] = {}
        target = HeadRegistry.load(self.pre["target"] / "heads.json")
        jobs = self.training_jobs()
        for name in self.sizes.double_runs:
            key, base = f"double_{name}", base_run(name)
            ds = base.removeprefix("single_")
            # not a job: the chain of fine-tunings from a start the table no longer takes (--finetune-from)
            if key not in jobs or not (self.runs / key / "checkpoint_final.pt").is_file():
                continue
            if base.startswith("finetune_"):
                out[key] = self.finetune_summary(key, target)
            elif ds in self.dataset_ids:
                pred = self.preds / key
                if any(not (pred / c / "case.json").is_file() for c in self.test_cases[ds]):
                    self.say(f"predicting {key} on its {len(self.test_cases[ds])} test cases")
                    self.predict(self.runs / key, self.dataset_dirs[ds] / "imagesTs", pred)
                out[key] = self.evaluate(pred, [ds], self.registry, key, None)
        return out

    def budget_pairs(self) -> dict:
        """Every budget pair whose two runs are finished, with each run's whole-scan Dice on its held-out fold
        (``multitalent validate``: ``RUN/validation/summary.json``, made once): {"pairs": [(shorter, longer)],
        "heldout": {run: {head: mean Dice over the held-out cases}}, "heldout_cases": {run: {head: {case: Dice}}}}.
        No test case is used."""
        if self.pairs:  # the pair runs ``train_all`` has not trained (one run at a time when ``self.jobs`` is 1)
            for name, spec in self.training_jobs().items():
                if spec.get("pairs"):
                    self.train(name)
        done = [(a, b) for a, b in self.pair_list()
                if all((self.runs / n / "checkpoint_final.pt").is_file() for n in (a, b))]
        heldout: dict[str, dict[str, float]] = {}
        cases: dict[str, dict[str, dict[str, float]]] = {}  # run -> head -> held-out case -> Dice
        for name in dict.fromkeys(n for pair in done for n in pair):
            heldout[name], cases[name] = self.heldout_scores(self.runs / name)
        return {"pairs": done, "heldout": heldout, "heldout_cases": cases}

    def heldout_scores(self, run: Path) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """The run's whole-scan Dice on its held-out fold (``multitalent validate``, made once into
        ``RUN/validation/summary.json``, predictions without post-processing): ({head: mean Dice over the held-out
        cases}, {head: {case: Dice}}). A validation already there is reused only when it scored the final
        checkpoint on the run's own held-out cases (``validation/validation.json``), as a pair compares; any other
        (``multitalent validate --checkpoint best`` by hand, ...) is made again. No test case is used."""
        from multitalent.training.validation import final_validation

        path = run / "validation" / "summary.json"
        made = _read_json(run / "validation" / "validation.json", {}) or {}
        held_out = (_read_json(run / "config.json", {}) or {}).get("val_cases")
        if not (path.is_file() and made.get("checkpoint") == "final"
                and sorted(made.get("cases") or []) == sorted(held_out or [])):
            self.say(f"validating {run.name} on its held-out fold (whole scans)")
            final_validation(run, device=self.device, workers=self.sizes.eval_workers, quiet=self.quiet)
            (run / "postprocessing.json").unlink(missing_ok=True)  # predictions stay raw
        summary = _read_json(path, {}) or {}
        means = {h: v["dice_mean"] for h, v in summary.get("heads", {}).items() if v.get("dice_mean") is not None}
        cases: dict[str, dict[str, float]] = {}
        for per_case in summary.get("cases", {}).values():
            for case, per_head in per_case.items():
                for h, v in per_head.items():
                    if v.get("dice") is not None:
                        cases.setdefault(h, {})[case] = v["dice"]
        return means, cases

    def swin_probe(self) -> dict | None:
        s = self.sizes
        if s.swin_probe_iterations <= 0:
            return None
        cache = self.results / "swin_probe.json"
        if cache.is_file():
            return json.loads(cache.read_text())
        from multitalent.training.config import TrainConfig
        from multitalent.training.loop import train

        run = self.runs / "probe_swin_unetr"
        shutil.rmtree(run, ignore_errors=True)
        self.say(f"timing {s.swin_probe_iterations} SwinUNETR iterations "
                 f"(feature size {s.swin_feature_size})")
        cfg = TrainConfig(arch="swin_unetr", feature_size=s.swin_feature_size, epochs=2,
                          iterations_per_epoch=s.swin_probe_iterations, val_iterations=0, fold="all",
                          num_workers=s.num_workers, seed=self.seed, device=self.device, quiet=self.quiet)
        try:
            train(self.pre["all"], run, cfg)
        except Exception as e:  # noqa: BLE001 - the probe reports what happened instead of stopping the run
            result = {"error": f"{type(e).__name__}: {e}"}
        else:
            recs = _train_log(run)
            # the second epoch only: the first one pays for start-up
            result = {"s_per_it": recs[-1]["train_time_s"] / s.swin_probe_iterations,
                      "iterations": s.swin_probe_iterations, "feature_size": s.swin_feature_size}
        shutil.rmtree(run, ignore_errors=True)
        _write_json(cache, result)
        return result

    def transfer(self) -> dict:
        """The fine-tunings to the target (each condition from ``ft_start``, ``ft_seeds`` seeds), scored on its test
        cases: {"per_seed": {cond: {seed: scores}}, "heads", "runs": {cond: {seed: run}}, "starts": {cond: run}}."""
        from multitalent.registry import HeadRegistry

        s = self.sizes
        starts = {c: self.ft_start(c) for c in FT_CONDITIONS}
        for start in dict.fromkeys(starts.values()):
            self.train(start)
        registry = HeadRegistry.load(self.pre["target"] / "heads.json")
        per_seed: dict[str, dict[int, dict]] = {c: {} for c in FT_CONDITIONS}
        runs: dict[str, dict[int, str]] = {c: {} for c in FT_CONDITIONS}
        for k in range(s.ft_seeds):
            seed = self.seed + k
            for cond in FT_CONDITIONS:
                runs[cond][seed] = self.ft_run(cond, seed)
                summary = self.finetune_summary(runs[cond][seed], registry)
                per_seed[cond][seed] = {"dataset_dice": summary["datasets"][TARGET]["dice_mean"],
                                        "heads": {h: v["dice_mean"] for h, v in summary["heads"].items()}}
        return {"per_seed": per_seed, "heads": registry.ids, "runs": runs, "starts": starts}

    def ext_scratch(self) -> str:
        """The run from scratch on all datasets that the extensions are compared with."""
        return self.sizes.ext_scratch or f"multitalent_{self.sizes.archs[0]}"

    def extension_jobs(self) -> list[str]:
        """The training runs the extension experiment reads: its base, both extensions, the run from scratch and
        the fine-tunings of the base to the target."""
        return [EXT_BASE, *EXT_RUNS, self.ext_scratch(),
                *(finetune_run("multitalent", self.seed + k) for k in range(self.sizes.ft_seeds))]

    def extension(self) -> dict | None:
        """The extension experiment (``--extend``): the base model, both extensions, the model from scratch on all
        datasets with the base + extension iterations and the fine-tuning to the target alone, every one scored
        on every test case of its datasets."""
        from multitalent.registry import HeadRegistry

        if not self.extend:
            return None
        s = self.sizes
        scratch = self.ext_scratch()
        models = {EXT_BASE: self.train(EXT_BASE), **{n: self.train(n) for n in EXT_RUNS}, scratch: self.train(scratch)}
        summaries = {}
        for name, run in models.items():
            registry = HeadRegistry.load(run / "heads.json")
            datasets = [d for d in self.dataset_ids if d in registry.dataset_ids]
            pred = self.preds / f"{name}_test"
            if not all((pred / c / "case.json").is_file() for d in datasets for c in self.test_cases[d]):
                self.say(f"predicting {name} on the test cases of {len(datasets)} dataset(s)")
                self.predict(run, self.test_images, pred)
            summaries[name] = self.evaluate(pred, datasets, registry, name)
        target_registry = HeadRegistry.load(self.pre["target"] / "heads.json")
        finetuned = {name: self.finetune_summary(name, target_registry)  # the target alone, from the same base
                     for name in self.extension_jobs() if name.startswith("finetune_")}
        base = HeadRegistry.load(models[EXT_BASE] / "heads.json")
        target = [h.id for h in HeadRegistry.load(models["extend_union"] / "heads.json").heads if h.dataset == TARGET]
        return {"summaries": summaries, "finetuned": finetuned, "scratch": scratch, "old_heads": base.ids,
                "new_heads": target, "base_its": s.baseline_its, "ext_its": s.ext_its,
                "scratch_its": _train_log(models[scratch])[-1]["iteration"] if _train_log(models[scratch]) else None}

    def finetune_summary(self, name: str, registry) -> dict:
        """Train (or find) the fine-tuning run ``name``, predict and evaluate it on the target's test cases."""
        run = self.train(name)
        pred = self.preds / name
        if not all((pred / c / "case.json").is_file() for c in self.test_cases[TARGET]):
            self.predict(run, self.dataset_dirs[TARGET] / "imagesTs", pred)
        return self.evaluate(pred, [TARGET], registry, name)

    def inference_timing(self) -> dict:
        cache = self.results / "inference_timing.json"
        if cache.is_file():
            return json.loads(cache.read_text())
        key = f"multitalent_{self.sizes.archs[0]}"
        root = self.preds / "timing"
        shutil.rmtree(root, ignore_errors=True)
        self.say(f"timing inference: {key} vs the {len(self.table1_runs['single'])} single-dataset models on "
                 f"{len(self.timing_cases)} scan(s)")
        mt = [self.predict(self.table1_runs[key], self.timing_images, root / f"{key}_a")]
        singles = {ds: self.predict(run, self.timing_images, root / f"single_{ds}")
                   for ds, run in self.table1_runs["single"].items()}
        mt.append(self.predict(self.table1_runs[key], self.timing_images, root / f"{key}_b"))
        result = {"scans": self.timing_cases, "model": key, "multitalent_s_runs": mt,
                  "multitalent_s": float(np.mean(mt)), "single_s": singles,
                  "ensemble_s": float(sum(singles.values())), "k": len(singles)}
        result["ratio"] = result["ensemble_s"] / result["multitalent_s"]
        shutil.rmtree(root, ignore_errors=True)
        _write_json(cache, result)
        return result

    def protocol_fidelity(self, models: list[str]) -> dict:
        """Dice of each conflicting head against every protocol's truth on the same test cases."""
        from multitalent import io
        from multitalent.evaluation import dice
        from multitalent.phantoms import truth_for_head

        cache = self.results / "protocol_fidelity.json"
        cached = _read_json(cache, {}) or {}
        if cached.get("models") == models and cached.get("format") == 2:
            return cached
        cases = [c for v in self.test_cases.values() for c in v]
        truths: dict[tuple[str, str], np.ndarray] = {}

        def truth(case: str, spec: str) -> np.ndarray:
            if (case, spec) not in truths:
                kind, name = spec.split(":", 1)
                if kind == "head":
                    truths[(case, spec)] = truth_for_head(self.raw, case, name)[0]
                else:
                    path = self.raw / "ground_truth" / case / f"{name}.nii.gz"
                    truths[(case, spec)] = io.read_label(path)[0] > 0
            return truths[(case, spec)]

        out: dict = {"format": 2, "models": models, "conflicts": {}}
        for conflict, check in CONFLICT_CHECKS.items():
            if not all(h in self.registry.ids for h in check["heads"]):
                continue
            specs = check["truths"]
            used = [c for c in cases if all(truth(c, sp).any() for sp in specs.values())]
            entry = {"cases": used, "truths": list(specs), "rows": []}
            for model in models:
                pred_dir = self.preds / f"{model}_test"
                for head in check["heads"]:
                    scores = {t: [] for t in specs}
                    extra: list[float] = []
                    for c in used:
                        mask = io.read_label(pred_dir / c / "heads" / f"{head}.nii.gz")[0] > 0
                        for t, sp in specs.items():
                            scores[t].append(dice(mask, truth(c, sp)))
                        extra.append(_extra_metric(conflict, head, mask, c, truth))
                    defined = [x for x in extra if not math.isnan(x)]
                    row = {"model": model, "head": head, "own": check["own"][head],
                           "dice": {t: (float(np.mean(v)) if v else None) for t, v in scores.items()},
                           "per_case": scores,
                           "extra": float(np.mean(defined)) if defined else None}
                    entry["rows"].append(row)
            out["conflicts"][conflict] = entry
        _write_json(cache, out)
        return out



def _halves(jobs: dict[str, dict], spec: dict) -> list[str]:
    """The plain runs of ``jobs`` with the settings of the plain run ``spec`` (data, options) at half its epochs."""
    return [n for n, j in jobs.items() if j["kind"] == "plain" and j["pre"] == spec["pre"] and j["kw"] == spec["kw"]
            and 2 * j["epochs"] == spec["epochs"]]


def _extra_metric(conflict: str, head: str, mask: np.ndarray, case: str, truth: Callable) -> float:
    """One number per conflict that shows the protocol directly (see ``repro.report.EXTRA_METRICS``)."""
    if conflict == "aorta":  # share of the abdominal aorta (below the diaphragm cut) that the head marks
        abdominal = truth(case, "structure:aorta") & ~truth(case, "structure:aorta_thoracic") \
            & ~truth(case, "structure:aortic_root")
        return float((mask & abdominal).sum() / abdominal.sum()) if abdominal.any() else float("nan")
    if conflict == "heart":  # share of the aortic root that the heart head marks
        root = truth(case, "structure:aortic_root")
        return float((mask & root).sum() / root.sum()) if root.any() else float("nan")
    if conflict == "spleen":  # predicted volume / fine spleen volume
        fine = truth(case, "structure:spleen")
        return float(mask.sum() / fine.sum()) if fine.any() else float("nan")
    return float("nan")

