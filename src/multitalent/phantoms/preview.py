"""Preview images of a phantom collection: a coronal and an axial slice per case with label overlays."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from multitalent.errors import UserInputError, atomic_path
from multitalent.io import read_image, read_label, to_canonical
from multitalent.registry import load_manifest

# datasets shown first, with the field of view that shows them best
_PREFERRED = (("D005", "both"), ("D006", "thorax"), ("D001", "abdomen"), ("D003", "abdomen"),
              ("D007", "abdomen"), ("D002", "abdomen"), ("D004", "abdomen"))
_WINDOW = (-200.0, 300.0)  # HU shown, a soft-tissue window


def _pick_cases(cases: dict[str, dict], n: int) -> list[dict]:
    chosen: list[dict] = []
    for ds, fov in _PREFERRED:
        mine = [m for m in cases.values() if m["dataset"] == ds]
        if not mine:
            continue
        lesions = {k: v for k, v in mine[0]["voxels"].items() if k.endswith("_tumor")}
        best = sorted(mine, key=lambda m: (m["fov"] != fov, -sum(m["voxels"][k] > 0 for k in lesions),
                                           m["split"] != "Tr", m["case"]))[0]
        chosen.append(best)
        if len(chosen) == n:
            break
    return chosen


def _label_names(dataset_json: Path) -> dict[int, str]:
    """Name of each label value: the smallest region holding it (for plain labels, its class)."""
    labels = json.loads(dataset_json.read_text(encoding="utf-8"))["labels"]
    regions = {n: (v if isinstance(v, list) else [v]) for n, v in labels.items() if n != "background"}
    names: dict[int, str] = {}
    for value in sorted({v for vs in regions.values() for v in vs}):
        holders = [n for n, vs in regions.items() if value in vs]
        names[value] = min(reversed(holders), key=lambda n: len(regions[n]))
    return names


def save_preview(collection_dir: str | os.PathLike, png_path: str | os.PathLike, n_cases: int = 4,
                 structures: list[str] | None = None) -> Path:
    """Draw ``n_cases`` cases of the collection (coronal + axial slice, CT window, label overlay) to a PNG.

    The overlay is each case's own dataset label map, or, with ``structures``, those ground-truth
    structures (e.g. ``["liver", "aorta", "heart"]``).
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    root = Path(collection_dir)
    collection = load_manifest(root / "collection.json")
    truth_json = root / "ground_truth" / "structures.json"
    if not truth_json.is_file():
        raise UserInputError(f"{truth_json}: missing; is {root} a phantom collection?")
    cases = _pick_cases(json.loads(truth_json.read_text(encoding="utf-8"))["cases"], max(1, n_cases))
    colours = colormaps["tab10"].colors + colormaps["Set3"].colors

    fig = Figure(figsize=(4.2 * len(cases), 10.5), dpi=110, facecolor="black")
    FigureCanvasAgg(fig)
    for col, meta in enumerate(cases):
        spec = collection.dataset(meta["dataset"])
        image, geometry = read_image(spec.image_path(meta["case"], meta["split"]))
        image, cgeo = to_canonical(image, geometry)
        if structures:
            names = {i + 1: s for i, s in enumerate(structures)}
            label = np.zeros(image.shape, dtype=np.int16)
            for value, s in names.items():
                mask, _ = read_label(root / "ground_truth" / meta["case"] / f"{s}.nii.gz")
                label[to_canonical(mask, geometry)[0] > 0] = value
        else:
            names = _label_names(spec.path / "dataset.json")
            label, _ = read_label(spec.label_path(meta["case"], meta["split"]))
            label = to_canonical(label, geometry)[0]
        sz, sy, sx = cgeo.spacing
        nz, ny, nx = image.shape
        lesion_values = [v for v, n in names.items() if "tumor" in n and (label == v).any()]
        where = np.argwhere(np.isin(label, lesion_values) if lesion_values else label > 0)  # show lesions
        cz, cy, _ = where.mean(axis=0).round().astype(int) if len(where) else (nz // 2, ny // 2, nx // 2)
        n_colours = max(names, default=0)
        cmap = ListedColormap([(0, 0, 0, 0)] + [colours[i % len(colours)] for i in range(n_colours)])
        views = ((image[:, cy, :], label[:, cy, :], [0, nx * sx, 0, nz * sz], "lower", f"coronal y={cy}"),
                 (image[cz], label[cz], [0, nx * sx, ny * sy, 0], "upper", f"axial z={cz}"))
        for row, (img, lab, extent, origin, what) in enumerate(views):
            ax = fig.add_subplot(2, len(cases), row * len(cases) + col + 1)
            ax.imshow(img, cmap="gray", vmin=_WINDOW[0], vmax=_WINDOW[1], extent=extent, origin=origin,
                      interpolation="nearest")
            ax.imshow(np.ma.masked_equal(lab, 0), cmap=cmap, vmin=0, vmax=max(len(cmap.colors) - 1, 1),
                      alpha=0.35, extent=extent, origin=origin, interpolation="nearest")
            for value in np.unique(lab[lab > 0]):
                ax.contour((lab == value).astype(float), levels=[0.5], colors=[cmap.colors[value]],
                           linewidths=0.8, extent=extent, origin=origin)
            ax.set_axis_off()
            ax.set_title(f"{meta['case']} ({spec.name}) {what}" if row == 0 else
                         f"{meta['phase']}, stored {meta['orientation']}, FOV {meta['fov']}",
                         color="white", fontsize=8)
            if row == 1 and names:
                handles = [Patch(color=cmap.colors[v], label=n) for v, n in sorted(names.items())]
                ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3,
                          fontsize=7, frameon=False, labelcolor="white")
    fig.suptitle("multitalent phantoms: CT window [-200, 300] HU, patient's right on the left", color="white",
                 fontsize=10)
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path, suffix=".png") as tmp:
        fig.savefig(tmp, facecolor="black")
    return png_path
