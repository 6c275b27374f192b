"""The step-memory estimate: a run that cannot fit is refused before its first step, with the estimate and
the remedies; one that may not fit is warned about; the calibration it rests on is kept honest."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from multitalent.errors import UserInputError
from multitalent.models import create_model
from multitalent.preprocessing.plans import PAPER_SPACING, Plans
from multitalent.training import memory
from multitalent.training.config import TrainConfig
from multitalent.training.distributed import DistInfo
from multitalent.training.memory import check_step_memory, estimate_step_memory, preflight_memory

PAPER_KW = {"base_features": 32, "max_features": 320}
TINY_PLANS = Plans(spacing=[4.0, 4.0, 4.0], patch_size=[16, 32, 32])
GB = 1e9


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch):
    monkeypatch.delenv(memory.AVAILABLE_ENV, raising=False)
    monkeypatch.delenv(memory.CHECK_ENV, raising=False)


def _plans(patch) -> Plans:
    return Plans(spacing=list(PAPER_SPACING), patch_size=list(patch))


@pytest.mark.parametrize("arch", ["plain_unet", "resenc_unet"])
def test_estimate_grows_with_batch_and_patch(arch):
    small = estimate_step_memory(arch, _plans((32, 64, 64)), 47, 2, PAPER_KW, "cpu")
    double = estimate_step_memory(arch, _plans((32, 64, 64)), 47, 4, PAPER_KW, "cpu")
    larger = estimate_step_memory(arch, _plans((48, 96, 96)), 47, 2, PAPER_KW, "cpu")
    assert small.total < double.total and small.total < larger.total
    # activations and outputs scale with the batch; parameters and the constant do not
    assert double.activation_bytes == pytest.approx(2 * small.activation_bytes)
    assert double.output_bytes == pytest.approx(2 * small.output_bytes)
    assert double.parameter_bytes == small.parameter_bytes
    # the global batch is shared by the processes
    shared = estimate_step_memory(arch, _plans((32, 64, 64)), 47, 4, PAPER_KW, "cpu", world_size=2)
    assert shared.total == pytest.approx(small.total)


def test_the_residual_unet_needs_more_than_the_plain_one():
    plain = estimate_step_memory("plain_unet", Plans(), 47, 2, PAPER_KW, "cpu")
    resenc = estimate_step_memory("resenc_unet", Plans(), 47, 2, PAPER_KW, "cpu")
    assert resenc.total > plain.total
    assert plain.parameters == sum(p.numel() for p in create_model("plain_unet", Plans(), 47, **PAPER_KW).parameters())


def test_mixed_precision_halves_the_feature_maps_on_cuda():
    fp32 = estimate_step_memory("plain_unet", Plans(), 47, 4, PAPER_KW, "cuda")
    bf16 = estimate_step_memory("plain_unet", Plans(), 47, 4, PAPER_KW, "cuda", torch.bfloat16)
    assert bf16.activation_bytes == pytest.approx(fp32.activation_bytes / 2)
    assert bf16.total < fp32.total


def test_paper_plans_on_a_24_gb_cpu_are_refused_in_one_line():
    est = estimate_step_memory("plain_unet", Plans(), 47, 4, PAPER_KW, "cpu")
    with pytest.raises(UserInputError) as info:
        check_step_memory(est, "cpu", 1, 1, available=24 * GB)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"about {est.total / GB:.1f} GB" in msg and "24.0 GB is available" in msg
    for remedy in ("--batch-size", "--preset small", "--base-features", "--max-features", "--device cuda"):
        assert remedy in msg


def test_available_memory_is_shared_by_the_processes_of_a_node(monkeypatch):
    monkeypatch.setenv(memory.AVAILABLE_ENV, str(24 * GB))
    assert memory.available_memory("cpu", 1) == 24 * GB
    assert memory.available_memory("cpu", 2) == 12 * GB
    # the paper config at batch 2 per process fits one process's share of a large node but not half of 24 GB
    est = estimate_step_memory("plain_unet", Plans(), 47, 4, PAPER_KW, "cpu", world_size=2)
    with pytest.raises(UserInputError, match=r"per process \(2 on this node\)"):
        check_step_memory(est, "cpu", 2, 2)
    monkeypatch.setenv(memory.AVAILABLE_ENV, "lots")
    with pytest.raises(UserInputError, match=memory.AVAILABLE_ENV):
        memory.available_memory("cpu")


def test_a_tiny_config_passes_and_the_uncertainty_band_warns():
    tiny = estimate_step_memory("plain_unet", TINY_PLANS, 3, 2, {"base_features": 4}, "cpu")
    assert tiny.total < 1 * GB
    assert check_step_memory(tiny, "cpu", 1, 1, available=24 * GB) is None
    assert check_step_memory(tiny, "cpu", 1, 1) is None  # this machine's MemAvailable

    est = estimate_step_memory("plain_unet", _plans((48, 96, 96)), 47, 2, PAPER_KW, "cpu")
    assert 0 < est.margin < 1 and est.low < est.total < est.high
    assert check_step_memory(est, "cpu", available=est.high * 1.01) is None
    warning = check_step_memory(est, "cpu", available=est.total)  # inside the band: may or may not fit
    assert warning and "may not fit" in warning and f"{est.total / GB:.1f} GB" in warning
    assert check_step_memory(est, "cpu", available=est.low * 1.01)
    with pytest.raises(UserInputError):
        check_step_memory(est, "cpu", available=est.low * 0.99)


def test_the_calibration_predicts_its_measurements_within_its_stated_error():
    cal = memory.calibration()
    assert cal["margin"] < 0.5 and cal["cuda_margin"] >= cal["margin"]
    roles = {p["role"] for p in cal["points"]}
    assert roles == {"fit", "check"}  # points the fit did not see are there too
    assert {p["arch"] for p in cal["points"]} == set(memory.calibrated_architectures()) == {"plain_unet", "resenc_unet"}
    for p in cal["points"]:
        est = estimate_step_memory(p["arch"], _plans(p["patch"]), p["heads"], p["batch"], PAPER_KW, "cpu",
                                   pairs=p["pairs"])
        assert est.parameters == p["parameters"]
        assert est.total == pytest.approx(p["predicted_bytes"], rel=1e-6)  # the code is the fitted formula
        assert abs(est.total / p["measured_bytes"] - 1) <= cal["margin"], p


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"base_features": 4, "batch_size": 2, "quiet": True, **kw})


def test_preflight_passes_a_tiny_run_and_refuses_one_that_cannot_fit(monkeypatch):
    cfg = _cfg()
    model = create_model("plain_unet", TINY_PLANS, 3, **cfg.model_kwargs())
    est = preflight_memory(model, cfg, TINY_PLANS, 2, torch.device("cpu"), DistInfo())
    assert est is not None and est.parameters == sum(p.numel() for p in model.parameters())
    assert preflight_memory("plain_unet", cfg, TINY_PLANS, 2, "cpu", None, num_outputs=3).total == pytest.approx(
        est.total)

    monkeypatch.setenv(memory.AVAILABLE_ENV, "1000000")  # 1 MB
    with pytest.raises(UserInputError, match="--batch-size"):
        preflight_memory(model, cfg, TINY_PLANS, 2, "cpu", DistInfo())
    monkeypatch.setenv(memory.CHECK_ENV, "off")  # the way out for a machine that knows better
    assert preflight_memory(model, cfg, TINY_PLANS, 2, "cpu", DistInfo()) is not None


def test_preflight_warns_inside_the_band(monkeypatch, caplog):
    cfg = _cfg()
    model = create_model("plain_unet", TINY_PLANS, 3, **cfg.model_kwargs())
    est = preflight_memory(model, cfg, TINY_PLANS, 2, "cpu", DistInfo())
    monkeypatch.setenv(memory.AVAILABLE_ENV, str(est.total))
    with caplog.at_level("WARNING", logger="multitalent"):
        preflight_memory(model, cfg, TINY_PLANS, 2, "cpu", DistInfo())
    assert any("may not fit" in r.getMessage() for r in caplog.records)


def test_an_architecture_without_calibration_is_not_checked():
    cfg = _cfg(arch="swin_unetr", feature_size=12)
    plans = Plans(spacing=[4.0] * 3, patch_size=[32, 64, 64])
    model = create_model("swin_unetr", plans, 2, feature_size=12)
    assert preflight_memory(model, cfg, plans, 2, "cpu", DistInfo()) is None
    with pytest.raises(KeyError):
        estimate_step_memory("swin_unetr", plans, 2, 2, {"feature_size": 12}, "cpu")


def test_the_calibration_measurement_runs():
    """The calibration script's measurement (one point, tiny) still runs against the training step's API."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "memory_calibration.py"
    spec = importlib.util.spec_from_file_location("memory_calibration", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("memory_calibration", module)
    spec.loader.exec_module(module)
    r = module.measure("plain_unet", [16, 32, 32], 2, "all", 1, "cpu", 1)
    assert r["pairs"] == 2 and r["measured_bytes"] >= 0 and len(r["step_s"]) == 2


def _paper_preprocessed(tiny_collection: Path, tmp_path: Path) -> Path:
    from multitalent.preprocessing.pipeline import run_preprocessing

    return run_preprocessing(tiny_collection, tmp_path / "pre", preset="paper", progress=False, workers=1)


def test_paper_preset_and_default_train_are_refused_in_one_line_on_24_gb(tiny_collection, tmp_path, monkeypatch,
                                                                          capsys):
    """The issue's check: `multitalent train` with its defaults on the paper plans, 24 GB of host RAM."""
    from multitalent.cli import main

    pre = _paper_preprocessed(tiny_collection, tmp_path)
    monkeypatch.setenv(memory.AVAILABLE_ENV, str(24 * 2**30))
    assert main(["-q", "train", str(pre), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GB" in err[0] and "--batch-size" in err[0] and "--preset small" in err[0], err
    assert not (tmp_path / "run").exists()  # nothing half-written


@pytest.mark.slow
def test_paper_preset_under_torchrun_is_refused_by_every_rank(tiny_collection, tmp_path):
    import os
    import subprocess

    pre = _paper_preprocessed(tiny_collection, tmp_path)
    env = {**os.environ, memory.AVAILABLE_ENV: str(24 * 2**30), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "multitalent",
           "-q", "train", str(pre), "-o", str(tmp_path / "run")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0
    assert done.stderr.count("multitalent: error:") >= 1 and "--batch-size" in done.stderr
    assert not (tmp_path / "run").exists()
