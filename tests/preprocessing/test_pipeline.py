"""The preprocessing pipeline (``multitalent.preprocessing.pipeline``): cropping, the preprocessed folder,
restoring the original grid and refusal of bad cases."""

import json
import shutil

import numpy as np
import pytest

from multitalent import io
from multitalent.errors import UserInputError
from multitalent.preprocessing.pipeline import Preprocessed, body_box, restore_channel, run_preprocessing


def test_body_box_crops_air():
    img = np.full((10, 20, 20), -1000.0)
    img[2:8, 5:15, 3:12] = 40
    assert body_box(img) == (slice(2, 8), slice(5, 15), slice(3, 12))


def test_preprocess_writes_plans_heads_and_cases(tiny_collection, tmp_path):
    out = run_preprocessing(tiny_collection, tmp_path / "pre", preset="small", workers=1, progress=False)
    pre = Preprocessed.open(out)
    assert pre.registry.ids == ["D001_liver", "D001_tumor", "D002_spleen"]
    assert len(pre.cases) == 5 and set(pre.splits) == {"0", "1", "2", "3", "4"}
    n = pre.plans.normalization
    assert -1000 < n.lower < n.upper and n.std > 0
    with np.load(pre.case_file("liver_0")) as z:
        assert z["image"].dtype == np.int16 and z["seg"].shape == z["image"].shape
        assert set(np.unique(z["seg"])) <= {0, 1, 2}
        heads = set(np.unique(z["fg_heads"]).tolist())
        assert heads == {0, 1}  # liver and tumour foreground sampled, spleen (other dataset) not
        locs = z["fg_locations"]
        assert np.all(z["seg"][tuple(locs.T)] > 0)
    props = pre.properties("liver_0")
    assert props["dataset"] == "D001" and len(props["crop_box"]) == 3
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_restore_channel_returns_the_original_grid(tiny_collection, tmp_path):
    from multitalent.preprocessing.pipeline import prepare_image

    for code in ["RAS", "LAS"]:
        g = io.Geometry((20, 32, 32), (2.0, 1.5, 1.5), (3.0, 4.0, 5.0), io.direction_for(code))
        img = np.full(g.shape, -1000, np.float32)
        img[3:17, 5:27, 6:20] = 50
        arr, props = prepare_image(img, g, (3.0, 3.0, 3.0))
        back = restore_channel((arr > 0).astype(np.float32), props, order=1)
        assert back.shape == g.shape
        agreement = ((back > 0.5) == (img > 0)).mean()
        assert agreement > 0.97


def _expect_refusal(manifest, out, match):
    with pytest.raises(UserInputError, match=match):
        run_preprocessing(manifest, out, preset="small", workers=1, progress=False)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_undeclared_label_value_is_refused(tiny_collection, tmp_path):
    f = tiny_collection.parent / "Dataset002_Spleen" / "labelsTr" / "spleen_0.nii.gz"
    seg, g = io.read_label(f)
    seg[5, 10, 10] = 7
    io.write_label(f, seg, g)
    _expect_refusal(tiny_collection, tmp_path / "pre", r"spleen_0.nii.gz: label value\(s\) \[7\]")


def test_geometry_mismatch_is_refused(tiny_collection, tmp_path):
    f = tiny_collection.parent / "Dataset002_Spleen" / "labelsTr" / "spleen_1.nii.gz"
    seg, g = io.read_label(f)
    io.write_label(f, seg, io.Geometry(g.shape, (2.0, 1.5, 1.4), g.origin, g.direction))
    _expect_refusal(tiny_collection, tmp_path / "pre", "spleen_1.nii.gz: geometry differs.*spacing")


def test_case_id_clash_is_refused(tiny_collection, tmp_path):
    d = tiny_collection.parent / "Dataset002_Spleen"
    shutil.copy(d / "labelsTr" / "spleen_0.nii.gz", d / "labelsTr" / "liver_0.nii.gz")
    shutil.copy(d / "imagesTr" / "spleen_0_0000.nii.gz", d / "imagesTr" / "liver_0_0000.nii.gz")
    _expect_refusal(tiny_collection, tmp_path / "pre", "case id 'liver_0' also exists in dataset D001")


def test_missing_image_is_refused(tiny_collection, tmp_path):
    (tiny_collection.parent / "Dataset001_Liver" / "imagesTr" / "liver_1_0000.nii.gz").unlink()
    _expect_refusal(tiny_collection, tmp_path / "pre", "liver_1_0000.nii.gz: missing image")


def test_empty_label_map_is_allowed_with_a_warning(tiny_collection, tmp_path, caplog):
    f = tiny_collection.parent / "Dataset002_Spleen" / "labelsTr" / "spleen_1.nii.gz"
    seg, g = io.read_label(f)
    io.write_label(f, np.zeros_like(seg), g)
    run_preprocessing(tiny_collection, tmp_path / "pre", preset="small", workers=1, progress=False)
    assert "spleen_1.nii.gz: the label map is empty" in caplog.text


def test_output_that_is_a_file_is_refused(tiny_collection, tmp_path):
    (tmp_path / "pre").write_text("x")
    with pytest.raises(UserInputError, match="is a file"):
        run_preprocessing(tiny_collection, tmp_path / "pre", preset="small", workers=1, progress=False)


def test_parallel_and_serial_give_identical_files(tiny_collection, tmp_path):
    a = run_preprocessing(tiny_collection, tmp_path / "a", preset="small", workers=2, progress=False)
    b = run_preprocessing(tiny_collection, tmp_path / "b", preset="small", workers=1, progress=False)
    assert json.loads((a / "plans.json").read_text()) == json.loads((b / "plans.json").read_text())
    with np.load(a / "cases" / "liver_2.npz") as x, np.load(b / "cases" / "liver_2.npz") as y:
        assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["fg_locations"], y["fg_locations"])
