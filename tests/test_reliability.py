"""Faults: real kills of training and prediction, non-finite losses, crashes while writing; and properties
that must hold for any input (hypothesis): region round trip, loss masking, sampling, window coverage and
geometry through NIfTI files.

The kills use real processes (``python -m multitalent ...`` killed with SIGKILL); the tiny collection, its
preprocessed folder and the reference run come from ``tests/test_cli.py`` (built once per session).
"""

from __future__ import annotations

import io as pyio
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from multitalent import io, objectives
from multitalent.cli import main
from multitalent.data.sampling import case_probabilities
from multitalent.errors import write_json
from multitalent.inference.sliding_window import sliding_window, weight_profile, window_starts
from multitalent.loss import MultiTalentLoss
from multitalent.preprocessing import pipeline
from multitalent.registry import Head, HeadRegistry
from multitalent.training import checkpoint as ckpt_mod
from multitalent.training import loop
from multitalent.training.checkpoint import load_checkpoint, save_checkpoint
from tests.test_cli import PRE_ARGS, SPLEEN, TRAIN_ARGS, Shared, hidden, shared_artifacts, snapshot


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Shared:
    return shared_artifacts(tmp_path_factory)


def spawn(args: list, cwd: Path, stderr: Path) -> subprocess.Popen:
    """``python -m multitalent ARGS`` as a real process, with this process's thread count (same numerics)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}
    with open(stderr, "w") as err:
        return subprocess.Popen([sys.executable, "-m", "multitalent", *[str(a) for a in args]], cwd=cwd,
                                env=env, stdout=subprocess.DEVNULL, stderr=err)


def wait_for(proc: subprocess.Popen, ready, timeout: float = 150.0, what: str = "") -> None:
    """Poll ``ready()`` every 10 ms; fail if the process ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def log_epochs(run: Path) -> list[int]:
    path = run / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


# --- training killed with SIGKILL ------------------------------------------------------------------------
def test_training_killed_mid_epoch_resumes_to_the_same_weights(shared: Shared, tmp_path: Path, capsys):
    """Kill ``multitalent train`` (SIGKILL) during epoch 2 of 3, after epoch 1 was checkpointed; ``--resume``
    finishes it, and the final weights equal those of the uninterrupted run bit for bit (CPU, same seed)."""
    run, stderr = tmp_path / "run", tmp_path / "stderr.txt"
    proc = spawn(["train", shared.pre, "-o", run, *TRAIN_ARGS], tmp_path, stderr)
    # tqdm prints the running epoch's bar to stderr: wait until epoch 2 has done at least one iteration
    epoch2_running = re.compile(r"epoch 2/3:[^\r\n]*\| [123]/4 ")
    wait_for(proc, lambda: (run / "checkpoint_latest.pt").is_file()
             and epoch2_running.search(stderr.read_text(encoding="utf-8", errors="replace")) is not None,
             what="epoch 2 started")
    proc.kill()
    assert proc.wait(timeout=30) == -9
    assert log_epochs(run) == [0], "the kill did not land in epoch 2"
    killed = load_checkpoint(run / "checkpoint_latest.pt")
    assert killed.epoch == 1 and killed.iteration == 4
    assert not (run / "checkpoint_final.pt").exists()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")], "temporary files after the kill"

    rc = main(["-q", "train", str(shared.pre), "-o", str(run), *TRAIN_ARGS])
    assert rc == 2 and "--resume" in capsys.readouterr().err  # an existing run is never replaced silently
    assert main(["-q", "train", str(shared.pre), "-o", str(run), *TRAIN_ARGS, "--resume"]) == 0
    assert log_epochs(run) == [0, 1, 2]
    resumed = load_checkpoint(run / "checkpoint_final.pt").state_dict
    straight = load_checkpoint(shared.run / "checkpoint_final.pt").state_dict
    assert resumed.keys() == straight.keys()
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key


# --- prediction killed with SIGKILL ----------------------------------------------------------------------
def scans(folder: Path, n: int = 3) -> list[str]:
    """``n`` small scans (27 windows each)."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    shape = (32, 64, 64)
    geometry = io.Geometry(shape, (1.5, 1.5, 1.5), (0.0, 0.0, 0.0), io.direction_for("RAS"))
    for i in range(n):
        img = np.full(shape, -1000, np.int16)
        img[3:-3, 8:-8, 8:-8] = 40
        img[10:24, 20:44, 20:44] = 90
        noise = rng.integers(-5, 5, shape).astype(np.int16)
        io.write_image(folder / f"case{i}_0000.nii.gz", img + noise, geometry)
    return [f"case{i}" for i in range(n)]


def complete(case_dir: Path) -> bool:
    if not (case_dir / "case.json").is_file():
        return False
    files = json.loads((case_dir / "case.json").read_text())["files"]
    return all((case_dir / f).is_file() for f in files)


def test_prediction_killed_mid_case_leaves_only_complete_cases(shared: Shared, tmp_path: Path, capsys):
    """Kill ``multitalent predict`` (SIGKILL) while its second case is being written: every case folder under
    its final name is complete; the rerun is refused without --continue/--overwrite, and with --continue it
    does only the missing cases, leaving the finished ones untouched."""
    cases = scans(tmp_path / "in")
    out = tmp_path / "out"
    proc = spawn(["-q", "predict", "-m", shared.run, "-i", tmp_path / "in", "-o", out], tmp_path,
                 tmp_path / "stderr.txt")

    def second_case_in_progress() -> bool:  # case0 renamed into place, case1's temporary folder exists
        names = [p.name for p in out.iterdir()] if out.is_dir() else []
        return "case0" in names and any(n.startswith(".case1.") for n in names)

    wait_for(proc, second_case_in_progress, what="the second case started")
    proc.kill()
    assert proc.wait(timeout=30) == -9
    finished = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert finished and len(finished) < len(cases), f"the kill did not land inside the run: {finished}"
    stale = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    for name in finished:  # nothing partial under a final name
        assert complete(out / name), name
        for f in (out / name).glob("*.nii.gz"):
            io.read_label(f)
    assert not (out / "heads.json").exists()
    stamps = {f: f.stat().st_mtime_ns for name in finished for f in (out / name).rglob("*")}

    rc = main(["-q", "predict", "-m", str(shared.run), "-i", str(tmp_path / "in"), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--continue" in err and err.count("\n") == 1
    assert main(["-q", "predict", "-m", str(shared.run), "-i", str(tmp_path / "in"), "-o", str(out),
                 "--continue"]) == 0
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == sorted(cases + ["heads.json"])
    assert all(complete(out / c) for c in cases)
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps  # finished cases were skipped, not redone
    # the killed process could not remove its temporary folder (a hidden name); --continue cleans it up
    assert stale and all(n.startswith(".case") for n in stale)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


# --- non-finite loss ----------------------------------------------------------------------------------------
def test_nonfinite_loss_stops_training_through_the_cli(shared: Shared, tmp_path: Path, capsys, caplog,
                                                       monkeypatch):
    """Every step non-finite: each is skipped and logged, and after --max-nonfinite in a row the command
    stops with exit code 1 and one line naming the last good checkpoint."""
    monkeypatch.setattr(objectives, "loss_on_batch", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with caplog.at_level(logging.WARNING, logger="multitalent"):
        rc = main(["-q", "train", str(shared.pre), "-o", str(tmp_path / "run"), *TRAIN_ARGS,
                   "--max-nonfinite", "3"])
    _, err = capsys.readouterr()
    assert rc == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("multitalent: error: the loss was non-finite in 3 consecutive iterations")
    assert "no checkpoint to resume from" in err  # every step failed, so no epoch was checkpointed
    skipped = [r.getMessage() for r in caplog.records if "non-finite loss, step skipped" in r.getMessage()]
    assert len(skipped) == 3


def test_nonfinite_stop_names_only_a_checkpoint_that_exists(shared: Shared, tmp_path: Path, capsys,
                                                             monkeypatch):
    monkeypatch.setattr(objectives, "loss_on_batch", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    run = tmp_path / "run"
    assert main(["-q", "train", str(shared.pre), "-o", str(run), *TRAIN_ARGS, "--max-nonfinite", "2"]) == 1
    err = capsys.readouterr().err
    assert (run / "checkpoint_latest.pt").is_file() or "checkpoint_latest.pt" not in err


def test_an_isolated_nonfinite_step_is_skipped_and_training_goes_on(shared: Shared, tmp_path: Path,
                                                                     monkeypatch):
    real = objectives.loss_on_batch
    calls = {"n": 0}

    def nan_on_second_call(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(objectives, "loss_on_batch", nan_on_second_call)
    args = [*TRAIN_ARGS, "--epochs", "1", "--iterations-per-epoch", "3", "--val-iterations", "0"]
    assert main(["-q", "train", str(shared.pre), "-o", str(tmp_path / "run"), *args]) == 0
    record = json.loads((tmp_path / "run" / "log.jsonl").read_text())
    assert record["skipped_steps"] == 1 and np.isfinite(record["train_loss"])
    weights = load_checkpoint(tmp_path / "run" / "checkpoint_final.pt").state_dict
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


# --- crashes while writing ----------------------------------------------------------------------------------
def test_crash_while_saving_a_checkpoint_keeps_the_previous_one(shared: Shared, tmp_path: Path, monkeypatch):
    """torch.save writes half the file and fails (disk full): checkpoint_latest.pt is still the old, loadable
    file and no temporary file is left."""
    run = tmp_path / "run"
    shutil.copytree(shared.run, run)
    latest = run / "checkpoint_latest.pt"
    before = latest.read_bytes()
    payload = load_checkpoint(latest).payload()
    payload["epoch"] = 99
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        buf = pyio.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        Path(f).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(latest, payload)
    monkeypatch.undo()
    assert latest.read_bytes() == before
    assert load_checkpoint(latest).epoch == 3
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_background_checkpoint_writes(tmp_path: Path):
    """The loop's checkpoints are written by a background thread from a CPU snapshot: save() returns while
    the file is being written, later in-place changes do not reach the file, and a failed write is raised
    by the next call while the previous file stays intact."""
    path = tmp_path / "c.pt"
    started, release = threading.Event(), threading.Event()

    def slow(p, payload):
        started.set()
        release.wait(10)
        save_checkpoint(p, payload)

    weights = torch.zeros(4)
    saver = ckpt_mod.BackgroundSaver(writer=slow)
    saver.save(path, {"state_dict": {"w": weights}, "epoch": 1})
    assert started.wait(10) and not path.exists()  # returned before the write
    weights += 5  # the training goes on changing the weights in place
    release.set()
    saver.wait()
    assert torch.equal(torch.load(path)["state_dict"]["w"], torch.zeros(4))

    def disk_full(p, payload):
        raise OSError(28, "No space left on device")

    before = path.read_bytes()
    saver.save(path, {"state_dict": {"w": weights}, "epoch": 2}, writer=disk_full)
    with pytest.raises(OSError, match="No space left"):
        saver.save(path, {"state_dict": {"w": weights}, "epoch": 3})  # the next call reports it
    assert path.read_bytes() == before
    # leaving the block waits for the pending write; the run's own error wins over a failed write
    with pytest.raises(ValueError, match="the run's error"):
        with ckpt_mod.BackgroundSaver(writer=disk_full) as failing:
            failing.save(path, {"epoch": 4})
            raise ValueError("the run's error")
    with pytest.raises(OSError):
        with ckpt_mod.BackgroundSaver(writer=disk_full) as failing:
            failing.save(path, {"epoch": 5})
    assert path.read_bytes() == before


def test_training_stops_when_a_background_checkpoint_write_fails(shared: Shared, tmp_path: Path, monkeypatch):
    """Disk full while the loop writes checkpoint_latest.pt in the background: the run stops with that
    error by the next epoch end, and no half-written checkpoint is left under the final name."""
    calls = {"n": 0}
    real = loop.save_checkpoint

    def fail_second(path, payload):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        real(path, payload)

    monkeypatch.setattr(loop, "save_checkpoint", fail_second)
    run = tmp_path / "run"
    cfg = loop.TrainConfig(epochs=3, iterations_per_epoch=1, val_iterations=0, base_features=4, num_workers=0,
                           fold="all", quiet=True)
    with pytest.raises(OSError, match="No space left"):
        loop.train(shared.pre, run, cfg)
    assert load_checkpoint(run / "checkpoint_latest.pt").epoch == 1  # the first epoch's, intact
    assert not (run / "checkpoint_final.pt").exists()


def test_crash_in_the_middle_of_preprocessing_leaves_the_old_folder(shared: Shared, tmp_path: Path,
                                                                    monkeypatch):
    """A crash while the third case is preprocessed: a previous preprocessed folder stays as it was, and no
    temporary folder is left."""
    out = tmp_path / "pre"
    shutil.copytree(shared.pre, out)
    before = snapshot(tmp_path)
    real = pipeline._preprocess_one
    calls = {"n": 0}

    def crash_on_third(job):
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("killed by the test")
        return real(job)

    monkeypatch.setattr(pipeline, "_preprocess_one", crash_on_third)
    with pytest.raises(MemoryError):
        main(["-q", "preprocess", str(shared.manifest), "-o", str(out), *PRE_ARGS])
    assert snapshot(tmp_path) == before
    assert not hidden(before, snapshot(tmp_path))


@pytest.mark.parametrize("writer", ["json", "nifti"])
def test_a_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch, writer):
    """Outputs are written to a temporary name and renamed: a failure mid-write leaves the old file."""
    g = io.Geometry((2, 3, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), io.direction_for("LPS"))
    target = tmp_path / ("x.json" if writer == "json" else "x.nii.gz")
    if writer == "json":
        write_json(target, {"v": 1})
    else:
        io.write_image(target, np.zeros(g.shape, np.int16), g)

        def half(img, path, *a, **k):
            Path(path).write_bytes(b"\x1f\x8b half")
            raise RuntimeError("disk full")

        monkeypatch.setattr(io.sitk, "WriteImage", half)
    before = target.read_bytes()
    with pytest.raises((TypeError, RuntimeError)):
        if writer == "json":
            write_json(target, {"v": 2, "bad": object()})  # fails while serialising
        else:
            io.write_image(target, np.ones(g.shape, np.int16), g)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


# --- properties ------------------------------------------------------------------------------------------
@st.composite
def region_datasets(draw):
    """A dataset whose label values 1..n form a forest (each value's parent is a smaller value or none); each
    value v is a head whose region is v and its descendants (nnU-Net regions written in increasing order),
    or, with ``plain``, independent single-value labels. Returns (registry, dataset id, label map)."""
    n = draw(st.integers(1, 6))
    plain = draw(st.booleans())
    parents = [None] + [None if plain else draw(st.sampled_from([0, *range(1, v)])) for v in range(1, n + 1)]

    def region(v: int) -> tuple[int, ...]:
        out, changed = {v}, True
        while changed:
            new = {u for u in range(1, n + 1) if parents[u] in out} - out
            changed = bool(new)
            out |= new
        return tuple(sorted(out))

    heads = [Head(f"D007_c{v}", "D007", f"c{v}", region(v)) for v in range(1, n + 1)]
    other = [Head("D001_liver", "D001", "liver", (1, 2)), Head("D001_tumor", "D001", "tumor", (2,))]
    datasets = {"D001": {"name": "Liver", "labels": {"liver": [1, 2], "tumor": [2]},
                         "regions_class_order": [1, 2]},
                "D007": {"name": "Random", "labels": {h.name: list(h.labels) for h in heads},
                         "regions_class_order": None if plain else list(range(1, n + 1))}}
    shape = draw(st.tuples(*[st.integers(1, 5)] * 3))
    seed = draw(st.integers(0, 2**16))
    seg = np.random.default_rng(seed).integers(0, n + 1, size=shape).astype(np.int16)
    order = draw(st.permutations(range(2)))
    reg_heads = [other, heads]
    return HeadRegistry(reg_heads[order[0]] + reg_heads[order[1]], datasets), "D007", seg


@settings(max_examples=60, deadline=None)
@given(region_datasets())
def test_region_targets_and_labelmap_round_trip(case):
    registry, dataset, seg = case
    masks = registry.targets(seg, dataset)
    assert masks.shape == (len(registry.heads_of(dataset)), *seg.shape)
    for h, m in zip(registry.heads_of(dataset), masks):
        assert np.array_equal(m, np.isin(seg, h.labels))
    assert np.array_equal(registry.labelmap(masks, dataset), seg)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 3), h=st.integers(1, 4), shape=st.tuples(*[st.integers(1, 4)] * 3),
       seed=st.integers(0, 2**16), levels=st.integers(1, 2))
def test_loss_ignores_unannotated_heads(b, h, shape, seed, levels):
    """Changing the logits or targets of unannotated (sample, head) pairs, even to NaN/inf, changes neither
    the loss nor any gradient; unannotated logits get a zero gradient."""
    gen = torch.Generator().manual_seed(seed)
    annotated = torch.rand(b, h, generator=gen) < 0.6
    annotated[0, 0] = True
    sizes = [shape, tuple(max(s // 2, 1) for s in shape)][:levels]
    logits = [torch.randn(b, h, *s, generator=gen, dtype=torch.float64) * 3 for s in sizes]
    targets = [(torch.rand(b, h, *s, generator=gen) > 0.5).double() for s in sizes]
    loss_fn = MultiTalentLoss(ds_weights=[1.0, 0.5][:levels])

    def run(xs, ts):
        xs = [x.clone().requires_grad_(True) for x in xs]
        loss = loss_fn(xs if levels > 1 else xs[0], ts if levels > 1 else ts[0], annotated)
        loss.backward()
        return loss.detach(), [x.grad for x in xs]

    loss_a, grads_a = run(logits, targets)
    off = ~annotated[:, :, None, None, None]
    junk = [torch.where(off, torch.randn(x.shape, generator=gen, dtype=x.dtype) * 1e3, x) for x in logits]
    junk[0] = torch.where(off & (torch.rand(junk[0].shape, generator=gen) < 0.1), float("nan"), junk[0])
    flipped = [torch.where(off, 1 - t, t) for t in targets]
    loss_b, grads_b = run(junk, flipped)
    assert torch.isfinite(loss_a) and torch.equal(loss_a, loss_b)
    for ga, gb in zip(grads_a, grads_b):
        assert torch.equal(ga, gb)
        assert torch.all(ga[off.expand_as(ga)] == 0)


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 60), min_size=1, max_size=6), seed=st.integers(0, 1000))
def test_sampling_probabilities(counts, seed):
    """inv_sqrt: probabilities sum to 1, each dataset's share is proportional to sqrt(n), so the ratio of two
    datasets' shares is sqrt(n_a / n_b); uniform: shares proportional to n; dataset_balanced: equal shares."""
    names = [f"D{i:03d}" for i in range(len(counts))]
    ds = [d for d, n in zip(names, counts) for _ in range(n)]
    ds = [ds[i] for i in np.random.default_rng(seed).permutation(len(ds))]
    arr = np.array(ds)
    modes = (("inv_sqrt", np.sqrt), ("uniform", lambda n: n), ("dataset_balanced", lambda n: 1.0))
    for mode, share_of in modes:
        p = case_probabilities(ds, mode)
        assert p.shape == (len(ds),) and np.all(p > 0)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        shares = np.array([p[arr == d].sum() for d in names])
        expected = np.array([share_of(float(n)) for n in counts])
        np.testing.assert_allclose(shares, expected / expected.sum(), rtol=1e-9)
        for d in names:  # the cases of one dataset are alike
            assert np.ptp(p[arr == d]) <= 1e-15
        if mode == "inv_sqrt" and len(counts) > 1:
            assert shares[0] / shares[1] == pytest.approx(np.sqrt(counts[0] / counts[1]), rel=1e-9)


@settings(max_examples=80, deadline=None)
@given(size=st.integers(1, 300), patch=st.integers(1, 64), step=st.floats(0.05, 1.0))
def test_windows_cover_every_voxel_with_positive_weight(size, patch, step):
    padded = max(size, patch)  # sliding_window pads a volume smaller than the patch
    starts = window_starts(padded, patch, step)
    assert starts[0] == 0 and starts[-1] == padded - patch and starts == sorted(starts)
    if patch * step >= 1:  # (below one voxel per step, rounding repeats a start: harmless, only slower)
        assert len(set(starts)) == len(starts)
    covered = np.zeros(padded, bool)
    for s in starts:
        covered[s : s + patch] = True
    assert covered.all()
    assert all(b - a <= max(int(np.ceil(step * patch)), 1) for a, b in zip(starts, starts[1:]))
    assert np.all(weight_profile(padded, patch, step) > 0)


class _Ones(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 2, *x.shape[2:])


@settings(max_examples=15, deadline=None)
@given(shape=st.tuples(st.integers(1, 20), st.integers(1, 24), st.integers(1, 24)),
       patch=st.tuples(st.integers(2, 8), st.integers(2, 12), st.integers(2, 12)), step=st.floats(0.25, 1.0))
def test_sliding_window_weights_add_up_to_one_everywhere(shape, patch, step):
    """A network that outputs 1 everywhere gives 1 at every voxel: every voxel is covered and the Gaussian
    weights of the windows covering it sum to 1."""
    out = sliding_window(_Ones(), torch.zeros(1, *shape), patch, step, device="cpu")
    assert out.shape == (2, *shape)
    torch.testing.assert_close(out, torch.ones_like(out), rtol=1e-5, atol=1e-5)


ORIENTATIONS = ["".join(pair[sign] for pair, sign in zip(axes, signs))
                for axes in itertools.permutations([("R", "L"), ("A", "P"), ("I", "S")])
                for signs in itertools.product((0, 1), repeat=3)]


@settings(max_examples=30, deadline=None)
@given(code=st.sampled_from(ORIENTATIONS), spacing=st.tuples(*[st.floats(0.3, 8.0)] * 3),
       origin=st.tuples(*[st.floats(-500, 500)] * 3), shape=st.tuples(*[st.integers(1, 7)] * 3),
       seed=st.integers(0, 1000))
def test_geometry_round_trip_through_nifti_files(code, spacing, origin, shape, seed):
    """Any of the 48 axis orientations, any spacing and origin: writing and reading a NIfTI scan and label map
    keeps array and geometry; canonical orientation and back is exact."""
    assert len(set(ORIENTATIONS)) == 48
    g = io.Geometry(shape, spacing, origin, io.direction_for(code))
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 300, shape).astype(np.float32)
    label = rng.integers(0, 4, shape).astype(np.uint8)
    with tempfile.TemporaryDirectory() as d:
        io.write_image(Path(d) / "img.nii.gz", image, g)
        io.write_label(Path(d) / "seg.nii.gz", label, g)
        a, ga = io.read_image(Path(d) / "img.nii.gz")
        s, gs = io.read_label(Path(d) / "seg.nii.gz")
    assert ga.matches(g, tol=1e-5) is None and gs.matches(g, tol=1e-5) is None
    assert ga.orientation == code
    assert np.array_equal(a, image) and np.array_equal(s, label)
    c, cg = io.to_canonical(a, ga)
    np.testing.assert_allclose(np.asarray(cg.direction).reshape(3, 3), np.eye(3), atol=1e-6)
    assert np.array_equal(io.from_canonical(c, cg, ga), image)


def test_spleen_predictions_of_the_shared_run_exist(shared: Shared):
    """The shared artefacts the kills compare against are complete (guards the fixture itself)."""
    assert complete(shared.pred / "spleen_0") and (shared.run / "checkpoint_final.pt").is_file()
    assert (shared.raw / SPLEEN / "dataset.json").is_file()
