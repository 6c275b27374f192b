"""Specification of the synthetic phantom collection (``multitalent.phantoms``: collection, anatomy, scanner
settings, preview), generated once for the module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from multitalent.errors import UserInputError
from multitalent.io import read_image, read_label, to_canonical
from multitalent.phantoms import (
    DATASETS,
    generate_case,
    generate_collection,
    save_preview,
    truth_for_head,
)
from multitalent.phantoms import collection as phantom_collection
from multitalent.registry import build_registry, load_manifest

ABDOMINAL = {"D001", "D002", "D003", "D004", "D007"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small collection, generated once for the whole module."""
    return generate_collection(tmp_path_factory.mktemp("phantoms") / "collection", seed=0, progress=False)


@pytest.fixture(scope="module")
def root(manifest: Path) -> Path:
    return manifest.parent


@pytest.fixture(scope="module")
def cases(root: Path) -> dict[str, dict]:
    return json.loads((root / "ground_truth" / "structures.json").read_text())["cases"]


def truth(root: Path, case: str, name: str) -> tuple[np.ndarray, object]:
    """A ground-truth mask brought to the canonical orientation, with its canonical geometry."""
    mask, geometry = read_label(root / "ground_truth" / case / f"{name}.nii.gz")
    array, canonical = to_canonical(mask, geometry)
    return array > 0, canonical


def slice_z(geometry, n: int) -> np.ndarray:
    """Physical z (mm) of the slices of a canonical (identity-direction) grid."""
    return geometry.origin[2] + geometry.spacing[0] * np.arange(n)


# --- the collection as a whole -------------------------------------------------------------
def test_manifest_loads_and_every_dataset_has_heads(manifest: Path) -> None:
    collection = load_manifest(manifest)
    assert [d.path.name for d in collection.datasets] == [d.folder for d in DATASETS]
    assert len(collection.datasets) >= 7
    registry = build_registry(collection)
    for d in collection.datasets:
        assert registry.heads_of(d.id), d.id
    liver = collection.dataset("D001")
    assert liver.labels == {"liver": (1, 2), "tumor": (2,)} and liver.regions_class_order == (1, 2)
    assert {"D005_aorta", "D006_aorta", "D006_heart", "D005_spleen", "D007_spleen"} <= set(registry.ids)


def test_dataset_sizes_are_unequal_and_small(manifest: Path) -> None:
    collection = load_manifest(manifest)
    n_train = {d.id: len(d.cases("Tr")) for d in collection.datasets}
    for d in collection.datasets:
        assert n_train[d.id] == d.num_training
        assert 4 <= n_train[d.id] <= 16
        assert len(d.cases("Ts")) == 2
    assert min(n_train, key=n_train.get) == "D005"  # the multi-organ set is the smallest
    ids = [c for d in collection.datasets for s in ("Tr", "Ts") for c in d.cases(s)]
    assert len(ids) == len(set(ids)), "case ids must be unique across the collection"


def test_every_case_has_image_label_and_truth_on_one_grid(manifest: Path, cases: dict) -> None:
    collection = load_manifest(manifest)
    root = manifest.parent
    seen = set()
    for d in collection.datasets:
        declared = d.declared_values
        for split in ("Tr", "Ts"):
            for case in d.cases(split):
                label, lgeo = read_label(d.label_path(case, split))
                assert set(np.unique(label).tolist()) <= declared, (case, np.unique(label))
                image = sitk.ReadImage(str(d.image_path(case, split)))
                assert image.GetPixelID() == sitk.sitkInt16
                assert tuple(reversed(image.GetSize())) == lgeo.shape
                _, tgeo = read_label(root / "ground_truth" / case / "aorta.nii.gz")
                assert tgeo.matches(lgeo) is None
                nz, ny, nx = lgeo.shape
                assert 80 <= ny <= 130 and 80 <= nx <= 130 and 30 <= nz <= 170
                assert 2.5 <= lgeo.spacing[0] <= 5.0 and 2.8 <= lgeo.spacing[1] <= 3.5
                seen.add(case)
    assert seen == set(cases)
    structures = {p.name[: -len(".nii.gz")] for p in (root / "ground_truth" / next(iter(seen))).iterdir()}
    assert {"aorta", "aorta_thoracic", "heart", "heart_with_aortic_root", "spleen", "spleen_coarse",
            "liver_tumor", "kidney_tumor", "pancreas_tumor", "lung_left", "trachea"} <= structures


def test_orientations_vary_and_all_occur(manifest: Path) -> None:
    collection = load_manifest(manifest)
    found = set()
    for d in collection.datasets:
        for case in d.cases("Tr"):
            _, geometry = read_label(d.label_path(case))
            found.add(geometry.orientation)
    assert found == {"RAS", "LPS", "LAS"}


def test_fields_of_view_vary_and_fit_each_dataset(cases: dict) -> None:
    fovs = {m["fov"] for m in cases.values()}
    assert fovs == {"thorax", "abdomen", "both"}
    for m in cases.values():
        if m["dataset"] == "D006":
            assert m["fov"] in ("thorax", "both")
        if m["dataset"] in ABDOMINAL:
            assert m["fov"] in ("abdomen", "both")
        if m["fov"] == "thorax":
            assert m["voxels"]["iliac_arteries"] == 0 and m["voxels"]["heart"] > m["voxels"]["liver"]
            assert m["voxels"]["lung_left"] > 0 and m["voxels"]["trachea"] > 0
        if m["fov"] == "abdomen":
            assert m["voxels"]["trachea"] == 0 and m["voxels"]["liver"] > m["voxels"]["heart"]
        if m["fov"] == "both":
            assert m["voxels"]["trachea"] > 0 and m["voxels"]["iliac_arteries"] > 0


def test_scanner_parameters_vary(cases: dict) -> None:
    metas = list(cases.values())
    assert {m["phase"] for m in metas} == {"native", "arterial", "venous"}
    noise = [m["noise_sigma_hu"] for m in metas]
    assert 5 <= min(noise) and max(noise) <= 25 and max(noise) - min(noise) > 10
    assert len({m["spacing"][0] for m in metas}) > 10 and len({m["spacing"][1] for m in metas}) > 10


# --- determinism ---------------------------------------------------------------------------
def test_collection_equals_generate_case_and_is_deterministic(root: Path) -> None:
    case = generate_case(0, "Liver", 2)
    image, geometry = read_image(root / "Dataset001_Liver" / "imagesTr" / "liver_002_0000.nii.gz")
    label, _ = read_label(root / "Dataset001_Liver" / "labelsTr" / "liver_002.nii.gz")
    assert geometry.matches(case.geometry) is None
    np.testing.assert_array_equal(image, case.image)
    np.testing.assert_array_equal(label, case.label)
    again = generate_case(0, "Liver", 2)
    assert again.image.tobytes() == case.image.tobytes()
    for name, mask in case.truth.items():
        assert np.array_equal(again.truth[name], mask), name


def test_different_seeds_differ() -> None:
    a, b = generate_case(0, "Spleen", 0), generate_case(1, "Spleen", 0)
    assert a.image.shape != b.image.shape or not np.array_equal(a.image, b.image)
    assert a.meta["spacing"] != b.meta["spacing"]


def test_anatomy_does_not_depend_on_the_stored_orientation() -> None:
    stored = {o: generate_case(0, "Thorax", 1, orientation=o) for o in ("LPS", "RAS", "LAS")}
    ref_image, ref_geometry = to_canonical(stored["LPS"].image, stored["LPS"].geometry)
    for code, case in stored.items():
        assert case.geometry.orientation == code
        image, geometry = to_canonical(case.image, case.geometry)
        assert geometry.matches(ref_geometry) is None
        np.testing.assert_array_equal(image, ref_image)
        heart, _ = to_canonical(case.truth_mask("heart").view(np.uint8), case.geometry)
        ref_heart, _ = to_canonical(stored["LPS"].truth_mask("heart").view(np.uint8), stored["LPS"].geometry)
        np.testing.assert_array_equal(heart, ref_heart)


# --- anatomy and intensities ----------------------------------------------------------------
def test_tissues_have_plausible_hounsfield_units(root: Path, cases: dict) -> None:
    case = next(c for c, m in sorted(cases.items()) if m["fov"] == "both" and m["split"] == "Tr")
    meta = cases[case]
    image, geometry = read_image(root / meta["folder"] / "imagesTr" / f"{case}_0000.nii.gz")
    image, _ = to_canonical(image, geometry)

    def mean(name: str) -> float:
        return float(image[truth(root, case, name)[0]].mean())

    body = truth(root, case, "body")[0]
    assert image[~body].mean() < -900
    assert mean("lung_left") < -650 and mean("trachea") < -300  # the trachea holds its wall too
    assert mean("bone") > 200
    assert 20 < mean("liver") < 160 and -20 < mean("gallbladder") < 60


def test_contrast_phase_changes_the_blood(root: Path, cases: dict) -> None:
    by_phase: dict[str, list[float]] = {}
    for case, meta in sorted(cases.items()):
        if meta["voxels"]["aorta"] < 100:
            continue
        image, geometry = read_image(root / meta["folder"] / f"images{meta['split']}" / f"{case}_0000.nii.gz")
        image, _ = to_canonical(image, geometry)
        by_phase.setdefault(meta["phase"], []).append(float(image[truth(root, case, "aorta")[0]].mean()))
        if all(len(by_phase.get(p, [])) >= 2 for p in ("native", "arterial", "venous")):
            break
    means = {p: np.mean(v) for p, v in by_phase.items()}
    assert means["arterial"] > means["venous"] > means["native"]
    assert means["arterial"] > 180 and means["native"] < 90


def test_lesions_are_small_and_low_contrast(root: Path, cases: dict) -> None:
    liver_cases = [c for c, m in cases.items() if m["dataset"] == "D001"]
    with_tumour = [c for c in liver_cases if cases[c]["voxels"]["liver_tumor"] > 0]
    assert len(with_tumour) >= len(liver_cases) // 2
    for c in with_tumour:
        v = cases[c]["voxels"]
        assert v["liver_tumor"] < 0.1 * v["liver"]
        assert 10 <= abs(cases[c]["lesion_contrast_hu"]["liver"]) <= 25
    assert any(m["voxels"]["kidney_tumor"] > 0 for m in cases.values() if m["dataset"] == "D003")
    assert any(m["voxels"]["pancreas_tumor"] > 0 for m in cases.values() if m["dataset"] == "D004")


def test_shapes_vary_between_cases(cases: dict) -> None:
    for name in ("liver", "kidney_left", "spleen"):
        volumes = [m["voxels"][name] * np.prod(m["spacing"]) for m in cases.values() if m["fov"] != "thorax"]
        assert np.std(volumes) / np.mean(volumes) > 0.08, name


# --- protocol conflicts ---------------------------------------------------------------------
def test_thorax_aorta_stops_at_the_diaphragm(root: Path, cases: dict) -> None:
    both = [c for c, m in sorted(cases.items()) if m["fov"] == "both"]
    assert both
    for case in both[:3]:
        cut = cases[case]["aorta_cut_z_mm"]
        full, geometry = truth(root, case, "aorta")
        thoracic, _ = truth(root, case, "aorta_thoracic")
        z = slice_z(geometry, full.shape[0])[:, None, None]
        assert thoracic.any() and not (thoracic & ~full).any()
        assert not (thoracic & (z < cut)).any()
        below = (full & (z < cut)).sum()
        assert below > 0.15 * full.sum(), "the full-length aorta runs on below the diaphragm"
        lungs = truth(root, case, "lung_left")[0] | truth(root, case, "lung_right")[0]
        liver = truth(root, case, "liver")[0]
        zs = np.broadcast_to(z, full.shape)
        assert zs[liver].min() < cut < zs[lungs].max()
    # the Thorax dataset's own label maps follow that protocol
    collection = load_manifest(root / "collection.json")
    thorax = collection.dataset("D006")
    for case in thorax.cases("Tr"):
        label, geometry = read_label(thorax.label_path(case))
        label, canonical = to_canonical(label, geometry)
        z = slice_z(canonical, label.shape[0])[:, None, None]
        assert not ((label == 2) & (z < cases[case]["aorta_cut_z_mm"])).any()


def test_thorax_heart_includes_the_aortic_root(root: Path, cases: dict) -> None:
    case = next(c for c, m in sorted(cases.items()) if m["dataset"] == "D006")
    heart, _ = truth(root, case, "heart")
    heart_root, _ = truth(root, case, "heart_with_aortic_root")
    aorta, _ = truth(root, case, "aorta")
    assert (heart_root & aorta).sum() > 20
    assert not (heart & aorta).any()
    label, geometry = read_label(root / "Dataset006_Thorax" / "labelsTr" / f"{case}.nii.gz")
    label, _ = to_canonical(label, geometry)
    assert ((label == 1) & aorta).sum() == (heart_root & aorta).sum()


def test_spleen_only_dataset_is_annotated_coarsely(root: Path, cases: dict) -> None:
    ratios = []
    for meta in cases.values():
        if meta["voxels"]["spleen"] < 100:
            continue
        assert meta["voxels"]["spleen_coarse"] > meta["voxels"]["spleen"]
        ratios.append(meta["voxels"]["spleen_coarse"] / meta["voxels"]["spleen"])
    assert 1.25 < np.median(ratios) < 3.0 and max(ratios) < 4.0
    case = next(c for c, m in sorted(cases.items()) if m["dataset"] == "D007")
    fine, _ = truth(root, case, "spleen")
    coarse, _ = truth(root, case, "spleen_coarse")
    assert not (fine & ~coarse).any()
    label, geometry = read_label(root / "Dataset007_Spleen" / "labelsTr" / f"{case}.nii.gz")
    np.testing.assert_array_equal(to_canonical(label, geometry)[0] == 1, coarse)


def test_truth_for_any_head_on_any_case(root: Path, cases: dict) -> None:
    kidney_case = next(c for c, m in sorted(cases.items())
                       if m["dataset"] == "D003" and m["tumours"]["kidney"])
    mask, _ = truth_for_head(root, kidney_case, "D003_kidney")
    label, _ = read_label(root / "Dataset003_Kidney" / "labelsTr" / f"{kidney_case}.nii.gz")
    np.testing.assert_array_equal(mask, label == 1)
    liver_case = next(c for c, m in sorted(cases.items()) if m["dataset"] == "D001" and m["fov"] == "both")
    thorax_aorta, _ = truth_for_head(root, liver_case, "D006_aorta")
    full_aorta, _ = truth_for_head(root, liver_case, "D005_aorta")
    assert 0 < thorax_aorta.sum() < full_aorta.sum()
    heads = json.loads((root / "ground_truth" / "structures.json").read_text())["datasets"]["D003"]["heads"]
    assert heads["D003_kidney"] == {"labels": [1], "union": ["kidney_left", "kidney_right"],
                                    "minus": ["kidney_tumor"]}


def test_preview_is_a_png(root: Path, tmp_path: Path) -> None:
    png = save_preview(root, tmp_path / "preview.png", n_cases=3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- arguments and atomicity ----------------------------------------------------------------
def test_bad_arguments_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="scale"):
        generate_collection(tmp_path / "a", scale="huge", progress=False)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(UserInputError, match="file"):
        generate_collection(a_file, progress=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserInputError, match="not empty"):
        generate_collection(foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(UserInputError, match="seed"):
        generate_collection(tmp_path / "b", seed=-1, progress=False)
    with pytest.raises(UserInputError, match="dataset"):
        generate_case(0, "Brain", 0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_crash_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = phantom_collection._write_case
    calls = []

    def flaky(plan, scale, root):
        calls.append(plan.case_id)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(plan, scale, root)

    monkeypatch.setattr(phantom_collection, "_write_case", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_collection(tmp_path / "out", progress=False, workers=1)
    assert list(tmp_path.iterdir()) == []
