"""The checkpoint record: one typed structure, the config stored once, one format version."""

from __future__ import annotations

import pytest
import torch

from multitalent.errors import UserInputError
from multitalent.training.checkpoint import FORMAT, Checkpoint, load_checkpoint, save_checkpoint


def record() -> Checkpoint:
    return Checkpoint(model_config={"name": "plain_unet", "base_features": 4}, state_dict={"w": torch.ones(2)},
                      plans={"spacing": [1, 1, 1]}, heads={"heads": []},
                      config={"objective": "multitalent", "lr": 0.01},
                      run={"batch_size": 2, "world_size": 1}, iteration=20, epoch=2, phase=0)


def test_save_and_load_give_back_the_record(tmp_path):
    path = tmp_path / "c.pt"
    record().save(path)
    raw = torch.load(path, weights_only=False)
    assert raw["format"] == FORMAT and "train_config" not in raw and "meta" not in raw  # the config once
    assert "config" not in raw["run"]
    back = Checkpoint.load(path)
    assert back.path == str(path) and back.config == record().config and back.run == record().run
    assert back.iteration == 20 and torch.equal(back.state_dict["w"], torch.ones(2))
    assert back.payload() == {**record().payload(), "state_dict": back.state_dict}


def test_format_1_files_are_read_and_other_versions_refused(tmp_path):
    old = {k: v for k, v in record().payload().items() if k not in ("config", "run")}
    old.update(format="multitalent-checkpoint/1", train_config={"objective": "merged_softmax"},
               meta={"config": {"objective": "merged_softmax"}, "world_size": 2})
    torch.save(old, tmp_path / "v1.pt")
    v1 = load_checkpoint(tmp_path / "v1.pt")
    assert v1.config == {"objective": "merged_softmax"} and v1.run == {"world_size": 2}
    torch.save({**record().payload(), "format": "multitalent-checkpoint/3"}, tmp_path / "v3.pt")
    with pytest.raises(UserInputError, match="format version 3.*reads versions 1-2"):
        load_checkpoint(tmp_path / "v3.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(UserInputError, match="not a multitalent checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    save_checkpoint(tmp_path / "partial.pt", {"state_dict": {}})
    with pytest.raises(UserInputError, match="lacks 'model_config'"):
        load_checkpoint(tmp_path / "partial.pt")
