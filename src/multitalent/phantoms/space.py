"""Coordinate frames of a phantom case: the scan grid, the template body, and the stored orientation.

Every case is rendered on a *canonical* grid (identity direction, i.e. ITK orientation LPS: the array's
z axis runs inferior->superior, y anterior->posterior, x right->left). A voxel's *template* coordinates
(millimetres in the shared anatomical template, see :mod:`multitalent.phantoms.anatomy`) are

    template = S^-1 R (p - c) + d(p)

with ``p`` its physical position, ``c`` where the template origin lies in the scanner, ``S`` the case's
body size, ``R`` a small rotation about the body axis and ``d`` a smooth random displacement field. So
every organ is deformed by the same smooth field, on top of its own random pose and shape. Arrays and
vectors are in (z, y, x) order throughout this module.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from multitalent.io import Geometry, direction_for


def _axis_positions(m: int, n: int, sel: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left neighbour index and weight for sampling ``m`` coarse nodes at ``n`` corner-aligned points."""
    pos = np.arange(n, dtype=np.float64) * ((m - 1) / max(n - 1, 1))
    if sel is not None:
        pos = pos[sel]
    i0 = np.minimum(pos.astype(np.intp), max(m - 2, 0))
    w = (pos - i0).astype(np.float32)
    return i0, w


def _interp_axis(arr: np.ndarray, axis: int, n: int, sel: slice | None = None) -> np.ndarray:
    m = arr.shape[axis]
    if m == 1:
        count = len(range(n)[sel]) if sel is not None else n
        return np.repeat(arr, count, axis=axis)
    i0, w = _axis_positions(m, n, sel)
    shape = [1] * arr.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    a = np.take(arr, i0, axis=axis)
    b = np.take(arr, i0 + 1, axis=axis)
    return a + (b - a) * w


def upsample(coarse: np.ndarray, out_shape: tuple[int, int, int], z0: int = 0,
             z1: int | None = None) -> np.ndarray:
    """Trilinear, corner-aligned upsampling of a coarse 3D field to ``out_shape`` (rows ``z0:z1`` only)."""
    z1 = out_shape[0] if z1 is None else z1
    f = _interp_axis(coarse.astype(np.float32, copy=False), 0, out_shape[0], slice(z0, z1))
    f = _interp_axis(f, 1, out_shape[1])
    return _interp_axis(f, 2, out_shape[2])


def sample(coarse: np.ndarray, out_shape: tuple[int, int, int], index: np.ndarray) -> np.ndarray:
    """Value of ``upsample(coarse, out_shape)`` at continuous voxel indices ``index`` (..., 3)."""
    index = np.asarray(index, dtype=np.float64)
    coords = [index[..., a] * ((coarse.shape[a] - 1) / max(out_shape[a] - 1, 1)) for a in range(3)]
    return ndimage.map_coordinates(coarse.astype(np.float64), coords, order=1, mode="nearest")


def random_field(rng: np.random.Generator, extent_mm: np.ndarray, step_mm: float,
                 smooth: bool = False) -> np.ndarray:
    """A coarse standard-normal random field with one node every ``step_mm`` over ``extent_mm`` (z, y, x).

    With ``smooth`` the nodes are placed every ``4 * step_mm`` and refined by cubic splines, so linear
    upsampling of the result has no visible kinks.
    """
    if not smooth:
        nodes = tuple(max(2, int(np.ceil(e / step_mm)) + 1) for e in extent_mm)
        return rng.standard_normal(nodes).astype(np.float32)
    nodes = tuple(max(4, int(np.ceil(e / (4 * step_mm))) + 2) for e in extent_mm)
    ctrl = rng.standard_normal(nodes)
    fine = tuple(4 * (n - 1) + 1 for n in nodes)
    out = ndimage.zoom(ctrl, [f / n for f, n in zip(fine, nodes, strict=True)], order=3, mode="nearest",
                       grid_mode=False)
    return out.astype(np.float32)


@dataclass
class Frame:
    """The canonical scan grid of one case and its mapping to template coordinates (all (z, y, x))."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]  # physical position of voxel (0, 0, 0)
    centre: tuple[float, float, float]  # physical position of the template origin
    scale: tuple[float, float, float]  # body size factor per axis
    theta: float  # rotation about the body (z) axis, radians
    disp: np.ndarray  # (3, mz, my, mx) coarse displacement field in mm, corner-aligned to the grid

    def __post_init__(self) -> None:
        self.dmax = np.abs(self.disp).reshape(3, -1).max(axis=1) + 1.0

    @property
    def zphys(self) -> np.ndarray:
        """Physical z (mm) of every slice."""
        return self.origin[0] + self.spacing[0] * np.arange(self.shape[0])

    def geometry(self) -> Geometry:
        """The canonical grid as a :class:`Geometry` (identity direction)."""
        return Geometry(shape=tuple(int(v) for v in self.shape),
                        spacing=tuple(float(v) for v in self.spacing),
                        origin=tuple(float(v) for v in reversed(self.origin)),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))

    def template_coords(self, z0: int, z1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Template coordinates (Z, Y, X), float32 arrays of shape (z1 - z0, ny, nx)."""
        nz, ny, nx = self.shape
        sz, sy, sx = self.spacing
        oz, oy, ox = self.origin
        cz, cy, cx = self.centre
        kz, ky, kx = self.scale
        pz = (oz + sz * np.arange(z0, z1) - cz).astype(np.float32)
        py = (oy + sy * np.arange(ny) - cy).astype(np.float32)[:, None]
        px = (ox + sx * np.arange(nx) - cx).astype(np.float32)[None, :]
        c, s = float(np.cos(self.theta)), float(np.sin(self.theta))
        x2 = (c * px + s * py) / float(kx)
        y2 = (-s * px + c * py) / float(ky)
        Z = upsample(self.disp[0], self.shape, z0, z1)
        Z += (pz / float(kz))[:, None, None]
        Y = upsample(self.disp[1], self.shape, z0, z1)
        Y += y2[None]
        X = upsample(self.disp[2], self.shape, z0, z1)
        X += x2[None]
        return Z, Y, X

    def _physical(self, q: np.ndarray) -> np.ndarray:
        """Physical position of template points ``q`` (..., 3), ignoring the displacement field."""
        q = np.asarray(q, dtype=np.float64)
        kz, ky, kx = self.scale
        xs, ys = q[..., 2] * kx, q[..., 1] * ky
        c, s = np.cos(self.theta), np.sin(self.theta)
        return np.stack([self.centre[0] + q[..., 0] * kz, self.centre[1] + s * xs + c * ys,
                         self.centre[2] + c * xs - s * ys], axis=-1)

    def boxes(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index ranges [start, stop) (n, 3) of the grid holding the template boxes [lo[i], hi[i]] (may be
        empty)."""
        lo = np.atleast_2d(np.asarray(lo, dtype=np.float64)) - self.dmax
        hi = np.atleast_2d(np.asarray(hi, dtype=np.float64)) + self.dmax
        pick = np.array(list(itertools.product((0, 1), repeat=3)))  # (8, 3): lo or hi per axis
        corners = np.where(pick[None] == 0, lo[:, None], hi[:, None])  # (n, 8, 3)
        idx = (self._physical(corners) - np.asarray(self.origin)) / np.asarray(self.spacing)
        start = np.maximum(np.floor(idx.min(axis=1)).astype(int), 0)
        stop = np.minimum(np.ceil(idx.max(axis=1)).astype(int) + 1, np.asarray(self.shape))
        return start, stop

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices of the canonical grid that hold every voxel whose template point is in [lo, hi]."""
        start, stop = self.boxes(lo, hi)
        if np.any(stop[0] <= start[0]):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(start[0], stop[0], strict=True))

    def to_physical(self, q: np.ndarray, iterations: int = 8) -> np.ndarray:
        """Physical position (z, y, x) of one template point, inverting the displacement by fixed point."""
        q = np.asarray(q, dtype=np.float64)
        p = self._physical(q)
        for _ in range(iterations):
            index = (p - np.asarray(self.origin)) / np.asarray(self.spacing)
            d = np.array([sample(self.disp[a], self.shape, index[None])[0] for a in range(3)])
            p = self._physical(q - d)
        return p


def orient(array: np.ndarray, canonical: Geometry, code: str) -> tuple[np.ndarray, Geometry]:
    """Store a canonical (LPS) array in orientation ``code`` by flipping axes; the anatomy stays put.

    Only axis-aligned codes without axis permutation are supported (e.g. LPS, RAS, LAS, RPS, LPI).
    """
    d = np.asarray(direction_for(code)).reshape(3, 3)
    if not np.allclose(np.abs(d), np.eye(3)):
        raise ValueError(f"orientation {code!r} permutes axes; only flips of LPS are supported")
    signs = np.diag(d)  # ITK (x, y, z) order
    origin = list(canonical.origin)
    flips = []
    for a in range(3):  # a = ITK axis (x, y, z) <-> array axis 2 - a
        if signs[a] < 0:
            flips.append(2 - a)
            origin[a] += (canonical.shape[2 - a] - 1) * canonical.spacing[2 - a]
    out = np.ascontiguousarray(np.flip(array, axis=tuple(flips))) if flips else array
    geometry = Geometry(shape=canonical.shape, spacing=canonical.spacing,
                        origin=tuple(float(v) for v in origin),
                        direction=tuple(float(v) + 0.0 for v in d.ravel()))
    return out, geometry
