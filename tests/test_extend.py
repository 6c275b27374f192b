"""``multitalent extend``: a trained model keeps its heads and weights, gains the new datasets' heads, trains on
the union (or, without the original data, with distillation), and refuses data its plans cannot serve."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from multitalent.cli import main
from multitalent.errors import UserInputError
from multitalent.extend import DistillationObjective, distillation_objective, extend, load_extended
from multitalent.loss import deep_supervision_weights
from multitalent.models import create_model
from multitalent.preprocessing.pipeline import Preprocessed, run_preprocessing
from multitalent.registry import HeadRegistry
from multitalent.training import loop
from multitalent.training.checkpoint import load_checkpoint
from multitalent.training.config import ExtendConfig, TrainConfig
from tests.helpers import blob_case, build_collection, write_dataset

COMMON = dict(iterations_per_epoch=2, val_iterations=0, num_workers=0, quiet=True, fold="all",
              final_validation=False)


def _new_dataset(root: Path, number: int = 3, name: str = "Kidney", shift: float = 0.0, channel: str = "CT",
                 prefix: str = "kidney") -> Path:
    """A raw dataset to add (one class, 2 cases) and its manifest; ``shift`` is added to every intensity."""
    rng = np.random.default_rng(number)
    cases = {}
    for i in range(2):
        img, seg = blob_case(rng, values=(1,))
        cases[f"{prefix}_{i}"] = (img + shift, seg)
    folder = write_dataset(root, number, name, {"kidney": 1}, cases)
    if channel != "CT":
        dj = json.loads((folder / "dataset.json").read_text())
        dj["channel_names"] = {"0": channel}
        (folder / "dataset.json").write_text(json.dumps(dj))
    manifest = root / "new.json"
    manifest.write_text(json.dumps({"datasets": [{"path": folder.name}]}))
    return manifest


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny MultiTalent model trained on the tiny collection (liver with tumour regions, spleen)."""
    root = tmp_path_factory.mktemp("extend_base")
    pre = run_preprocessing(build_collection(root / "raw"), root / "pre", preset="small", spacing=(2.0, 2.0, 2.0),
                            patch_size=(16, 32, 32), workers=1, progress=False)
    final = loop.train(pre, root / "run", TrainConfig(epochs=1, base_features=4, n_stages=3, **COMMON))
    return root / "run", final


def _cfg(**kw) -> ExtendConfig:
    return ExtendConfig(**{**COMMON, "epochs": 0, "head_warmup_epochs": 1, "full_warmup_epochs": 0, **kw})


def test_old_heads_keep_their_order_and_weights_and_new_heads_start_at_the_prior(base):
    _, final = base
    ckpt = load_checkpoint(final)
    old = HeadRegistry.from_dict(ckpt.heads)
    from multitalent.preprocessing.plans import Plans

    net = create_model(**ckpt.model_config, plans=Plans.from_dict(ckpt.plans), num_heads=len(old) + 2)
    from multitalent.models import init_head_bias

    init_head_bias(net, 0.01)
    load_extended(net, ckpt.state_dict, len(old), "base")
    state = net.state_dict()
    for key, value in ckpt.state_dict.items():
        if ".seg_layers." in key:
            assert torch.equal(state[key][: len(old)], value), key
            if key.endswith("bias"):
                assert torch.allclose(state[key][len(old):], torch.full((2,), math.log(0.01 / 0.99)))
        else:
            assert torch.equal(state[key], value), key


def test_extend_adds_the_new_heads_after_the_old_ones_and_records_the_provenance(base, tmp_path):
    run, final = base
    manifest = _new_dataset(tmp_path / "new")
    ckpt = load_checkpoint(final)
    out = extend(run, manifest, tmp_path / "ext", _cfg())
    ext = load_checkpoint(out)
    registry = HeadRegistry.from_dict(ext.heads)
    old = HeadRegistry.from_dict(ckpt.heads)
    assert registry.ids == old.ids + ["D003_kidney"]
    assert HeadRegistry.load(tmp_path / "ext" / "heads.json").ids == registry.ids
    # the head warm-up trains only the output convolutions: the backbone is the base model's
    for key, value in ckpt.state_dict.items():
        if ".seg_layers." not in key:
            assert torch.equal(ext.state_dict[key], value), key
    record = json.loads((tmp_path / "ext" / "config.json").read_text())
    for where in (record, ext.run):
        prov = where["extension"]
        assert prov["added_datasets"] == ["D003"] and prov["base_heads"] == len(old) and prov["original_data"]
        assert Path(prov["base_model"]) == Path(ckpt.path)
    # trained on the union: the base collection's cases are linked, the new ones preprocessed with its plans
    union = Preprocessed.open(tmp_path / "ext" / "preprocessed")
    base_pre = Preprocessed.open(ckpt.run["preprocessed"])
    assert {c["dataset"] for c in union.cases} == {"D001", "D002", "D003"}
    assert union.plans.to_dict() == base_pre.plans.to_dict()
    assert set(record["train_cases"]) == {c["case"] for c in union.cases}
    for linked in ("cases/liver_0.npz", "unpacked/liver_0_image.npy"):  # the base run's arrays are shared
        assert (tmp_path / "ext" / "preprocessed" / linked).resolve() == (base_pre.root / linked).resolve()


@pytest.mark.slow
def test_predict_with_the_extended_model_writes_old_and_new_label_maps(base, tmp_path):
    run, _ = base
    manifest = _new_dataset(tmp_path / "new")
    main(["-q", "extend", "-m", str(run), str(manifest), "-o", str(tmp_path / "ext"), "--epochs", "1",
          "--head-warmup-epochs", "1", "--full-warmup-epochs", "0", "--iterations-per-epoch", "2",
          "--val-iterations", "0", "--num-workers", "0", "--fold", "all", "--no-final-validation"])
    scan = tmp_path / "new" / "Dataset003_Kidney" / "imagesTr" / "kidney_0_0000.nii.gz"
    assert main(["-q", "predict", "-m", str(tmp_path / "ext"), "-i", str(scan), "-o", str(tmp_path / "pred")]) == 0
    written = sorted(p.name for p in (tmp_path / "pred" / "kidney_0").glob("*.nii.gz"))
    assert written == ["D001.nii.gz", "D002.nii.gz", "D003.nii.gz"]
    assert HeadRegistry.load(tmp_path / "pred" / "heads.json").ids[-1] == "D003_kidney"


def test_without_the_original_data_only_new_cases_train_and_the_base_model_is_the_teacher(base, tmp_path):
    run, final = base
    manifest = _new_dataset(tmp_path / "new")
    out = extend(run, manifest, tmp_path / "ext", _cfg(without_original_data=True, base_preprocessed="/nowhere"))
    record = json.loads((tmp_path / "ext" / "config.json").read_text())
    assert record["train_cases"] == ["kidney_0", "kidney_1"]
    assert record["extension"]["original_data"] is False and record["extension"]["base_preprocessed"] is None
    assert HeadRegistry.from_dict(load_checkpoint(out).heads).ids[-1] == "D003_kidney"


def test_distillation_trains_the_old_heads_toward_the_teacher():
    """No sample of the batch annotates the old heads: only the distillation term gives them a gradient."""
    from multitalent.preprocessing.plans import Plans

    plans = Plans(spacing=[2, 2, 2], patch_size=[16, 32, 32])
    torch.manual_seed(0)
    teacher = create_model("plain_unet", plans, 2, base_features=4, n_stages=3, deep_supervision=False)
    student = create_model("plain_unet", plans, 3, base_features=4, n_stages=3, deep_supervision=False)
    registry = HeadRegistry.from_dict({"format": "multitalent-heads/1", "datasets": {"D001": {}, "D003": {}},
                                       "heads": [{"id": "D001_a", "dataset": "D001", "name": "a", "labels": [1]},
                                                 {"id": "D001_b", "dataset": "D001", "name": "b", "labels": [2]},
                                                 {"id": "D003_k", "dataset": "D003", "name": "k", "labels": [1]}]})
    image = torch.randn(2, 1, 16, 32, 32)
    batch = {"image": image, "pairs": torch.tensor([[0, 2], [1, 2]]),
             "targets": [(torch.rand(2, 16, 32, 32) > 0.7).float()]}

    def old_head_grad(weight: float) -> float:
        student.zero_grad()
        objective = distillation_objective(teacher, 2, weight)(registry, deep_supervision_weights(1))
        objective.loss([student(image)], batch).backward()
        return float(student.backbone.decoder.seg_layers[-1].weight.grad[:2].abs().sum())

    assert issubclass(distillation_objective(teacher, 2, 1.0), DistillationObjective)
    assert old_head_grad(0.0) == 0.0
    assert old_head_grad(1.0) > 0.0
    assert not any(p.requires_grad for p in teacher.parameters())


def _refused(argv: list, capsys) -> str:
    assert main(["-q", *map(str, argv)]) == 2
    return capsys.readouterr().err


def test_refusals_name_the_file_and_leave_no_folder(base, tmp_path, capsys):
    run, _ = base
    out = tmp_path / "ext"
    cases = {
        "clash": (_new_dataset(tmp_path / "clash", number=2, name="Spleen2"), "already belong to the base model"),
        "mr": (_new_dataset(tmp_path / "mr", channel="T2"), "is not CT"),
        "shifted": (_new_dataset(tmp_path / "shifted", shift=1024), "not in Hounsfield units"),
        "case": (_new_dataset(tmp_path / "case", prefix="liver"), "already exist in the base collection"),
    }
    for name, (manifest, message) in cases.items():
        err = _refused(["extend", "-m", run, manifest, "-o", out, "--epochs", "0"], capsys)
        assert message in err, (name, err)
        assert not out.exists(), name
    err = _refused(["extend", "-m", run, _new_dataset(tmp_path / "ok"), "-o", out, "--base-preprocessed",
                    tmp_path / "missing"], capsys)
    assert "--without-original-data" in err and not out.exists()


def test_a_merged_softmax_model_cannot_be_extended(base, tmp_path):
    run, final = base
    ckpt = load_checkpoint(final)
    ckpt.config = {**ckpt.config, "objective": "merged_softmax"}
    ckpt.save(tmp_path / "merged.pt")
    with pytest.raises(UserInputError, match="no sigmoid heads"):
        extend(tmp_path / "merged.pt", _new_dataset(tmp_path / "new"), tmp_path / "ext", _cfg())


def test_an_extension_resumes_on_its_preprocessed_union_and_is_not_started_twice(base, tmp_path):
    run, _ = base
    manifest = _new_dataset(tmp_path / "new")
    extend(run, manifest, tmp_path / "ext", _cfg())
    union = tmp_path / "ext" / "preprocessed" / "heads.json"
    stamp = union.stat().st_mtime_ns
    with pytest.raises(UserInputError, match="--resume"):
        extend(run, manifest, tmp_path / "ext", _cfg())
    final = load_checkpoint(extend(run, manifest, tmp_path / "ext", _cfg(epochs=1, resume=True)))
    assert final.iteration == 2 * COMMON["iterations_per_epoch"]  # head warm-up, then one poly epoch
    assert union.stat().st_mtime_ns == stamp  # the union folder was reused, not preprocessed again


def test_a_model_trained_on_some_of_its_folders_datasets_needs_the_distillation_variant(base, tmp_path):
    _, final = base
    pre = load_checkpoint(final).run["preprocessed"]
    sub = loop.train(pre, tmp_path / "liver_only", TrainConfig(epochs=1, base_features=4, n_stages=3, datasets=["D001"],
                                                              **COMMON))
    manifest = _new_dataset(tmp_path / "new")
    with pytest.raises(UserInputError, match="other heads than the base model"):
        extend(sub, manifest, tmp_path / "ext", _cfg())
    assert not (tmp_path / "ext").exists()
    out = extend(sub, manifest, tmp_path / "ext", _cfg(without_original_data=True))
    assert HeadRegistry.from_dict(load_checkpoint(out).heads).ids == ["D001_liver", "D001_tumor", "D003_kidney"]
