"""Reading and writing scans with their full geometry (SimpleITK): NIfTI files and DICOM series.

This is the only module that knows about the files' own (x, y, z) axis order: everything it returns
is a numpy array in (z, y, x) order with ``Geometry.spacing`` in the same order. ``origin`` and
``direction`` stay in ITK's physical (LPS, x-y-z) convention because they describe the file, and are
only ever handed back to SimpleITK.

Scans of any orientation are brought to one canonical orientation (identity direction, i.e. the
array's z axis runs inferior->superior, y anterior->posterior, x right->left) by
:func:`to_canonical`, and brought back by :func:`from_canonical`; both only permute and flip axes,
so the round trip is exact.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from multitalent.errors import UserInputError, atomic_path

MIN_SPACING_MM = 0.01  # below this a voxel size is a broken header, not a scan
MAX_SPACING_MM = 50.0
_F32 = 1 - 1e-6  # the limits hold for spacings stored as float32 in a NIfTI header
CANONICAL = "LPS"  # ITK orientation code whose direction matrix is the identity


@dataclass(frozen=True)
class Geometry:
    """Where an array lies in physical space. ``shape`` and ``spacing`` are (z, y, x)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 numbers, row-major, ITK convention

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(
            shape=tuple(int(v) for v in d["shape"]),
            spacing=tuple(float(v) for v in d["spacing"]),
            origin=tuple(float(v) for v in d["origin"]),
            direction=tuple(float(v) for v in d["direction"]),
        )

    def matches(self, other: Geometry, tol: float = 1e-3) -> str | None:
        """Return None if both describe the same grid, else a short description of the difference."""
        if self.shape != other.shape:
            return f"shape {list(self.shape)} vs {list(other.shape)}"
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            scale = 1.0 if name == "direction" else max(1.0, float(np.abs(a).max(initial=0)))
            if not np.allclose(a, b, atol=tol * scale):
                return f"{name} {np.round(a, 4).tolist()} vs {np.round(b, 4).tolist()}"
        return None

    @property
    def orientation(self) -> str:
        """ITK's three-letter orientation code of the direction matrix (e.g. 'LPS', 'RAS')."""
        return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(self.direction)


def geometry_of(img: sitk.Image) -> Geometry:
    return Geometry(
        shape=tuple(int(v) for v in reversed(img.GetSize())),
        spacing=tuple(float(v) for v in reversed(img.GetSpacing())),
        origin=tuple(float(v) for v in img.GetOrigin()),
        direction=tuple(float(v) for v in img.GetDirection()),
    )


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image of a (z, y, x) array with ``geometry``."""
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match geometry shape {geometry.shape}")
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing(tuple(reversed(geometry.spacing)))
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    return img


def check_geometry(geometry: Geometry, path: os.PathLike | str) -> None:
    """Refuse a voxel spacing outside [0.01, 50] mm or not finite, and a non-orthonormal direction."""
    sp = np.asarray(geometry.spacing)
    if not np.all(np.isfinite(sp)) or np.any(sp < MIN_SPACING_MM * _F32) or np.any(sp > MAX_SPACING_MM / _F32):
        raise UserInputError(
            f"{path}: absurd voxel spacing {sp.round(4).tolist()} mm (z,y,x); each must be in "
            f"[{MIN_SPACING_MM:g}, {MAX_SPACING_MM:g}] mm. Fix the file's header."
        )
    d = np.asarray(geometry.direction).reshape(3, 3)
    if not np.all(np.isfinite(d)) or abs(abs(np.linalg.det(d)) - 1) > 1e-2:
        raise UserInputError(f"{path}: direction matrix is not orthonormal; fix the file's header.")


@contextlib.contextmanager
def keep_locale() -> Iterator[None]:
    """Restore the C locale after SimpleITK's DICOM (GDCM) code, which sets it to "C".

    Left alone, that switches Python's default text encoding to ASCII for the rest of the process, and
    every later ``open()`` of a UTF-8 file without an explicit encoding fails.
    """
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


@contextlib.contextmanager
def _itk_warnings_off() -> Iterator[None]:
    """Silence ITK's multi-line warnings while reading: the checks here report problems as one line."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        with keep_locale():
            yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _read_sitk(path: Path) -> sitk.Image:
    if not path.exists():
        raise UserInputError(f"{path}: file or folder not found.")
    with _itk_warnings_off():
        if path.is_dir():
            return _read_dicom_series(path)
        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
            raise UserInputError(f"{path}: cannot read the image (corrupt, truncated or not an image): "
                                 f"{first}") from None
    if path.name.endswith((".nii.gz", ".nii")):
        _check_nifti_pixdim(path)
    return img


def _nifti_header(path: Path) -> tuple[bytes, str] | None:
    """The 348-byte NIfTI-1 header and its byte order ('<' or '>'); None if it is not NIfTI-1."""
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        header = fh.read(348)
    if len(header) < 348:
        return None
    for endian in ("<", ">"):
        if struct.unpack(endian + "i", header[:4])[0] == 348:
            return header, endian
    return None


def _check_nifti_pixdim(path: Path) -> None:
    """Refuse zero, negative or non-finite voxel sizes in a NIfTI header.

    ITK's NIfTI reader silently turns a zero pixdim into 1 mm and a negative one into its absolute
    value, so the spacing check on the image it returns cannot see them; read the header itself.
    """
    found = _nifti_header(path)
    if found is None:
        return
    header, endian = found
    ndim = struct.unpack(endian + "h", header[40:42])[0]
    pixdim = struct.unpack(endian + "8f", header[76:108])[1 : 1 + min(max(ndim, 0), 3)]
    if any(not math.isfinite(v) or v < MIN_SPACING_MM * _F32 or v > MAX_SPACING_MM / _F32 for v in pixdim):
        shown = [round(float(v), 4) for v in reversed(pixdim)]
        raise UserInputError(
            f"{path}: absurd voxel spacing {shown} mm (z,y,x) in the NIfTI header; each must be in "
            f"[{MIN_SPACING_MM:g}, {MAX_SPACING_MM:g}] mm. Fix the file's header."
        )


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder)) or ()
    if len(series) == 0:
        raise UserInputError(f"{folder}: no DICOM series found in this folder.")
    if len(series) > 1:
        raise UserInputError(
            f"{folder}: holds {len(series)} DICOM series ({', '.join(series[:3])}...); "
            "put each series in its own folder."
        )
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    if len(files) < 2:
        raise UserInputError(f"{folder}: the DICOM series has fewer than 2 slices; a 3D scan is needed.")
    # Missing slices show as an irregular step between slice positions.
    positions = []
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        r.ReadImageInformation()
        positions.append(np.asarray(r.GetOrigin(), dtype=float))
    steps = np.linalg.norm(np.diff(np.stack(positions), axis=0), axis=1)
    if steps.min() <= 0 or steps.max() > 1.5 * np.median(steps):
        raise UserInputError(
            f"{folder}: the DICOM series has missing or duplicate slices (slice steps from "
            f"{steps.min():.3g} to {steps.max():.3g} mm); export the complete series."
        )
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as e:
        last = str(e).strip().splitlines()[-1][-200:] if str(e).strip() else "unreadable"
        raise UserInputError(f"{folder}: cannot read the DICOM series: {last}") from None


def _scan_nifti(path: Path) -> int:
    """Read a NIfTI-1 file's voxel data once, beside ITK: refuse a truncated or corrupt file and return the
    number of NaN/inf voxels of a float file.

    ITK's NIfTI reader silently fills the missing part of a truncated .nii.gz with zeros and turns NaN into
    0, so neither shows in the array it returns; this reads the raw data (header fields per the NIfTI-1
    standard) and checks that all of it is there.
    """
    import gzip
    import zlib

    found = _nifti_header(path)
    if found is None:
        return 0  # NIfTI-2 or not NIfTI: nothing to say
    header, endian = found
    dims = struct.unpack(endian + "8h", header[40:56])
    if not 1 <= dims[0] <= 7:
        return 0
    datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
    offset = max(int(struct.unpack(endian + "f", header[108:112])[0]), 348)
    expected = int(np.prod([max(int(d), 1) for d in dims[1 : dims[0] + 1]], dtype=np.int64)) * bitpix // 8
    dtype = {16: "f4", 64: "f8"}.get(datatype)
    opener = gzip.open if path.name.endswith(".gz") else open
    got = count = 0
    try:
        with opener(path, "rb") as fh:
            fh.read(offset)
            while chunk := fh.read(1 << 24):
                if dtype is not None and got < expected:
                    part = chunk[: expected - got]
                    part = part[: len(part) - len(part) % int(dtype[1])]
                    count += int((~np.isfinite(np.frombuffer(part, dtype=endian + dtype))).sum())
                got += len(chunk)
    except (EOFError, OSError, zlib.error) as e:
        why = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        raise UserInputError(f"{path}: the file is truncated or corrupt ({why}); copy or export it again."
                             ) from None
    if got < expected:
        raise UserInputError(f"{path}: the file is truncated (voxel data {got} of {expected} bytes); copy or "
                             "export it again.")
    return count


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".nii.gz", ".nii"))


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read a 3D scan (NIfTI/any SimpleITK file or a DICOM series folder) as float32 (z, y, x)."""
    path = Path(path)
    img = _read_sitk(path)
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise UserInputError(
            f"{path}: expected a 3D single-channel image, got {img.GetDimension()}D with "
            f"{img.GetNumberOfComponentsPerPixel()} component(s)."
        )
    geometry = geometry_of(img)
    check_geometry(geometry, path)
    array = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)
    n = _scan_nifti(path) if _is_nifti(path) else 0
    n = n or int((~np.isfinite(array)).sum())
    if n:
        raise UserInputError(f"{path}: {n} voxel(s) are NaN or infinite; fix or remove the scan.")
    return array, geometry


def read_label(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read a 3D label map as int16 (z, y, x); refuses non-integer values."""
    path = Path(path)
    img = _read_sitk(path)
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise UserInputError(f"{path}: expected a 3D single-channel label map, got {img.GetDimension()}D.")
    geometry = geometry_of(img)
    check_geometry(geometry, path)
    nonfinite = _scan_nifti(path) if _is_nifti(path) else 0
    array = sitk.GetArrayFromImage(img)
    if array.dtype.kind == "f":
        if nonfinite or not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise UserInputError(f"{path}: label map holds non-integer values; labels must be integers.")
    if array.size and (array.min() < 0 or array.max() > 32767):
        raise UserInputError(f"{path}: label values must lie in 0..32767, found {array.min()}..{array.max()}.")
    return array.astype(np.int16, copy=False), geometry


def write_image(path: str | os.PathLike, array: np.ndarray, geometry: Geometry, compress: bool = True) -> None:
    """Write a (z, y, x) array with ``geometry`` atomically (temporary name, then rename)."""
    img = to_sitk(array, geometry)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=compress)


def write_label(path: str | os.PathLike, array: np.ndarray, geometry: Geometry) -> None:
    """Write a label map as uint8 (or int16 when values exceed 255)."""
    dtype = np.uint8 if (array.size == 0 or (array.min() >= 0 and array.max() <= 255)) else np.int16
    write_image(path, array.astype(dtype, copy=False), geometry)


def to_canonical(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
    """Permute/flip the array so its direction is (close to) the identity (orientation LPS)."""
    img = sitk.DICOMOrient(to_sitk(array, geometry), CANONICAL)
    return sitk.GetArrayFromImage(img), geometry_of(img)


def from_canonical(array: np.ndarray, canonical: Geometry, original: Geometry) -> np.ndarray:
    """Undo :func:`to_canonical`: return ``array`` (on the canonical grid) on the original grid."""
    img = sitk.DICOMOrient(to_sitk(array, canonical), original.orientation)
    out = sitk.GetArrayFromImage(img)
    problem = geometry_of(img).matches(original)
    if problem is not None:  # pragma: no cover - would be a bug, not a user error
        raise RuntimeError(f"orientation round trip failed: {problem}")
    return out


def direction_for(code: str) -> tuple[float, ...]:
    """The direction matrix (row-major) of an ITK orientation code such as 'RAS', 'LPS' or 'LAS'."""
    return tuple(float(v) for v in sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(code))


def dicom_series_files(folder: str | os.PathLike) -> list[str]:
    """The files of the DICOM series in ``folder`` in the order of :func:`read_image`'s z axis."""
    with keep_locale():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(folder)) or ()
        if len(series) != 1:
            raise UserInputError(f"{folder}: expected one DICOM series, found {len(series)}.")
        return list(reader.GetGDCMSeriesFileNames(str(folder), series[0]))


def write_dicom_seg(path: str | os.PathLike, masks: np.ndarray, source: str | os.PathLike,
                    segments: list[tuple[str, str]], version: str) -> None:
    """Write binary masks [z, y, x, segment] (on the grid :func:`read_image` gives ``source``, a DICOM series
    folder) as one DICOM-SEG object referencing that series; ``segments``: (label, description) each."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    files = dicom_series_files(source)
    if masks.shape[0] != len(files):
        raise ValueError(f"{len(files)} DICOM slices in {source}, {masks.shape[0]} mask slices")
    images = [pydicom.dcmread(f) for f in files]
    algo = hd.AlgorithmIdentificationSequence(name="MultiTalent", version=version,
                                              family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=label[:64], segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo, tracking_id=label[:64], tracking_uid=hd.UID())
        for i, (label, _) in enumerate(segments)]
    for d, (_, text) in zip(descriptions, segments):
        d.SegmentDescription = text[:64]
    try:
        seg = hd.seg.Segmentation(
            source_images=images, pixel_array=masks, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9001,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="multitalent",
            manufacturer_model_name="MultiTalent", software_versions=version, device_serial_number="0",
            series_description="MultiTalent segmentation")
    except (ValueError, AttributeError) as e:
        raise UserInputError(f"{source}: cannot write a DICOM-SEG for this series ({e}).") from None
    seg.save_as(str(path))


def write_dicom_series(folder: str | os.PathLike, array: np.ndarray, geometry: Geometry) -> None:
    """Write an int16 (z, y, x) volume as a DICOM series (one file per slice); for tests and phantoms."""
    with keep_locale():
        _write_dicom_series(folder, array, geometry)


def _write_dicom_series(folder: str | os.PathLike, array: np.ndarray, geometry: Geometry) -> None:
    if np.linalg.det(np.asarray(geometry.direction).reshape(3, 3)) < 0:
        raise ValueError("DICOM cannot store a left-handed direction matrix (e.g. LAS)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img = to_sitk(array.astype(np.int16), geometry)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = img.GetDirection()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.12345"
    for z in range(img.GetDepth()):
        sl = img[:, :, z]
        origin = img.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {
            "0008|0060": "CT",
            "0020|000e": series_uid,
            "0020|000d": series_uid + ".1",
            "0020|0052": series_uid + ".2",  # frame of reference (DICOM-SEG export needs it)
            "0020|0037": "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                          direction[1], direction[4], direction[7])),
            "0020|0032": "\\".join(f"{v:.6f}" for v in origin),
            "0020|0013": str(z + 1),
            "0018|0050": f"{img.GetSpacing()[2]:.6f}",
            "0028|0030": f"{img.GetSpacing()[1]:.6f}\\{img.GetSpacing()[0]:.6f}",
        }
        for k, v in tags.items():
            sl.SetMetaData(k, v)
        writer.SetFileName(str(folder / f"slice_{z:04d}.dcm"))
        writer.Execute(sl)
