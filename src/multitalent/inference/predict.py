"""``multitalent predict``: every head of a trained network on NIfTI files or DICOM series.

Per case: read -> ``prepare_image`` (canonical orientation, body crop, resampling) -> ``normalize``
-> streaming sliding window (:mod:`.sliding_window`) -> streaming export (:mod:`.export`) -> label maps
per dataset in the input's original geometry. Each case folder is built under a temporary name and
renamed when complete, so ``OUT/<case>/`` exists only with all of its files. See ``docs/inference.md``.
"""

from __future__ import annotations

import os
import re
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn
from tqdm import tqdm

from multitalent import io
from multitalent.device import resolve_device, strip_wrappers
from multitalent.errors import UserInputError, atomic_dir, ensure_output_dir, write_json
from multitalent.inference.config import PredictConfig
from multitalent.inference.export import (
    MaskAssembler,
    merged_label_table,
    open_probabilities,
    pack_probabilities,
    preview_centre,
    preview_slices,
    restore_probabilities,
    write_merged_labels,
    write_preview,
    write_statistics,
)
from multitalent.inference.postprocess import FILE as POSTPROCESSING_FILE
from multitalent.inference.postprocess import load_decision
from multitalent.inference.sliding_window import SlabCallback, sliding_window
from multitalent.objectives import get_objective
from multitalent.preprocessing.normalization import normalize, normalized_air
from multitalent.preprocessing.pipeline import prepare_image
from multitalent.preprocessing.plans import Plans
from multitalent.registry import SUPPORTED_ENDINGS, HeadRegistry

CASE_FILE = "case.json"  # written last into every case folder
_CHANNEL_RE = re.compile(r"^(.*)_(\d{4})$")


# --- the model ------------------------------------------------------------------------------------
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class Predictor:
    """A network ready for inference with everything needed to feed it: plans, heads, TTA axes."""

    net: nn.Module
    plans: Plans
    registry: HeadRegistry
    mirror_axes: tuple[int, ...] = (0, 1)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    source: str = ""
    members: list[str] = field(default_factory=list)  # the checkpoint files (several for an ensemble)
    #: postprocessing: the heads whose mask is reduced to its largest connected component, and its files
    largest_component: list[str] = field(default_factory=list)
    postprocessing_files: list[str] = field(default_factory=list)

    @property
    def pad_value(self) -> float:
        """Normalised air: what the volume is padded with when it is smaller than the patch."""
        return normalized_air(self.plans.normalization)

    @classmethod
    def from_run(cls, run: ModelSpec, device: str = "cpu", checkpoint: str = "final") -> Predictor:
        """The network of a run folder (its final or best checkpoint) or of a checkpoint file; a list of
        them (or a folder of run folders) is an ensemble that averages the members' logits."""
        return load_predictor(run, device, checkpoint)

    def __call__(self, image: sitk.Image | np.ndarray, spacing: tuple[float, float, float] | None = None,
                 origin: tuple[float, float, float] = (0.0, 0.0, 0.0), direction: tuple[float, ...] | None = None,
                 heads: bool = False, step: float = 0.5, mirror: bool = False, postprocess: bool = True) -> dict:
        """Segment one scan in memory: a SimpleITK image, or a (z, y, x) array in HU with its ``spacing``
        (z, y, x, mm), ``origin`` and ``direction`` (ITK's, row-major; identity by default).

        Returns ``{dataset id: label map}`` in each dataset's own label values and in the input's geometry
        (SimpleITK images for an image input, arrays for an array input); with ``heads=True`` also
        ``{"heads": {head id: binary mask}}``, the same way. ``postprocess``: apply the run's postprocessing
        (``largest_component``).
        """
        as_array = not isinstance(image, sitk.Image)
        if as_array:
            if spacing is None:
                raise UserInputError("an array needs its spacing (z, y, x in mm).")
            array = np.asarray(image, dtype=np.float32)
            if array.ndim != 3:
                raise UserInputError(f"expected a 3D (z, y, x) array, got shape {array.shape}.")
            geometry = io.Geometry(tuple(array.shape), tuple(float(v) for v in spacing),
                                   tuple(float(v) for v in origin), tuple(direction or IDENTITY))
        else:
            if image.GetDimension() != 3:
                raise UserInputError(f"expected a 3D image, got {image.GetDimension()}D.")
            array = sitk.GetArrayFromImage(image).astype(np.float32)
            geometry = io.geometry_of(image)
        io.check_geometry(geometry, "the input image")
        if not np.all(np.isfinite(array)):
            raise UserInputError("the input image holds NaN or infinite intensities.")
        prepared, props = prepare_image(array, geometry, self.plans.spacing)
        del array
        asm = MaskAssembler(props, len(self.registry))
        self.sliding_window(normalize(prepared, self.plans.normalization), asm, step=step, mirror=mirror)
        asm.finish()
        for k, h in enumerate(self.registry.ids):
            if postprocess and h in self.largest_component:
                asm.keep_largest_component(k)
        local = {i: i for i in range(len(self.registry))}

        def out(a: np.ndarray):
            return a if as_array else io.to_sitk(a, asm.original)

        result: dict = {ds: out(asm.labelmap(self.registry, ds, local)) for ds in self.registry.dataset_ids}
        if heads:
            result["heads"] = {h.id: out(asm.mask(k)) for k, h in enumerate(self.registry.heads)}
        return result

    def sliding_window(self, image: np.ndarray | torch.Tensor, on_slab: SlabCallback | None = None,
                       heads: list[int] | None = None, step: float = 0.5, window_batch: int = 2,
                       mirror: bool = False, progress: bool = False,
                       stats: dict | None = None) -> torch.Tensor | None:
        """:func:`sliding_window` with this model's patch, pad value, device and mirror axes."""
        x = torch.as_tensor(image, dtype=torch.float32)
        if x.ndim == 3:
            x = x[None]
        return sliding_window(self.net, x, self.plans.patch_size, step, window_batch,
                              self.mirror_axes if mirror else (), on_slab, heads=heads,
                              pad_value=self.pad_value, device=self.device, progress=progress, stats=stats)


ModelSpec = str | os.PathLike | list[str | os.PathLike] | tuple[str | os.PathLike, ...]
_RUN_CHECKPOINTS = ("checkpoint_final.pt", "checkpoint_latest.pt", "checkpoint_best.pt")


class EnsembleNet(nn.Module):
    """Several networks as one: each window goes through every member and their head logits are averaged,
    so the streaming sliding window (and its bounded memory) is unchanged."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.members[0](x)
        for member in self.members[1:]:
            out = out + member(x)
        return out / len(self.members)


def _is_run(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _RUN_CHECKPOINTS)


def model_paths(model: ModelSpec) -> list[Path]:
    """The members of ``model``: a checkpoint file or run folder is one; a list gives one each; a folder
    without checkpoints whose sub-folders are runs (like nnU-Net's folds) gives those sub-folders."""
    items = [Path(model)] if isinstance(model, (str, os.PathLike)) else [Path(m) for m in model]
    if not items:
        raise UserInputError("no model given; pass a run folder, a checkpoint file or several of them.")
    paths: list[Path] = []
    for item in items:
        subs = sorted(p for p in item.iterdir() if p.is_dir() and _is_run(p)) \
            if item.is_dir() and not _is_run(item) else []
        paths += subs or [item]
    return paths


def _load_member(path: Path, dev: torch.device, checkpoint: str) -> Predictor:
    """One checkpoint's network, plans, heads and mirror axes."""
    from multitalent.models import create_model
    from multitalent.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, map_location="cpu", which=checkpoint)
    plans = Plans.from_dict(ckpt.plans)
    registry = HeadRegistry.from_dict(ckpt.heads)
    objective = get_objective(ckpt.config.get("objective", "multitalent"))
    net = create_model(**ckpt.model_config, plans=plans, num_heads=objective.num_outputs(registry),
                       deep_supervision=False)
    try:
        net.load_state_dict(strip_wrappers(ckpt.state_dict))
    except RuntimeError as e:
        raise UserInputError(f"{ckpt.path}: the weights do not fit the model described in the checkpoint "
                             f"({str(e).splitlines()[0]}).") from None
    net.deep_supervision = False
    # one logit per head, whatever the objective (the merged softmax's classes are mapped to heads)
    net = objective.for_prediction(net, registry)
    if dev.type == "cpu":  # oneDNN's 3D convolutions are markedly faster in channels-last on CPU
        net = net.to(memory_format=torch.channels_last_3d)
    net.to(dev).eval()
    mirror = ckpt.config.get("mirror_axes", [0, 1])
    pp_file = Path(ckpt.path).parent / POSTPROCESSING_FILE
    decision = load_decision(pp_file.parent)
    return Predictor(net, plans, registry, tuple(int(a) for a in mirror), dev, ckpt.path, [ckpt.path],
                     [h for h in registry.ids if decision.get(h)], [str(pp_file)] if pp_file.is_file() else [])


def check_compatible(first: Predictor, other: Predictor) -> None:
    """Ensemble members must share the head registry and the plans' spacing, patch and normalisation."""
    where = f"{other.source}: ensemble member differs from {first.source}"
    if other.registry.ids != first.registry.ids:
        only = sorted(set(other.registry.ids) ^ set(first.registry.ids))
        raise UserInputError(f"{where} in its heads ({only or 'same heads in another order'}); "
                             "ensemble only runs trained on the same collection.")
    if other.registry.to_dict() != first.registry.to_dict():
        raise UserInputError(f"{where} in its head registry (label values or dataset descriptions).")
    for key in ("spacing", "patch_size", "normalization"):
        a, b = getattr(first.plans, key), getattr(other.plans, key)
        if a != b:
            raise UserInputError(f"{where} in plans '{key}' ({b} vs {a}); ensemble only runs preprocessed "
                                 "with the same plans.")


def load_predictor(checkpoint_or_run: ModelSpec, device: str | torch.device = "cpu",
                   checkpoint: str = "final") -> Predictor:
    """Rebuild the network of a checkpoint (or a run folder's final/latest or best checkpoint) for inference;
    several (a list, or a folder of run folders) become one :class:`EnsembleNet`."""
    dev = resolve_device(str(device))
    loaded = [_load_member(p, dev, checkpoint) for p in model_paths(checkpoint_or_run)]
    if len(loaded) == 1:
        return loaded[0]
    first = loaded[0]
    for other in loaded[1:]:
        check_compatible(first, other)
    axes = tuple(a for a in first.mirror_axes if all(a in m.mirror_axes for m in loaded))
    sources = [m.source for m in loaded]
    net = EnsembleNet([m.net for m in loaded]).eval()
    # postprocessing decided for single runs: applied to the ensemble only where every member agrees
    lcc = [h for h in first.registry.ids if all(h in m.largest_component for m in loaded)]
    files = [f for m in loaded for f in m.postprocessing_files] if lcc else []
    return Predictor(net, first.plans, first.registry, axes, dev, f"ensemble of {len(loaded)}: " +
                     ", ".join(sources), sources, lcc, files)


# --- the input ------------------------------------------------------------------------------------
def _image_ending(name: str) -> str | None:
    return next((e for e in SUPPORTED_ENDINGS if name.endswith(e)), None)


def _is_dicom_folder(folder: Path) -> bool:
    if any(p.suffix.lower() == ".dcm" for p in folder.iterdir() if p.is_file()):
        return True
    with io.keep_locale():
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def find_cases(input: str | os.PathLike) -> list[tuple[str, Path]]:
    """``(case id, path)`` per scan: a file; a folder of image files (``<case>_0000.nii.gz`` or
    ``<case>.nii.gz``); a DICOM series folder (one case named after it); or a folder of such folders."""
    path = Path(input)
    if not path.exists():
        raise UserInputError(f"{path}: input not found; give a NIfTI file, a folder of them or a DICOM "
                             "series folder.")
    if path.is_file():
        ending = _image_ending(path.name) or "".join(path.suffixes)
        name = path.name[: -len(ending)] if ending else path.name
        m = _CHANNEL_RE.match(name)
        return [(m.group(1) if m and m.group(2) == "0000" else name, path)]
    visible = [p for p in path.iterdir() if not p.name.startswith(".")]
    files = sorted(p for p in visible if p.is_file() and _image_ending(p.name))
    if files:
        cases: dict[str, Path] = {}
        for p in files:
            name = p.name[: -len(_image_ending(p.name))]
            m = _CHANNEL_RE.match(name)
            if m and m.group(2) != "0000":
                raise UserInputError(f"{p}: channel {m.group(2)}; MultiTalent takes one CT channel (_0000) "
                                     "per case.")
            case = m.group(1) if m else name
            if case in cases:
                raise UserInputError(f"{p}: case id '{case}' also belongs to {cases[case].name}; rename one.")
            cases[case] = p
        return sorted(cases.items())
    if _is_dicom_folder(path):
        return [(path.resolve().name, path)]
    subs = sorted(p for p in visible if p.is_dir() and _is_dicom_folder(p))
    if subs:
        return [(p.name, p) for p in subs]
    raise UserInputError(f"{path}: holds no image files ({', '.join(SUPPORTED_ENDINGS)}) and no DICOM "
                         "series.")


@dataclass
class LoadedCase:
    """A scan prepared for the network: normalised target-grid image and the properties to undo it."""

    case: str
    path: Path
    image: np.ndarray
    props: dict


def load_case(case: str, path: Path, plans: Plans) -> LoadedCase:
    """Read, reorient, crop, resample and normalise one scan as training did."""
    image, geometry = io.read_image(path)
    prepared, props = prepare_image(image, geometry, plans.spacing)
    del image
    return LoadedCase(case, path, normalize(prepared, plans.normalization), props)


# --- the outputs ----------------------------------------------------------------------------------
@dataclass
class OutputPlan:
    """Which heads and files each case gets."""

    selected: list[int]
    datasets: list[str]
    save_heads: bool
    save_probabilities: bool
    statistics: bool
    preview: bool
    merged: bool = False
    dicom_seg: bool = False

    def files(self, registry: HeadRegistry) -> list[str]:
        names = [f"{d}.nii.gz" for d in self.datasets]
        if self.save_heads:
            names += [f"heads/{registry.heads[i].id}.nii.gz" for i in self.selected]
        if self.merged:
            names.append("merged.nii.gz")
        if self.dicom_seg:
            names.append("segmentation.dcm")
        if self.save_probabilities:
            names.append("probabilities.npz")
        if self.statistics:
            names.append("statistics.json")
        if self.preview:
            names.append("preview.png")
        return names + [CASE_FILE]


def _is_complete(folder: Path, files: list[str]) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in files)


def _settings(predictor: Predictor, cfg: PredictConfig) -> dict:
    """Every setting of this prediction: the model's checkpoint files, the options, what they resolved to."""
    from multitalent import __version__

    options = asdict(cfg)
    options["continue"] = options.pop("continue_")
    return {"multitalent_version": __version__,
            "model": predictor.source,
            "checkpoints": predictor.members or [predictor.source],
            "ensemble": len(predictor.members) > 1,
            "device": str(predictor.device),
            "mirror_axes": list(predictor.mirror_axes) if cfg.mirror else [],
            "postprocessing": _postprocessing(predictor, cfg),
            "options": options}


def _postprocessing(predictor: Predictor, cfg: PredictConfig) -> dict | None:
    """What postprocessing this prediction applied (None: none)."""
    heads = _postprocessed_heads(predictor, cfg)
    if not heads:
        return None
    return {"largest_component": heads, "files": predictor.postprocessing_files}


def _postprocessed_heads(predictor: Predictor, cfg: PredictConfig) -> list[str]:
    return list(predictor.largest_component) if cfg.postprocess else []


def _heads_json(registry: HeadRegistry, plan: OutputPlan, cases: list[str], predictor: Predictor,
                cfg: PredictConfig) -> dict:
    d = registry.to_dict()
    ids = [registry.heads[i].id for i in plan.selected]
    d["settings"] = _settings(predictor, cfg)
    d["outputs"] = {
        "model": predictor.source,
        "cases": cases,
        "label_maps": {ds: {"file": f"<case>/{ds}.nii.gz",
                            "heads": [h.id for h in registry.heads_of(ds) if h.id in ids]}
                       for ds in plan.datasets},
        "head_masks": {h: f"<case>/heads/{h}.nii.gz" for h in ids} if plan.save_heads else {},
        "probabilities": ({"file": "<case>/probabilities.npz", "heads": ids, "grid": cfg.probabilities_grid}
                          if plan.save_probabilities else None),
        "statistics": ["statistics.json", "statistics.csv"] if plan.statistics else [],
        "preview": "<case>/preview.png" if plan.preview else None,
        "dicom_seg": ({"file": "<case>/segmentation.dcm", "segments": ids} if plan.dicom_seg else None),
        "merged": ({"file": "<case>/merged.nii.gz", "labels": ["merged_labels.json", "merged_labels.csv"],
                    "overlap": "larger predicted volume (per case) painted first: the smaller structure on top"}
                   if plan.merged else None),
    }
    return d


def _write_dicom_seg(path: Path, asm: MaskAssembler, source: Path, registry: HeadRegistry,
                     selected: list[int]) -> None:
    """One DICOM-SEG segment per selected head (label: head id; description: dataset name and class)."""
    from multitalent import __version__

    masks = np.stack([asm.mask(k).view(bool) for k in range(len(selected))], axis=-1)
    heads = [registry.heads[g] for g in selected]
    segments = [(h.id, f"{registry.datasets[h.dataset].get('name', h.dataset)}: {h.name}") for h in heads]
    io.write_dicom_seg(path, masks, source, segments, __version__)


def predict_case(predictor: Predictor, loaded: LoadedCase, case_dir: Path, plan: OutputPlan,
                 cfg: PredictConfig, stats: dict | None = None) -> dict[str, float]:
    """Predict one prepared case and write its folder atomically. Returns the volume (ml) per head."""
    registry = predictor.registry
    ids = [registry.heads[i].id for i in plan.selected]
    local = {g: k for k, g in enumerate(plan.selected)}
    with atomic_dir(case_dir) as tmp:
        probs = None
        if plan.save_probabilities:
            probs = open_probabilities(tmp, len(ids), loaded.props["resampled_shape"])
        asm = MaskAssembler(loaded.props, len(ids), probabilities=probs)
        heads = None if plan.selected == list(range(len(registry))) else plan.selected
        predictor.sliding_window(loaded.image, asm, heads=heads, step=cfg.step, window_batch=cfg.window_batch,
                                 mirror=cfg.mirror, progress=not cfg.quiet, stats=stats)
        loaded.image = None  # free the input before the export
        asm.finish()
        lcc = set(_postprocessed_heads(predictor, cfg))
        for k, hid in enumerate(ids):
            if hid in lcc:
                asm.keep_largest_component(k)
        original = asm.original
        for ds in plan.datasets:
            io.write_label(tmp / f"{ds}.nii.gz", asm.labelmap(registry, ds, local), original)
        if plan.save_heads:
            for k, hid in enumerate(ids):
                io.write_label(tmp / "heads" / f"{hid}.nii.gz", asm.mask(k), original)
        if plan.merged:
            io.write_label(tmp / "merged.nii.gz", asm.merged(), original)
        if plan.dicom_seg:
            _write_dicom_seg(tmp / "segmentation.dcm", asm, loaded.path, registry, plan.selected)
        if probs is not None:
            if cfg.probabilities_grid == "original":
                probs = restore_probabilities(tmp, probs, loaded.props)
            pack_probabilities(tmp, probs, ids, loaded.props, cfg.probabilities_grid)
            del probs
        volumes = {hid: float(asm.counts[k]) * asm.voxel_ml() for k, hid in enumerate(ids)}
        if plan.statistics:
            write_json(tmp / "statistics.json", volumes)
        if plan.preview:  # the scan is read again rather than kept in memory during the prediction
            image, geometry = io.read_image(loaded.path)
            slices = preview_slices(image, geometry, preview_centre(asm))
            del image
            write_preview(tmp / "preview.png", slices, asm, ids)
        write_json(tmp / CASE_FILE, {"case": loaded.case, "input": str(loaded.path),
                                     "model": predictor.source, "geometry": loaded.props["original_geometry"],
                                     "heads": ids, "volumes_ml": volumes, "files": plan.files(registry)})
    return volumes


def _predict_cases(predictor: Predictor, todo: list[tuple[str, Path]], out: Path, plan: OutputPlan,
                   cfg: PredictConfig) -> tuple[list[Path], dict[str, dict[str, float]]]:
    """Predict the cases in order, reading the next one in a background thread meanwhile."""
    written: list[Path] = []
    volumes: dict[str, dict[str, float]] = {}
    bar = tqdm(total=len(todo), desc="predict", unit="case", disable=cfg.quiet)
    with ThreadPoolExecutor(max_workers=1) as pool:
        def submit(i: int) -> Future | None:
            if i >= len(todo):
                return None
            return pool.submit(load_case, todo[i][0], todo[i][1], predictor.plans)

        pending = submit(0)
        for i, (case, _) in enumerate(todo):
            loaded = pending.result()
            pending = submit(i + 1) if cfg.prefetch else None
            bar.set_postfix_str(case)
            volumes[case] = predict_case(predictor, loaded, out / case, plan, cfg)
            written.append(out / case)
            del loaded
            if not cfg.prefetch:
                pending = submit(i + 1)
            bar.update()
    bar.close()
    return written, volumes


def run_prediction(predictor: Predictor, input: str | os.PathLike, output: str | os.PathLike,
                   cfg: PredictConfig) -> list[Path]:
    """:func:`predict` with an already loaded :class:`Predictor`."""
    if not 0 < cfg.step <= 1:
        raise UserInputError(f"--step {cfg.step}: must be in (0, 1].")
    if cfg.window_batch < 1:
        raise UserInputError(f"--window-batch {cfg.window_batch}: must be at least 1.")
    registry = predictor.registry
    try:
        selected = registry.select(cfg.datasets or None, cfg.heads or None)
    except UserInputError as e:
        raise UserInputError(f"{predictor.source or 'model'}: {e}") from None
    if not selected:
        raise UserInputError(f"{predictor.source or 'model'}: --datasets {cfg.datasets} with --heads {cfg.heads} "
                             "selects no head; see heads.json for the valid ids.")
    datasets = [d for d in registry.dataset_ids if any(registry.heads[i].dataset == d for i in selected)]
    plan = OutputPlan(selected, datasets, cfg.save_heads, cfg.save_probabilities, cfg.statistics, cfg.preview,
                      cfg.merged, cfg.dicom_seg)
    files = plan.files(registry)
    cases = find_cases(input)
    if cfg.dicom_seg:
        for _, path in cases:
            if not path.is_dir():
                raise UserInputError(f"{path}: --dicom-seg needs DICOM series inputs (a DICOM-SEG references "
                                     "its source series); this is not one. Drop --dicom-seg for NIfTI inputs.")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out}: the output path exists and is a file; give a folder path instead.")

    todo: list[tuple[str, Path]] = []
    for case, path in cases:
        folder = out / case
        if cfg.continue_ or cfg.overwrite:
            # a killed run leaves its case's hidden temporary folder (`.<case>.<random>`); it is ours to remove
            for stale in out.glob(f".{case}.*") if out.is_dir() else []:
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
        if folder.exists():
            if cfg.continue_ and _is_complete(folder, files):
                continue
            if not cfg.overwrite:
                hint = ("exists but lacks outputs asked for now; pass --overwrite to redo it" if cfg.continue_
                        else "exists; pass --continue to skip finished cases or --overwrite to replace them")
                raise UserInputError(f"{folder}: {hint}.")
            if not folder.is_dir():
                raise UserInputError(f"{folder}: exists and is not a folder; remove it.")
        todo.append((case, path))

    created = not out.exists()  # made by this call: removed again if a refusal leaves it empty
    try:
        written, volumes = _predict_cases(predictor, todo, out, plan, cfg)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    ensure_output_dir(out)
    all_cases = [c for c, _ in cases]
    write_json(out / "heads.json", _heads_json(registry, plan, all_cases, predictor, cfg))
    if cfg.merged:
        write_merged_labels(out, merged_label_table(registry, selected))
    if cfg.statistics:
        import json

        for case in all_cases:
            if case not in volumes:  # skipped by --continue: read what that run wrote
                volumes[case] = json.loads((out / case / "statistics.json").read_text(encoding="utf-8"))
        write_statistics(out, {c: volumes[c] for c in all_cases})
    return written


def predict(model: ModelSpec, input: str | Path, output: str | Path, cfg: PredictConfig) -> list[Path]:
    """Segment every scan of ``input`` with every (selected) head of ``model`` (one run or checkpoint, or
    several: an ensemble); returns the case folders written (cases skipped by ``--continue`` are not listed)."""
    predictor = load_predictor(model, cfg.device, cfg.checkpoint)
    return run_prediction(predictor, input, output, cfg)
