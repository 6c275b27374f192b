"""``benchmarks/reproduce.py`` (the package ``benchmarks/repro``): the reduced (``--tiny``) reproduction runs
end to end, writes a report with every section and table filled with numbers, and a second invocation resumes
without training again."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load():
    if str(BENCHMARKS) not in sys.path:  # as benchmarks/reproduce.py does; the training workers inherit it
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("repro")


@pytest.fixture(scope="module")
def reproduce():
    return _load()


@pytest.mark.slow  # a subprocess
def test_the_entry_script_parses_its_options():
    res = subprocess.run([sys.executable, str(BENCHMARKS / "reproduce.py"), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for flag in ("--quick", "--full", "--gpu", "--out", "--device"):
        assert flag in res.stdout


def test_gpu_sizes_train_every_backbone_within_the_projected_ten_minutes(reproduce, tmp_path, monkeypatch):
    gpu = reproduce.GPU
    assert reproduce.SIZES["gpu"] is gpu and gpu.archs == ("plain_unet", "resenc_unet", "swin_unetr")
    assert all(p % 32 == 0 for p in gpu.patch_size)  # SwinUNETR needs every axis divisible by 32
    assert gpu.single_epochs >= 8  # enough validated epochs to judge convergence
    assert reproduce.gpu_projection(gpu)["total_min"] <= 10
    rep = reproduce.Reproduction(gpu, tmp_path, device="cuda")
    rep.dataset_ids = ["D001", "D005", "D006"]
    jobs = rep.training_jobs()
    assert jobs["multitalent_swin_unetr"]["kw"] == {"arch": "swin_unetr"}
    assert jobs["single_swin_unetr_D005"]["kw"] == {"datasets": ["D005"], "arch": "swin_unetr"}
    assert jobs["ablation_width32"]["kw"] == {"arch": "plain_unet", "base_features": 32}
    # + the two extension runs (--extend) and the budget pairs' half runs (--pairs): every plain run but the
    # ablation, every fine-tuning
    base = 3 * 3 + 3 + 3 + 1 + 3 * gpu.ft_seeds
    assert len(jobs) == base + 2 + (base - 1)
    assert [n for n, j in jobs.items() if j.get("extension")] == ["extend_union", "extend_distill"]
    # the SwinUNETR runs get its feature size (train_plain), not a U-Net's base features
    import multitalent.training.loop

    configs = {}
    monkeypatch.setattr(multitalent.training.loop, "train", lambda pre, run, cfg: configs.setdefault(run.name, cfg))
    monkeypatch.setattr(rep, "train_run", lambda name, fn: fn(tmp_path / name, False))
    for name in ("multitalent_swin_unetr", "single_swin_unetr_D005", "multitalent_resenc_unet"):
        rep.train(name)
    swin = configs["multitalent_swin_unetr"]
    assert swin.arch == "swin_unetr" and swin.model_kwargs() == {"feature_size": gpu.swin_feature_size}
    assert configs["single_swin_unetr_D005"].datasets == ["D005"]
    assert configs["multitalent_resenc_unet"].model_kwargs()["base_features"] == gpu.base_features
    assert swin.device == "cuda" and swin.num_workers == gpu.num_workers and swin.amp == gpu.amp == "auto"
    assert "H200" in reproduce.calibration_note(gpu) and "assumed" in reproduce.calibration_note(gpu)


def _section(text: str, title: str) -> str:
    start = text.index(title)
    nxt = text.find("\n## ", start + len(title))
    return text[start: nxt if nxt >= 0 else len(text)]


def _table_numbers(section: str) -> list[float]:
    rows = [line for line in section.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return [float(x) for line in rows[1:] for x in re.findall(r"(?<![\w.])[-+]?\d+\.\d+", line)]


def test_paired_tests_are_one_sided_both_ways(reproduce):
    better = reproduce.paired([0.8, 0.7, 0.9, 0.85], [0.5, 0.6, 0.55, 0.6])
    assert better["n"] == 4 and better["mean_difference"] == pytest.approx(0.25)
    assert better["p_greater"] < 0.05 and better["p_less"] > 0.95
    worse = reproduce.paired([0.5, 0.6, 0.55, 0.6], [0.8, 0.7, 0.9, 0.85])
    assert worse["p_less"] < 0.05 and worse["p_greater"] > 0.95
    same_shift = reproduce.paired([0.6, 0.7], [0.5, 0.6])  # identical differences: no t statistic
    assert same_shift["p_greater"] == 0.0 and same_shift["p_less"] == 1.0
    assert reproduce.paired([0.5], [0.4])["p_greater"] is None


def test_a_verdict_needs_converged_models_and_a_significant_test(reproduce):
    sig = {"p_greater": 0.01, "p_less": 0.99}
    rev = {"p_greater": 0.99, "p_less": 0.01}
    flat = {"p_greater": 0.3, "p_less": 0.7}
    assert reproduce.judge([sig, sig], converged=True, judged=True) == "holds"
    assert reproduce.judge([sig, flat], converged=True, judged=True) == "no significant difference"
    assert reproduce.judge([sig, rev], converged=True, judged=True) == "does not hold"
    assert reproduce.judge([sig, sig], converged=False, judged=True) == reproduce.NOT_CONVERGED
    assert reproduce.judge([sig, sig], converged=None, judged=True) == reproduce.NOT_CONVERGED
    assert reproduce.judge([sig, sig], converged=True, judged=False) == reproduce.QUICK_VERDICT


def test_budget_pairs_pair_each_run_with_itself_at_half_or_twice_the_iterations(reproduce, tmp_path, monkeypatch):
    import dataclasses

    # the FULL sizes of the earlier rounds: two MultiTalent ablations (N, 2N) and MultiTalent twice its budget
    full = dataclasses.replace(reproduce.FULL, ablations=(("mt_n", (("epochs", reproduce.FULL.single_epochs),)),
                                                          ("mt_2n", (("epochs", 2 * reproduce.FULL.single_epochs),))),
                               multitalent_factor=4, double_runs=("multitalent_plain_unet",))
    rep = reproduce.Reproduction(full, tmp_path)
    rep.dataset_ids = ["D001", "D005"]
    jobs = rep.training_jobs()
    assert jobs["half_single_D001"]["epochs"] == full.single_epochs // 2 and jobs["half_single_D001"]["pairs"]
    assert jobs["half_single_D001"]["kw"] == jobs["single_D001"]["kw"]
    assert jobs["double_multitalent_plain_unet"]["epochs"] == 2 * jobs["multitalent_plain_unet"]["epochs"]
    # MultiTalent at half its budget is the ablation mt_2n already: no second run of the same settings
    assert "half_multitalent_plain_unet" not in jobs and "half_ablation_mt_2n" not in jobs
    pairs = rep.pair_list()
    for pair in [("ablation_mt_n", "ablation_mt_2n"), ("ablation_mt_2n", "multitalent_plain_unet"),
                 ("multitalent_plain_unet", "double_multitalent_plain_unet"), ("half_single_D005", "single_D005"),
                 ("half_merged_softmax", "merged_softmax"), ("half_finetune_scratch_seed0", "finetune_scratch_seed0")]:
        assert pair in pairs, pair
    assert not [p for p in pairs if "extend" in p[0] or "extend" in p[1]]
    # a half fine-tuning halves each of its three phases
    import multitalent.finetune

    configs = {}
    monkeypatch.setattr(multitalent.finetune, "finetune", lambda pre, data, run, cfg: configs.setdefault(run.name, cfg))
    monkeypatch.setattr(rep, "train_run", lambda name, fn: fn(tmp_path / name, False))
    rep.train("half_finetune_multitalent_seed1")
    rep.train("finetune_multitalent_seed1")
    half, whole = configs["half_finetune_multitalent_seed1"], configs["finetune_multitalent_seed1"]
    assert (half.head_warmup_epochs, half.full_warmup_epochs, half.epochs) == (1, 2, 11)
    assert (whole.head_warmup_epochs, whole.full_warmup_epochs, whole.epochs) == (2, 4, 22)
    assert half.seed == whole.seed == 1 and not half.from_scratch


def test_an_output_folder_takes_added_ablations_but_not_other_sizes(reproduce, tmp_path):
    import dataclasses

    tiny = reproduce.TINY
    reproduce.Reproduction(tiny, tmp_path).check_sizes()
    more = dataclasses.replace(tiny, ablations=(*tiny.ablations, ("uniform", (("sampling", "uniform"),))))
    reproduce.Reproduction(more, tmp_path).check_sizes()  # the runs made before keep their settings
    # added anywhere in the list (ablate.py's single-dataset models stay last)
    first = dataclasses.replace(more, ablations=(("w6", (("base_features", 6),)), *more.ablations))
    reproduce.Reproduction(first, tmp_path).check_sizes()
    with pytest.raises(SystemExit, match="other sizes"):  # an earlier ablation left out
        reproduce.Reproduction(dataclasses.replace(tiny, ablations=first.ablations[:2]), tmp_path).check_sizes()
    with pytest.raises(SystemExit, match="other sizes"):
        reproduce.Reproduction(dataclasses.replace(more, base_features=8), tmp_path).check_sizes()
    with pytest.raises(SystemExit, match="other sizes"):  # an ablation changed, not added
        reproduce.Reproduction(dataclasses.replace(tiny, ablations=(("width16", (("base_features", 16),)),)),
                               tmp_path).check_sizes()


def test_an_output_folder_takes_added_doublings_and_keeps_them(reproduce, tmp_path):
    import dataclasses

    tiny = reproduce.TINY
    reproduce.Reproduction(tiny, tmp_path).check_sizes()
    more = dataclasses.replace(tiny, double_runs=(*tiny.double_runs, "single_D006"))
    reproduce.Reproduction(more, tmp_path, pairs=True).check_sizes()  # nothing made before changes
    later = reproduce.Reproduction(tiny, tmp_path, pairs=True)  # a later invocation that names no doubling
    later.check_sizes()
    later.dataset_ids = list(tiny.datasets)
    assert later.sizes.double_runs == (*tiny.double_runs, "single_D006")
    jobs = later.training_jobs()
    assert jobs["double_single_D006"]["epochs"] == 2 * jobs["single_D006"]["epochs"]
    assert ("single_D006", "double_single_D006") in later.pair_list()


def test_a_doubled_run_doubles_again_and_a_fine_tuning_doubles_every_phase(reproduce, tmp_path, monkeypatch):
    import dataclasses

    import multitalent.finetune

    full = dataclasses.replace(reproduce.FULL, double_runs=("single_D001", "double_single_D001",
                                                            "finetune_supervised_seed2"))
    rep = reproduce.Reproduction(full, tmp_path)
    rep.dataset_ids = ["D001", "D005"]
    jobs = rep.training_jobs()
    n = jobs["single_D001"]["epochs"]
    assert jobs["double_single_D001"]["epochs"] == 2 * n and jobs["double_double_single_D001"]["epochs"] == 4 * n
    assert jobs["double_double_single_D001"]["kw"] == jobs["single_D001"]["kw"]
    assert "double_double_double_single_D001" not in jobs and "double_single_D005" not in jobs
    pairs = rep.pair_list()
    for pair in [("half_single_D001", "single_D001"), ("single_D001", "double_single_D001"),
                 ("double_single_D001", "double_double_single_D001"),
                 ("finetune_supervised_seed2", "double_finetune_supervised_seed2")]:
        assert pair in pairs, pair
    assert jobs["double_finetune_supervised_seed2"]["after"] == ["pretrain_supervised"]
    configs = {}
    monkeypatch.setattr(multitalent.finetune, "finetune", lambda pre, data, run, cfg: configs.setdefault(run.name, cfg))
    monkeypatch.setattr(rep, "train_run", lambda name, fn: fn(tmp_path / name, False))
    rep.train("double_finetune_supervised_seed2")
    cfg = configs["double_finetune_supervised_seed2"]
    assert (cfg.head_warmup_epochs, cfg.full_warmup_epochs, cfg.epochs, cfg.seed) == (4, 8, 44, 2)
    assert reproduce.base_run("double_double_single_D001") == reproduce.base_run("half_single_D001") == "single_D001"
    # --pairs adds the half runs and these doublings: 2N + 4N of the single model, twice a fine-tuning
    no_doubles = reproduce.pairs_iterations(dataclasses.replace(full, double_runs=()))
    ft = full.ft_total_epochs * full.ft_iterations_per_epoch
    assert reproduce.pairs_iterations(full) - no_doubles == 2 * full.n_single + 4 * full.n_single + 2 * ft


def _runs_started(rep, monkeypatch) -> list[str]:
    """The runs ``rep.train_all`` submits, in order, each finished at once (a pool that runs nothing)."""
    import concurrent.futures

    started: list[str] = []

    class Pool:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def submit(self, fn, *args):
            started.append(args[-1])
            f = concurrent.futures.Future()
            f.set_result(args[-1])
            return f

    monkeypatch.setattr(sys.modules[type(rep).__module__], "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(rep, "invocations", lambda: [])
    return started


def test_training_workers_share_the_cores_this_process_may_use(reproduce, tmp_path, monkeypatch):
    """``taskset -c 0`` gives two invocations side by side one core each: their workers then take one torch thread,
    not the machine's count (which made two one-run invocations run four threads on two cores)."""
    import concurrent.futures
    import dataclasses

    from multitalent.device import usable_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert usable_cores() == 1
    full = dataclasses.replace(reproduce.FULL, double_runs=("single_D005",))
    rep = reproduce.Reproduction(full, tmp_path, jobs=2)
    rep.dataset_ids = ["D005"]
    threads: list[int] = []

    class Pool:
        def __init__(self, *a, initargs=(), **k):
            threads.append(initargs[0])

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def submit(self, fn, *args):
            f = concurrent.futures.Future()
            f.set_result(args[-1])
            return f

    monkeypatch.setattr(sys.modules[type(rep).__module__], "ProcessPoolExecutor", Pool)
    rep.train_all(only=["single_D005"])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    rep.train_all(only=["single_D005"])
    assert threads == [1, 4]  # a lone run to train takes every core it may use


def test_the_longest_remaining_training_starts_first(reproduce, tmp_path, monkeypatch):
    import dataclasses

    full = dataclasses.replace(reproduce.FULL, double_runs=("single_D005", "double_single_D005",
                                                            "finetune_supervised_seed0"))
    rep = reproduce.Reproduction(full, tmp_path, pairs=True)
    rep.dataset_ids = ["D005"]
    jobs = rep.training_jobs()
    n = full.single_epochs * full.iterations_per_epoch
    assert rep.iterations_left(jobs["double_double_single_D005"]) == 4 * n
    ft = jobs["double_finetune_supervised_seed0"]
    assert rep.iterations_left(ft) == 2 * full.ft_total_epochs * full.ft_iterations_per_epoch
    # a run begun by an earlier invocation counts what is left of it (a line cut by a kill: its whole length)
    log = tmp_path / "runs" / "double_double_single_D005" / "log.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text(json.dumps({"epoch": 1, "iteration": 3 * n}) + "\n")
    assert rep.iterations_left(jobs["double_double_single_D005"]) == n
    log.write_text(json.dumps({"epoch": 1, "iteration": 3 * n}) + "\n" + '{"epoch": 2, "itera')
    assert rep.iterations_left(jobs["double_double_single_D005"]) == 4 * n
    # train_all submits the longest remaining run first, although the table lists the chains' runs last
    log.write_text(json.dumps({"epoch": 1, "iteration": 7 * n // 2}) + "\n")
    started = _runs_started(rep, monkeypatch)
    rep.train_all(only=["double_double_single_D005", "double_single_D005", "single_D005"])
    assert started == ["double_single_D005", "single_D005", "double_double_single_D005"]
    # at its own measured speed: a begun run ten times as slow per iteration as another (a wider network) goes
    # before it with half its iterations left; a run not begun is estimated at the begun runs' median speed
    for name, its, seconds in (("double_double_single_D005", 3 * n, 3 * n * 0.2), ("single_D005", n // 2, n)):
        log = tmp_path / "runs" / name / "log.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(json.dumps({"epoch": 1, "iteration": its, "train_time_s": seconds}) + "\n")
    left = rep.seconds_left({k: jobs[k] for k in ("double_double_single_D005", "double_single_D005", "single_D005")})
    assert left == pytest.approx({"double_double_single_D005": n * 0.2, "double_single_D005": 2 * n * 1.1,
                                  "single_D005": n // 2 * 2.0})
    started = _runs_started(rep, monkeypatch)
    rep.train_all(only=["double_double_single_D005", "double_single_D005", "single_D005"])
    assert started == ["double_single_D005", "single_D005", "double_double_single_D005"]


def test_double_on_the_command_line_names_a_plain_run_and_needs_pairs(reproduce, tmp_path, capsys, monkeypatch):
    from repro import cli

    for argv, msg in ((["--tiny", "--out", str(tmp_path), "--double", "single_D005"], "needs --pairs"),
                      (["--tiny", "--pairs", "--out", str(tmp_path), "--double", "single_D999"], "no plain run"),
                      (["--tiny", "--pairs", "--out", str(tmp_path), "--double", "half_single_D005"], "no plain run"),
                      (["--tiny", "--pairs", "--out", str(tmp_path), "--double", "double_half_single_D005"],
                       "no plain run"),
                      (["--tiny", "--pairs", "--out", str(tmp_path), "--double", "extend_union"], "no plain run")):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2 and msg in capsys.readouterr().err
    assert not (tmp_path / "results").exists()  # refused before anything was written
    # doubling a doubled run doubles its chain's shorter runs too; a fine-tuning may be doubled
    seen = {}
    monkeypatch.setattr(cli, "run", lambda sizes, *a, **k: seen.setdefault("sizes", sizes))
    assert cli.main(["--tiny", "--pairs", "--out", str(tmp_path), "--double", "double_single_D006",
                     "--double", "finetune_multitalent_seed0"]) == 0
    assert seen["sizes"].double_runs == (*reproduce.TINY.double_runs, "single_D006", "double_single_D006",
                                         "finetune_multitalent_seed0")


def test_a_training_worker_ends_when_its_invocation_is_killed(reproduce, tmp_path):
    """A killed invocation's pool workers must not go on training: the next invocation resumes their runs."""
    import os
    import signal
    import time

    from multitalent.procfs import running

    invocation = tmp_path / "invocation.py"
    invocation.write_text(
        "import multiprocessing, os, sys, time\n"
        f"sys.path.insert(0, {str(BENCHMARKS)!r})\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from repro.experiments import _start_worker\n"
        "if __name__ == '__main__':\n"
        "    ctx = multiprocessing.get_context('spawn')\n"
        "    with ProcessPoolExecutor(1, mp_context=ctx, initializer=_start_worker,\n"
        "                             initargs=(1, os.getpid())) as pool:\n"
        "        print(pool.submit(os.getpid).result(), flush=True)\n"
        "        pool.submit(time.sleep, 120)  # a training run, as far as the worker knows\n"
        "        time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, str(invocation)], stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())

    time.sleep(0.5)
    assert running(worker)  # the invocation alive: the worker stays
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while running(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    if running(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker of a killed invocation went on running")


def test_jobs_on_the_command_line_sets_the_runs_at_once_for_any_output_folder(reproduce, tmp_path, capsys,
                                                                               monkeypatch):
    import dataclasses

    from repro import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["--tiny", "--out", str(tmp_path), "--jobs", "0"])
    assert exc.value.code == 2 and "--jobs" in capsys.readouterr().err
    seen = {}
    monkeypatch.setattr(cli, "run", lambda sizes, *a, **k: seen.update(k))
    assert cli.main(["--tiny", "--out", str(tmp_path), "--jobs", "3"]) == 0 and seen["jobs"] == 3
    # a folder begun with the sizes' own number takes another: the runs are the same
    full = dataclasses.replace(reproduce.FULL, double_runs=("single_D005",))
    reproduce.Reproduction(full, tmp_path).check_sizes()
    rep = reproduce.Reproduction(full, tmp_path, pairs=True, jobs=1)
    rep.check_sizes()
    rep.dataset_ids = ["D005"]
    started = _runs_started(rep, monkeypatch)
    rep.train_all(only=["single_D005", "double_single_D005"])
    assert rep.sizes.jobs == 2 and started == []  # one at a time: the stages train them, not the pool
    rep.jobs = 3
    rep.train_all(only=["single_D005", "double_single_D005"])
    assert started == ["double_single_D005", "single_D005"]


def test_no_double_forgets_a_doubling_an_earlier_invocation_asked_for(reproduce, tmp_path, capsys, monkeypatch):
    import dataclasses

    from repro import cli

    tiny = dataclasses.replace(reproduce.TINY, double_runs=("single_D007",))
    asked = ("single_D005", "double_single_D005", "single_D006")
    reproduce.Reproduction(dataclasses.replace(tiny, double_runs=asked), tmp_path, pairs=True).check_sizes()
    monkeypatch.setattr(cli, "SIZES", {**cli.SIZES, "tiny": tiny})
    for argv, msg in ((["--no-double", "single_D001"], "was not asked for"),
                      (["--no-double", "single_D005"], "needed by double_single_D005"),
                      (["--no-double", "single_D007"], "sizes' own doublings"),
                      (["--no-double", "single_D006", "--pairs", "--double", "single_D006"], "named by --double")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["--tiny", "--out", str(tmp_path), *argv])
        assert exc.value.code == 2 and msg in capsys.readouterr().err
    seen = {}
    monkeypatch.setattr(cli, "run", lambda sizes, *a, **k: seen.update(k))
    assert cli.main(["--tiny", "--out", str(tmp_path), "--no-double", "double_single_D005"]) == 0
    assert seen["withdrawn"] == ("double_single_D005",)
    # its unfinished run is left out of the report; a finished run no longer in the table stays in it
    for name, files in (("double_double_single_D005", ["log.jsonl"]), ("double_single_D006", ["log.jsonl"]),
                        ("finetune_supervised_seed9", ["log.jsonl", "checkpoint_final.pt"])):
        (tmp_path / "runs" / name).mkdir(parents=True)
        for f in files:
            (tmp_path / "runs" / name / f).write_text("")
    # the folder forgets it: a later invocation that names no doubling has the others, and not the forgotten one
    reproduce.Reproduction(tiny, tmp_path, pairs=True, withdrawn=seen["withdrawn"]).check_sizes()
    later = reproduce.Reproduction(tiny, tmp_path, pairs=True)
    later.check_sizes()
    later.dataset_ids = list(tiny.datasets)
    assert later.sizes.double_runs == ("single_D005", "single_D006", "single_D007")
    assert "double_double_single_D005" not in later.training_jobs()
    assert ("single_D005", "double_single_D005") in later.pair_list()
    assert [p.name for p in later.reported_runs()] == ["double_single_D006", "finetune_supervised_seed9"]


def test_fine_tunings_may_start_from_a_longer_run_of_a_pre_trainings_chain(reproduce, tmp_path, capsys, monkeypatch):
    import dataclasses

    from repro import cli

    # the command line: needs --pairs and a run of a pre-training's chain; adds the chain up to that run
    for argv, msg in ((["--finetune-from", "double_pretrain_multitalent"], "needs --pairs"),
                      (["--pairs", "--finetune-from", "double_single_D005"], "not a run of a pre-training"),
                      (["--pairs", "--finetune-from", "half_pretrain_supervised"], "not a run of a pre-training")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["--tiny", "--out", str(tmp_path), *argv])
        assert exc.value.code == 2 and msg in capsys.readouterr().err
    seen = {}
    monkeypatch.setattr(cli, "run", lambda sizes, *a, **k: seen.setdefault("sizes", sizes))
    assert cli.main(["--tiny", "--pairs", "--out", str(tmp_path), "--finetune-from",
                     "double_double_pretrain_multitalent", "--double", "finetune_multitalent_x4_seed0"]) == 0
    sizes = seen["sizes"]
    assert sizes.ft_from == ("double_double_pretrain_multitalent",)
    assert {"pretrain_multitalent", "double_pretrain_multitalent", "finetune_multitalent_x4_seed0"} \
        <= set(sizes.double_runs)
    # the table: the MultiTalent fine-tunings start from 4x the pre-training, under names of their own
    rep = reproduce.Reproduction(sizes, tmp_path, pairs=True)
    rep.dataset_ids = list(sizes.datasets)
    jobs = rep.training_jobs()
    ft = jobs["finetune_multitalent_x4_seed0"]
    assert ft["pretrained"] == "double_double_pretrain_multitalent" and ft["after"] == [ft["pretrained"]]
    assert jobs["double_double_pretrain_multitalent"]["epochs"] == 4 * jobs["pretrain_multitalent"]["epochs"]
    # the table's fine-tunings from the unconverged pre-training: only the extension experiment's (--extend), unpaired
    assert jobs["finetune_multitalent_seed0"]["extension"] and "half_finetune_multitalent_seed0" not in jobs
    assert set(rep.extension_jobs()) <= set(jobs)
    assert jobs["finetune_scratch_seed0"]["pretrained"] == "pretrain_multitalent"  # its weights are not used
    assert jobs["finetune_supervised_seed0"]["pretrained"] == "pretrain_supervised"
    assert ("half_finetune_multitalent_x4_seed0", "finetune_multitalent_x4_seed0") in rep.pair_list()
    assert ("finetune_multitalent_x4_seed0", "double_finetune_multitalent_x4_seed0") in rep.pair_list()
    # the folder remembers the start: a later invocation that names none keeps it, one that names another replaces
    rep.check_sizes()
    later = reproduce.Reproduction(reproduce.TINY, tmp_path)
    later.check_sizes()
    assert later.sizes.ft_from == ("double_double_pretrain_multitalent",)
    assert later.ft_run("multitalent", 0) == "finetune_multitalent_x4_seed0"
    other = reproduce.Reproduction(dataclasses.replace(reproduce.TINY, ft_from=("pretrain_multitalent",
                                                                                "double_pretrain_supervised")),
                                   tmp_path)
    other.check_sizes()
    assert other.ft_run("multitalent", 1) == "finetune_multitalent_seed1"
    assert other.ft_run("supervised", 1) == "finetune_supervised_x2_seed1"
    assert other.ft_run("scratch", 1) == "finetune_scratch_seed1"
    # a training of the fine-tunings alone trains their start first (a run of the chain, --pairs or not)
    started = _runs_started(rep, monkeypatch)
    rep.pairs = False
    rep.jobs = 2
    rep.train_all(only=["finetune_multitalent_x4_seed0"])
    assert started == ["double_double_pretrain_multitalent", "finetune_multitalent_x4_seed0"]


def test_the_transfer_verdict_needs_the_start_its_fine_tunings_came_from_converged(reproduce):
    from repro.statistics import _transfer_findings, apply_stand_ins

    seeds = [0, 1, 2]
    runs = {"scratch": {s: f"finetune_scratch_seed{s}" for s in seeds},
            "multitalent": {s: f"finetune_multitalent_x4_seed{s}" for s in seeds},
            "supervised": {s: f"finetune_supervised_seed{s}" for s in seeds}}
    starts = {"scratch": "pretrain_multitalent", "multitalent": "double_double_pretrain_multitalent",
              "supervised": "pretrain_supervised"}
    gain = {"scratch": 0.0, "multitalent": 0.2, "supervised": 0.1}
    per_seed = {c: {s: {"dataset_dice": 0.5 + gain[c] + 0.01 * s, "heads": {"D005_a": 0.5 + gain[c] + 0.01 * s,
                                                                             "D005_b": 0.4 + gain[c] - 0.01 * s}}
                    for s in seeds} for c in runs}
    transfer = {"per_seed": per_seed, "heads": ["D005_a", "D005_b"], "runs": runs, "starts": starts}
    conv = {n: {"converged": True} for rs in runs.values() for n in rs.values()}
    conv.update({"pretrain_multitalent": {"converged": False}, "pretrain_supervised": {"converged": True},
                 "double_double_pretrain_multitalent": {"converged": True}})
    found = {f["key"]: f for f in _transfer_findings({"transfer": transfer, "convergence": conv, "judged": True})}
    assert found["transfer_scratch"]["verdict"] == "holds"  # the table's own pre-training is not what they came from
    conv["double_double_pretrain_multitalent"] = {"converged": False}
    found = {f["key"]: f for f in _transfer_findings({"transfer": transfer, "convergence": conv, "judged": True})}
    assert found["transfer_scratch"]["verdict"] != "holds"
    assert "double_double_pretrain_multitalent" in found["transfer_scratch"]["measured"]
    # a fine-tuning's stand-in is found under its own name
    conv["double_double_pretrain_multitalent"] = {"converged": True}
    conv["finetune_multitalent_x4_seed1"] = {"converged": False}
    conv["double_finetune_multitalent_x4_seed1"] = {"converged": True}
    chains = {"double_finetune_multitalent_x4_seed1": {"datasets": {"D005": {"dice_mean": 0.95}},
                                                       "heads": {"D005_a": {"dice_mean": 0.9},
                                                                 "D005_b": {"dice_mean": 1.0}}}}
    out = apply_stand_ins({"convergence": conv, "chains": chains, "dataset_ids": [], "summaries": {},
                           "transfer": transfer})
    assert out["stand_ins"] == {"finetune_multitalent_x4_seed1": "double_finetune_multitalent_x4_seed1"}
    assert out["transfer"]["per_seed"]["multitalent"][1]["dataset_dice"] == 0.95
    # the report says where the fine-tunings started
    from repro import report

    assert "MultiTalent pre-training from `double_double_pretrain_multitalent`" in report._starts_note(starts)
    assert report._starts_note({"scratch": "pretrain_multitalent", "multitalent": "pretrain_multitalent",
                                "supervised": "pretrain_supervised"}) == ""


def test_a_second_invocation_on_the_same_folder_stops_at_once(reproduce, tmp_path, capsys):
    from filelock import FileLock
    from repro import cli

    held = FileLock(str(tmp_path / ".reproduce.lock"))  # another invocation running on this folder
    held.acquire()
    try:
        for mode in ("--pairs", "--extend-only"):
            argv = ["--tiny", mode, "--out", str(tmp_path)]
            with pytest.raises(SystemExit) as exc:
                cli.main(argv)
            assert exc.value.code == 2 and "another reproduce.py invocation is running" in capsys.readouterr().err
    finally:
        held.release()
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()  # nothing started


def test_the_gain_of_a_budget_pair_comes_with_its_standard_error_over_the_held_out_cases(reproduce):
    import numpy as np
    from repro.statistics import budget_pair_rows, gain_standard_error

    cases = {"a": {"h1": {"c1": 0.5, "c2": 0.6, "c3": 0.7}, "h2": {"c4": 0.2, "c5": 0.4}, "thin": {"c1": 0.0}},
             "b": {"h1": {"c1": 0.6, "c2": 0.6, "c3": 0.9}, "h2": {"c4": 0.2, "c5": 0.6}, "thin": {"c1": 1.0}}}
    d1, d2 = np.array([0.1, 0.0, 0.2]), np.array([0.0, 0.2])
    expected = np.sqrt(d1.var(ddof=1) / 3 + d2.var(ddof=1) / 2) / 2
    se, n = gain_standard_error(cases, "a", "b", {"thin"})  # the head below resolution is left out
    assert n == 5 and se == pytest.approx(expected)
    assert gain_standard_error(cases, "a", "b", set())[0] is None  # a head with one case: no estimate
    heldout = {r: {h: float(np.mean(list(v.values()))) for h, v in hs.items()} for r, hs in cases.items()}
    (row,) = budget_pair_rows({"pairs": [("a", "b")], "heldout": heldout, "heldout_cases": cases}, {"thin"})
    assert row["se"] == pytest.approx(expected) and row["n_cases"] == 5
    assert row["gain"] == pytest.approx((d1.mean() + d2.mean()) / 2)
    (row,) = budget_pair_rows({"pairs": [("a", "b")], "heldout": heldout}, {"thin"})  # older folders: no cases
    assert row["se"] is None and row["gain"] is not None


def test_a_model_converged_only_at_a_longer_budget_stands_in_for_its_table_run(reproduce):
    from repro.statistics import apply_stand_ins, stand_ins, with_stand_ins

    def summary(dice: dict[str, dict[str, float]]) -> dict:  # {dataset: {case: Dice of its one head}}
        heads = {f"{ds}_h": {"dataset": ds, "lesion": False, "difficult": False,
                             "dice_mean": sum(v.values()) / len(v)} for ds, v in dice.items()}
        return {"heads": heads, "cases": {ds: {c: {f"{ds}_h": {"dice": d}} for c, d in v.items()}
                                          for ds, v in dice.items()},
                "datasets": {ds: {"dice_mean": heads[f"{ds}_h"]["dice_mean"]} for ds in dice},
                "dataset_average": {"dice_mean": None}, "groups": {"all": {"heads": list(heads), "dice_mean": None}}}

    # single_A converged at N; single_B only at 4N (N -> 2N +5, 2N -> 4N +0.5 points); single_C never
    conv = {"single_A": {"converged": True}, "single_B": {"converged": False},
            "double_single_B": {"converged": True, "converged_within_noise": True},
            "double_double_single_B": {"converged": True}, "single_C": {"converged": False},
            "double_single_C": {"converged": False}, "finetune_scratch_seed0": {"converged": False},
            "double_finetune_scratch_seed0": {"converged": True}}
    names = ["single_A", "single_B", "single_C", "finetune_scratch_seed0"]
    assert stand_ins(conv, names) == {"single_B": "double_single_B",
                                      "finetune_scratch_seed0": "double_finetune_scratch_seed0"}
    view = with_stand_ins(conv, stand_ins(conv, names))
    assert view["single_B"]["converged"] and view["single_B"]["stand_in"] == "double_single_B"
    assert view["single_C"]["converged"] is False and not conv["single_B"]["converged"]  # the table stays as is
    table = summary({"A": {"a1": 0.8, "a2": 0.6}, "B": {"b1": 0.2, "b2": 0.4}, "C": {"c1": 0.5}})
    chains = {"double_single_B": summary({"B": {"b1": 0.6, "b2": 0.8}}),
              "double_finetune_scratch_seed0": {"datasets": {"D005": {"dice_mean": 0.9}},
                                                "heads": {"D005_x": {"dice_mean": 0.9}}}}
    transfer = {"per_seed": {"scratch": {0: {"dataset_dice": 0.3, "heads": {"D005_x": 0.3}}},
                             "multitalent": {0: {"dataset_dice": 0.5, "heads": {"D005_x": 0.5}}}}, "heads": ["D005_x"]}
    ctx = {"convergence": conv, "chains": chains, "dataset_ids": ["A", "B", "C"], "summaries": {"single": table},
           "transfer": transfer}
    out = apply_stand_ins(ctx)
    single = out["summaries"]["single"]
    assert single["heads"]["B_h"]["dice_mean"] == pytest.approx(0.7)
    assert single["cases"]["B"]["b1"]["B_h"]["dice"] == 0.6
    assert single["heads"]["A_h"] == table["heads"]["A_h"] and out["summaries_table_budget"]["single"] is table
    assert single["dataset_average"]["dice_mean"] == pytest.approx((0.7 + 0.7 + 0.5) / 3)
    assert single["groups"]["all"]["dice_mean"] == pytest.approx((0.7 + 0.7 + 0.5) / 3)
    assert out["transfer"]["per_seed"]["scratch"][0] == {"dataset_dice": 0.9, "heads": {"D005_x": 0.9}}
    assert out["transfer"]["per_seed"]["multitalent"] == transfer["per_seed"]["multitalent"]
    assert transfer["per_seed"]["scratch"][0]["dataset_dice"] == 0.3  # the table's scores are kept apart
    # the samples table gains the compared single-dataset models (a stand-in drew twice its table run's)
    samples = apply_stand_ins({**ctx, "samples": {"its single-dataset model": {}}},
                              lambda run: {run.rsplit("_", 1)[1]: 200.0 if run.startswith("double_") else 100.0})
    assert samples["samples"]["its single-dataset model, as compared"] == {"A": 100.0, "B": 200.0, "C": 100.0}
    assert "its single-dataset model" in samples["samples"]
    # a stand-in without test scores (not predicted) replaces nothing
    assert apply_stand_ins({**ctx, "chains": {}}) == {"stand_ins": {}}


def test_the_chains_of_fine_tunings_from_an_earlier_start_are_not_scored(reproduce, tmp_path, monkeypatch):
    import dataclasses

    from multitalent.registry import HeadRegistry

    # the folder's fine-tunings were doubled from the table's start, then --finetune-from named a longer one
    sizes = dataclasses.replace(reproduce.TINY, ft_from=("double_pretrain_supervised",),
                                double_runs=("pretrain_supervised", "finetune_supervised_seed0",
                                             "finetune_supervised_x2_seed0"))
    rep = reproduce.Reproduction(sizes, tmp_path, pairs=True)
    rep.dataset_ids, rep.pre = list(sizes.datasets), {"target": tmp_path}
    for run in ("double_finetune_supervised_seed0", "double_finetune_supervised_x2_seed0"):
        (rep.runs / run).mkdir(parents=True)
        (rep.runs / run / "checkpoint_final.pt").touch()
    assert "double_finetune_supervised_seed0" not in rep.training_jobs()
    monkeypatch.setattr(HeadRegistry, "load", staticmethod(lambda path: None))
    monkeypatch.setattr(rep, "finetune_summary", lambda name, registry: {"run": name})
    assert rep.chain_runs() == {"double_finetune_supervised_x2_seed0": {"run": "double_finetune_supervised_x2_seed0"}}


def test_the_transfer_section_shows_the_fine_tunings_at_each_budget_of_their_chains(reproduce):
    from repro import report

    conds, seeds = ["scratch", "multitalent", "supervised"], [0, 1]
    per_seed = {c: {sd: {"dataset_dice": 0.1 * (i + 1)} for sd in seeds} for i, c in enumerate(conds)}
    chains = {f"double_finetune_{c}_seed{sd}": {"datasets": {"D005": {"dice_mean": 0.5 + 0.1 * sd}}}
              for c in conds for sd in seeds}
    conv = {"finetune_scratch_seed0": {"iterations": [700]}, "double_finetune_scratch_seed0": {"iterations": [1400]}}
    lines: list[str] = []
    ctx = {"chains": chains, "convergence": conv, "transfer": {"per_seed": per_seed}}
    report._longer_finetunes(ctx, lines.append, conds, seeds)
    assert "| 1x (700 iterations) | 10.0 ± 0.0 | 20.0 ± 0.0 | 30.0 ± 0.0 |" in lines
    assert "| 2x (1400 iterations) | 55.0 ± 7.1 | 55.0 ± 7.1 | 55.0 ± 7.1 |" in lines
    assert not any(line.startswith("| 4x") for line in lines)  # no 4x run of any seed
    # a condition trained at a budget for some seeds shows each of their values; a budget no run has, no row
    del chains["double_finetune_supervised_seed1"]
    chains.update({f"double_double_finetune_scratch_seed{sd}": {"datasets": {"D005": {"dice_mean": 0.9}}}
                   for sd in seeds})
    conv["double_double_finetune_scratch_seed0"] = {"iterations": [2800]}
    lines.clear()
    report._longer_finetunes(ctx, lines.append, conds, seeds)
    assert "| 2x (1400 iterations) | 55.0 ± 7.1 | 55.0 ± 7.1 | 50.0 (seed 0) |" in lines
    assert "| 4x (2800 iterations) | 90.0 ± 0.0 | — | — |" in lines
    assert not any(line.startswith("| 8x") for line in lines)
    seeds3 = [0, 1, 2]
    chains.update({f"double_double_double_finetune_multitalent_seed{sd}": {"datasets": {"D005": {"dice_mean": v}}}
                   for sd, v in ((0, 0.676), (2, 0.687))})
    per_seed3 = {c: {sd: {"dataset_dice": 0.5} for sd in seeds3} for c in conds}
    conv["double_double_double_finetune_multitalent_seed0"] = {"iterations": [5600]}
    lines.clear()
    report._longer_finetunes({**ctx, "transfer": {"per_seed": per_seed3}}, lines.append, conds, seeds3)
    assert "| 8x (5600 iterations) | — | 67.6, 68.7 (seeds 0, 2) | — |" in lines
    chains.clear()
    lines.clear()
    report._longer_finetunes(ctx, lines.append, conds, seeds)
    assert lines == []


def test_a_run_has_converged_when_doubling_its_budget_gains_less_than_a_point(reproduce):
    heldout = {"a_half": {"h1": 0.50, "h2": 0.70}, "a": {"h1": 0.52, "h2": 0.69},  # +0.5 points: converged
               "b_half": {"h1": 0.40, "h2": 0.50}, "b": {"h1": 0.45, "h2": 0.55},  # +5 points
               "b_double": {"h1": 0.455, "h2": 0.555, "thin": 0.0},  # +0.5 (the thin head is below resolution)
               "c_half": {"h1": 0.3}, "c": {"h1": 0.4}}  # +10 points and no longer run
    pairs = {"pairs": [("a_half", "a"), ("b_half", "b"), ("b", "b_double"), ("c_half", "c"), ("d_half", "d")],
             "heldout": heldout}
    rows = reproduce.budget_pair_rows(pairs, below={"thin"})
    assert [r["within"] for r in rows] == [True, False, True, False, None]
    assert rows[1]["gain"] == pytest.approx(0.05) and rows[2]["dice"] == [pytest.approx(0.5), pytest.approx(0.505)]
    conv = {n: {"converged": True} for n in ("a_half", "a", "b_half", "b", "b_double", "c", "d", "e")}
    out = reproduce.by_budget_pairs(conv, rows)
    states = {n: c["converged"] for n, c in out.items()}
    # b gains 5 points over its half but less than one point from doubling: b has converged, b_half has not
    assert states == {"a_half": True, "a": True, "b_half": False, "b": True, "b_double": True, "c": False,
                      "d": None, "e": None}
    assert out["c"]["converged_last_quarter"] is True  # the earlier criterion stays beside
    # a later doubling that gained a point or more overrides a pair within one point: the plateau was not reached
    chain = [{"shorter": "x_half", "longer": "x", "within": True}, {"shorter": "x", "longer": "x_2", "within": False},
             {"shorter": "x_2", "longer": "x_4", "within": True}, {"shorter": "y", "longer": "y_2", "within": True},
             {"shorter": "y_half", "longer": "y", "within": False}]
    later = reproduce.by_budget_pairs({n: {} for n in ("x_half", "x", "x_2", "x_4", "y_half", "y", "y_2")}, chain)
    assert {n: c["converged"] for n, c in later.items()} == {
        "x_half": False, "x": False, "x_2": True, "x_4": True, "y_half": False, "y": True, "y_2": True}
    assert reproduce.last_quarter(out)["c"]["converged"] is True
    # the pairs joined into chains of the same settings for the plot: b_half, b, b_double is one chain
    from repro.report import budget_chains

    its = {"a_half": 1, "a": 2, "b_half": 1, "b": 2, "b_double": 4, "c_half": 1, "c": 2}
    chains = budget_chains({"convergence": {n: {"iterations": [i]} for n, i in its.items()}, "pair_rows": rows})
    assert [[n for _, _, n in ch] for ch in chains] == [["a_half", "a"], ["b_half", "b", "b_double"],
                                                        ["c_half", "c"]]


def _write_log(run: Path, curve: list[float]) -> None:
    run.mkdir(parents=True)
    with open(run / "log.jsonl", "w") as fh:
        for i, y in enumerate(curve):
            fh.write(json.dumps({"epoch": i, "iteration": 10 * (i + 1), "mean_pseudo_dice": y}) + "\n")


def test_convergence_is_the_gain_over_the_last_quarter(reproduce, tmp_path):
    rising = [0.1 * i for i in range(8)]  # +0.1 per epoch: gains 0.2 over the last quarter
    _write_log(tmp_path / "rising", rising)
    c = reproduce.convergence(tmp_path / "rising")
    assert c["converged"] is False and c["gain_last_quarter"] == pytest.approx(0.2)
    assert c["iterations"] == [10 * (i + 1) for i in range(8)]
    # a plateau with validation noise of a few points: converged (means of epochs, not the last value)
    plateau = [0.3, 0.6, 0.75, 0.80, 0.83, 0.79, 0.84, 0.80, 0.82, 0.81]
    _write_log(tmp_path / "plateau", plateau)
    assert reproduce.convergence(tmp_path / "plateau")["converged"] is True
    _write_log(tmp_path / "short", [0.1, 0.2, 0.3])
    assert reproduce.convergence(tmp_path / "short")["converged"] is None


def test_the_noise_aware_reading_forgives_a_plateau_but_not_a_climb(reproduce, tmp_path):
    plateau = [0.46 + (0.015 if i % 2 else -0.015) for i in range(32)]  # flat, 1.5 points of noise
    plateau[-4:] = [v + 0.012 for v in plateau[-4:]]  # and a 1.2-point 'gain' at the end
    _write_log(tmp_path / "flat", plateau)
    c = reproduce.convergence(tmp_path / "flat")
    assert c["converged"] is False and c["converged_within_noise"] is True and 0.005 < c["noise_sd"] < 0.03
    climb = [0.01 * i for i in range(32)]  # one point per epoch, no noise
    _write_log(tmp_path / "climb", climb)
    c = reproduce.convergence(tmp_path / "climb")
    assert c["converged"] is False and c["converged_within_noise"] is False
    assert reproduce.within_noise({"r": c})["r"]["converged"] is False


def test_the_claim_is_also_judged_on_the_datasets_whose_single_model_converged(reproduce):
    from types import SimpleNamespace

    from repro import statistics

    heads = {"A_x": "A", "A_y": "A", "B_x": "B", "C_x": "C"}
    cases = {"A": ["a1", "a2", "a3"], "B": ["b1", "b2"], "C": ["c1", "c2"]}

    def summary(dice: dict[str, float]) -> dict:
        return {"heads": {h: {"dice_mean": dice[h], "dataset": ds, "difficult": False} for h, ds in heads.items()},
                "cases": {ds: {c: {h: {"dice": dice[h] + 0.01 * i} for h, d in heads.items() if d == ds}
                               for i, c in enumerate(cs)} for ds, cs in cases.items()}}

    mt = summary({"A_x": 0.9, "A_y": 0.8, "B_x": 0.7, "C_x": 0.2})
    sg = summary({"A_x": 0.6, "A_y": 0.5, "B_x": 0.4, "C_x": 0.9})  # C: the single model far better, unconverged
    conv = {"multitalent_plain_unet": {"converged": True}, "single_A": {"converged": True},
            "single_B": {"converged": True}, "single_C": {"converged": False}}
    ctx = {"sizes": reproduce.FULL, "summaries": {"multitalent_plain_unet": mt, "single": sg}, "convergence": conv,
           "judged": True, "dataset_ids": ["A", "B", "C"],
           "registry": SimpleNamespace(heads=[SimpleNamespace(id=h, lesion=h in ("A_y", "B_x", "C_x"))
                                              for h in heads])}
    out = {f["key"]: f for f in statistics._arch_findings(ctx, "plain_unet", list(heads))}
    assert out["t1_average_plain_unet"]["verdict"] == reproduce.NOT_CONVERGED  # single_C has not converged
    assert out["t1_lesions_plain_unet"]["verdict"] == reproduce.NOT_CONVERGED
    sub = out["t1_converged_plain_unet"]
    assert "(A, B)" in sub["claim"] and sub["tests"]["heads"]["n"] == 3 and sub["tests"]["cases"]["n"] == 5
    assert sub["tests"]["heads"]["mean_difference"] == pytest.approx(0.3) and sub["verdict"] == "holds"
    # the lesion heads of those datasets (C_x is left out) by the same rule: significant, but no larger gain
    # than on all their heads (every difference is 0.3 points here)
    les = out["t1_converged_lesions_plain_unet"]
    assert les["tests"]["heads"]["n"] == 2 and les["tests"]["cases"]["n"] == 5
    assert les["verdict"] == "holds, but the gain is not larger than on all heads"
    assert "t1_converged_difficult_plain_unet" not in out  # no difficult head in A or B
    # no subset verdict when MultiTalent has not converged, or when every single model has (the claim itself)
    for change in ({"multitalent_plain_unet": {"converged": None}}, {"single_C": {"converged": True}}):
        ctx["convergence"] = {**conv, **change}
        assert "t1_converged_plain_unet" not in {f["key"] for f in statistics._arch_findings(ctx, "plain_unet",
                                                                                              list(heads))}


def t1_text(text: str) -> str:
    return _section(text, "## 1. MultiTalent")


@pytest.mark.slow  # the whole reduced reproduction: trains every run
def test_tiny_reproduction_writes_the_report_and_resumes(reproduce, tmp_path):
    out = tmp_path / "repro"
    ctx = reproduce.run(reproduce.TINY, out, seed=0, quiet=True, extend=True, pairs=True)
    report = out / "results.md"
    text = report.read_text()
    assert (out / "results_boxplot.png").stat().st_size > 0
    assert (out / "results_curves.png").stat().st_size > 0
    assert (out / "results_budget.png").stat().st_size > 0
    for title in ("## Run", "## 0. Convergence", "## 1. MultiTalent vs single-dataset", "## 2. Protocol fidelity",
                  "## 3. Transfer", "## 4. Cost", "## Runs and calibration", "## Summary"):
        assert title in text, title
    assert "date: " in text and "machine: " in text and "wall time: " in text and "command: " in text
    # test sizes judge nothing: every verdict says so, none holds or fails
    verdicts = [f["verdict"] for f in ctx["findings"]]
    assert verdicts and "holds" not in verdicts and "does not hold" not in verdicts
    assert "**holds**" not in text and "**does not hold**" not in text
    abl = _section(text, "## Ablations")
    assert "| ablation_width16 |" in abl and ctx["summaries"]["ablation_width16"]["heads"]
    assert "vs single-dataset models" in abl and "not judged" in abl  # test sizes give no verdict here either
    assert "`benchmarks/ablate.py`" in abl and "`docs/results_ablations_2x.md`" in abl  # the ablations on their own
    assert (out / "runs" / "ablation_width16" / "checkpoint_final.pt").is_file()
    # MultiTalent at twice its budget (--pairs) is scored on the test cases beside the ablations
    assert "| double_multitalent_plain_unet |" in abl and ctx["summaries"]["double_multitalent_plain_unet"]["heads"]
    conv = _section(text, "## 0. Convergence")
    for name in ("multitalent_plain_unet", "merged_softmax", "single_D005", "finetune_scratch_seed0"):
        assert f"| {name} |" in conv
    # the budget pairs (--pairs): trained, scored on the held-out fold's whole scans, one table row each
    for shorter, longer in (("half_multitalent_plain_unet", "multitalent_plain_unet"),
                            ("multitalent_plain_unet", "double_multitalent_plain_unet"),
                            ("single_D005", "double_single_D005"),
                            ("half_finetune_scratch_seed0", "finetune_scratch_seed0")):
        assert re.search(rf"\| {shorter} \| \d+ \| [\d.]+ \| {longer} \| \d+ \| [\d.]+ \| [-+][\d.]+ \|", conv), shorter
        assert (out / "runs" / longer / "validation" / "summary.json").is_file()
    rows = {(r["shorter"], r["longer"]): r for r in ctx["pair_rows"]}
    assert rows[("half_merged_softmax", "merged_softmax")]["gain"] is not None
    assert all(ctx["convergence"][n]["converged"] is not None for n in ("multitalent_plain_unet", "merged_softmax"))
    # the validation's postprocessing decision is removed: every prediction of the reproduction stays raw
    assert not list((out / "runs").glob("*/postprocessing.json"))
    # the paper's figures beside ours
    assert "80.21" in t1_text(text) and "84.41" in _section(text, "## 3. Transfer")

    t1 = _section(text, "## 1. MultiTalent")
    for head in ctx["registry"].ids:
        assert f"| {head} |" in t1
    assert "| over datasets |" in t1 and "| lesion heads |" in t1 and "| difficult heads |" in t1
    assert len(_table_numbers(t1)) >= 3 * len(ctx["registry"].ids)

    fid = _section(text, "## 2. Protocol fidelity")
    for conflict in ("**aorta**", "**heart**", "**spleen**"):
        assert conflict in fid
    assert len(_table_numbers(fid)) > 0
    # the merged softmax merges same-name classes: its two aorta heads are one class
    rows = ctx["fidelity"]["conflicts"]["aorta"]["rows"]
    merged = [r["dice"] for r in rows if r["model"] == "merged_softmax"]
    assert len(merged) == 2 and merged[0] == merged[1]

    tr = _section(text, "## 3. Transfer")
    assert "| 0 |" in tr and "mean ± sd" in tr and "MultiTalent vs from scratch" in tr
    assert len(_table_numbers(tr)) > 0
    # adding the target to the pre-training: both extensions trained, scored and set beside the alternatives
    ext = _section(text, "## 5. Adding a dataset")
    for row in ("| pretrain_multitalent |", "| extend_union |", "| extend_distill |", "| multitalent_plain_unet |",
                "| fine-tuned to D005 (mean of seeds) |"):
        assert row in ext, row
    assert len(_table_numbers(ext)) > 0
    keys = {f["key"]: f["verdict"] for f in ctx["findings"] if f["key"].startswith("ext_")}
    assert len(keys) == 6 and set(keys.values()) == {"not judged (--quick checks the machinery)"}
    for run in ("extend_union", "extend_distill"):
        record = json.loads((out / "runs" / run / "config.json").read_text())
        assert record["extension"]["added_datasets"] == ["D005"]
    cost = _section(text, "## 4. Cost")
    assert "training time" in cost and "inference on" in cost
    assert ctx["cost"]["ratio"] > 0 and ctx["inference"]["ratio"] > 0

    # the chains' longer runs are scored on their table run's test cases; a run that converged only at a longer
    # budget is compared through it (forced here: the test sizes' states are whatever 2-iteration runs give)
    assert set(ctx["chains"]) == {"double_single_D005", "double_finetune_scratch_seed0"}
    assert set(ctx["chains"]["double_single_D005"]["datasets"]) == {"D005"}
    conv = {**ctx["convergence"], "single_D005": {**ctx["convergence"]["single_D005"], "converged": False},
            "double_single_D005": {**ctx["convergence"]["double_single_D005"], "converged": True},
            "finetune_scratch_seed0": {**ctx["convergence"]["finetune_scratch_seed0"], "converged": False},
            "double_finetune_scratch_seed0": {**ctx["convergence"]["double_finetune_scratch_seed0"],
                                              "converged": True}}
    forced = {**ctx, "convergence": conv, "stand_ins": {}}
    forced.update(reproduce.apply_stand_ins(forced))
    assert forced["stand_ins"] == {"single_D005": "double_single_D005",
                                   "finetune_scratch_seed0": "double_finetune_scratch_seed0"}
    forced["findings"] = reproduce.findings(forced)
    text2 = reproduce.write_report(tmp_path / "forced" / "results.md", forced)
    assert "**Stand-ins" in _section(text2, "## 0. Convergence")
    assert "single_D005 by double_single_D005" in _section(text2, "## 1. MultiTalent")
    assert "finetune_scratch_seed0 by double_finetune_scratch_seed0" in _section(text2, "## 3. Transfer")
    assert forced["summaries"]["single"]["heads"]["D005_spleen"] == \
        ctx["chains"]["double_single_D005"]["heads"]["D005_spleen"]

    # the evidence beside the report: the records every number came from, without checkpoints or images
    kept = _unpack_evidence(out / "results_evidence", tmp_path / "unpacked")
    assert kept == {p.relative_to(out).as_posix() for p in reproduce.evidence_files(out)}
    assert json.loads((tmp_path / "unpacked" / "results" / "findings.json").read_text()) == \
        json.loads(json.dumps(ctx["findings"]))
    trained = [p.parent.name for p in (out / "runs").glob("*/checkpoint_final.pt")]
    assert trained and all(f"runs/{name}/log.jsonl" in kept and f"runs/{name}/config.json" in kept
                           for name in trained)
    assert {"results.md", "results/invocations.json", "runs/double_single_D005/validation/summary.json",
            "evaluation/single/summary.json", "evaluation/multitalent_plain_unet/summary.json",
            "preprocessed/all/splits.json", "raw/collection.json"} <= kept
    assert not [n for n in kept if n.endswith((".pt", ".nii.gz", ".png", ".npy", ".npz", ".b2nd", ".lock"))]
    run_archive = out / "results_evidence" / "runs" / "single_D005.tar.xz"
    before = run_archive.stat().st_mtime_ns

    # resumable: a second invocation finds every run, prediction, evaluation and timing done
    lines_before = (out / "reproduce.log").read_text().count("\n")
    reproduce.run(reproduce.TINY, out, seed=0, quiet=True, extend=True, pairs=True)
    new = (out / "reproduce.log").read_text().splitlines()[lines_before:]
    assert not [line for line in new if "training" in line or "predicting" in line or "preprocessing" in line]
    invocations = json.loads((out / "results" / "invocations.json").read_text())
    assert len(invocations) == 2
    # rewritten by the second invocation where it changed; a finished run's archive is left as it was
    _unpack_evidence(out / "results_evidence", tmp_path / "unpacked2")
    assert len(json.loads((tmp_path / "unpacked2" / "results" / "invocations.json").read_text())) == 2
    assert run_archive.stat().st_mtime_ns == before


def _unpack_evidence(evidence: Path, into: Path) -> set[str]:
    """Unpack every archive of an evidence folder into ``into``; returns the paths unpacked."""
    names = set()
    for archive in sorted(evidence.rglob("*.tar.xz")):
        with tarfile.open(archive) as tar:
            names |= set(tar.getnames())
            tar.extractall(into, filter="data")
    return names


def test_the_evidence_keeps_the_records_only_and_the_same_records_give_the_same_bytes(reproduce, tmp_path):
    out = tmp_path / "out"
    log = '{"iteration": 2, "mean_pseudo_dice": 0.123456789, "pseudo_dice": {"D005_spleen": 0.5, "D005_liver": null}}'
    records = {"results.md": "# report", "reproduce.log": "[ 1.0s] training", "results/findings.json": "[]",
               "runs/single_D005/log.jsonl": log + "\n", "runs/single_D005/config.json": "{}",
               "runs/single_D005/validation/summary.json": "{}", "runs/single_D006/log.jsonl": "",
               "evaluation/single/summary.json": '{"dice": 0.123456789}', "preprocessed/all/splits.json": "[]",
               "raw/collection.json": "{}"}
    heavy = ("runs/single_D005/checkpoint_final.pt", "runs/single_D005/progress.png",
             "predictions/single/case_000/D005.nii.gz", "predictions/single/case_000/case.json",
             "preprocessed/all/cases/case_000.npy", "raw/Dataset005_X/imagesTr/case_000_0000.nii.gz",
             "results/wall_times.json.lock")
    for name, text in records.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    for name in heavy:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"\0" * 64)
    first, second = tmp_path / "a" / "results_evidence", tmp_path / "b"
    (first / "runs").mkdir(parents=True)
    (first / "runs" / "single_D999.tar.xz").write_bytes(b"a run no longer in the folder")
    assert reproduce.write_evidence(out, first) == len(records)
    assert sorted(p.relative_to(first).as_posix() for p in first.rglob("*.tar.xz")) == [
        "evaluation/single.tar.xz", "folder.tar.xz", "runs/single_D005.tar.xz", "runs/single_D006.tar.xz"]
    unpacked = tmp_path / "unpacked"
    assert _unpack_evidence(first, unpacked) == set(records)
    with tarfile.open(first / "runs" / "single_D005.tar.xz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {0}
    # every file byte for byte but the training logs, whose numbers are rounded
    assert (unpacked / "evaluation/single/summary.json").read_text() == records["evaluation/single/summary.json"]
    assert json.loads((unpacked / "runs/single_D005/log.jsonl").read_text()) == {
        "iteration": 2, "mean_pseudo_dice": 0.12346, "pseudo_dice": {"D005_spleen": 0.5, "D005_liver": None}}
    for p in out.rglob("*"):  # other times and a second writing: the same bytes
        os.utime(p, (12345, 12345))
    reproduce.write_evidence(out, second)
    for p in first.rglob("*.tar.xz"):
        assert p.read_bytes() == (second / p.relative_to(first)).read_bytes(), p
    assert reproduce.evidence_path(Path("docs/results.md")) == Path("docs/results_evidence")
    # the runs of other folders that a report's budget pairs read: their records, under paired/<folder>/
    other = tmp_path / "ablate8x" / "runs" / "single_D005"
    for name, text in (("log.jsonl", log + "\n"), ("config.json", "{}"), ("validation/summary.json", "{}"),
                       ("checkpoint_final.pt", "weights")):
        (other / name).parent.mkdir(parents=True, exist_ok=True)
        (other / name).write_text(text)
    third = tmp_path / "c"
    assert reproduce.write_evidence(out, third, paired=[other]) == len(records) + 3
    assert (third / "paired" / "ablate8x" / "single_D005.tar.xz").is_file()
    names = _unpack_evidence(third, tmp_path / "unpacked3")
    assert names == set(records) | {f"paired/ablate8x/runs/single_D005/{n}"
                                    for n in ("log.jsonl", "config.json", "validation/summary.json")}
    assert reproduce.write_evidence(out, third) == len(records)  # no longer read: removed
    assert not (third / "paired" / "ablate8x" / "single_D005.tar.xz").exists()
    # another folder of the same name: its own archive, not the first one's
    namesake = tmp_path / "elsewhere" / "ablate8x" / "runs" / "single_D005"
    namesake.mkdir(parents=True)
    (namesake / "config.json").write_text('{"other": 1}')
    reproduce.write_evidence(out, third, paired=[other, namesake])
    assert sorted(p.relative_to(third / "paired").as_posix() for p in (third / "paired").rglob("*.tar.xz")) == [
        "ablate8x/single_D005.tar.xz", "ablate8x_2/single_D005.tar.xz"]


@pytest.mark.slow  # trains the runs the extension experiment reads
def test_the_extension_experiment_runs_alone(reproduce, tmp_path):
    out = tmp_path / "ext"
    ctx = reproduce.run_extension_only(reproduce.TINY, out, seed=0, quiet=True)
    text = (out / "results_extension.md").read_text()
    assert "## 5. Adding a dataset" in text and "## Convergence of the runs compared" in text
    # only the runs section 5 reads were trained: no single-dataset model, no merged softmax
    trained = sorted(p.name for p in (out / "runs").iterdir() if (p / "checkpoint_final.pt").is_file())
    assert trained == sorted(["pretrain_multitalent", "extend_union", "extend_distill", "multitalent_plain_unet",
                              "finetune_multitalent_seed0"])
    assert len(ctx["findings"]) == 6 and all(f["verdict"].startswith("not judged") for f in ctx["findings"])
    for row in ("| extend_union |", "| extend_distill |", "| fine-tuned to D005 (mean of seeds) |"):
        assert row in text, row


def test_a_held_out_score_is_reused_only_when_it_scored_the_final_checkpoint_on_the_held_out_fold(
        reproduce, tmp_path, monkeypatch):
    import multitalent.training.validation as validation

    run = tmp_path / "runs" / "r"
    (run / "validation").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": {}, "val_cases": ["a_002", "a_001"]}))

    def cached(checkpoint: str, cases: list[str], dice: float) -> None:
        (run / "validation" / "validation.json").write_text(json.dumps(
            {"fold": "0", "checkpoint": checkpoint, "cases": cases}))
        (run / "validation" / "summary.json").write_text(json.dumps(
            {"heads": {"h": {"dice_mean": dice}}, "cases": {"A": {c: {"h": {"dice": dice}} for c in cases}}}))

    made = []

    def final_validation(path, **options):  # what `multitalent validate` leaves: the final checkpoint, the fold
        made.append(Path(path).name)
        cached("final", ["a_001", "a_002"], 0.75)

    monkeypatch.setattr(validation, "final_validation", final_validation)
    rep = reproduce.Reproduction(reproduce.TINY, tmp_path)
    cached("final", ["a_001", "a_002"], 0.5)  # made by an earlier invocation: reused
    assert rep.heldout_scores(run)[0] == {"h": 0.5} and made == []
    cached("best", ["a_001", "a_002"], 0.9)  # `multitalent validate --checkpoint best` by hand: made again
    means, cases = rep.heldout_scores(run)
    assert means == {"h": 0.75} and cases == {"h": {"a_001": 0.75, "a_002": 0.75}} and made == ["r"]
    cached("final", ["a_001"], 0.9)  # another set of cases
    assert rep.heldout_scores(run)[0] == {"h": 0.75} and made == ["r", "r"]


def test_the_committed_report_says_what_the_ablation_reports_measured(reproduce):
    """``docs/results.md`` holds the report's hand-maintained text on the ablations word for word (the next
    ``--full`` invocation writes it again), and the merged softmax's figures that text quotes are those of the
    committed K = 2 and K = 4 ablation reports."""
    docs = BENCHMARKS.parent / "docs"
    text = sys.modules["repro.report"].ABLATIONS_ELSEWHERE
    assert text in (docs / "results.md").read_text(encoding="utf-8")

    def over_datasets(report: str) -> dict[str, str]:
        lines = (docs / report).read_text(encoding="utf-8").splitlines()
        header = next(i for i, ln in enumerate(lines) if ln.startswith("| average |"))
        names = [c.strip() for c in lines[header].strip("|").split("|")]
        row = next(ln for ln in lines[header:] if ln.startswith("| over datasets |"))
        return dict(zip(names, (c.strip() for c in row.strip("|").split("|"))))

    for report in ("results_ablations_2x.md", "results_ablations_4x.md"):
        row = over_datasets(report)
        assert f"{row['ablation_softmax']} (" in text and row["ablation_mt_2n"] in text, report


def test_the_committed_report_s_addendum_quotes_the_ablation_reports(reproduce):
    """The hand-written addendum of ``docs/results.md`` (later budget doublings overturn two single models'
    convergence) quotes the committed ablation reports' figures: the pairs of single D006 and D007 and MultiTalent
    against the converged single models at K = 4."""
    docs = BENCHMARKS.parent / "docs"
    text = (docs / "results.md").read_text(encoding="utf-8")
    addendum = text.split("**Addendum (2026-12-05")[1].split("\n")[0]
    note = "*An addendum at the top of the Summary corrects the verdicts against the single-dataset models"
    assert note in text.split("## Run")[0]
    assert text.index("**Addendum (2026-12-05") > text.index("## Summary")

    def row(report: str, start: str) -> list[str]:
        line = next(ln for ln in (docs / report).read_text(encoding="utf-8").splitlines() if ln.startswith(start))
        return [c.strip() for c in line.strip("|").split("|")]

    gains = [row("results_ablations_2x.md", "| single_D006 | `/work/ablate` |")[4],
             row("results_ablations_2x.md", "| single_D007 | `/work/ablate` |")[4],
             row("results_ablations_2x.md", "| single_D007 | `/work/ablate4x` |")[4],
             row("results_ablations_4x.md", "| single_D007 | `/work/ablate8x` |")[4],
             row("results_ablations_4x.md", "| single_D005 | `/work/ablate8x` |")[4]]
    assert gains[:2] == ["+2.47", "+1.46"] and all(float(g) >= 1 for g in gains)  # none within one point
    for g in gains:
        assert g in addendum, g
    # the Ablations table's verdicts against the single-dataset models are named as corrected too
    verdicts = [ln for ln in text.split("## Ablations")[1].split("## ")[0].splitlines()
                if ln.endswith("|") and "no significant difference" in ln]
    assert len(verdicts) == 2
    for line in verdicts:
        assert line.split(" | ")[0].lstrip("| ") in addendum, line
    subset = "| MultiTalent as in the paper (the reference), on the datasets whose single model has converged "
    heads, cases = (row("results_ablations_4x.md", f"{subset}(D001, D003, D006) | {mt}")
                    for mt in ("61.6 | 63.3 | heads", "61.6 | 63.3 | cases"))
    assert heads[-1] == cases[-1] == "no significant difference"
    for v in ("61.6 vs 63.3", f"{heads[5]} points over {heads[4]} heads", f"p = {heads[6]}",
              f"{cases[5]} over {cases[4]} cases", f"p = {cases[6]}"):
        assert v in addendum, v
