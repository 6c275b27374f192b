"""Evaluation of prediction folders (``multitalent.evaluation``): regions, summaries, references, reports
and the refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from multitalent.errors import UserInputError
from multitalent.evaluation import (
    evaluate,
    evaluate_case,
    format_dataset_table,
    load_reference,
    parse_gt_dirs,
    plot_comparison,
    reference_from_summary,
)
from multitalent.evaluation.evaluator import CaseTask
from multitalent.io import Geometry, write_label
from multitalent.registry import Head, HeadRegistry

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


# --- one case, regions --------------------------------------------------------------------------
LIVER = {"name": "Liver", "labels": {"liver": [1, 2], "tumor": [2]}, "regions_class_order": [1, 2],
         "file_ending": ".nii.gz"}
ORGANS = {"name": "Organs", "labels": {"organ": [1], "cyst": [2], "vessel": [3]}, "regions_class_order": None,
          "file_ending": ".nii.gz"}


def make_registry() -> HeadRegistry:
    heads = [Head("D001_liver", "D001", "liver", (1, 2)),
             Head("D001_tumor", "D001", "tumor", (2,), lesion=True),
             Head("D002_organ", "D002", "organ", (1,)), Head("D002_cyst", "D002", "cyst", (2,), lesion=True),
             Head("D002_vessel", "D002", "vessel", (3,))]
    return HeadRegistry(heads, {"D001": LIVER, "D002": ORGANS})


SHAPE = (8, 12, 12)
GEOM = Geometry(SHAPE, (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
DIAGONAL = math.sqrt(16**2 + 12**2 + 12**2)


def test_region_heads_are_scored_on_their_label_sets(tmp_path):
    truth = np.zeros(SHAPE, np.int16)
    truth[2:6, 2:10, 2:10] = 1
    truth[3:5, 4:6, 4:6] = 2  # tumour inside the liver: liver = {1, 2}
    pred = truth.copy()
    pred[3:5, 4:6, 4:6] = 1  # tumour missed, but the liver region is still complete
    write_label(tmp_path / "t.nii.gz", truth, GEOM)
    write_label(tmp_path / "p.nii.gz", pred, GEOM)
    task = CaseTask("D001", "c", tmp_path / "p.nii.gz", tmp_path / "t.nii.gz",
                    (("D001_liver", (1, 2)), ("D001_tumor", (2,))))
    out = evaluate_case(task)
    assert out["D001_liver"]["dice"] == 1.0 and out["D001_liver"]["hd95"] == 0.0
    assert out["D001_liver"]["truth_voxels"] == 4 * 8 * 8
    assert out["D001_tumor"]["dice"] == 0.0 and math.isnan(out["D001_tumor"]["hd95"])
    assert out["D001_tumor"]["hd95_counted"] == pytest.approx(DIAGONAL)


# --- a synthetic pred/gt folder pair ------------------------------------------------------------
def write_collection(root: Path) -> tuple[Path, list[Path]]:
    """Two datasets, two cases each, with known per-head Dice (see the expectations below)."""
    pred_dir = root / "pred"
    gt1, gt2 = root / "Dataset001_Liver" / "labelsTs", root / "Dataset002_Organs" / "labelsTs"
    liver = np.zeros(SHAPE, np.int16)
    liver[2:6, 2:10, 2:10] = 1
    liver[3:5, 4:6, 4:6] = 2
    missed = liver.copy()
    missed[liver == 2] = 1
    for case, pred in (("a", liver), ("b", missed)):  # tumour: 1.0 and 0.0; liver: 1.0 twice
        write_label(gt1 / f"{case}.nii.gz", liver, GEOM)
        write_label(pred_dir / case / "D001.nii.gz", pred, GEOM)
    organs = np.zeros(SHAPE, np.int16)
    organs[0:4, 0:4, 0:4] = 1
    organs[0:2, 8:12, 0:3] = 3
    with_cyst = organs.copy()
    with_cyst[5:7, 8:10, 8:10] = 2
    shifted = with_cyst.copy()
    shifted[0:4, 0:4, 0:6] = 0
    shifted[0:4, 0:4, 2:6] = 1  # organ shifted 2 voxels in x: Dice 0.5, HD95 2 mm
    write_label(gt2 / "c.nii.gz", with_cyst, GEOM)
    write_label(pred_dir / "c" / "D002.nii.gz", shifted, GEOM)
    write_label(gt2 / "d.nii.gz", organs, GEOM)  # no cyst in truth nor prediction: Dice 1.0, HD95 0
    write_label(pred_dir / "d" / "D002.nii.gz", organs, GEOM)
    return pred_dir, [gt1, gt2]


EXPECTED_DICE = {"D001_liver": 1.0, "D001_tumor": 0.5, "D002_organ": 0.75, "D002_cyst": 1.0,
                 "D002_vessel": 1.0}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    pred_dir, gts = write_collection(root)
    summary = evaluate(pred_dir, gts, make_registry(), out_dir=root / "out", progress=False, workers=2)
    return root, pred_dir, gts, summary


def test_summary_means_per_head_dataset_and_groups(evaluated):
    _, _, _, s = evaluated
    for hid, d in EXPECTED_DICE.items():
        assert s["heads"][hid]["dice_mean"] == pytest.approx(d), hid
    assert s["heads"]["D002_organ"]["hd95_mean"] == pytest.approx((2.0 + 0.0) / 2)
    assert s["heads"]["D001_tumor"]["hd95_mean"] == pytest.approx(DIAGONAL / 2)  # undefined: diagonal
    assert s["heads"]["D001_tumor"]["n_hd95_undefined"] == 1
    assert s["cases"]["D001"]["b"]["D001_tumor"]["hd95"] is None
    assert s["datasets"]["D001"]["dice_mean"] == pytest.approx(0.75)
    assert s["datasets"]["D002"]["dice_mean"] == pytest.approx((0.75 + 1 + 1) / 3)
    assert s["dataset_average"]["dice_mean"] == pytest.approx((0.75 + 11 / 12) / 2)
    assert s["groups"]["all"]["dice_mean"] == pytest.approx(np.mean(list(EXPECTED_DICE.values())))
    assert s["groups"]["lesions"]["heads"] == ["D001_tumor", "D002_cyst"]
    assert s["groups"]["lesions"]["dice_mean"] == pytest.approx(0.75)
    # own mean Dice as reference; 75 % is not below the 75 % threshold
    assert s["groups"]["difficult"]["heads"] == ["D001_tumor"]
    assert s["n_cases"] == 4 and s["missing"] == []


def test_reference_dice_decides_the_difficult_group(evaluated):
    _, pred_dir, gts, own = evaluated
    reference = {"D001_liver": 90, "D001_tumor": 60, "D002_organ": 60, "D002_cyst": 80, "D002_vessel": 75}
    s = evaluate(pred_dir, gts, make_registry(), reference=reference, progress=False, workers=1)
    assert s["groups"]["difficult"]["heads"] == ["D001_tumor", "D002_organ"]
    assert s["groups"]["difficult"]["dice_mean"] == pytest.approx((0.5 + 0.75) / 2)
    assert s["heads"]["D001_tumor"]["reference_dice"] == pytest.approx(0.6)
    assert s["cases"] == own["cases"]  # one worker or two: the same numbers, in the same order
    with pytest.raises(UserInputError, match="D002_vessel"):
        partial = {k: v for k, v in reference.items() if k != "D002_vessel"}
        evaluate(pred_dir, gts, make_registry(), reference=partial, progress=False, workers=1)
    with pytest.raises(UserInputError, match="percent"):
        evaluate(pred_dir, gts, make_registry(), reference={**reference, "D001_liver": 120}, progress=False,
                 workers=1)


def test_reference_loads_from_a_summary_or_a_plain_mapping(evaluated, tmp_path):
    root, _, _, s = evaluated
    ref = load_reference(root / "out" / "summary.json")
    assert ref == pytest.approx(reference_from_summary(s))
    assert ref["D001_tumor"] == pytest.approx(50.0)
    (tmp_path / "ref.json").write_text(json.dumps({"D001_liver": 91.5}))
    assert load_reference(tmp_path / "ref.json") == {"D001_liver": 91.5}
    (tmp_path / "bad.json").write_text(json.dumps({"D001_liver": "high"}))
    with pytest.raises(UserInputError, match="bad.json"):
        load_reference(tmp_path / "bad.json")


def test_reports_are_written(evaluated):
    root, _, _, s = evaluated
    out = root / "out"
    no_nan = lambda c: pytest.fail(f"{c} in JSON")  # noqa: E731
    data = json.loads((out / "summary.json").read_text(), parse_constant=no_nan)
    assert data["heads"]["D001_liver"]["dice_mean"] == 1.0 and data["units"]["dice"] == "fraction 0..1"
    md = (out / "summary.md").read_text()
    assert "| D001 | Liver | 2 | 2 | 75.00 |" in md and "| D002_organ |" in md
    assert (out / "boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    table = format_dataset_table(s)
    assert table.splitlines()[0].startswith("| dataset |") and "average over datasets" in table
    plot_comparison({"baseline": s, "multitalent": s}, out / "compare.png")
    assert (out / "compare.png").stat().st_size > 1000


def test_heads_option_limits_the_evaluation(evaluated):
    _, pred_dir, gts, _ = evaluated
    s = evaluate(pred_dir, gts, make_registry(), heads=["D002_cyst"], progress=False, workers=1)
    assert list(s["heads"]) == ["D002_cyst"] and list(s["datasets"]) == ["D002"]
    with pytest.raises(UserInputError, match="unknown head"):
        evaluate(pred_dir, gts, make_registry(), heads=["D009_x"], progress=False, workers=1)


def test_missing_prediction_is_an_error_unless_allowed(tmp_path):
    pred_dir, gts = write_collection(tmp_path)
    (pred_dir / "b" / "D001.nii.gz").unlink()
    with pytest.raises(UserInputError, match=r"b/D001\.nii\.gz"):
        evaluate(pred_dir, gts, make_registry(), progress=False, workers=1)
    s = evaluate(pred_dir, gts, make_registry(), progress=False, workers=1, allow_missing=True)
    assert s["missing"][0]["case"] == "b" and list(s["cases"]["D001"]) == ["a"]
    assert s["heads"]["D001_tumor"]["n_cases"] == 1


def test_geometry_mismatch_names_the_file(tmp_path):
    pred_dir, gts = write_collection(tmp_path)
    bad = Geometry(SHAPE, (2.0, 1.0, 1.5), (0.0, 0.0, 0.0), IDENTITY)
    write_label(pred_dir / "c" / "D002.nii.gz", np.zeros(SHAPE, np.int16), bad)
    with pytest.raises(UserInputError, match=r"c/D002\.nii\.gz.*spacing"):
        evaluate(pred_dir, gts, make_registry(), progress=False, workers=2)


def test_gt_dirs_by_folder_name_or_explicit_id(tmp_path):
    reg = make_registry()
    a = tmp_path / "Dataset001_Liver" / "labelsTs"
    b = tmp_path / "Dataset002_Organs"
    c = tmp_path / "anything"
    for p in (a, b, c):
        p.mkdir(parents=True)
    assert parse_gt_dirs([a, b], reg) == {"D001": a, "D002": b}
    assert parse_gt_dirs([f"D002={c}"], reg) == {"D002": c}
    with pytest.raises(UserInputError, match="DatasetNNN_"):
        parse_gt_dirs([c], reg)
    with pytest.raises(UserInputError, match="given twice"):
        parse_gt_dirs([a, f"D001={c}"], reg)
    with pytest.raises(UserInputError, match="not in the head registry"):
        parse_gt_dirs([f"D007={c}"], reg)
