"""The phantom anatomy: a template body in millimetres, randomised per case and painted into label maps.

Template coordinates are (Z, Y, X) in mm: Z superior, Y posterior, X towards the patient's left (the
LPS convention), with the body axis at X = Y = 0, the aortic bifurcation near Z = 35 and the lung
apices near Z = 375. Organs are ellipsoids with a wobbly surface, unions of them, or tubes along
splines; all of them are evaluated on the case's warped template coordinates (see ``space.Frame``), so
shapes, sizes and positions vary smoothly between cases.

Painting produces two uint8 maps: *atoms* (disjoint anatomical pieces from which every ground-truth
structure of every protocol is a union, see ``STRUCTURES``) and *tissues* (what the scanner sees:
e.g. the stomach atom holds wall, fluid and air tissues).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from multitalent.phantoms.space import Frame, upsample

# --- atoms: disjoint pieces of anatomy ----------------------------------------------------------
(OUTSIDE, FAT, MUSCLE, BOWEL, BONE, CANAL, LUNG_L, LUNG_R, TRACHEA, HEART, AORTIC_ROOT, AORTA_THORACIC,
 AORTA_ABDOMINAL, ILIAC, IVC, LIVER, LIVER_TUMOR, HEPATIC_VESSEL, SPLEEN, KIDNEY_L, KIDNEY_R, KIDNEY_TUMOR_L,
 KIDNEY_TUMOR_R, PANCREAS, PANCREAS_TUMOR, GALLBLADDER, STOMACH, SOFT) = range(28)
N_ATOMS = 28

# ground-truth structure -> (atoms forming it, description); "spleen_coarse" is derived separately
STRUCTURES: dict[str, tuple[tuple[int, ...], str]] = {
    "body": (tuple(range(1, N_ATOMS)), "everything inside the skin"),
    "bone": ((BONE,), "vertebrae, ribs, sternum and iliac wings (not the discs)"),
    "lung_left": ((LUNG_L,), "left lung"),
    "lung_right": ((LUNG_R,), "right lung"),
    "trachea": ((TRACHEA,), "trachea and main bronchi, lumen and wall"),
    "heart": ((HEART,), "heart (myocardium and chambers) WITHOUT the aortic root"),
    "aortic_root": ((AORTIC_ROOT,), "first ~25 mm of the aorta above the valve (sinus)"),
    "heart_with_aortic_root": ((HEART, AORTIC_ROOT), "thorax protocol: heart INCLUDING the aortic root"),
    "aorta": ((AORTIC_ROOT, AORTA_THORACIC, AORTA_ABDOMINAL),
              "full-length aorta from the valve (root included) to the bifurcation"),
    "aorta_thoracic": ((AORTA_THORACIC,),
                       "thorax protocol: aorta above the root, stopping at the slice where it crosses the "
                       "diaphragm (aortic hiatus)"),
    "iliac_arteries": ((ILIAC,), "common iliac arteries below the bifurcation"),
    "inferior_vena_cava": ((IVC,), "inferior vena cava up to the right atrium"),
    "liver": ((LIVER, LIVER_TUMOR, HEPATIC_VESSEL), "whole liver including tumours and intrahepatic vessels"),
    "liver_tumor": ((LIVER_TUMOR,), "liver tumours"),
    "hepatic_vessel": ((HEPATIC_VESSEL,), "intrahepatic portal and hepatic veins"),
    "spleen": ((SPLEEN,), "spleen, fine outline"),
    "kidney_left": ((KIDNEY_L, KIDNEY_TUMOR_L), "left kidney including its tumour"),
    "kidney_right": ((KIDNEY_R, KIDNEY_TUMOR_R), "right kidney including its tumour"),
    "kidney_tumor": ((KIDNEY_TUMOR_L, KIDNEY_TUMOR_R), "kidney tumour"),
    "pancreas": ((PANCREAS, PANCREAS_TUMOR), "pancreas including its tumour"),
    "pancreas_tumor": ((PANCREAS_TUMOR,), "pancreas tumour"),
    "gallbladder": ((GALLBLADDER,), "gallbladder"),
    "stomach": ((STOMACH,), "stomach with its content (fluid and air)"),
}
DERIVED = {"spleen_coarse": "coarse spleen protocol: the spleen smoothed and dilated by ~1-2 voxels "
                            "(3.5-6 mm)"}

# --- tissues: what the scanner sees -------------------------------------------------------------
(T_AIR, T_FAT, T_MUSCLE, T_BONE_CORT, T_BONE_CANC, T_DISC, T_CSF, T_LUNG, T_BLOOD, T_MYO, T_IVC, T_PORTAL,
 T_LIVER, T_LIVER_TUM, T_SPLEEN, T_KID_CORTEX, T_KID_MEDULLA, T_KID_TUM, T_PANCREAS, T_PANC_TUM, T_BILE,
 T_STOM_WALL, T_FLUID, T_BOWEL, T_SOFT) = range(25)
N_TISSUES = 25


def P(x: float, y: float, z: float) -> np.ndarray:
    """A template point written as (x, y, z) for readability, stored as (z, y, x)."""
    return np.array([z, y, x], dtype=np.float64)


def rotation(az: float, ay: float, ax: float) -> np.ndarray:
    """Rotation matrix acting on (z, y, x) vectors; angles in degrees about the z, y and x axes."""
    az, ay, ax = np.radians([az, ay, ax])
    rz = np.array([[1, 0, 0], [0, np.cos(az), -np.sin(az)], [0, np.sin(az), np.cos(az)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rx = np.array([[np.cos(ax), -np.sin(ax), 0], [np.sin(ax), np.cos(ax), 0], [0, 0, 1]])
    return rz @ ry @ rx


# --- shape primitives ----------------------------------------------------------------------------
@dataclass
class Blob:
    """An ellipsoid with a smoothly wobbling surface: level < 0 inside."""

    c: np.ndarray  # centre (z, y, x)
    r: np.ndarray  # semi-axes in the blob's own frame
    R: np.ndarray  # rotation, world -> blob frame
    wob: np.ndarray  # (k, 5): amplitude, frequency vector (3), phase

    def extent(self, grow: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        rr = float(self.r.max()) * (1.0 + float(np.abs(self.wob[:, 0]).sum())) * grow
        return self.c - rr, self.c + rr

    def level(self, Z: np.ndarray, Y: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(level, rho): rho is the ellipsoidal radius (1 on the plain ellipsoid's surface)."""
        m = self.R / self.r[:, None]
        dz, dy, dx = Z - float(self.c[0]), Y - float(self.c[1]), X - float(self.c[2])
        u = [float(m[i, 0]) * dz + float(m[i, 1]) * dy + float(m[i, 2]) * dx for i in range(3)]
        rho = np.sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2])
        lvl = rho - 1.0
        for a, wz, wy, wx, ph in self.wob:
            lvl -= float(a) * np.sin(float(wz) * u[0] + float(wy) * u[1] + float(wx) * u[2] + float(ph))
        return lvl, rho

    def level_points(self, q: np.ndarray) -> np.ndarray:
        """Level at template points q (n, 3) (float64; for sampling, not painting)."""
        lvl, _ = self.level(q[:, 0], q[:, 1], q[:, 2])
        return lvl


def make_blob(rng: np.random.Generator, centre: np.ndarray, radii: tuple[float, float, float],
              angles: tuple[float, float, float] = (0.0, 0.0, 0.0), pos_sd: float = 6.0, size: float = 0.12,
              rot_sd: float = 8.0, wobble: float = 0.07, k: int = 3) -> Blob:
    """A randomised blob: centre jitter (mm), overall size factor 1 +- size, rotation jitter (deg), wobble."""
    c = np.asarray(centre, dtype=np.float64) + rng.normal(0.0, pos_sd, 3)
    r = np.asarray(radii, dtype=np.float64) * rng.uniform(1 - size, 1 + size) * rng.uniform(0.94, 1.06, 3)
    R = rotation(*(np.asarray(angles) + rng.normal(0.0, rot_sd, 3)))
    dirs = rng.normal(size=(k, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    wob = np.column_stack([rng.uniform(0.0, wobble, k), dirs * rng.uniform(1.5, 3.5, (k, 1)),
                           rng.uniform(0.0, 2 * np.pi, k)])
    return Blob(c, r, R, wob)


def spline(ctrl: np.ndarray, n: int = 4) -> np.ndarray:
    """Catmull-Rom spline through the rows of ``ctrl`` with ``n`` samples per interval."""
    ctrl = np.asarray(ctrl, dtype=np.float64)
    if len(ctrl) < 3:
        t = np.linspace(0, 1, n + 1)[:, None]
        return ctrl[0] + (ctrl[-1] - ctrl[0]) * t
    pad = np.vstack([2 * ctrl[0] - ctrl[1], ctrl, 2 * ctrl[-1] - ctrl[-2]])
    t = np.linspace(0, 1, n, endpoint=False)[:, None]
    parts = []
    for i in range(1, len(pad) - 2):
        p0, p1, p2, p3 = pad[i - 1:i + 3]
        parts.append(0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                            + (3 * p1 - p0 - 3 * p2 + p3) * t ** 3))
    parts.append(ctrl[-1:])
    return np.vstack(parts)


@dataclass
class Tube:
    """A tapered tube along a polyline: union of capsules between consecutive points."""

    pts: np.ndarray  # (m, 3) z, y, x
    rad: np.ndarray  # (m,)

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        r = float(self.rad.max())
        return self.pts.min(axis=0) - r, self.pts.max(axis=0) + r

    def length(self) -> np.ndarray:
        """Arc length at each point."""
        return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(self.pts, axis=0), axis=1))])

    def part(self, start: int, stop: int) -> Tube:
        return Tube(self.pts[start:stop], self.rad[start:stop])


def make_tube(rng: np.random.Generator, ctrl: list[np.ndarray], radii: list[float], pos_sd: float = 4.0,
              rad_sd: float = 0.08, n: int = 4, lobulation: float = 0.0) -> Tube:
    """A randomised tube through control points (jittered) with radii (scaled), densified by a spline."""
    pts = np.asarray(ctrl, dtype=np.float64) + rng.normal(0.0, pos_sd, (len(ctrl), 3))
    rad = np.asarray(radii, dtype=np.float64) * rng.uniform(1 - rad_sd, 1 + rad_sd)
    dense = spline(np.column_stack([pts, rad]), n)
    rad_d = dense[:, 3]
    if lobulation > 0:
        s = np.arange(len(rad_d))
        rad_d = rad_d * (1 + lobulation * np.sin(s * rng.uniform(0.8, 1.6) + rng.uniform(0, 2 * np.pi)))
    return Tube(dense[:, :3], np.maximum(rad_d, 0.5))


def make_tree(rng: np.random.Generator, root: np.ndarray, target: np.ndarray, length: float, radius: float,
              depth: int, out: list[Tube]) -> None:
    """A random binary vessel tree of straight tapered segments, appended to ``out``."""
    direction = np.asarray(target, dtype=np.float64) - root
    direction /= np.linalg.norm(direction)
    end = root + direction * length
    out.append(Tube(np.vstack([root, end]), np.array([radius, radius * 0.88])))
    if depth == 0:
        return
    for _ in range(2):
        d = direction + rng.normal(0.0, 0.55, 3)
        make_tree(rng, end, end + d, length * rng.uniform(0.65, 0.85), radius * 0.72, depth - 1, out)


# --- the randomised anatomy of one case ----------------------------------------------------------
@dataclass
class Anatomy:
    """All random anatomical parameters of one case (template coordinates, mm)."""

    body: dict[str, float]
    diaphragm: tuple[float, float, float]
    apex: float
    spine: dict[str, float]
    ribs: dict[str, float]
    liver: list[Blob]
    liver_tumours: list[Blob]
    vessels: list[Tube]
    gallbladder: Blob
    spleen: Blob
    spleen_hilum: Blob
    kidneys: dict[str, tuple[Blob, Blob]]
    kidney_tumour: tuple[str, Blob] | None
    pancreas: Tube
    pancreas_tumour: Blob | None
    stomach: Tube
    stomach_air: float
    ivc: Tube
    heart: Blob
    aortic_root: Tube
    aorta: Tube
    iliacs: list[Tube]
    trachea: list[Tube]
    pelvis: list[Blob]
    bowel_threshold: float
    hiatus: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def diaphragm_z(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Template Z of the diaphragm above (X, Y): right dome higher, lower posteriorly and laterally."""
        z0, right, left = self.diaphragm
        return (z0 + right * np.exp(-(((X + 50.0) / 60.0) ** 2)) + left * np.exp(-(((X - 50.0) / 55.0) ** 2))
                - 0.0012 * X * X - 0.0025 * np.maximum(Y, 0.0) ** 2)

    def in_cavity(self, q: np.ndarray, margin: float) -> np.ndarray:
        """Whether template points q (n, 3) lie at least ``margin`` mm inside the body cavity (roughly)."""
        b = self.body
        a = np.where(q[:, 0] > 200, b["a_tho"], b["a_abd"]) - b["fat"] - b["muscle"] - margin
        wall = b["fat"] + b["muscle"]
        bb = np.where(q[:, 1] < 0, b["b_ant"] - wall, b["b_post"] - 0.6 * wall)
        return (q[:, 2] / a) ** 2 + (q[:, 1] / (bb - margin)) ** 2 < 1.0

    def liver_level_points(self, q: np.ndarray) -> np.ndarray:
        lvl = np.min([b.level_points(q) for b in self.liver], axis=0)
        ok = (q[:, 0] < self.diaphragm_z(q[:, 2], q[:, 1]) - 8.0) & self.in_cavity(q, 10.0)
        return np.where(ok, lvl, 1.0)


def _sample_inside(rng: np.random.Generator, level_fn, lo: np.ndarray, hi: np.ndarray, threshold: float,
                   n: int = 600) -> np.ndarray | None:
    q = rng.uniform(lo, hi, (n, 3))
    ok = np.flatnonzero(level_fn(q) < threshold)
    return q[ok[0]] if len(ok) else None


def _sample_frame(rng: np.random.Generator) -> tuple[dict, tuple, float, dict, dict]:
    """Body outline, diaphragm, lung apex, spine and ribs."""
    body = {
        "a_abd": rng.uniform(128, 142), "a_tho": rng.uniform(138, 150), "b_ant": rng.uniform(95, 108),
        "b_post": rng.uniform(90, 98), "belly": rng.uniform(0.0, 0.12), "fat": rng.uniform(9, 26),
        "muscle": rng.uniform(8, 13),
    }
    diaphragm = (rng.uniform(206, 218), rng.uniform(10, 17), rng.uniform(4, 10))
    apex = rng.uniform(365, 380)
    spine = {"y": rng.uniform(38, 46), "curve": rng.uniform(3, 9), "scol": rng.normal(0, 3),
             "period": rng.uniform(23, 27), "phase": rng.uniform(0, 27)}
    ribs = {"period": rng.uniform(22, 26), "phase": rng.uniform(0, 26), "slope": rng.uniform(0.25, 0.45)}
    return body, diaphragm, apex, spine, ribs


def _sample_liver(rng: np.random.Generator) -> tuple[list[Blob], list[Tube]]:
    """The liver's three lobes and its portal and hepatic vessel trees."""
    liver = [
        make_blob(rng, P(-58, 5, 180), (52, 72, 64), (0, 0, 5), pos_sd=6),
        make_blob(rng, P(22, -42, 192), (26, 32, 52), (-20, 0, 10), pos_sd=6, wobble=0.1),
        make_blob(rng, P(-12, 28, 185), (24, 18, 18), pos_sd=3),
    ]
    vessels: list[Tube] = []
    portal = P(-24, 8, 150) + rng.normal(0, 3, 3)
    make_tree(rng, portal, P(-62, 0, 182) + rng.normal(0, 6, 3), 30, 6.0, 3, vessels)
    make_tree(rng, portal, P(18, -32, 188) + rng.normal(0, 6, 3), 34, 5.0, 2, vessels)
    confluence = P(-14, 30, 212) + rng.normal(0, 3, 3)
    for target in (P(-88, 5, 196), P(-35, -38, 192), P(16, -36, 200)):
        make_tree(rng, confluence, target + rng.normal(0, 6, 3), 34, 5.0, 2, vessels)
    return liver, vessels


def _sample_abdomen(rng: np.random.Generator) -> dict:
    """Gallbladder, spleen (with its hilum), kidneys (with their notches), pancreas, stomach, IVC, heart."""
    out: dict = {"gallbladder": make_blob(rng, P(-44, -50, 140), (28, 14, 16), (0, 25, 0), pos_sd=5, wobble=0.05)}
    spleen = make_blob(rng, P(84, 42, 186), (44, 42, 18), (-30, 0, 0), pos_sd=6, wobble=0.06)
    hilum_offset = spleen.R.T @ np.array([0.0, -8.0, -27.0])  # medial-anterior side in the spleen's frame
    out["spleen"] = spleen
    out["spleen_hilum"] = Blob(spleen.c + hilum_offset, spleen.r * np.array([0.7, 0.55, 1.0]), spleen.R,
                               np.zeros((0, 5)))
    kidneys = {}
    for side, sign, z in (("right", -1.0, 100.0), ("left", 1.0, 110.0)):
        k = make_blob(rng, P(66 * sign, 40, z), (50, 19, 27), (-30 * sign, 14 * sign, 0), pos_sd=6,
                      wobble=0.05)
        notch_offset = k.R.T @ np.array([0.0, -6.0, -19.0 * sign])
        notch = Blob(k.c + notch_offset, np.array([17.0, 9.0, 9.0]), k.R, np.zeros((0, 5)))
        kidneys[side] = (k, notch)
    out["kidneys"] = kidneys
    out["pancreas"] = make_tube(rng, [P(-24, -6, 126), P(0, -10, 132), P(36, 0, 140), P(64, 20, 148),
                                      P(80, 34, 155)], [14, 10, 10, 8.5, 7], pos_sd=4, lobulation=0.12)
    out["stomach"] = make_tube(rng, [P(55, 12, 218), P(56, -14, 192), P(40, -40, 162), P(6, -46, 146),
                                     P(-20, -32, 140)], [30, 30, 24, 17, 11], pos_sd=5)
    out["ivc"] = make_tube(rng, [P(-22, 22, -10), P(-21, 22, 60), P(-22, 28, 140), P(-18, 34, 195),
                                 P(-12, 26, 228), P(-2, 4, 246)], [10, 11, 11, 12, 12, 12], pos_sd=3)
    out["heart"] = make_blob(rng, P(22, -24, 256), (46, 48, 58), (25, -25, 0), pos_sd=5, wobble=0.05)
    return out


def _sample_tubes(rng: np.random.Generator) -> dict:
    """Aortic root, aorta, iliac arteries, trachea with its bronchi, and the pelvis."""
    aorta_ctrl = [P(8, -16, 278), P(5, -20, 298), P(3, -22, 322), P(12, -14, 344), P(24, 2, 350),
                  P(28, 24, 340), P(30, 34, 312), P(24, 33, 262), P(12, 26, 212), P(6, 18, 160),
                  P(3, 14, 100), P(0, 12, 38)]
    aorta_r = [15.5, 15, 14, 13, 12.5, 12, 11.5, 11, 10.5, 10, 9.5, 8.5]
    full = make_tube(rng, aorta_ctrl, aorta_r, pos_sd=2.5, rad_sd=0.1)
    s = full.length()
    cut = int(np.searchsorted(s, rng.uniform(22, 28)))
    aorta = full.part(cut, len(s))
    bif = aorta.pts[-1]
    iliacs = [make_tube(rng, [bif, bif + np.array([-30.0, 8.0, 30.0 * sg]),
                              bif + np.array([-60.0, -2.0, 52.0 * sg])], [8.0, 7.0, 6.5], pos_sd=3)
              for sg in (-1.0, 1.0)]
    carina = P(0, 10, 334) + rng.normal(0, 3, 3)
    trachea = [make_tube(rng, [P(0, 2, 405), P(0, 5, 370), carina], [9, 9, 8.5], pos_sd=2)]
    for sg in (-1.0, 1.0):
        bronchus = [carina, carina + np.array([-14.0, 4.0, 26.0 * sg]),
                    carina + np.array([-30.0, 10.0, 48.0 * sg])]
        trachea.append(make_tube(rng, bronchus, [6.5, 5.5, 4.5], pos_sd=2))
    pelvis = [make_blob(rng, P(86 * sg, 24, 0), (42, 40, 7), (28 * sg, 0, 0), pos_sd=4, wobble=0.04)
              for sg in (-1.0, 1.0)]
    return {"aortic_root": full.part(0, cut + 1), "aorta": aorta, "iliacs": iliacs, "trachea": trachea,
            "pelvis": pelvis}


def _add_lesions(rng: np.random.Generator, anat: Anatomy, liver_tumours: int, kidney_tumour: bool,
                 pancreas_tumour: bool, lesion_scale: float) -> None:
    """Liver, kidney and pancreas lesions: small and (see scanner) low-contrast."""
    liver = anat.liver
    lo, hi = np.min([b.extent()[0] for b in liver], axis=0), np.max([b.extent()[1] for b in liver], axis=0)
    for _ in range(liver_tumours):
        c = _sample_inside(rng, anat.liver_level_points, lo, hi, -0.25)
        if c is not None:
            anat.liver_tumours.append(_lesion(rng, c, 6 * lesion_scale, 15 * lesion_scale))
    if kidney_tumour:
        side = "left" if rng.random() < 0.5 else "right"
        k, notch = anat.kidneys[side]

        def kid_level(q: np.ndarray) -> np.ndarray:
            lvl, rho = k.level(q[:, 0], q[:, 1], q[:, 2])
            return np.where((rho > 0.55) & (notch.level_points(q) > 0.3) & anat.in_cavity(q, 6.0), lvl, 1.0)

        c = _sample_inside(rng, kid_level, *k.extent(), 0.0)
        if c is not None:
            anat.kidney_tumour = (side, _lesion(rng, c, 7 * lesion_scale, 16 * lesion_scale))
    if pancreas_tumour:
        pancreas = anat.pancreas
        i = int(rng.integers(2, len(pancreas.pts) - 2))
        anat.pancreas_tumour = _lesion(rng, pancreas.pts[i] + rng.normal(0, 2, 3), 6 * lesion_scale, 11 * lesion_scale)


def sample_anatomy(rng: np.random.Generator, liver_tumours: int, kidney_tumour: bool,
                   pancreas_tumour: bool, lesion_scale: float = 1.0) -> Anatomy:
    """Draw one case's anatomy. The order of random draws is fixed, so a seed gives one anatomy;
    ``lesion_scale`` multiplies the lesion radii (the draws stay the same)."""
    body, diaphragm, apex, spine, ribs = _sample_frame(rng)
    liver, vessels = _sample_liver(rng)
    organs = _sample_abdomen(rng)
    tubes = _sample_tubes(rng)
    anat = Anatomy(body=body, diaphragm=diaphragm, apex=apex, spine=spine, ribs=ribs, liver=liver,
                   liver_tumours=[], vessels=vessels, kidney_tumour=None, pancreas_tumour=None, **organs, **tubes,
                   stomach_air=rng.uniform(0.15, 0.6), bowel_threshold=rng.uniform(-0.3, 0.2))
    _add_lesions(rng, anat, liver_tumours, kidney_tumour, pancreas_tumour, lesion_scale)
    # where the aorta crosses the diaphragm: the thorax protocol stops there
    pts = anat.aorta.pts
    start = int(np.argmax(pts[:, 1] > 20))  # past the arch, on the descending aorta
    below = pts[start:, 0] < anat.diaphragm_z(pts[start:, 2], pts[start:, 1])
    anat.hiatus = pts[start + int(np.argmax(below))] if below.any() else pts[-1]
    return anat


def _lesion(rng: np.random.Generator, centre: np.ndarray, rmin: float, rmax: float) -> Blob:
    r = rng.uniform(rmin, rmax)
    return make_blob(rng, centre, (r, r, r), pos_sd=0.0, size=0.15, rot_sd=90, wobble=0.12)


# --- painting ----------------------------------------------------------------------------------
def _lut(values: tuple[int, ...] | list[int]) -> np.ndarray:
    lut = np.zeros(256, dtype=bool)
    lut[list(values)] = True
    return lut


class Canvas:
    """One slab (rows z0:z1) of the canonical grid being painted: template coordinates and the two maps."""

    def __init__(self, frame: Frame, atoms: np.ndarray, tissue: np.ndarray, z0: int, z1: int) -> None:
        self.frame, self.z0, self.z1 = frame, z0, z1
        self.Z, self.Y, self.X = frame.template_coords(z0, z1)
        self.zphys = frame.zphys[z0:z1]
        self.atoms = atoms[z0:z1]
        self.tissue = tissue[z0:z1]
        # boolean regions of the body cross-section, set by the first painting step
        self.body = self.wall = self.cavity = self.ribcage = np.zeros(self.Z.shape, dtype=bool)

    def box(self, lo: np.ndarray, hi: np.ndarray,
            within: tuple[slice, ...] | None = None) -> tuple[slice, ...] | None:
        """Slab-relative slices holding the template box [lo, hi] (intersected with ``within``)."""
        s = self.frame.box(lo, hi)
        if s is None:
            return None
        out = [slice(max(s[0].start, self.z0) - self.z0, min(s[0].stop, self.z1) - self.z0), s[1], s[2]]
        if within is not None:
            out = [slice(max(a.start, b.start), min(a.stop, b.stop))
                   for a, b in zip(out, within, strict=True)]
        if any(sl.stop <= sl.start for sl in out):
            return None
        return tuple(out)

    def coords(self, sl: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.Z[sl], self.Y[sl], self.X[sl]

    def paint(self, sl: tuple[slice, ...], mask: np.ndarray, atom: int, tissue: int | None = None,
              only: tuple[int, ...] | None = None) -> np.ndarray:
        """Set ``atom`` (and ``tissue``) where ``mask``, optionally only over the atoms in ``only``."""
        a = self.atoms[sl]
        if only is not None:
            mask = mask & _lut(only)[a]
        a[mask] = atom
        if tissue is not None:
            self.tissue[sl][mask] = tissue
        return mask

    def blob(self, b: Blob, grow: float = 1.0) -> tuple[tuple[slice, ...] | None, np.ndarray, np.ndarray]:
        sl = self.box(*b.extent(grow))
        if sl is None:
            return None, np.zeros(0), np.zeros(0)
        lvl, rho = b.level(*self.coords(sl))
        return sl, lvl, rho

    def tube(self, t: Tube,
             near: bool = False) -> tuple[tuple[slice, ...] | None, np.ndarray, np.ndarray | None]:
        """Signed distance (mm) to the tube's surface over its box; with ``near``, also the y and radius of
        the closest centre-line point (stacked, shape (2, ...))."""
        S = self.box(*t.extent())
        if S is None:
            return None, np.zeros(0), None
        shape = tuple(s.stop - s.start for s in S)
        lvl = np.full(shape, np.inf, dtype=np.float32)
        nearest = np.zeros((2, *shape), dtype=np.float32) if near else None
        a_all, b_all = t.pts[:-1], t.pts[1:]
        rmax = np.maximum(t.rad[:-1], t.rad[1:])[:, None]
        start, stop = self.frame.boxes(np.minimum(a_all, b_all) - rmax, np.maximum(a_all, b_all) + rmax)
        lo = np.array([S[0].start + self.z0, S[1].start, S[2].start])
        hi = np.array([S[0].stop + self.z0, S[1].stop, S[2].stop])
        start, stop = np.maximum(start, lo), np.minimum(stop, hi)
        for i in np.flatnonzero(np.all(stop > start, axis=1)):
            a, b = t.pts[i], t.pts[i + 1]
            ra, rb = float(t.rad[i]), float(t.rad[i + 1])
            s = (slice(int(start[i, 0]) - self.z0, int(stop[i, 0]) - self.z0),
                 slice(int(start[i, 1]), int(stop[i, 1])), slice(int(start[i, 2]), int(stop[i, 2])))
            rel = tuple(slice(x.start - y.start, x.stop - y.start) for x, y in zip(s, S, strict=True))
            Z, Y, X = self.coords(s)
            ab = b - a
            l2 = float(ab @ ab) or 1e-9
            az, ay, ax = float(a[0]), float(a[1]), float(a[2])
            bz, by, bx = float(ab[0]), float(ab[1]), float(ab[2])
            dz, dy, dx = Z - az, Y - ay, X - ax
            u = np.clip((dz * bz + dy * by + dx * bx) / l2, 0.0, 1.0)
            dz -= u * bz
            dy -= u * by
            dx -= u * bx
            d = np.sqrt(dz * dz + dy * dy + dx * dx) - (ra + (rb - ra) * u)
            view = lvl[rel]
            better = d < view
            view[better] = d[better]
            if nearest is not None:
                nearest[0][rel][better] = (ay + by * u)[better]
                nearest[1][rel][better] = (ra + (rb - ra) * u)[better]
        return S, lvl, nearest


def _paint_body(cv: Canvas, an: Anatomy, fields: dict[str, np.ndarray]) -> None:
    Z, Y, X = cv.Z, cv.Y, cv.X
    b = an.body
    t = np.clip((Z - 170.0) / 60.0, 0.0, 1.0)
    a = b["a_abd"] + (b["a_tho"] - b["a_abd"]) * t
    belly = 1.0 + b["belly"] * np.exp(-(((Z - 90.0) / 70.0) ** 2))
    bb = np.where(Y < 0, b["b_ant"] * belly, b["b_post"]).astype(np.float32)

    back = np.where(Y < 0, 1.0, 0.6).astype(np.float32)  # the fat and muscle layers are thinner at the back

    def inside(shrink: float) -> np.ndarray:
        xa, yb = X / (a - shrink), Y / (bb - shrink * back)
        return xa * xa + yb * yb < 1.0

    cv.body = inside(0.0)
    cv.wall = inside(b["fat"])
    cv.cavity = inside(b["fat"] + b["muscle"])
    cv.ribcage = inside(b["fat"] + 2.0) & ~cv.cavity
    full = (slice(None),) * 3
    cv.paint(full, cv.body, FAT, T_FAT)
    cv.paint(full, cv.wall & ~cv.cavity, MUSCLE, T_MUSCLE)

    # back muscles and psoas
    ys = an.spine["y"]
    for sg in (-1.0, 1.0):
        sl = cv.box(P(sg * 30 - 30, ys + 10, -100), P(sg * 30 + 30, ys + 50, 500))
        if sl is not None:
            Zs, Ys, Xs = cv.coords(sl)
            m = ((Xs - sg * 30.0) / 24.0) ** 2 + ((Ys - (ys + 30.0)) / 17.0) ** 2 < 1.0
            cv.paint(sl, m & cv.wall[sl], MUSCLE, T_MUSCLE)
        sl = cv.box(P(sg * 48 - 35, 0, -40), P(sg * 48 + 35, 70, 160))
        if sl is not None:
            Zs, Ys, Xs = cv.coords(sl)
            r = 20.0 * np.clip((150.0 - Zs) / 110.0, 0.0, 1.0)
            cx = sg * (34.0 + 0.1 * np.clip(150.0 - Zs, 0.0, None))
            m = ((Xs - cx) ** 2 + (Ys - 38.0) ** 2 < r * r) & (r > 3.0)
            cv.paint(sl, m & cv.cavity[sl], MUSCLE, T_MUSCLE)

    # bowel loops with gas in the lower abdomen
    bowel = cv.cavity & (Z < 168.0) & (Z > -30.0) & (Y < 32.0) & (fields["bowel"] > an.bowel_threshold)
    cv.paint(full, bowel, BOWEL, T_BOWEL)
    cv.tissue[bowel & (fields["gas"] > 1.4)] = T_AIR


def _paint_thorax(cv: Canvas, an: Anatomy) -> None:
    sl = cv.box(P(-160, -130, 150), P(160, 120, 420))
    if sl is None:
        return
    Z, Y, X = cv.coords(sl)
    zd = an.diaphragm_z(X, Y)
    lung = cv.cavity[sl] & (Z > zd) & (Z < an.apex - 0.003 * X * X) & (np.abs(X - 4.0) > 14.0)
    cv.paint(sl, lung & (X > 0), LUNG_L, T_LUNG)
    cv.paint(sl, lung & (X < 0), LUNG_R, T_LUNG)


def _paint_abdomen(cv: Canvas, an: Anatomy) -> None:
    # stomach: wall, fluid, and air anteriorly (the patient lies supine)
    S, lvl, near = cv.tube(an.stomach, near=True)
    if S is not None:
        Z, Y, X = cv.coords(S)
        m = (lvl < 0) & cv.cavity[S] & (Z < an.diaphragm_z(X, Y))
        m = cv.paint(S, m, STOMACH, T_STOM_WALL)
        lumen = m & (lvl < -4.0)
        cv.tissue[S][lumen] = T_FLUID
        cv.tissue[S][lumen & (Y - near[0] < -(1.0 - an.stomach_air) * near[1])] = T_AIR

    # liver: union of lobes below the diaphragm
    lo = np.min([b.extent()[0] for b in an.liver], axis=0)
    hi = np.max([b.extent()[1] for b in an.liver], axis=0)
    S = cv.box(lo, hi)
    if S is not None:
        Z, Y, X = cv.coords(S)
        lvl = np.minimum.reduce([b.level(Z, Y, X)[0] for b in an.liver])
        m = (lvl < 0) & cv.cavity[S] & (Z < an.diaphragm_z(X, Y) - 2.0)
        cv.paint(S, m, LIVER, T_LIVER)
    for t in an.vessels:
        s, lvl, _ = cv.tube(t)
        if s is not None:
            cv.paint(s, lvl < 0, HEPATIC_VESSEL, T_PORTAL, only=(LIVER,))
    for b in an.liver_tumours:
        s, lvl, _ = cv.blob(b)
        if s is not None:
            cv.paint(s, lvl < 0, LIVER_TUMOR, T_LIVER_TUM, only=(LIVER, HEPATIC_VESSEL))

    s, lvl, _ = cv.blob(an.gallbladder)
    if s is not None:
        cv.paint(s, (lvl < 0) & cv.cavity[s], GALLBLADDER, T_BILE)

    # spleen: an ellipsoid with a concave hilum
    s, lvl, _ = cv.blob(an.spleen)
    if s is not None:
        Z, Y, X = cv.coords(s)
        hil, _ = an.spleen_hilum.level(Z, Y, X)
        m = (lvl < 0) & (hil > 0) & cv.cavity[s] & (Z < an.diaphragm_z(X, Y) - 2.0)
        cv.paint(s, m, SPLEEN, T_SPLEEN)

    # kidneys with a hilum notch, cortex and medulla
    for side, atom in (("right", KIDNEY_R), ("left", KIDNEY_L)):
        k, notch = an.kidneys[side]
        s, lvl, rho = cv.blob(k)
        if s is None:
            continue
        nl, _ = notch.level(*cv.coords(s))
        m = cv.paint(s, (lvl < 0) & (nl > 0) & cv.cavity[s], atom, T_KID_CORTEX)
        cv.tissue[s][m & (rho < 0.68) & (nl > 0.6)] = T_KID_MEDULLA
    if an.kidney_tumour is not None:
        side, b = an.kidney_tumour
        own, atom = (KIDNEY_L, KIDNEY_TUMOR_L) if side == "left" else (KIDNEY_R, KIDNEY_TUMOR_R)
        s, lvl, _ = cv.blob(b)
        if s is not None:
            cv.paint(s, (lvl < 0) & cv.cavity[s], atom, T_KID_TUM, only=(own, FAT, BOWEL, MUSCLE))

    S, lvl, _ = cv.tube(an.pancreas)
    if S is not None:
        cv.paint(S, (lvl < 0) & cv.cavity[S], PANCREAS, T_PANCREAS)
    if an.pancreas_tumour is not None:
        s, lvl, _ = cv.blob(an.pancreas_tumour)
        if s is not None:
            cv.paint(s, lvl < 0, PANCREAS_TUMOR, T_PANC_TUM, only=(PANCREAS,))


def _paint_vessels_heart(cv: Canvas, an: Anatomy, zcut: float) -> None:
    S, lvl, _ = cv.tube(an.ivc)
    if S is not None:
        cv.paint(S, (lvl < 0) & cv.body[S], IVC, T_IVC)

    s, lvl, rho = cv.blob(an.heart)
    if s is not None:
        Z, Y, X = cv.coords(s)
        m = cv.paint(s, (lvl < 0) & cv.cavity[s] & (Z > an.diaphragm_z(X, Y) + 1.0), HEART, T_MYO)
        cv.tissue[s][m & (rho < 0.74)] = T_BLOOD

    S, lvl, _ = cv.tube(an.aorta)
    if S is not None:
        m = (lvl < 0) & cv.body[S]
        thoracic = (cv.zphys[S[0]] >= zcut)[:, None, None]
        cv.paint(S, m & thoracic, AORTA_THORACIC, T_BLOOD)
        cv.paint(S, m & ~thoracic, AORTA_ABDOMINAL, T_BLOOD)
    S, lvl, _ = cv.tube(an.aortic_root)
    if S is not None:
        cv.paint(S, (lvl < 0) & cv.body[S], AORTIC_ROOT, T_BLOOD)
    for t in an.iliacs:
        S, lvl, _ = cv.tube(t)
        if S is not None:
            cv.paint(S, (lvl < 0) & cv.body[S], ILIAC, T_BLOOD, only=(FAT, MUSCLE, BOWEL, SOFT))
    for t in an.trachea:
        S, lvl, _ = cv.tube(t)
        if S is not None:
            m = cv.paint(S, (lvl < 0) & cv.body[S], TRACHEA, T_SOFT)
            cv.tissue[S][m & (lvl < -1.8)] = T_AIR


def _paint_bones(cv: Canvas, an: Anatomy) -> None:
    sp = an.spine
    sl = cv.box(P(-50, sp["y"] - 30, -200), P(50, sp["y"] + 65, 600))
    if sl is not None:
        Z, Y, X = cv.coords(sl)
        ys = sp["y"] + sp["curve"] * np.sin(np.pi * (Z - 40.0) / 330.0)
        xs = sp["scol"] * np.sin(np.pi * Z / 400.0)
        dx, dy = X - xs, Y - ys
        frac = np.mod((Z - sp["phase"]) / sp["period"], 1.0)
        disc = frac < 0.18
        q = (dx / 20.0) ** 2 + (dy / 16.0) ** 2
        vb = q < 1.0
        cv.paint(sl, vb & disc, SOFT, T_DISC)
        cv.paint(sl, vb & ~disc, BONE, T_BONE_CANC)
        cv.tissue[sl][vb & ~disc & (q > 0.7)] = T_BONE_CORT
        cy = dy - 25.0  # canal centre 25 mm behind the vertebral body's centre
        rc2 = dx * dx + cy * cy
        arch = (rc2 < 144.0) & (rc2 >= 49.0) & (frac > 0.25)
        spinous = (np.abs(dx) < 4.0) & (cy > 10.0) & (cy < 30.0) & (frac > 0.3) & (frac < 0.85)
        transverse = (np.abs(dx) < 38.0) & (np.abs(cy + 3.0) < 5.0) & (frac > 0.35) & (frac < 0.75)
        cv.paint(sl, (arch | spinous | transverse) & cv.body[sl], BONE, T_BONE_CORT, only=(FAT, MUSCLE, SOFT))
        cv.paint(sl, rc2 < 49.0, CANAL, T_CSF)

    rb = an.ribs
    sl = cv.box(P(-160, -130, 150), P(160, 120, 390))
    if sl is not None:
        Z, Y, X = cv.coords(sl)
        band = np.mod((Z + rb["slope"] * Y - rb["phase"]) / rb["period"], 1.0) < 0.32
        zone = (Z > 165.0 - 0.15 * Y) & (Z < an.apex - 0.003 * X * X) & ((np.abs(X) > 25.0) | (Y > 0))
        cv.paint(sl, band & zone & cv.ribcage[sl], BONE, T_BONE_CORT, only=(FAT, MUSCLE))
        sternum = (np.abs(X) < 14.0) & (Y < -40.0) & (Z > 240.0) & (Z < 338.0)
        cv.paint(sl, sternum & cv.wall[sl] & ~cv.cavity[sl], BONE, T_BONE_CANC, only=(FAT, MUSCLE))
    for b in an.pelvis:
        s, lvl, rho = cv.blob(b)
        if s is not None:
            m = cv.paint(s, lvl < 0, BONE, T_BONE_CORT, only=(FAT, MUSCLE, BOWEL))
            cv.tissue[s][m & (lvl < -0.3)] = T_BONE_CANC


def paint(frame: Frame, an: Anatomy, zcut: float, bowel: np.ndarray, gas: np.ndarray,
          max_voxels: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Paint the case on its canonical grid, slab by slab: returns (atoms, tissues), uint8 (z, y, x)."""
    atoms = np.zeros(frame.shape, dtype=np.uint8)
    tissue = np.zeros(frame.shape, dtype=np.uint8)
    rows = max(1, max_voxels // (frame.shape[1] * frame.shape[2]))
    for z0 in range(0, frame.shape[0], rows):
        z1 = min(z0 + rows, frame.shape[0])
        cv = Canvas(frame, atoms, tissue, z0, z1)
        fields = {"bowel": upsample(bowel, frame.shape, z0, z1), "gas": upsample(gas, frame.shape, z0, z1)}
        _paint_body(cv, an, fields)
        _paint_thorax(cv, an)
        _paint_abdomen(cv, an)
        _paint_vessels_heart(cv, an, zcut)
        _paint_bones(cv, an)
    return atoms, tissue
