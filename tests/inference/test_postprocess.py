"""Postprocessing (``multitalent.inference.postprocess``): nnU-Net's largest-component decision per head,
written by the final validation and applied by ``predict``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from multitalent import io
from multitalent.errors import UserInputError
from multitalent.inference.postprocess import decide, determine_postprocessing, largest_component, load_decision
from multitalent.inference.predict import load_predictor, run_prediction
from tests.inference.helpers import ThresholdNet, fake_predictor, quiet, registry, scan


def _box(shape, *boxes) -> np.ndarray:
    m = np.zeros(shape, bool)
    for b in boxes:
        m[b] = True
    return m


BIG = np.s_[2:10, 2:12, 2:12]
BLOB = np.s_[14:16, 14:16, 14:16]
OTHER = np.s_[12:16, 2:6, 2:6]


def test_largest_component_keeps_the_biggest_blob():
    m = _box((18, 18, 18), BIG, BLOB)
    assert np.array_equal(largest_component(m), _box(m.shape, BIG))
    assert not largest_component(np.zeros((4, 4, 4), bool)).any()


def test_a_false_positive_blob_is_removed_a_two_part_structure_is_kept():
    shape = (18, 18, 18)
    truth = _box(shape, BIG)
    two_part = _box(shape, BIG, OTHER)  # the true structure has two components
    samples = [("D001_liver", _box(shape, BIG, BLOB), truth),  # a false-positive blob: removing it gains
               ("D001_liver", truth, truth),
               ("D002_kidney", two_part, two_part),  # keeping only one part loses
               ("D002_spleen", np.zeros(shape, bool), np.zeros(shape, bool))]  # nothing to judge
    d = decide(iter(samples))
    assert d["D001_liver"]["largest_component"] and d["D001_liver"]["dice_after"] == 1.0
    assert d["D001_liver"]["dice_before"] < 1.0 and d["D001_liver"]["cases"] == 2
    assert not d["D002_kidney"]["largest_component"] and d["D002_kidney"]["dice_after"] < 1.0
    assert not d["D002_spleen"]["largest_component"] and d["D002_spleen"]["dice_before"] is None


def test_the_decision_is_computed_from_prediction_files(tmp_path):
    g = io.Geometry((18, 18, 18), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), io.direction_for("LPS"))
    pred = _box(g.shape, BIG, BLOB).astype(np.uint8)
    io.write_label(tmp_path / "pred" / "c1" / "D001.nii.gz", pred, g)
    io.write_label(tmp_path / "ref" / "c1.nii.gz", _box(g.shape, BIG).astype(np.uint8), g)
    d = determine_postprocessing(tmp_path / "pred", {"c1": ("D001", tmp_path / "ref" / "c1.nii.gz")}, registry())
    assert d["heads"]["D001_liver"]["largest_component"] and set(d["heads"]) == {"D001_liver", "D001_tumor"}
    (tmp_path / "postprocessing.json").write_text(json.dumps(d))
    assert load_decision(tmp_path)["D001_liver"] and not load_decision(tmp_path)["D001_tumor"]
    (tmp_path / "postprocessing.json").write_text("{}")
    with pytest.raises(UserInputError, match="postprocessing.json"):
        load_decision(tmp_path)


def test_predict_applies_the_decision_unless_told_not_to(tmp_path):
    img, g = scan()
    img[16:19, 30:34, 28:32] = 100  # a second 'liver' blob, apart from the liver box
    io.write_image(tmp_path / "in" / "a.nii.gz", img.astype(np.int16), g)
    predictor = fake_predictor(ThresholdNet())
    predictor.largest_component, predictor.postprocessing_files = ["D001_liver"], ["RUN/postprocessing.json"]
    run_prediction(predictor, tmp_path / "in", tmp_path / "pp", quiet(save_heads=True))
    run_prediction(predictor, tmp_path / "in", tmp_path / "raw", quiet(save_heads=True, postprocess=False))
    pp, _ = io.read_label(tmp_path / "pp" / "a" / "heads" / "D001_liver.nii.gz")
    raw, _ = io.read_label(tmp_path / "raw" / "a" / "heads" / "D001_liver.nii.gz")
    assert np.array_equal(raw, img > 50) and np.array_equal(pp, largest_component(img > 50))
    assert pp.sum() < raw.sum()
    s = json.loads((tmp_path / "pp" / "heads.json").read_text())["settings"]
    assert s["postprocessing"] == {"largest_component": ["D001_liver"], "files": ["RUN/postprocessing.json"]}
    assert json.loads((tmp_path / "raw" / "heads.json").read_text())["settings"]["postprocessing"] is None


def test_a_run_folder_brings_its_postprocessing(tmp_path):
    from tests.inference.test_predict import save_tiny_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    save_tiny_checkpoint(run / "checkpoint_final.pt")
    heads = {h: {"largest_component": h == "D002_kidney"} for h in registry().ids}
    (run / "postprocessing.json").write_text(json.dumps({"format": "multitalent-postprocessing/1",
                                                         "heads": heads}))
    assert load_predictor(run).largest_component == ["D002_kidney"]
    other = tmp_path / "other"
    shutil.copytree(run, other)
    (other / "postprocessing.json").unlink()
    assert load_predictor([run, other]).largest_component == []  # members disagree: not applied


def test_the_in_memory_predictor_applies_it_too():
    img, g = scan()
    img[16:19, 30:34, 28:32] = 100
    predictor = fake_predictor(ThresholdNet())
    predictor.largest_component = ["D001_liver"]
    pp = predictor(img, spacing=g.spacing, heads=True)["heads"]["D001_liver"]
    raw = predictor(img, spacing=g.spacing, heads=True, postprocess=False)["heads"]["D001_liver"]
    assert np.array_equal(raw, img > 50) and np.array_equal(pp, largest_component(img > 50))
