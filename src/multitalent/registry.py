"""Datasets, the collection manifest, the head registry and annotated masks (pure data, no torch).

A *head* is one (dataset, class) pair and one output channel of the network. Heads of different
datasets are always distinct, even when they share a name. A head is a *region*: the set of label
values of its dataset's label map that together form it (nnU-Net's region labels such as
``"liver": [1, 2]`` express nested structures; plain labels are one-value regions).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from multitalent.errors import UserInputError

DATASET_DIR_RE = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_\-]+)$")
SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass(frozen=True)
class DatasetSpec:
    """One partially-labelled source dataset in nnU-Net raw format."""

    id: str  # "D003"
    name: str  # "Liver"
    path: Path
    labels: dict[str, tuple[int, ...]]  # class name -> label values forming it (background excluded)
    regions_class_order: tuple[int, ...] | None
    file_ending: str
    num_training: int

    @property
    def is_region_based(self) -> bool:
        return self.regions_class_order is not None

    def image_path(self, case: str, split: str = "Tr") -> Path:
        return self.path / f"images{split}" / f"{case}_0000{self.file_ending}"

    def label_path(self, case: str, split: str = "Tr") -> Path:
        return self.path / f"labels{split}" / f"{case}{self.file_ending}"

    def cases(self, split: str = "Tr") -> list[str]:
        """Case ids that have a label file in ``labels{split}`` (sorted)."""
        folder = self.path / f"labels{split}"
        if not folder.is_dir():
            return []
        end = self.file_ending
        names = [p.name for p in folder.iterdir() if p.name.endswith(end) and not p.name.startswith(".")]
        return sorted(n[: -len(end)] for n in names)

    @property
    def declared_values(self) -> set[int]:
        """All label values the dataset.json declares, background (0) included."""
        values = {0}
        for v in self.labels.values():
            values.update(v)
        return values


@dataclass(frozen=True)
class Head:
    """One output channel: a (dataset, class) pair and the label values forming it."""

    id: str  # "D003_liver"
    dataset: str  # "D003"
    name: str  # "liver"
    labels: tuple[int, ...]
    lesion: bool = False

    def to_dict(self) -> dict:
        return {"id": self.id, "dataset": self.dataset, "name": self.name, "labels": list(self.labels),
                "lesion": self.lesion}


LESION_WORDS = ("tumor", "tumour", "lesion", "cancer", "cyst", "metasta", "nodule")


def is_lesion_name(name: str) -> bool:
    low = name.lower()
    return any(w in low for w in LESION_WORDS)


def _err(path: os.PathLike | str, msg: str) -> UserInputError:
    return UserInputError(f"{path}: {msg}")


def load_dataset(folder: str | os.PathLike, dataset_id: str | None = None) -> DatasetSpec:
    """Read and check ``folder/dataset.json`` of an nnU-Net raw dataset."""
    folder = Path(folder)
    if not folder.is_dir():
        raise _err(folder, "dataset folder not found; check the path in the manifest.")
    dj_path = folder / "dataset.json"
    if not dj_path.is_file():
        raise _err(dj_path, "missing; every dataset needs nnU-Net's dataset.json.")
    try:
        dj = json.loads(dj_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _err(dj_path, f"not valid JSON ({e}).") from None
    if not isinstance(dj, dict):
        raise _err(dj_path, "must hold a JSON object.")
    for key in ("channel_names", "labels", "file_ending"):
        if key not in dj:
            raise _err(dj_path, f"missing key '{key}'.")
    channels = dj["channel_names"]
    if not isinstance(channels, dict) or len(channels) != 1:
        raise _err(dj_path, "'channel_names' must map exactly one channel (CT), e.g. {\"0\": \"CT\"}.")
    ending = dj["file_ending"]
    if not isinstance(ending, str) or ending not in SUPPORTED_ENDINGS:
        raise _err(dj_path, f"'file_ending' is {ending!r}; use one of {', '.join(SUPPORTED_ENDINGS)}.")
    raw_labels = dj["labels"]
    if not isinstance(raw_labels, dict) or not raw_labels:
        raise _err(dj_path, "'labels' must be a non-empty object mapping class names to label values.")
    labels: dict[str, tuple[int, ...]] = {}
    any_region = False
    for name, value in raw_labels.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise _err(dj_path, f"label '{name}' must be a non-negative integer or a list of them, got {value!r}.")
        if isinstance(value, list):
            any_region = True
        if name.lower() == "background" or values == [0]:
            continue
        if 0 in values:
            raise _err(dj_path, f"label '{name}' includes the background value 0.")
        labels[name] = tuple(sorted(set(values)))
    if not labels:
        raise _err(dj_path, "'labels' declares no foreground class.")
    rco = dj.get("regions_class_order")
    if any_region:
        if rco is None:
            # nnU-Net requires it for regions; default to each region's largest value in declaration order.
            rco = [max(v) for v in labels.values()]
        if not isinstance(rco, list) or len(rco) != len(labels) or not all(isinstance(v, int) for v in rco):
            raise _err(dj_path, "'regions_class_order' must list one integer per foreground region.")
        rco = tuple(rco)
    else:
        rco = None
        values = [v[0] for v in labels.values()]
        if len(set(values)) != len(values):
            raise _err(dj_path, "two classes share one label value.")
    if dataset_id is None:
        m = DATASET_DIR_RE.match(folder.name)
        if not m:
            raise _err(folder, "folder name must look like DatasetNNN_Name (nnU-Net convention).")
        dataset_id = f"D{m.group(1)}"
    m = DATASET_DIR_RE.match(folder.name)
    name = m.group(2) if m else folder.name
    num = dj.get("numTraining", None)
    spec = DatasetSpec(id=dataset_id, name=name, path=folder, labels=labels, regions_class_order=rco,
                       file_ending=ending, num_training=int(num) if isinstance(num, int) else -1)
    if spec.num_training < 0:
        spec = DatasetSpec(**{**spec.__dict__, "num_training": len(spec.cases())})
    return spec


@dataclass
class Collection:
    """The datasets trained together, in manifest order."""

    datasets: list[DatasetSpec]
    manifest: Path | None = None

    def dataset(self, dataset_id: str) -> DatasetSpec:
        for d in self.datasets:
            if d.id == dataset_id:
                return d
        raise KeyError(dataset_id)

    def subset(self, ids: list[str]) -> Collection:
        return Collection([self.dataset(i) for i in ids], self.manifest)


def load_manifest(path: str | os.PathLike) -> Collection:
    """Read a collection manifest (JSON or YAML).

    Format: ``{"datasets": [{"path": "Dataset001_Liver"}, ...]}`` (paths relative to the manifest)
    or a plain list of paths. An entry may give its own ``"id"``.
    """
    path = Path(path)
    if not path.is_file():
        raise _err(path, "manifest not found.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the user's file
        raise _err(path, f"cannot parse the manifest ({type(e).__name__}: {str(e).splitlines()[0]}).") from None
    entries = data.get("datasets") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise _err(path, "must hold a non-empty list under key 'datasets'.")
    datasets: list[DatasetSpec] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or "path" not in entry:
            raise _err(path, f"datasets[{i}] must be a path or an object with key 'path'.")
        p = Path(entry["path"])
        if not p.is_absolute():
            p = path.parent / p
        if not p.is_dir():
            raise _err(path, f"datasets[{i}].path points to a missing folder: {p}")
        datasets.append(load_dataset(p, entry.get("id")))
    ids = [d.id for d in datasets]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise _err(path, f"dataset id(s) {sorted(dup)} appear twice; give each dataset a unique id.")
    return Collection(datasets, path)


@dataclass
class HeadRegistry:
    """The ordered list of all heads of a collection: channel order, names and write-back rules."""

    heads: list[Head]
    datasets: dict[str, dict] = field(default_factory=dict)  # id -> {name, regions_class_order, labels}

    def __post_init__(self) -> None:
        ids = [h.id for h in self.heads]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise UserInputError(f"duplicate head id(s) {dup}: head ids must be unique.")
        self._index = {h.id: i for i, h in enumerate(self.heads)}

    def __len__(self) -> int:
        return len(self.heads)

    @property
    def ids(self) -> list[str]:
        return [h.id for h in self.heads]

    @property
    def dataset_ids(self) -> list[str]:
        return list(self.datasets)

    def index(self, head_id: str) -> int:
        return self._index[head_id]

    def heads_of(self, dataset_id: str) -> list[Head]:
        return [h for h in self.heads if h.dataset == dataset_id]

    def indices_of(self, dataset_id: str) -> list[int]:
        return [i for i, h in enumerate(self.heads) if h.dataset == dataset_id]

    def annotated_mask(self, dataset_id: str) -> np.ndarray:
        """Boolean vector over heads: True where the head is annotated in ``dataset_id``."""
        return np.array([h.dataset == dataset_id for h in self.heads], dtype=bool)

    def to_dict(self) -> dict:
        return {"format": "multitalent-heads/1", "datasets": self.datasets,
                "heads": [h.to_dict() for h in self.heads]}

    @classmethod
    def from_dict(cls, d: dict) -> HeadRegistry:
        if not isinstance(d, dict) or d.get("format") != "multitalent-heads/1":
            raise UserInputError("not a multitalent head registry (missing format 'multitalent-heads/1').")
        heads = [Head(id=h["id"], dataset=h["dataset"], name=h["name"], labels=tuple(h["labels"]),
                      lesion=bool(h.get("lesion", False))) for h in d["heads"]]
        return cls(heads, dict(d["datasets"]))

    def save(self, path: str | os.PathLike) -> None:
        from multitalent.errors import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> HeadRegistry:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserInputError(f"{path}: cannot read the head registry ({e}).") from None
        except UserInputError as e:
            raise UserInputError(f"{path}: {e}") from None

    def subset(self, dataset_ids: list[str]) -> HeadRegistry:
        """The registry of only these datasets' heads (e.g. for a single-dataset baseline)."""
        return HeadRegistry([h for h in self.heads if h.dataset in dataset_ids],
                            {d: v for d, v in self.datasets.items() if d in dataset_ids})

    def select(self, datasets: list[str] | None = None, heads: list[str] | None = None) -> list[int]:
        """Indices of the heads chosen by dataset ids and/or head ids (all when both are None)."""
        chosen = list(range(len(self.heads)))
        if datasets:
            unknown = [d for d in datasets if d not in self.datasets]
            if unknown:
                raise UserInputError(f"unknown dataset(s) {unknown}; this model has {self.dataset_ids}.")
            chosen = [i for i in chosen if self.heads[i].dataset in datasets]
        if heads:
            unknown = [h for h in heads if h not in self._index]
            if unknown:
                raise UserInputError(f"unknown head(s) {unknown}; see heads.json for the valid ids.")
            chosen = [i for i in chosen if self.heads[i].id in heads]
        return chosen

    # --- label maps <-> per-head masks -------------------------------------------------------
    def targets(self, seg: np.ndarray, dataset_id: str) -> np.ndarray:
        """Binary masks (n_heads_of_dataset, *seg.shape) of ``dataset_id``'s heads from its label map."""
        heads = self.heads_of(dataset_id)
        return region_masks(seg, [h.labels for h in heads])

    def labelmap(self, masks: np.ndarray, dataset_id: str) -> np.ndarray:
        """Write per-head binary masks of one dataset back into that dataset's label values.

        Plain labels: each head's mask gets its value; regions: written in ``regions_class_order``
        (later regions overwrite earlier ones), as nnU-Net does.
        """
        heads = self.heads_of(dataset_id)
        info = self.datasets[dataset_id]
        out = np.zeros(masks.shape[1:], dtype=np.int16)
        rco = info.get("regions_class_order")
        values = list(rco) if rco else [h.labels[0] for h in heads]
        order = range(len(heads))
        if not rco:
            # plain labels do not overlap in the truth; write larger structures first so that
            # a voxel claimed by two heads keeps the smaller one (usually the lesion inside an organ)
            order = sorted(order, key=lambda i: -int(masks[i].sum()))
        for i in order:
            out[masks[i].astype(bool)] = values[i]
        return out


def region_masks(seg: np.ndarray, regions: list[tuple[int, ...]]) -> np.ndarray:
    """Stack of boolean masks, one per region (a tuple of label values), vectorised via a lookup table."""
    seg = np.asarray(seg)
    top = int(max([seg.max(initial=0)] + [max(r) for r in regions])) + 1
    lut = np.zeros((len(regions), top), dtype=bool)
    for i, r in enumerate(regions):
        lut[i, list(r)] = True
    return lut[:, seg.astype(np.intp, copy=False)]


def build_registry(collection: Collection) -> HeadRegistry:
    """One head per (dataset, class), in manifest order then dataset.json order."""
    heads: list[Head] = []
    datasets: dict[str, dict] = {}
    for d in collection.datasets:
        datasets[d.id] = {
            "name": d.name,
            "labels": {k: list(v) for k, v in d.labels.items()},
            "regions_class_order": list(d.regions_class_order) if d.regions_class_order else None,
            "file_ending": d.file_ending,
            "num_training": d.num_training,
        }
        named: dict[str, str] = {}
        for name, values in d.labels.items():
            safe = re.sub(r"[^A-Za-z0-9_\-]", "_", name)
            if safe in named:
                raise _err(d.path / "dataset.json", f"labels '{named[safe]}' and '{name}' both become head "
                           f"'{d.id}_{safe}'; rename one (head ids keep only letters, digits, _ and -).")
            named[safe] = name
            heads.append(Head(id=f"{d.id}_{safe}", dataset=d.id, name=name, labels=values,
                              lesion=is_lesion_name(name)))
    return HeadRegistry(heads, datasets)
