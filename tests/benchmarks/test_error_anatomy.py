"""``benchmarks/error_anatomy.py``: every head's false positives placed in the phantom's true structures -- which
structures are off-target for a head, the volumes of both kinds of misfire and the oracle Dice on arrays whose
answer is known, and the whole invocation on a small folder laid out as ``reproduce.py`` writes it."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from multitalent.io import Geometry, write_label
from multitalent.phantoms import anatomy as A

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def ea():
    if str(BENCHMARKS) not in sys.path:  # as the script itself does
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("error_anatomy")


def test_off_target_structures_follow_the_anatomy_and_the_protocols(ea):
    heart = ea.off_target_structures("D006_heart")
    assert "liver" in heart and "pancreas" in heart and "lung_left" in heart
    # the aortic root belongs to the heart in D006 and to the aorta in D005: neither is off-target for the heart
    for related in ("heart", "heart_with_aortic_root", "aortic_root", "aorta", "body"):
        assert related not in heart
    liver = ea.off_target_structures("D001_liver")
    assert "liver_tumor" not in liver and "hepatic_vessel" not in liver and "heart" in liver
    # the coarse spleen (derived) stands for the spleen: its neighbours are off-target, not everything related
    spleen = ea.off_target_structures("D007_spleen")
    assert "spleen" not in spleen and "liver" in spleen and "stomach" in spleen
    assert set(heart) <= set(A.STRUCTURES)


def test_case_errors_splits_the_false_positives_into_border_off_target_and_distant(ea):
    shape, spacing = (20, 20, 40), (2.0, 2.0, 2.0)  # 8 uL voxels
    truth = np.zeros(shape, bool)
    truth[5:15, 5:15, 5:15] = True  # 1000 voxels
    organ = np.zeros(shape, bool)
    organ[5:15, 5:15, 30:35] = True  # another organ, 30 mm away
    pred = truth.copy()
    pred[5:15, 5:15, 15] = True  # 100 voxels at the border: an ordinary error
    pred[5:15, 5:15, 30:35] = True  # 500 voxels in the other organ (off-target and distant)
    pred[0:2, 0:2, 39] = True  # 4 voxels far away in no structure (distant only)
    r = ea.case_errors(pred, truth, {"liver": organ}, spacing)
    ml = 8e-3
    assert r["fp_ml"] == pytest.approx(604 * ml)
    assert r["off_target_ml"] == pytest.approx(500 * ml)
    assert r["where_ml"] == {"liver": pytest.approx(500 * ml)}
    assert r["distant_ml"] == pytest.approx(504 * ml)
    assert r["misfire_ml"] == pytest.approx(504 * ml)
    assert r["dice"] == pytest.approx(100 * 2 * 1000 / (1604 + 1000))
    assert r["dice_without_misfires"] == pytest.approx(100 * 2 * 1000 / (1100 + 1000))
    # a wider distance leaves the far blob in no structure as an ordinary error, the off-target one stays
    wide = ea.case_errors(pred, truth, {"liver": organ}, spacing, distant_mm=100.0)
    assert wide["distant_ml"] == 0 and wide["misfire_ml"] == pytest.approx(500 * ml)
    # a head whose structure is absent: every false positive is a misfire, and removing them gives 100
    empty = ea.case_errors(pred, np.zeros(shape, bool), {}, spacing)
    assert empty["misfire_ml"] == empty["fp_ml"] and empty["dice"] == 0 and empty["dice_without_misfires"] == 100


def _folder(root: Path) -> Path:
    """A one-case collection of the Thorax dataset: the heart at the top, the liver below it; run ``good`` predicts
    the truth, run ``bad`` also fires the heart head on the liver."""
    geo = Geometry(shape=(24, 16, 16), spacing=(4.0, 4.0, 4.0), origin=(0.0, 0.0, 0.0),
                   direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    raw = root / "raw"
    label = np.zeros(geo.shape, np.uint8)
    label[16:22, 4:12, 4:12] = 1  # heart
    liver = np.zeros(geo.shape, np.uint8)
    liver[2:8, 4:12, 4:12] = 1
    ds = raw / "Dataset006_Thorax" / "labelsTs"
    ds.mkdir(parents=True)
    write_label(ds / "thorax_008.nii.gz", label, geo)
    gt = raw / "ground_truth" / "thorax_008"
    gt.mkdir(parents=True)
    for s in A.STRUCTURES:
        write_label(gt / f"{s}.nii.gz", liver if s == "liver" else np.zeros(geo.shape, np.uint8), geo)
    (raw / "collection.json").write_text(json.dumps({"datasets": [{"path": "Dataset006_Thorax"}],
                                                     "ground_truth": "ground_truth"}))
    for key, pred in (("good", label), ("bad", np.where(liver > 0, 1, label))):
        d = root / "predictions" / key / "thorax_008"
        d.mkdir(parents=True)
        write_label(d / "D006.nii.gz", pred, geo)
    return root


def test_the_invocation_reports_the_misfire_and_the_gap_it_makes(ea, tmp_path):
    out = _folder(tmp_path / "f")
    report = tmp_path / "docs" / "anatomy.md"
    assert ea.main(["--out", str(out), "--run", "single=good", "--run", "multitalent=bad",
                    "--gap", "multitalent:single", "--report", str(report)]) == 0
    numbers = json.loads(report.with_suffix(".json").read_text())
    bad = numbers["multitalent"]["D006_heart"]["thorax_008"]
    assert bad["where_ml"] == {"liver": pytest.approx(384 * 0.064)}
    assert bad["dice"] == pytest.approx(100 * 2 * 384 / (768 + 384), abs=1e-3)  # the JSON keeps 3 decimals
    assert bad["dice_without_misfires"] == pytest.approx(100)
    assert numbers["single"]["D006_heart"]["thorax_008"]["misfire_ml"] == 0
    text = report.read_text()
    assert "| D006_heart | thorax_008 | 0 mL, 100.0 -> 100.0 | 25 mL, 66.7 -> 100.0 |" in text
    assert "liver 25" in text
    # the gap over heads: the heart's -33.3 points over the five heads, none left without the misfire
    assert "| multitalent | single | as predicted | heads | 5 | -6.7 |" in text
    assert "| multitalent | single | misfires removed (oracle) | heads | 5 | +0.0 |" in text
    # the totals: Dice over heads, volumes over every head and case
    assert ("| all heads (Dice: mean over heads; mL: sum) | 100.0 / 0 / 0 / 0 / 100.0 | 93.3 / 25 / 25 / 25 / 100.0 "
            "| misfires in all (mL): single 0, multitalent 25 |") in text


def test_bad_input_exits_2_naming_the_problem(ea, tmp_path, capsys):
    out = _folder(tmp_path / "f")
    for argv, msg in ((["--out", str(tmp_path / "none"), "--run", "a=good"], "not a reproduction folder"),
                      (["--out", str(out), "--run", "good"], "expected LABEL=KEY"),
                      (["--out", str(out), "--run", "a=good", "--gap", "a:b"], "labels of --run"),
                      (["--out", str(out), "--run", "a=good", "--run", "b=missing"], "must have every case"),
                      (["--out", str(out), "--run", "a=missing"], "no predicted case"),
                      (["--out", str(out), "--run", "a=good", "--distant-mm", "0"], "must be positive")):
        assert ea.main(argv) == 2
        assert msg in capsys.readouterr().err


def test_heldout_reads_the_runs_validation_predictions_and_several_runs_make_one(ea, tmp_path):
    """``--heldout``: the held-out training cases (labelsTr) as ``multitalent validate`` predicted them, and a
    comma-separated KEY looks the case up in each run in turn (the single-dataset models)."""
    out = _folder(tmp_path / "f")
    ds = out / "raw" / "Dataset006_Thorax"
    (ds / "labelsTr").mkdir()
    (ds / "labelsTs" / "thorax_008.nii.gz").rename(ds / "labelsTr" / "thorax_008.nii.gz")
    for key in ("good", "bad"):
        val = out / "runs" / f"{key}_run" / "validation" / "predictions"
        val.mkdir(parents=True)
        (out / "predictions" / key / "thorax_008").rename(val / "thorax_008")
    (out / "runs" / "other_run" / "validation" / "predictions").mkdir(parents=True)
    report = tmp_path / "held.md"
    assert ea.main(["--out", str(out), "--heldout", "--run", "single=other_run,good_run", "--run",
                    "multitalent=bad_run", "--report", str(report)]) == 0
    numbers = json.loads(report.with_suffix(".json").read_text())
    assert numbers["single"]["D006_heart"]["thorax_008"]["dice"] == pytest.approx(100)
    assert numbers["multitalent"]["D006_heart"]["thorax_008"]["dice_without_misfires"] == pytest.approx(100)
    # without --heldout the same keys name prediction folders, which hold nothing now
    assert ea.main(["--out", str(out), "--run", "single=good_run"]) == 2
