"""The final whole-scan validation (``multitalent.training.validation``) and ``checkpoint_best.pt``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from multitalent.errors import UserInputError
from multitalent.training import loop
from multitalent.training.checkpoint import load_checkpoint
from tests.helpers import small_cfg


@pytest.mark.slow  # trains 9 iterations, then predicts and evaluates the held-out scans
def test_best_checkpoint_and_final_validation_on_whole_scans(pre, tmp_path):
    """The held-out fold is predicted from its raw scans and evaluated: RUN/validation/summary.json with a
    Dice for every head of the validated datasets; checkpoint_best.pt is the epoch of the best moving average
    of the pseudo-Dice, and ``--checkpoint best`` finds it."""
    run = tmp_path / "run"
    loop.train(pre.root, run, small_cfg(fold="0", epochs=3))
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    ema = [r["ema_pseudo_dice"] for r in records]
    dice = [r["mean_pseudo_dice"] for r in records]
    assert ema[0] == pytest.approx(dice[0]) and ema[1] == pytest.approx(0.9 * ema[0] + 0.1 * dice[1])
    best = load_checkpoint(run, which="best")
    assert best.path.endswith("checkpoint_best.pt")
    assert best.epoch == int(np.argmax(ema)) + 1
    meta = json.loads((run / "config.json").read_text())
    val_ds = {c["dataset"] for c in pre.cases if c["case"] in meta["val_cases"]}
    summary = json.loads((run / "validation" / "summary.json").read_text())
    assert val_ds and set(summary["datasets"]) == val_ds
    for h in pre.registry.heads:
        if h.dataset in val_ds:
            assert summary["heads"][h.id]["dice_mean"] is not None, h.id
    assert (run / "validation" / "summary.md").is_file()
    pp = json.loads((run / "postprocessing.json").read_text())  # the largest-component decision per head
    assert set(pp["heads"]) == {h.id for h in pre.registry.heads if h.dataset in val_ds}
    assert all(isinstance(v["largest_component"], bool) for v in pp["heads"].values())
    for case in meta["val_cases"]:  # predicted in the scan's own geometry
        ds = next(c["dataset"] for c in pre.cases if c["case"] == case)
        assert (run / "validation" / "predictions" / case / f"{ds}.nii.gz").is_file()
    with pytest.raises(UserInputError, match="checkpoint_best.pt"):
        load_checkpoint(tmp_path, which="best")
