"""Prediction (``multitalent.inference.predict``): the `predict` stage's files and rules, on CPU and CUDA,
in bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from multitalent import io
from multitalent.device import resolve_device
from multitalent.errors import UserInputError
from multitalent.inference.predict import (
    find_cases,
    load_predictor,
    predict,
    run_prediction,
)
from multitalent.preprocessing.pipeline import restore_channel
from multitalent.registry import HeadRegistry
from tests.inference.helpers import fake_predictor, plans, quiet, registry, scan, write_scan


def save_tiny_checkpoint(path: Path, seed: int = 0, reg: HeadRegistry | None = None,
                         spacing=(3.0, 2.0, 2.0)) -> Path:
    """A tiny real network saved the way training saves it (deep supervision on while training)."""
    from multitalent.models import create_model
    from multitalent.training.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    reg, p = reg or registry(), plans(spacing)
    model = create_model("plain_unet", p, num_heads=len(reg), deep_supervision=True, base_features=4,
                         n_stages=3)
    save_checkpoint(path, {"model_config": model.config, "state_dict": model.state_dict(),
                           "plans": p.to_dict(), "heads": reg.to_dict(),
                           "config": {"mirror_axes": [0, 1]}, "epoch": 1})
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint_final.pt")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("code", ["RAS", "LPS", "LAS"])
def test_prediction_has_exactly_the_input_geometry(tmp_path, checkpoint, code):
    g = write_scan(tmp_path / "in" / f"case_{code}_0000.nii.gz", code=code, spacing=(2.5, 1.5, 1.5))
    written = predict(checkpoint, tmp_path / "in", tmp_path / "out", quiet(save_heads=True))
    assert written == [tmp_path / "out" / f"case_{code}"]
    for f in [*written[0].glob("D00*.nii.gz"), *(written[0] / "heads").glob("*.nii.gz")]:
        seg, sg = io.read_label(f)
        assert sg.matches(g) is None and seg.shape == g.shape, f


def test_prediction_of_a_dicom_series_has_its_geometry(tmp_path, checkpoint):
    img, g = scan(code="RAS")
    io.write_dicom_series(tmp_path / "series42", img.astype(np.int16), g)
    _, read_g = io.read_image(tmp_path / "series42")
    assert find_cases(tmp_path / "series42") == [("series42", tmp_path / "series42")]
    predict(checkpoint, tmp_path / "series42", tmp_path / "out", quiet())
    for ds in ("D001", "D002"):
        _, sg = io.read_label(tmp_path / "out" / "series42" / f"{ds}.nii.gz")
        assert sg.matches(read_g) is None


def test_nested_regions_and_plain_labels_are_written_back(tmp_path):
    """liver {1,2} everywhere > 50 HU, tumour {2} > 200 HU -> label 1 in the liver, 2 in the tumour; plain
    labels: the larger head (kidney) is written first, the smaller (spleen) stays visible on top."""
    img, g = scan(code="LAS")
    io.write_image(tmp_path / "ct.nii.gz", img.astype(np.int16), g)
    run_prediction(fake_predictor(), tmp_path / "ct.nii.gz", tmp_path / "out", quiet(save_heads=True))
    liver = (img > 50).astype(np.int16)
    tumour = img > 200
    d001, _ = io.read_label(tmp_path / "out" / "ct" / "D001.nii.gz")
    d002, _ = io.read_label(tmp_path / "out" / "ct" / "D002.nii.gz")
    assert np.array_equal(d001, np.where(tumour, 2, liver))
    assert np.array_equal(d002, np.where(tumour, 2, liver))
    reg = registry()
    masks = np.stack([io.read_label(tmp_path / "out" / "ct" / "heads" / f"{h}.nii.gz")[0] for h in reg.ids])
    assert np.array_equal(reg.labelmap(masks[:2], "D001"), d001)
    assert np.array_equal(reg.labelmap(masks[2:], "D002"), d002)


def test_head_and_dataset_selection_write_only_the_selected_outputs(tmp_path):
    write_scan(tmp_path / "in" / "a.nii.gz")
    out = tmp_path / "out"
    run_prediction(fake_predictor(), tmp_path / "in", out, quiet(heads=["D001_tumor"], save_heads=True))
    assert sorted(p.name for p in (out / "a").glob("*.nii.gz")) == ["D001.nii.gz"]
    assert [p.name for p in (out / "a" / "heads").iterdir()] == ["D001_tumor.nii.gz"]
    d001, _ = io.read_label(out / "a" / "D001.nii.gz")
    assert set(np.unique(d001)) == {0, 2}  # the liver head was not asked for
    info = json.loads((out / "heads.json").read_text())
    assert info["outputs"]["label_maps"] == {"D001": {"file": "<case>/D001.nii.gz", "heads": ["D001_tumor"]}}
    assert HeadRegistry.from_dict(info).ids == registry().ids  # heads.json is still a registry
    run_prediction(fake_predictor(), tmp_path / "in", tmp_path / "out2", quiet(datasets=["D002"]))
    assert sorted(p.name for p in (tmp_path / "out2" / "a").glob("*.nii.gz")) == ["D002.nii.gz"]
    with pytest.raises(UserInputError, match="D009"):
        run_prediction(fake_predictor(), tmp_path / "in", tmp_path / "out3", quiet(datasets=["D009"]))


def test_existing_outputs_need_continue_or_overwrite(tmp_path):
    write_scan(tmp_path / "in" / "a_0000.nii.gz")
    write_scan(tmp_path / "in" / "b_0000.nii.gz")
    out = tmp_path / "out"
    assert len(run_prediction(fake_predictor(), tmp_path / "in", out, quiet())) == 2
    stamp = (out / "a" / "D001.nii.gz").stat().st_mtime_ns
    with pytest.raises(UserInputError, match="exists; pass --continue"):
        run_prediction(fake_predictor(), tmp_path / "in", out, quiet())
    assert run_prediction(fake_predictor(), tmp_path / "in", out, quiet(continue_=True)) == []
    assert (out / "a" / "D001.nii.gz").stat().st_mtime_ns == stamp
    (out / "b" / "case.json").unlink()  # an unfinished case (e.g. written by hand) is never replaced silently
    with pytest.raises(UserInputError, match="--overwrite"):
        run_prediction(fake_predictor(), tmp_path / "in", out, quiet(continue_=True))
    redo = run_prediction(fake_predictor(), tmp_path / "in", out, quiet(continue_=True, overwrite=True))
    assert redo == [out / "b"]
    redo = run_prediction(fake_predictor(), tmp_path / "in", out, quiet(overwrite=True))
    assert redo == [out / "a", out / "b"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_statistics_preview_and_probabilities_are_written(tmp_path):
    g = write_scan(tmp_path / "in" / "a.nii.gz")
    write_scan(tmp_path / "in" / "b.nii.gz", code="RAS")
    out = tmp_path / "out"
    run_prediction(fake_predictor(), tmp_path / "in", out,
                   quiet(statistics=True, preview=True, save_probabilities=True, prefetch=False,
                         probabilities_grid="network"))
    stats = json.loads((out / "statistics.json").read_text())
    img, _ = scan()
    ml = float(np.prod(g.spacing)) / 1000
    assert stats["a"]["D001_liver"] == pytest.approx((img > 50).sum() * ml)
    assert stats["a"]["D001_tumor"] == pytest.approx((img > 200).sum() * ml)
    rows = (out / "statistics.csv").read_text().splitlines()
    assert rows[0].startswith("case,D001_liver_ml") and len(rows) == 3
    import matplotlib.image

    assert matplotlib.image.imread(out / "a" / "preview.png").ndim == 3
    with np.load(out / "a" / "probabilities.npz") as z:
        probs, props = z["probabilities"], json.loads(str(z["properties"]))
        assert probs.dtype == np.float16 and probs.shape == (4, *props["resampled_shape"])
        assert list(z["heads"]) == registry().ids
    restored = restore_channel(probs[1].astype(np.float32), props, order=1) > 0.5
    assert np.array_equal(restored, img > 200)


def test_input_and_output_errors_name_the_file(tmp_path):
    with pytest.raises(UserInputError, match="missing.nii.gz"):
        run_prediction(fake_predictor(), tmp_path / "missing.nii.gz", tmp_path / "out", quiet())
    write_scan(tmp_path / "in" / "a.nii.gz")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="is a file"):
        run_prediction(fake_predictor(), tmp_path / "in", tmp_path / "file", quiet())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(UserInputError, match="broken.nii.gz"):
        run_prediction(fake_predictor(), tmp_path / "bad", tmp_path / "out", quiet())
    assert not (tmp_path / "out").exists()  # a refusal leaves no empty output folder behind
    (tmp_path / "mc").mkdir()
    write_scan(tmp_path / "mc" / "a_0001.nii.gz")
    with pytest.raises(UserInputError, match="a_0001"):
        find_cases(tmp_path / "mc")
    if not torch.cuda.is_available():
        with pytest.raises(UserInputError, match="CUDA"):
            resolve_device("cuda")


def test_a_run_folder_loads_with_deep_supervision_off(checkpoint):
    p = load_predictor(checkpoint.parent, "cpu")
    assert p.registry.ids == registry().ids and p.mirror_axes == (0, 1) and not p.net.training
    out = p.sliding_window(np.zeros((12, 30, 34), np.float32), mirror=True)
    assert out.shape == (4, 12, 30, 34) and torch.isfinite(out).all()


# --- CUDA (run where a GPU is present; skipped elsewhere) ------------------------------------------
@cuda
def test_cuda_prediction_agrees_with_cpu(tmp_path, checkpoint):
    g = write_scan(tmp_path / "in" / "a.nii.gz", code="RAS", spacing=(2.5, 1.5, 1.5))
    for dev in ("cpu", "cuda"):
        p = fake_predictor()
        p.net.to(dev)
        p.device = torch.device(dev)
        run_prediction(p, tmp_path / "in", tmp_path / dev, quiet())
    for ds in ("D001", "D002"):
        a, _ = io.read_label(tmp_path / "cpu" / "a" / f"{ds}.nii.gz")
        b, _ = io.read_label(tmp_path / "cuda" / "a" / f"{ds}.nii.gz")
        assert np.array_equal(a, b)
    x = np.random.default_rng(0).normal(size=(20, 40, 40)).astype(np.float32)
    on_cpu = load_predictor(checkpoint, "cpu").sliding_window(x)
    on_gpu = load_predictor(checkpoint, "cuda").sliding_window(x)  # bf16/fp16 autocast, float16 ring
    assert float((on_cpu - on_gpu).abs().max()) < 0.05 * float(on_cpu.abs().max()) + 1e-2
    predict(checkpoint, tmp_path / "in", tmp_path / "real", quiet(device="cuda", mirror=True))
    seg, sg = io.read_label(tmp_path / "real" / "a" / "D001.nii.gz")
    assert sg.matches(g) is None


# --- bounded memory ------------------------------------------------------------------------------
MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import torch
    from torch import nn
    from multitalent.inference.predict import Predictor, run_prediction
    from multitalent.inference import PredictConfig
    from multitalent.preprocessing.plans import Plans
    from multitalent.registry import Head, HeadRegistry

    H = 40
    class Net(nn.Module):  # cheap, but materialises all H channels like a real head layer
        def forward(self, x):
            return x.repeat(1, H, 1, 1, 1) - torch.arange(H, dtype=x.dtype).view(1, H, 1, 1, 1) * 10
    heads = [Head(f"D001_s{i}", "D001", f"s{i}", (i + 1,)) for i in range(H)]
    reg = HeadRegistry(heads, {"D001": {"name": "Many", "labels": {}, "regions_class_order": None}})
    p = Predictor(Net(), Plans(spacing=[1.0, 1.0, 1.0], patch_size=[16, 64, 64]), reg, ())
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stats = {}
    run_prediction(p, sys.argv[1], sys.argv[2], PredictConfig(quiet=True))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"delta": peak - base, "base": base}))
""")


@pytest.mark.slow  # a subprocess predicting a 384x128x128 scan with 40 heads
def test_peak_memory_is_a_fraction_of_heads_times_volume(tmp_path):
    """40 heads on a 384x128x128 scan: heads x volume in float32 is 1 GB; the whole streamed prediction
    (reading, sliding window, export, writing) grows the peak resident memory by less than a third of
    that (about 0.2 measured; the ring buffer is 40 MB, the rest is one batch of network outputs, the
    bit-packed masks and the allocator keeping freed blocks)."""
    shape = (384, 128, 128)
    img = np.full(shape, -1000, np.int16)
    img[:, 10:-10, 10:-10] = (np.arange(shape[0]) % 256).astype(np.int16)[:, None, None]
    io.write_image(tmp_path / "big.nii.gz", img, io.Geometry(shape, (1.0, 1.0, 1.0), (0, 0, 0),
                                                             io.direction_for("LPS")))
    cmd = [sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "big.nii.gz"), str(tmp_path / "out")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    delta = json.loads(res.stdout.strip().splitlines()[-1])["delta"]
    full = 40 * np.prod(shape) * 4
    assert delta < 0.3 * full, f"peak grew by {delta / 2**20:.0f} MB; heads x volume is {full / 2**20:.0f} MB"
    seg, _ = io.read_label(tmp_path / "out" / "big" / "D001.nii.gz")
    assert seg.shape == shape and seg.max() == 26  # head i fires above 10*i HU; the scan reaches 255 HU


# --- recorded settings and ensembles --------------------------------------------------------------
def test_heads_json_records_every_setting(tmp_path, checkpoint):
    import multitalent

    write_scan(tmp_path / "in" / "a.nii.gz")
    predict(checkpoint.parent, tmp_path / "in", tmp_path / "out", quiet(step=0.75, mirror=True))
    s = json.loads((tmp_path / "out" / "heads.json").read_text())["settings"]
    assert s["multitalent_version"] == multitalent.__version__
    assert s["checkpoints"] == [str(checkpoint)] and not s["ensemble"]
    assert s["device"] == "cpu" and s["mirror_axes"] == [0, 1] and s["postprocessing"] is None
    assert s["options"]["step"] == 0.75 and s["options"]["mirror"] and s["options"]["checkpoint"] == "final"
    assert set(s["options"]) >= {"window_batch", "datasets", "heads", "save_probabilities", "continue"}


def test_an_ensemble_averages_the_members_logits(tmp_path):
    runs = tmp_path / "folds"
    paths = [save_tiny_checkpoint(_mkdir(runs / f"fold_{i}") / "checkpoint_final.pt", seed=i) for i in (0, 1)]
    members = [load_predictor(p) for p in paths]
    x = np.random.default_rng(0).normal(size=(12, 30, 34)).astype(np.float32)
    expected = (members[0].sliding_window(x) + members[1].sliding_window(x)) / 2
    for model in (paths, runs):  # a list of checkpoints, or a folder of run folders (nnU-Net's folds)
        ens = load_predictor(model)
        assert ens.members == [str(p) for p in paths]
        assert torch.allclose(ens.sliding_window(x), expected, atol=1e-5)
    write_scan(tmp_path / "in" / "a.nii.gz")
    predict(runs, tmp_path / "in", tmp_path / "out", quiet())
    s = json.loads((tmp_path / "out" / "heads.json").read_text())["settings"]
    assert s["ensemble"] and s["checkpoints"] == [str(p) for p in paths]


def test_ensemble_members_must_share_heads_and_plans(tmp_path):
    a = save_tiny_checkpoint(_mkdir(tmp_path / "a") / "checkpoint_final.pt")
    fewer = HeadRegistry(registry().heads[:3], registry().datasets)
    b = save_tiny_checkpoint(_mkdir(tmp_path / "b") / "checkpoint_final.pt", reg=fewer)
    c = save_tiny_checkpoint(_mkdir(tmp_path / "c") / "checkpoint_final.pt", spacing=(2.0, 2.0, 2.0))
    with pytest.raises(UserInputError, match=r"b/checkpoint_final.pt: .*D002_spleen"):
        load_predictor([a, b])
    with pytest.raises(UserInputError, match=r"c/checkpoint_final.pt: .*'spacing'"):
        load_predictor([a, c])
    write_scan(tmp_path / "in" / "x.nii.gz")
    r = subprocess.run([sys.executable, "-m", "multitalent", "predict", "-q", "-m", str(a), str(b),
                        "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2 and "D002_spleen" in r.stderr and not (tmp_path / "out").exists()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_merged_map_puts_the_smaller_structure_on_top(tmp_path):
    """Nested heads whose registry order is the reverse of their size: painted by decreasing predicted
    volume, each smaller structure stays visible inside the larger one."""
    from tests.inference.helpers import ThresholdNet

    g = write_scan(tmp_path / "in" / "a.nii.gz")
    net = ThresholdNet((200.0, 50.0, -500.0, 1000.0))  # tumour box < liver box < body; spleen empty
    out = tmp_path / "out"
    run_prediction(fake_predictor(net), tmp_path / "in", out, quiet(merged=True))
    merged, mg = io.read_label(out / "a" / "merged.nii.gz")
    img, _ = scan()
    assert mg.matches(g) is None
    expected = np.select([img > 200, img > 50, img > -500], [1, 2, 3], 0)
    assert np.array_equal(merged, expected)
    assert (out / "a" / "D001.nii.gz").is_file() and (out / "a" / "D002.nii.gz").is_file()
    table = json.loads((out / "merged_labels.json").read_text())
    assert table[0] == {"value": 1, "head": "D001_liver", "dataset": "D001", "class": "liver"}
    assert [r["value"] for r in table] == [1, 2, 3, 4]
    rows = (out / "merged_labels.csv").read_text().splitlines()
    assert rows[0] == "value,head,dataset,class" and rows[3] == "3,D002_kidney,D002,kidney"
    assert json.loads((out / "heads.json").read_text())["outputs"]["merged"]["file"] == "<case>/merged.nii.gz"


@pytest.mark.parametrize("code", ["LPS", "RAS"])
def test_probabilities_on_the_original_grid_match_the_input(tmp_path, code):
    g = write_scan(tmp_path / "in" / "a.nii.gz", code=code, spacing=(2.5, 1.2, 1.7))
    run_prediction(fake_predictor(), tmp_path / "in", tmp_path / "out", quiet(save_probabilities=True))
    with np.load(tmp_path / "out" / "a" / "probabilities.npz") as z:
        probs, props = z["probabilities"], json.loads(str(z["properties"]))
        assert str(z["grid"]) == "original" and list(z["heads"]) == registry().ids
    assert probs.dtype == np.float16 and probs.shape == (4, *g.shape)
    assert io.Geometry.from_dict(props["original_geometry"]).matches(g) is None
    tumour, _ = io.read_label(tmp_path / "out" / "a" / "D001.nii.gz")
    assert np.array_equal(probs[1] > 0.5, tumour == 2)  # the same thresholding as the label maps
    assert not [p for p in (tmp_path / "out" / "a").iterdir() if p.suffix == ".npy"]
    heads = json.loads((tmp_path / "out" / "heads.json").read_text())
    assert heads["outputs"]["probabilities"]["grid"] == "original"


def test_dicom_seg_holds_one_segment_per_head_on_the_source_series(tmp_path):
    import highdicom as hd
    import pydicom

    from tests.inference.helpers import ThresholdNet

    img, g = scan(code="RAS")
    io.write_dicom_series(tmp_path / "series7", img.astype(np.int16), g)
    net = ThresholdNet((50.0, 200.0, 50.0, 1000.0))  # the spleen head finds nothing: an empty segment
    run_prediction(fake_predictor(net), tmp_path / "series7", tmp_path / "out", quiet(dicom_seg=True))
    seg = hd.seg.segread(tmp_path / "out" / "series7" / "segmentation.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == registry().ids
    assert seg.SegmentSequence[1].SegmentDescription == "Liver: tumor"
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in io.dicom_series_files(tmp_path / "series7")]
    px = seg.get_pixels_by_source_instance([s.SOPInstanceUID for s in sources], segment_numbers=[1, 2, 3, 4])
    d001, _ = io.read_label(tmp_path / "out" / "series7" / "D001.nii.gz")
    assert px.shape == (*g.shape, 4) and np.array_equal(px[..., 1] > 0, d001 == 2)
    assert np.array_equal(px[..., 0] > 0, d001 > 0) and not px[..., 3].any()


def test_dicom_seg_refuses_nifti_inputs(tmp_path):
    write_scan(tmp_path / "in" / "a.nii.gz")
    with pytest.raises(UserInputError, match=r"a.nii.gz: --dicom-seg needs DICOM"):
        run_prediction(fake_predictor(), tmp_path / "in", tmp_path / "out", quiet(dicom_seg=True))
    assert not (tmp_path / "out").exists()
