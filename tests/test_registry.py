"""The head registry: datasets, manifests, heads and label-map conversions (with a property test)."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multitalent.errors import UserInputError
from multitalent.registry import Head, HeadRegistry, build_registry, load_dataset, load_manifest, region_masks


def test_heads_from_plain_and_region_datasets(tiny_collection):
    reg = build_registry(load_manifest(tiny_collection))
    assert reg.ids == ["D001_liver", "D001_tumor", "D002_spleen"]
    liver, tumor, spleen = reg.heads
    assert liver.labels == (1, 2) and tumor.labels == (2,) and spleen.labels == (1,)
    assert tumor.lesion and not liver.lesion
    assert reg.datasets["D001"]["regions_class_order"] == [1, 2]
    assert reg.datasets["D002"]["regions_class_order"] is None
    assert reg.annotated_mask("D002").tolist() == [False, False, True]


def test_same_class_name_in_two_datasets_gives_distinct_heads(tmp_path, tiny_collection):
    m = json.loads(tiny_collection.read_text())
    reg = build_registry(load_manifest(tiny_collection))
    other = tiny_collection.parent / "Dataset001_Liver"
    m["datasets"].append({"path": str(other), "id": "D099"})
    tiny_collection.write_text(json.dumps(m))
    reg = build_registry(load_manifest(tiny_collection))
    assert "D001_liver" in reg.ids and "D099_liver" in reg.ids
    assert reg.index("D099_liver") != reg.index("D001_liver")


def test_registry_round_trip(tmp_path, tiny_collection):
    reg = build_registry(load_manifest(tiny_collection))
    reg.save(tmp_path / "heads.json")
    again = HeadRegistry.load(tmp_path / "heads.json")
    assert again.to_dict() == reg.to_dict()


def test_region_targets_and_write_back(tiny_collection):
    reg = build_registry(load_manifest(tiny_collection))
    seg = np.array([0, 1, 2, 2, 1, 0])
    masks = reg.targets(seg, "D001")
    assert masks[0].tolist() == [False, True, True, True, True, False]  # liver includes the tumour
    assert masks[1].tolist() == [False, False, True, True, False, False]
    assert reg.labelmap(masks, "D001").tolist() == seg.tolist()
    assert reg.labelmap(reg.targets(seg == 1, "D002"), "D002").tolist() == (seg == 1).astype(int).tolist()


def test_region_masks_lookup():
    seg = np.array([[0, 3], [5, 3]])
    out = region_masks(seg, [(3,), (3, 5), (7,)])
    assert out.shape == (3, 2, 2)
    assert out[1].tolist() == [[False, True], [True, True]]
    assert not out[2].any()


def test_select_and_subset(tiny_collection):
    reg = build_registry(load_manifest(tiny_collection))
    assert reg.select(datasets=["D002"]) == [2]
    assert reg.select(heads=["D001_tumor"]) == [1]
    with pytest.raises(UserInputError, match="unknown dataset"):
        reg.select(datasets=["D042"])
    sub = reg.subset(["D002"])
    assert sub.ids == ["D002_spleen"] and sub.dataset_ids == ["D002"]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("labels"), "missing key 'labels'"),
    (lambda d: d.pop("channel_names"), "missing key 'channel_names'"),
    (lambda d: d.pop("file_ending"), "missing key 'file_ending'"),
    (lambda d: d.update(file_ending=".png"), "'file_ending'"),
    (lambda d: d.update(labels={"background": 0}), "no foreground class"),
    (lambda d: d.update(labels={"a": 1, "b": 1}), "share one label value"),
    (lambda d: d.update(labels={"a": "x"}), "non-negative integer"),
    (lambda d: d.update(channel_names={"0": "CT", "1": "PET"}), "exactly one channel"),
])
def test_dataset_json_errors_name_the_file(tiny_collection, mutate, message):
    folder = tiny_collection.parent / "Dataset002_Spleen"
    dj = json.loads((folder / "dataset.json").read_text())
    mutate(dj)
    (folder / "dataset.json").write_text(json.dumps(dj))
    with pytest.raises(UserInputError, match=message) as e:
        load_dataset(folder)
    assert "dataset.json" in str(e.value)


def test_manifest_errors(tmp_path, tiny_collection):
    with pytest.raises(UserInputError, match="manifest not found"):
        load_manifest(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserInputError, match="bad.json: cannot parse"):
        load_manifest(bad)
    bad.write_text(json.dumps({"datasets": [{"path": "Dataset777_Missing"}]}))
    with pytest.raises(UserInputError, match="missing folder"):
        load_manifest(bad)
    bad.write_text(json.dumps({"datasets": []}))
    with pytest.raises(UserInputError, match="non-empty list"):
        load_manifest(bad)
    dup = tiny_collection.parent / "dup.json"
    dup.write_text(json.dumps({"datasets": ["Dataset001_Liver", "Dataset001_Liver"]}))
    with pytest.raises(UserInputError, match="appear twice"):
        load_manifest(dup)


def test_yaml_manifest(tiny_collection):
    y = tiny_collection.parent / "collection.yaml"
    y.write_text("datasets:\n  - path: Dataset001_Liver\n  - Dataset002_Spleen\n")
    assert [d.id for d in load_manifest(y).datasets] == ["D001", "D002"]


def test_duplicate_head_ids_are_refused():
    h = Head("D001_a", "D001", "a", (1,))
    with pytest.raises(UserInputError, match="duplicate head id"):
        HeadRegistry([h, h], {"D001": {}})


# --- properties (hypothesis) ------------------------------------------------------------------------
@st.composite
def region_datasets(draw):
    """A dataset whose label values 1..n form a forest (each value's parent is a smaller value or none); each
    value v is a head whose region is v and its descendants (nnU-Net regions written in increasing order),
    or, with ``plain``, independent single-value labels. Returns (registry, dataset id, label map)."""
    n = draw(st.integers(1, 6))
    plain = draw(st.booleans())
    parents = [None] + [None if plain else draw(st.sampled_from([0, *range(1, v)])) for v in range(1, n + 1)]

    def region(v: int) -> tuple[int, ...]:
        out, changed = {v}, True
        while changed:
            new = {u for u in range(1, n + 1) if parents[u] in out} - out
            changed = bool(new)
            out |= new
        return tuple(sorted(out))

    heads = [Head(f"D007_c{v}", "D007", f"c{v}", region(v)) for v in range(1, n + 1)]
    other = [Head("D001_liver", "D001", "liver", (1, 2)), Head("D001_tumor", "D001", "tumor", (2,))]
    datasets = {"D001": {"name": "Liver", "labels": {"liver": [1, 2], "tumor": [2]},
                         "regions_class_order": [1, 2]},
                "D007": {"name": "Random", "labels": {h.name: list(h.labels) for h in heads},
                         "regions_class_order": None if plain else list(range(1, n + 1))}}
    shape = draw(st.tuples(*[st.integers(1, 5)] * 3))
    seed = draw(st.integers(0, 2**16))
    seg = np.random.default_rng(seed).integers(0, n + 1, size=shape).astype(np.int16)
    order = draw(st.permutations(range(2)))
    reg_heads = [other, heads]
    return HeadRegistry(reg_heads[order[0]] + reg_heads[order[1]], datasets), "D007", seg


@settings(max_examples=60, deadline=None)
@given(region_datasets())
def test_region_targets_and_labelmap_round_trip(case):
    registry, dataset, seg = case
    masks = registry.targets(seg, dataset)
    assert masks.shape == (len(registry.heads_of(dataset)), *seg.shape)
    for h, m in zip(registry.heads_of(dataset), masks):
        assert np.array_equal(m, np.isin(seg, h.labels))
    assert np.array_equal(registry.labelmap(masks, dataset), seg)
