"""The simulated scanner: field of view, voxel grid, contrast phase, texture, blur and noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from multitalent.phantoms import anatomy as A
from multitalent.phantoms.space import Frame, random_field, upsample

PHASES = ("native", "arterial", "venous")
# template Z range (mm) covered by each field of view
FOVS: dict[str, tuple[float, float]] = {"thorax": (195.0, 385.0), "abdomen": (-5.0, 240.0),
                                        "both": (-5.0, 385.0)}
ORIENTATIONS = ("LPS", "RAS", "LAS")

# mean HU per tissue in the native, arterial and portal-venous phase
HU: dict[int, tuple[float, float, float]] = {
    A.T_AIR: (-1000, -1000, -1000), A.T_FAT: (-100, -100, -100), A.T_MUSCLE: (50, 58, 62),
    A.T_BONE_CORT: (850, 850, 850), A.T_BONE_CANC: (230, 230, 230), A.T_DISC: (80, 80, 80),
    A.T_CSF: (12, 12, 12), A.T_LUNG: (-860, -860, -860), A.T_BLOOD: (40, 300, 165), A.T_MYO: (45, 115, 100),
    A.T_IVC: (40, 75, 150), A.T_PORTAL: (38, 95, 175), A.T_LIVER: (58, 75, 110), A.T_SPLEEN: (45, 120, 118),
    A.T_KID_CORTEX: (35, 185, 170), A.T_KID_MEDULLA: (32, 95, 165), A.T_PANCREAS: (42, 115, 95),
    A.T_BILE: (10, 10, 10), A.T_STOM_WALL: (40, 95, 85), A.T_FLUID: (15, 15, 15), A.T_BOWEL: (30, 55, 75),
    A.T_SOFT: (40, 50, 55),
}
# amplitude (HU) of the smooth tissue texture
TEXTURE: dict[int, float] = {
    A.T_FAT: 10, A.T_MUSCLE: 6, A.T_BONE_CORT: 90, A.T_BONE_CANC: 50, A.T_DISC: 5, A.T_CSF: 3, A.T_LUNG: 35,
    A.T_BLOOD: 5, A.T_MYO: 6, A.T_IVC: 5, A.T_PORTAL: 5, A.T_LIVER: 6, A.T_LIVER_TUM: 7, A.T_SPLEEN: 6,
    A.T_KID_CORTEX: 6, A.T_KID_MEDULLA: 6, A.T_KID_TUM: 8, A.T_PANCREAS: 9, A.T_PANC_TUM: 8, A.T_BILE: 3,
    A.T_STOM_WALL: 6, A.T_FLUID: 4, A.T_BOWEL: 25, A.T_SOFT: 5,
}


@dataclass(frozen=True)
class Scan:
    """Acquisition parameters of one case."""

    fov: str
    phase: str
    spacing: tuple[float, float, float]  # (z, y, x) mm
    shape: tuple[int, int, int]
    z_range: tuple[float, float]  # template Z covered
    noise_sigma: float  # HU
    psf_mm: float  # in-plane gaussian blur sigma
    enhancement: float  # contrast dose/timing factor


def sample_scan(rng: np.random.Generator, fov: str, phase: str, scale: str) -> tuple[Scan, float]:
    """Draw the scan parameters; also returns the body's overall size factor (for the grid's extent)."""
    size = rng.uniform(0.92, 1.08)
    if scale == "small":
        sxy, sz = rng.uniform(2.9, 3.4), rng.uniform(2.5, 5.0)
        n = int(round(rng.uniform(322, 345) * size / sxy))
    else:
        sxy, sz, n = rng.uniform(0.65, 0.9), rng.uniform(1.0, 5.0), 512
    sxy, sz = round(float(sxy), 4), round(float(sz), 3)
    lo, hi = FOVS[fov]
    z_range = (lo + rng.uniform(-8, 8), hi + rng.uniform(-8, 8))
    nz = int(round((z_range[1] - z_range[0]) * size / sz)) + 1
    scan = Scan(fov=fov, phase=phase, spacing=(sz, sxy, sxy), shape=(nz, n, n), z_range=z_range,
                noise_sigma=float(rng.uniform(5, 25)), psf_mm=float(rng.uniform(0.6, 1.6)),
                enhancement=float(rng.uniform(0.75, 1.25)))
    return scan, float(size)


def make_frame(rng: np.random.Generator, scan: Scan, size: float) -> Frame:
    """Place the template body in the scanner: size, rotation, table position and a smooth warp."""
    scale = (size * rng.uniform(0.96, 1.04), size * rng.uniform(0.95, 1.05), size * rng.uniform(0.95, 1.05))
    theta = float(np.radians(rng.normal(0.0, 2.0)))
    centre = (rng.uniform(-300, 300), rng.uniform(-25, 25), rng.uniform(-25, 25))
    nz, ny, nx = scan.shape
    sz, sy, sx = scan.spacing
    origin = (centre[0] + scan.z_range[0] * scale[0],
              centre[1] - (ny - 1) / 2 * sy + rng.uniform(-10, 10),
              centre[2] - (nx - 1) / 2 * sx + rng.uniform(-10, 10))
    extent = np.array([(nz - 1) * sz, (ny - 1) * sy, (nx - 1) * sx])
    amp = rng.uniform(3.0, 7.0)
    disp = np.stack([random_field(rng, extent, 22.0, smooth=True) * amp for _ in range(3)])
    return Frame(shape=scan.shape, spacing=scan.spacing, origin=tuple(float(v) for v in origin),
                 centre=tuple(float(v) for v in centre), scale=tuple(float(v) for v in scale), theta=theta,
                 disp=disp)


def hu_table(rng: np.random.Generator, phase: str, enhancement: float) -> tuple[np.ndarray, dict[str, float]]:
    """Per-tissue mean HU of this case, and the lesions' contrast to their organ (10-25 HU)."""
    k = PHASES.index(phase)
    table = np.zeros(256, dtype=np.float32)
    for t, values in HU.items():
        native = values[0]
        hu = native + enhancement * (values[k] - native)
        if -500 < native < 500 and t not in (A.T_FAT, A.T_BONE_CANC):
            hu += rng.normal(0.0, 3.0)
        table[t] = hu
    deltas = {}
    kidney = 0.5 * (table[A.T_KID_CORTEX] + table[A.T_KID_MEDULLA])
    for name, t_lesion, organ in (("liver", A.T_LIVER_TUM, table[A.T_LIVER]), ("kidney", A.T_KID_TUM, kidney),
                                  ("pancreas", A.T_PANC_TUM, table[A.T_PANCREAS])):
        d = rng.uniform(10, 25) * (-1.0 if rng.random() < 0.8 else 1.0)
        table[t_lesion] = organ + d
        deltas[name] = round(float(d), 2)
    return table, deltas


def form_image(rng: np.random.Generator, tissue: np.ndarray, scan: Scan, table: np.ndarray,
               max_voxels: int = 4_000_000) -> np.ndarray:
    """HU image (int16) from the tissue map: texture, partial-volume blur, gaussian noise."""
    shape = tissue.shape
    extent = np.array(shape) * np.array(scan.spacing)
    texture = random_field(rng, extent, 6.0)
    amp = np.zeros(256, dtype=np.float32)
    for t, a in TEXTURE.items():
        amp[t] = a
    image = np.empty(shape, dtype=np.float32)
    rows = max(1, max_voxels // (shape[1] * shape[2]))
    for z0 in range(0, shape[0], rows):
        z1 = min(z0 + rows, shape[0])
        t = tissue[z0:z1]
        image[z0:z1] = table[t] + amp[t] * upsample(texture, shape, z0, z1)
    sigma = (0.42, scan.psf_mm / scan.spacing[1], scan.psf_mm / scan.spacing[2])
    image = ndimage.gaussian_filter(image, sigma, mode="nearest", truncate=3.0)
    for z0 in range(0, shape[0], rows):
        z1 = min(z0 + rows, shape[0])
        noise = rng.standard_normal((z1 - z0, *shape[1:]), dtype=np.float32)
        noise *= scan.noise_sigma
        image[z0:z1] += noise
    np.clip(image, -1024, 3071, out=image)
    return np.rint(image).astype(np.int16)
