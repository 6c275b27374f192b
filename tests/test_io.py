"""Reading and writing scans keeps their full geometry, in any orientation and as DICOM."""

import itertools
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from multitalent import io
from multitalent.errors import UserInputError


def _geom(code, shape=(6, 7, 8), spacing=(3.0, 1.5, 0.7), origin=(10.0, -20.0, 5.0)):
    return io.Geometry(shape, spacing, origin, io.direction_for(code))


@pytest.mark.parametrize("code", ["RAS", "LPS", "LAS"])
def test_nifti_round_trip_keeps_geometry(tmp_path, code):
    g = _geom(code)
    a = np.random.default_rng(0).normal(size=g.shape).astype(np.float32)
    io.write_image(tmp_path / "x.nii.gz", a, g)
    b, g2 = io.read_image(tmp_path / "x.nii.gz")
    assert g.matches(g2) is None and g2.orientation == code
    np.testing.assert_allclose(a, b)


@pytest.mark.parametrize("code", ["RAS", "LPS", "LAS"])
def test_canonical_orientation_is_identity_and_reversible(code):
    g = _geom(code)
    a = np.arange(np.prod(g.shape)).reshape(g.shape).astype(np.float32)
    c, cg = io.to_canonical(a, g)
    np.testing.assert_allclose(np.asarray(cg.direction).reshape(3, 3), np.eye(3))
    assert np.array_equal(io.from_canonical(c, cg, g), a)


@pytest.mark.parametrize("code", ["RAS", "LPS", "LAS"])
def test_canonical_keeps_every_voxel_at_its_physical_point(code):
    g = _geom(code)
    a = np.zeros(g.shape, np.float32)
    a[4, 1, 6] = 1
    point = io.to_sitk(a, g).TransformIndexToPhysicalPoint((6, 1, 4))
    c, cg = io.to_canonical(a, g)
    k, j, i = (int(v) for v in np.argwhere(c)[0])
    np.testing.assert_allclose(io.to_sitk(c, cg).TransformIndexToPhysicalPoint((i, j, k)), point, atol=1e-6)


@pytest.mark.parametrize("code", ["RAS", "LPS"])
def test_dicom_series_round_trip(tmp_path, code):
    g = _geom(code, shape=(5, 9, 11))
    a = np.random.default_rng(1).integers(-1000, 1000, g.shape).astype(np.int16)
    io.write_dicom_series(tmp_path / "dcm", a, g)
    b, g2 = io.read_image(tmp_path / "dcm")
    assert g.matches(g2) is None
    assert np.array_equal(a, b)


def test_dicom_with_missing_slice_is_refused(tmp_path):
    g = _geom("LPS", shape=(6, 8, 8))
    io.write_dicom_series(tmp_path / "dcm", np.zeros(g.shape, np.int16), g)
    (tmp_path / "dcm" / "slice_0003.dcm").unlink()
    with pytest.raises(UserInputError, match="missing or duplicate slices"):
        io.read_image(tmp_path / "dcm")


def test_dicom_folder_with_two_series_is_refused(tmp_path):
    g = _geom("LPS", shape=(3, 8, 8))
    io.write_dicom_series(tmp_path / "a", np.zeros(g.shape, np.int16), g)
    img = io.to_sitk(np.zeros(g.shape, np.int16), g)
    sl = img[:, :, 0]
    for k, v in {"0020|000e": "1.2.3.999", "0020|0013": "1", "0008|0060": "CT"}.items():
        sl.SetMetaData(k, v)
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    w.SetFileName(str(tmp_path / "a" / "other.dcm"))
    w.Execute(sl)
    with pytest.raises(UserInputError, match="DICOM series"):
        io.read_image(tmp_path / "a")


def test_bad_files_are_user_errors(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        io.read_image(tmp_path / "missing.nii.gz")
    g = _geom("LPS")
    io.write_image(tmp_path / "ok.nii.gz", np.zeros(g.shape, np.float32), g)
    data = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match="cut.nii.gz"):
        io.read_image(tmp_path / "cut.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(UserInputError, match="junk.nii.gz"):
        io.read_image(tmp_path / "junk.nii.gz")


def test_nan_and_non_3d_and_absurd_spacing(tmp_path):
    g = _geom("LPS")
    a = np.zeros(g.shape, np.float32)
    a[1, 1, 1] = np.nan
    io.write_image(tmp_path / "nan.nii.gz", a, g)
    with pytest.raises(UserInputError, match="NaN or infinite"):
        io.read_image(tmp_path / "nan.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4), np.float32)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(UserInputError, match="3D"):
        io.read_image(tmp_path / "flat.nii.gz")
    # below 0.01 mm (a 1e-9 mm slice spacing was once preprocessed and written) or above 50 mm: refused,
    # naming the file; the limits themselves are accepted
    for bad in [(1e-9, 1, 1), (0.0001, 1, 1), (1, 0.005, 1), (60.0, 1, 1)]:
        img = sitk.GetImageFromArray(np.zeros((3, 4, 4), np.float32))
        img.SetSpacing(tuple(reversed(bad)))
        sitk.WriteImage(img, str(tmp_path / "sp.nii.gz"))
        with pytest.raises(UserInputError, match=r"sp\.nii\.gz: absurd voxel spacing"):
            io.read_image(tmp_path / "sp.nii.gz")
    for ok in [(0.01, 1, 1), (50.0, 1, 1)]:
        img = sitk.GetImageFromArray(np.zeros((3, 4, 4), np.float32))
        img.SetSpacing(tuple(reversed(ok)))
        sitk.WriteImage(img, str(tmp_path / "ok.nii.gz"))
        assert io.read_image(tmp_path / "ok.nii.gz")[1].spacing[0] == pytest.approx(ok[0], rel=1e-5)


def test_write_is_atomic(tmp_path, monkeypatch):
    g = _geom("LPS")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(io.sitk, "WriteImage", boom)
    with pytest.raises(RuntimeError):
        io.write_image(tmp_path / "out.nii.gz", np.zeros(g.shape, np.float32), g)
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=25, deadline=None)
@given(code=st.sampled_from(["RAS", "LPS", "LAS", "RPI", "AIL", "SPR"]),
       spacing=st.tuples(*[st.floats(0.3, 6.0)] * 3),
       shape=st.tuples(*[st.integers(2, 6)] * 3))
def test_geometry_round_trip_property(code, spacing, shape):
    g = io.Geometry(shape, spacing, (1.0, 2.0, 3.0), io.direction_for(code))
    a = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    c, cg = io.to_canonical(a, g)
    assert np.array_equal(io.from_canonical(c, cg, g), a)
    assert sorted(np.round(cg.spacing, 5)) == sorted(np.round(spacing, 5))


def test_dicom_io_leaves_the_text_encoding_alone(tmp_path):
    """GDCM sets the C locale to "C"; left so, Python would read every later text file as ASCII."""
    import locale

    before = locale.getpreferredencoding(False)
    g = _geom("LPS", shape=(3, 4, 4))
    io.write_dicom_series(tmp_path / "dcm", np.zeros(g.shape, np.int16), g)
    io.read_image(tmp_path / "dcm")
    assert locale.getpreferredencoding(False) == before


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
