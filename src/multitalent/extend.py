"""Adding datasets to a trained model (``multitalent extend``) without losing what it knows.

Every head of the base model is kept (same registry order, same weights) and one head per (new dataset,
class) is appended; the network goes on training from the base weights with MultiTalent's loss and
sampling on the union of the original collection and the new datasets.

- **Plans are shared.** The new datasets are preprocessed with the base model's plans (spacing, patch,
  CT normalisation) into ``RUN2/preprocessed``, beside links to the base folder's cases (nothing of the
  original collection is preprocessed again or copied). Any spacing can be resampled to the plans', but
  intensities cannot be re-normalised without changing what the network has learnt: a new dataset that is
  not CT, whose scans hold no air (not Hounsfield units, e.g. a missing rescale intercept) or whose
  labelled structures lie outside the base clip window is refused with the reason.
- **Phases as in fine-tuning** (:func:`multitalent.finetune.finetune_phases`): the output convolutions
  first (the new heads start at the head prior), then the whole network with a linear warm-up, then poly.
- **Without the original data** (``without_original_data``): only the new datasets are trained on; the old
  heads are kept close to the frozen base model on the same augmented patches by distillation: MultiTalent's
  own per-head BCE minus batch Dice with the base model's probabilities as soft targets
  (:class:`DistillationObjective`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from multitalent._callable import make_callable
from multitalent.data.loader import UNPACKED_KEYS
from multitalent.errors import UserInputError, atomic_dir, write_json
from multitalent.finetune import adopt_network, finetune_phases
from multitalent.loss import MultiTalentLoss
from multitalent.models import MultiHeadNet, create_model, load_backbone
from multitalent.objectives import MultiTalentObjective
from multitalent.preprocessing.pipeline import (
    BODY_THRESHOLD_HU,
    CaseRecord,
    Preprocessed,
    list_cases,
    make_splits,
    preprocess_records,
)
from multitalent.preprocessing.plans import Normalization, Plans
from multitalent.registry import Collection, HeadRegistry, build_registry, load_manifest
from multitalent.training.checkpoint import Checkpoint, load_checkpoint
from multitalent.training.config import ExtendConfig
from multitalent.training.loop import train

log = logging.getLogger("multitalent")

#: a CT scan in Hounsfield units holds air (about -1000 HU) around or inside the body; a scan whose
#: lowest value is above this is taken as not in HU (the body crop of preprocessing uses the same threshold)
AIR_LIMIT_HU = BODY_THRESHOLD_HU
CT_CHANNEL_NAMES = ("ct",)


def union_registry(base: HeadRegistry, added: HeadRegistry, manifest: str | os.PathLike) -> HeadRegistry:
    """The base model's heads in their order, then the added datasets' heads; a dataset id used by both is
    refused (give the manifest entry its own ``"id"``)."""
    clash = sorted(set(base.dataset_ids) & set(added.dataset_ids))
    if clash:
        raise UserInputError(f"{manifest}: dataset id(s) {clash} already belong to the base model (its datasets: "
                             f"{base.dataset_ids}); give the new entries their own id in the manifest, e.g. "
                             '{"path": "Dataset001_Liver", "id": "D101"}.')
    return HeadRegistry(list(base.heads) + list(added.heads), {**base.datasets, **added.datasets})


def check_modality(collection: Collection) -> None:
    """Every added dataset must be CT: the base plans' normalisation is in Hounsfield units."""
    for d in collection.datasets:
        path = d.path / "dataset.json"
        channels = json.loads(path.read_text(encoding="utf-8"))["channel_names"]
        name = str(next(iter(channels.values())))
        if name.strip().lower() not in CT_CHANNEL_NAMES:
            raise UserInputError(f"{path}: channel '{name}' is not CT; the base model normalises Hounsfield units "
                                 "(clip, mean, std of its CT collection), which another modality cannot share. "
                                 "Train a new model for it.")


def check_intensities(dataset: str, folder: Path, minima: Sequence[float], samples: Sequence[np.ndarray],
                      norm: Normalization) -> None:
    """Refuse a dataset whose scans the base normalisation cannot serve: most scans without air (not HU), or
    labelled structures whose median intensity lies outside the base clip window."""
    without_air = [m for m in minima if m > AIR_LIMIT_HU]
    if len(without_air) * 2 > len(minima):
        raise UserInputError(f"{folder}: {len(without_air)} of {len(minima)} scans hold no value below "
                             f"{AIR_LIMIT_HU:.0f} (lowest {min(minima):.0f}), so they are not in Hounsfield units "
                             "(a missing rescale slope/intercept?); the base model's CT normalisation cannot be "
                             "shared. Convert the scans to HU and run extend again.")
    pooled = np.concatenate([np.asarray(s, np.float64).ravel() for s in samples]) if samples else np.zeros(0)
    if pooled.size:
        median = float(np.median(pooled))
        if not norm.lower <= median <= norm.upper:
            raise UserInputError(f"{folder}: the labelled structures of dataset {dataset} have median intensity "
                                 f"{median:.0f}, outside the base model's clip window [{norm.lower:.0f}, "
                                 f"{norm.upper:.0f}] HU: its normalisation would flatten them to one value. "
                                 "Train a model on a collection that includes these intensities instead.")


def _link(source: Path, target: Path) -> None:
    """``target`` refers to ``source``: a symbolic link, else a hard link, else a copy."""
    try:
        os.symlink(source.resolve(), target)
    except OSError:
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


def _merge_splits(base: dict, added: dict) -> dict:
    return {f: {k: list(base.get(f, {}).get(k, [])) + list(added[f][k]) for k in ("train", "val")} for f in added}


def build_union(base_pre: Preprocessed | None, plans: Plans, registry: HeadRegistry, collection: Collection,
                records: list[CaseRecord], out: Path, workers: int = 1, progress: bool = True) -> Path:
    """Write ``out``: the added datasets preprocessed with the base ``plans`` (head indices of the union
    ``registry``), the base folder's cases linked beside them (none without ``base_pre``), and the union's
    plans, heads, cases and splits. Built in a temporary folder: a refusal leaves nothing."""
    with atomic_dir(out) as tmp:
        cases_dir = tmp / "cases"
        cases_dir.mkdir()
        samples = preprocess_records(records, registry, plans, cases_dir, workers, progress)
        for d in collection.datasets:
            mine = [r.case for r in records if r.dataset == d.id]
            minima = [json.loads((cases_dir / f"{c}.json").read_text())["min_intensity"] for c in mine]
            check_intensities(d.id, d.path, minima, [samples[c] for c in mine], plans.normalization)
        cases = []
        splits = make_splits(records)
        if base_pre is not None:
            (tmp / "unpacked").mkdir()
            for c in base_pre.cases:
                for suffix in (".npz", ".json"):
                    _link(base_pre.root / "cases" / f"{c['case']}{suffix}", cases_dir / f"{c['case']}{suffix}")
                # cases the base run already unpacked are shared too (a large collection's arrays are not
                # written twice)
                arrays = [base_pre.root / "unpacked" / f"{c['case']}_{key}.npy" for key in UNPACKED_KEYS]
                if all(f.is_file() for f in arrays):
                    for f in arrays:
                        _link(f, tmp / "unpacked" / f.name)
            cases = list(base_pre.cases)
            splits = _merge_splits(base_pre.splits, splits)
        cases += [{"case": r.case, "dataset": r.dataset, "image": str(r.image), "label": str(r.label)}
                  for r in records]
        plans.save(tmp / "plans.json")
        registry.save(tmp / "heads.json")
        write_json(tmp / "cases.json", cases)
        write_json(tmp / "splits.json", splits)
        write_json(tmp / "manifest.json", {"manifest": str(Path(collection.manifest or "").resolve()),
                                            "base_preprocessed": str(base_pre.root.resolve()) if base_pre else None})
    return out


def _base_preprocessed(ckpt: Checkpoint, plans: Plans, registry: HeadRegistry, cfg: ExtendConfig) -> Preprocessed:
    """The base model's preprocessed folder, checked against its checkpoint (plans and heads)."""
    recorded = ckpt.run.get("preprocessed")
    where = cfg.base_preprocessed or recorded
    if not where or not Path(where).is_dir():
        raise UserInputError(f"{ckpt.path}: the base model's preprocessed folder {where or '(not recorded)'} is not "
                             "there; pass --base-preprocessed PATH, or --without-original-data to train on the new "
                             "datasets only (distillation keeps the old heads).")
    base = Preprocessed.open(where)
    mine, theirs = base.plans, plans
    if (mine.spacing, mine.patch_size, mine.normalization) != (theirs.spacing, theirs.patch_size, theirs.normalization):
        raise UserInputError(f"{base.root / 'plans.json'}: differs from the plans the base model was trained with "
                             f"({ckpt.path}); pass the folder it was trained on with --base-preprocessed.")
    if base.registry.to_dict() != registry.to_dict():  # its case files index these heads (fg_heads)
        raise UserInputError(f"{base.root / 'heads.json'}: holds other heads than the base model ({len(base.registry)} "
                             f"vs {len(registry)}; a model trained on some of the folder's datasets with --datasets?); "
                             "pass the folder it was trained on with --base-preprocessed, or --without-original-data.")
    return base


def load_extended(net: MultiHeadNet, state: dict, old_heads: int, source: str) -> None:
    """Every base weight into ``net``: the backbone as it is, and the base heads into the first ``old_heads``
    rows of each output convolution (the rows after them keep their head-prior start)."""
    head_keys = {f"backbone.{p}.{n}" for p in net.head_paths for n in ("weight", "bias")}
    loaded, skipped = load_backbone(net, {k: v for k, v in state.items() if k not in head_keys})
    if skipped or not loaded:
        raise UserInputError(f"{source}: {len(skipped)} base weight(s) do not fit the extended network "
                             f"(e.g. {skipped[:2]}); the network options must be the base model's.")
    own = net.state_dict()
    with torch.no_grad():
        for key in head_keys & set(state):
            if own[key].shape[1:] != state[key].shape[1:] or state[key].shape[0] != old_heads:
                raise UserInputError(f"{source}: head weights {key} {tuple(state[key].shape)} do not fit "
                                     f"{old_heads} heads of the extended network.")
            own[key][:old_heads].copy_(state[key])


class DistillationObjective(MultiTalentObjective):
    """MultiTalent's loss on the annotated heads plus, for the base model's heads (the first ``old_heads``), the
    same per-head BCE minus batch Dice against the frozen base model's probabilities on the same patch, at
    every deep-supervision output the loss uses. Bound to a teacher by :func:`distillation_objective`."""

    name: ClassVar[str] = "distillation"
    teacher: ClassVar[torch.nn.Module | None] = None
    old_heads: ClassVar[int] = 0
    weight: ClassVar[float] = 1.0
    distributed = False  # the teacher's batch Dice is local; run it in one process

    def loss(self, outs: Sequence[torch.Tensor], batch: dict) -> torch.Tensor:
        total = super().loss(outs, batch)
        if self.teacher is None or self.old_heads == 0 or self.weight == 0:
            return total
        levels = len(batch["targets"])
        image = batch["image"]
        teacher = self.teacher.to(image.device)
        with torch.no_grad(), torch.autocast(image.device.type, dtype=outs[0].dtype,
                                             enabled=outs[0].dtype in (torch.float16, torch.bfloat16)):
            ref = teacher(image)
        ref = list(ref) if isinstance(ref, (list, tuple)) else [ref]
        soft = [torch.sigmoid(r[:, : self.old_heads].float()) for r in ref[:levels]]
        student = [o[:, : self.old_heads] for o in list(outs)[:levels]]
        every = torch.ones(image.shape[0], self.old_heads, dtype=torch.bool, device=image.device)
        distill = MultiTalentLoss(ds_weights=self.ds_weights[:levels])(student, soft, every)
        return total + self.weight * distill


def distillation_objective(teacher: torch.nn.Module, old_heads: int, weight: float) -> type[DistillationObjective]:
    """:class:`DistillationObjective` bound to a frozen ``teacher`` (a class, as the training core expects)."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return type("BoundDistillationObjective", (DistillationObjective,),
                {"teacher": teacher, "old_heads": int(old_heads), "weight": float(weight)})


def _teacher(ckpt: Checkpoint, plans: Plans, old_heads: int, deep_supervision: bool) -> MultiHeadNet:
    net = create_model(**ckpt.model_config, plans=plans, num_heads=old_heads, deep_supervision=deep_supervision)
    net.load_state_dict(ckpt.state_dict)
    return net


def _same_union(folder: Path, registry: HeadRegistry, plans: Plans) -> bool:
    """``folder`` is a finished union folder of this extension (a resumed run reuses it)."""
    if not all((folder / n).is_file() for n in ("plans.json", "heads.json", "cases.json", "splits.json")):
        return False
    pre = Preprocessed.open(folder)
    return pre.registry.to_dict() == registry.to_dict() and pre.plans.to_dict() == plans.to_dict()


UNION_WAIT_S = 6 * 3600.0  # how long other torchrun ranks wait for rank 0's preprocessing


def _wait_for_union(union: Path, registry: HeadRegistry, plans: Plans, timeout_s: float = UNION_WAIT_S) -> None:
    """Block until rank 0 has renamed the finished union folder into place (the rename is atomic)."""
    import time

    start = time.monotonic()
    while not _same_union(union, registry, plans):
        if time.monotonic() - start > timeout_s:
            raise UserInputError(f"{union}: rank 0 did not finish preprocessing the added datasets within "
                                 f"{timeout_s / 3600:.0f} h; see rank 0's error, or give the union folder of an "
                                 "earlier extension with --preprocessed-output.")
        time.sleep(5.0)


def extend(model: str | os.PathLike, manifest: str | os.PathLike, out: str | os.PathLike, cfg: ExtendConfig,
           preprocessed: str | os.PathLike | None = None) -> Path:
    """Add the datasets of ``manifest`` (raw nnU-Net format) to the model ``model`` (run folder or checkpoint)
    and train the extended network into ``out``; returns its ``checkpoint_final.pt``.

    The union's preprocessed folder is ``preprocessed`` (default ``out/preprocessed``)."""
    out = Path(out)
    ckpt = load_checkpoint(model)
    if ckpt.config.get("objective", "multitalent") != "multitalent":
        raise UserInputError(f"{ckpt.path}: a {ckpt.config.get('objective')} model has no sigmoid heads to keep; "
                             "extend a MultiTalent model.")
    adopt_network(cfg, dict(ckpt.model_config), ckpt.path)
    plans = Plans.from_dict(ckpt.plans)
    base_registry = HeadRegistry.from_dict(ckpt.heads)
    collection = load_manifest(manifest)
    registry = union_registry(base_registry, build_registry(collection), manifest)
    check_modality(collection)
    records = list_cases(collection)
    base_pre = None if cfg.without_original_data else _base_preprocessed(ckpt, plans, base_registry, cfg)
    if base_pre is not None:
        known = {c["case"] for c in base_pre.cases}
        clash = sorted(r.case for r in records if r.case in known)
        if clash:
            raise UserInputError(f"{manifest}: case id(s) {clash[:3]} already exist in the base collection "
                                 f"({base_pre.root}); case ids must be unique across the union.")
    if not cfg.resume and (out / "checkpoint_latest.pt").exists():
        raise UserInputError(f"{out}: already holds a training run; pass --resume to continue it or choose "
                             "another output folder.")
    union = Path(preprocessed) if preprocessed else out / "preprocessed"
    created = not out.exists()
    try:
        if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 preprocesses, the others wait for it
            _wait_for_union(union, registry, plans)
        elif not _same_union(union, registry, plans):
            if union.exists() and any(union.iterdir()):
                raise UserInputError(f"{union}: holds something other than this extension's preprocessed data; "
                                     "remove it or choose another output folder.")
            log.info("extend: preprocessing %d case(s) of %s with the base plans into %s", len(records),
                     [d.id for d in collection.datasets], union)
            build_union(base_pre, plans, registry, collection, records, union, cfg.preprocess_workers,
                        progress=not cfg.quiet)
        if cfg.batch_size == 0:
            cfg.batch_size = plans.batch_size
        old = len(base_registry)

        def init(net: torch.nn.Module) -> None:
            load_extended(net, ckpt.state_dict, old, ckpt.path)

        objective = None
        if cfg.without_original_data:
            objective = distillation_objective(_teacher(ckpt, plans, old, cfg.deep_supervision), old,
                                               cfg.distill_weight)
        provenance = {"base_model": ckpt.path, "base_heads": old,
                      "added_datasets": [d.id for d in collection.datasets],
                      "manifest": str(Path(manifest).resolve()),
                      "original_data": not cfg.without_original_data,
                      "base_preprocessed": str(base_pre.root.resolve()) if base_pre else None}
        return train(union, out, cfg, phases=finetune_phases(cfg), init_fn=init, objective=objective,
                     extra_meta={"pretrained": ckpt.path, "extension": provenance})
    except UserInputError:
        if created and out.is_dir() and not (out / "checkpoint_latest.pt").exists():
            shutil.rmtree(out, ignore_errors=True)  # a refused extension leaves no folder behind
        raise


make_callable(__name__)  # ``mt.extend(...)`` also after ``import multitalent.extend``
