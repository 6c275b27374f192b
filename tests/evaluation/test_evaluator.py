"""Evaluation: metrics with known answers, the empty-mask rules, regions, summaries and reports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from multitalent.errors import UserInputError
from multitalent.evaluation import (
    dice,
    evaluate,
    evaluate_case,
    format_dataset_table,
    hd95,
    load_reference,
    parse_gt_dirs,
    plot_comparison,
    reference_from_summary,
    surface_distances,
)
from multitalent.evaluation.evaluator import CaseTask
from multitalent.io import Geometry, write_label
from multitalent.registry import Head, HeadRegistry

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def box(shape: tuple[int, int, int], *slices: slice) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[slices] = True
    return m


def blob(seed: int, shape: tuple[int, int, int] = (24, 32, 28)) -> np.ndarray:
    field = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 3)
    return field > np.percentile(field, 75)


# --- metrics ------------------------------------------------------------------------------------
def test_dice_of_half_overlapping_boxes_is_one_half():
    a = box((8, 8, 8), slice(0, 4), slice(0, 4), slice(0, 4))
    b = box((8, 8, 8), slice(0, 4), slice(0, 4), slice(2, 6))
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2])
def test_hd95_of_cubes_offset_by_k_voxels_is_k_times_the_spacing_of_that_axis(axis, k):
    spacing = (2.5, 0.8, 1.2)
    a = box((12, 12, 12), slice(3, 9), slice(3, 9), slice(3, 9))
    b = np.roll(a, k, axis=axis)
    # a whole face of each cube (over 5 % of the pooled surface) lies k voxels from the other's face
    assert hd95(a, b, spacing) == pytest.approx(k * spacing[axis])
    assert hd95(b, a, spacing) == pytest.approx(k * spacing[axis])


def test_hd95_of_two_single_voxels_is_their_distance_in_mm():
    spacing = (3.0, 0.5, 0.7)
    a = box((6, 6, 6), slice(1, 2), slice(1, 2), slice(1, 2))
    b = box((6, 6, 6), slice(2, 3), slice(3, 4), slice(4, 5))
    assert hd95(a, b, spacing) == pytest.approx(math.sqrt(3.0**2 + (2 * 0.5) ** 2 + (3 * 0.7) ** 2))


def test_hd95_of_identical_masks_is_zero_and_crop_does_not_change_it():
    a = blob(3)
    assert hd95(a, a, (1.0, 1.0, 1.0)) == 0.0
    big = np.zeros((60, 70, 80), dtype=bool)
    big[10:34, 20:52, 30:58] = a
    other = np.zeros_like(big)
    other[10:34, 20:52, 30:58] = blob(4)
    small = hd95(a, blob(4), (2.0, 1.0, 0.7))
    assert hd95(big, other, (2.0, 1.0, 0.7)) == pytest.approx(small)


def test_surface_distances_agree_with_brute_force():
    spacing = np.array([2.0, 0.9, 1.3])
    p, t = blob(5, (10, 12, 11)), blob(6, (10, 12, 11))

    def surface(m):  # independent: a voxel is on the surface if a 6-neighbour (or the border) is empty
        padded = np.pad(m, 1)
        inner = np.ones_like(m)
        for ax in range(3):
            for step in (-1, 1):
                inner &= np.roll(padded, step, axis=ax)[1:-1, 1:-1, 1:-1]
        return m & ~inner

    sp, st = np.argwhere(surface(p)) * spacing, np.argwhere(surface(t)) * spacing
    pairwise = np.linalg.norm(sp[:, None, :] - st[None, :, :], axis=-1)
    p_to_t, t_to_p = surface_distances(p, t, spacing)
    np.testing.assert_allclose(np.sort(p_to_t), np.sort(pairwise.min(axis=1)))
    np.testing.assert_allclose(np.sort(t_to_p), np.sort(pairwise.min(axis=0)))
    assert hd95(p, t, spacing) == pytest.approx(np.percentile(np.concatenate([p_to_t, t_to_p]), 95))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice inside get_mask_edges
def test_hd95_against_monai_on_a_random_blob():
    """MONAI takes max(directed 95th percentiles); we pool both directions (medpy, nnU-Net v1).

    Both use 6-connected surface voxels and exact Euclidean distances, so the directed values agree
    to float32 precision; the pooled percentile lies between the two directed ones, here within a voxel.
    """
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_hausdorff_distance

    spacing = (2.5, 0.8, 1.1)
    field = ndimage.gaussian_filter(np.random.default_rng(1).random((24, 32, 28)), 3)
    t = field > np.percentile(field, 75)
    p = np.roll(field > np.percentile(field, 80), 1, axis=2)  # a smaller, shifted "prediction"
    as_tensor = [torch.from_numpy(m)[None, None] for m in (p, t)]
    theirs = float(compute_hausdorff_distance(*as_tensor, percentile=95, spacing=spacing)[0, 0])
    p_to_t, t_to_p = surface_distances(p, t, spacing)
    directed = (np.percentile(p_to_t, 95), np.percentile(t_to_p, 95))
    assert max(directed) == pytest.approx(theirs, rel=1e-5)
    ours = hd95(p, t, spacing)
    assert min(directed) - 1e-9 <= ours <= max(directed) + 1e-9
    assert abs(ours - theirs) <= max(spacing)


def test_empty_mask_rules():
    empty = np.zeros((5, 5, 5), dtype=bool)
    full = box((5, 5, 5), slice(1, 3), slice(1, 3), slice(1, 3))
    assert dice(empty, empty) == 1.0 and hd95(empty, empty, (1, 1, 1)) == 0.0
    assert dice(full, empty) == 0.0 and math.isnan(hd95(full, empty, (1, 1, 1)))
    assert dice(empty, full) == 0.0 and math.isnan(hd95(empty, full, (1, 1, 1)))


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
