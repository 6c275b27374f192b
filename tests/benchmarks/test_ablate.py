"""``benchmarks/ablate.py``: MultiTalent's ablations against MultiTalent as in the paper at the same budget -- the
option parsing, the sizes it trains and, at the reduced (tiny) sizes, the whole invocation: the runs, the report
and its evidence."""

from __future__ import annotations

import importlib
import sys
import tarfile
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def ablate():
    if str(BENCHMARKS) not in sys.path:  # as the script itself does; the training workers inherit it
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("ablate")


def test_an_ablation_sets_typed_train_config_fields_and_refuses_anything_else(ablate):
    assert ablate.parse_ablation("width16:base_features=16") == ("width16", (("base_features", 16),))
    assert ablate.parse_ablation("mix:sampling=uniform,head_prior=0.1,augment=off") == (
        "mix", (("sampling", "uniform"), ("head_prior", 0.1), ("augment", False)))
    for bad, why in (("width16", "NAME:FIELD=VALUE"), ("w:base_features", "not a TrainConfig field"),
                     ("w:widths=3", "not a TrainConfig field"), ("w:epochs=3", "the budget"),
                     ("w:base_features=wide", "is not of type int"),
                     ("w:sampling=random", "is not one of inv_sqrt, uniform, dataset_balanced"),
                     ("a-b:lr=1", "NAME:FIELD=VALUE"), ("w:augment=maybe", "is not of type bool")):
        with pytest.raises(ValueError, match=why):
            ablate.parse_ablation(bad)


def test_the_command_line_refuses_a_name_twice_or_the_reference_s(ablate, tmp_path, capsys):
    for argv, msg in ((["--ablation", "w:base_features=6", "--ablation", "w:base_features=8"], "'w' is named twice"),
                      (["--ablation", "mt_2n:base_features=6"], "the reference's name"),
                      (["--ablation", "w:sampling=random"], "is not one of"), ([], "at least one --ablation"),
                      (["--ablation", "w:base_features=6", "--singles", "v"], "'v' is not mt_2n or an --ablation")):
        with pytest.raises(SystemExit) as exc:
            ablate.main(["--out", str(tmp_path / "out"), *argv])
        assert exc.value.code == 2 and msg in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_every_ablation_gets_the_budget_of_the_reference(ablate):
    import repro

    full = ablate.ablation_sizes(repro.FULL, [("width16", (("base_features", 16),))])
    # the full sizes' own mt_2n (160 epochs, the paper's 2N) is the reference and stays first
    assert full.ablations[0] == ("mt_2n", (("epochs", 160),))
    assert full.ablations[-1] == ("width16", (("epochs", 160), ("base_features", 16)))
    assert ablate.reference_epochs(repro.FULL) == 160
    # sizes without an mt_2n: the reference is added at 2N
    tiny = ablate.ablation_sizes(repro.TINY, [("w6", (("base_features", 6),))])
    assert tiny.ablations[0] == ("mt_2n", (("epochs", 2 * repro.TINY.single_epochs),))
    assert [n for n, _ in tiny.ablations] == ["mt_2n", "width16", "w6"]
    rep = repro.Reproduction(tiny, Path("/nonexistent"))
    rep.dataset_ids = ["D005", "D006", "D007"]
    jobs = rep.training_jobs()
    assert jobs["ablation_w6"]["epochs"] == jobs["ablation_mt_2n"]["epochs"] == 2
    assert jobs["ablation_w6"]["kw"] == {"arch": "plain_unet", "base_features": 6}
    assert jobs["ablation_mt_2n"]["kw"] == {"arch": "plain_unet"}


def test_the_single_dataset_models_of_an_ablation_get_its_change_and_half_its_budget(ablate):
    import dataclasses

    import repro

    full = ablate.ablation_sizes(repro.FULL, [("width16", (("base_features", 16),)), ("b4", (("batch_size", 4),))],
                                 ["mt_2n", "width16"])
    # after every ablation (a folder of the ablations alone accepts them), one per dataset, N = 80 epochs = 2N / 2;
    # the reference's are the reproduction's own single_<ds>, already in its table
    assert [n for n, _ in full.ablations] == ["mt_2n", "width16", "b4"] + [
        f"width16_single_{ds}" for ds in repro.FULL.datasets]
    assert dict(full.ablations)["width16_single_D003"] == (("epochs", 80), ("datasets", ("D003",)),
                                                            ("base_features", 16))
    assert ablate.singles_key("mt_2n") == "single" and ablate.singles_key("width16") == "ablation_width16_single"
    tiny = ablate.ablation_sizes(repro.TINY, [("w6", (("base_features", 6),))], ["mt_2n", "w6"])
    rep = repro.Reproduction(tiny, Path("/nonexistent"))
    rep.dataset_ids = ["D005", "D006", "D007"]
    jobs = rep.training_jobs()
    assert jobs["ablation_w6_single_D006"]["kw"] == {"arch": "plain_unet", "datasets": ["D006"], "base_features": 6}
    assert jobs["ablation_w6_single_D006"]["epochs"] == jobs["single_D006"]["epochs"] == repro.TINY.single_epochs
    assert jobs["single_D006"]["kw"] == {"arch": "plain_unet", "datasets": ["D006"]}
    with pytest.raises(ValueError, match="need sizes that name their datasets"):
        ablate.ablation_sizes(repro.QUICK, [("w6", (("base_features", 6),))], ["w6"])
    # the report calls them N and the reference 2N: refused when the sizes say otherwise
    odd = dataclasses.replace(repro.TINY, ablations=(("mt_2n", (("epochs", 3),)),))
    with pytest.raises(ValueError, match="not 2N"):
        ablate.ablation_sizes(odd, [("w6", (("base_features", 6),))], ["mt_2n"])
    assert ablate.ablation_sizes(odd, [("w6", (("base_features", 6),))]).ablations[0] == ("mt_2n", (("epochs", 3),))


def test_a_budget_factor_multiplies_the_reference_the_ablations_and_the_single_models(ablate, tmp_path, capsys):
    import repro

    twice = ablate.scaled_budget(repro.FULL, 2)
    assert ablate.reference_epochs(twice) == 320 and twice.single_epochs == 160
    sizes = ablate.ablation_sizes(twice, [("excl", (("head_prior", 0.1),))], ["mt_2n", "excl"])
    assert dict(sizes.ablations)["excl"] == (("epochs", 320), ("head_prior", 0.1))
    assert dict(sizes.ablations)["excl_single_D001"][0] == ("epochs", 160)  # the paper's rule kept: 2N against N
    assert ablate.scaled_budget(repro.FULL, 1) is repro.FULL
    tiny = ablate.scaled_budget(repro.TINY, 3)  # sizes without an mt_2n get one at 3 x 2N
    assert tiny.ablations[0] == ("mt_2n", (("epochs", 6 * repro.TINY.single_epochs),))
    assert dict(tiny.ablations)["width16"] == (("base_features", 8),)  # an ablation without its own budget
    with pytest.raises(ValueError, match="not a budget factor"):
        ablate.scaled_budget(repro.FULL, 0)
    with pytest.raises(SystemExit) as exc:
        ablate.main(["--out", str(tmp_path / "out"), "--ablation", "w:base_features=6", "--budget-factor", "0"])
    assert exc.value.code == 2 and "--budget-factor: 0 is not a budget factor" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _summary(dice: dict[str, dict[str, float]]) -> dict:
    """An evaluation summary of two datasets' heads: {case: {head: Dice}} -> the fields the tests read."""
    heads: dict[str, list[float]] = {}
    cases: dict[str, dict] = {}
    for case, hs in dice.items():
        ds = next(iter(hs)).split("_")[0]
        cases.setdefault(ds, {})[case] = {h: {"dice": v} for h, v in hs.items()}
        for h, v in hs.items():
            heads.setdefault(h, []).append(v)
    return {"heads": {h: {"dice_mean": sum(v) / len(v), "dataset": h.split("_")[0]} for h, v in heads.items()},
            "cases": cases}


def test_the_gap_test_pairs_multitalent_minus_singles_with_and_without_the_change(ablate):
    heads = ["D1_a", "D1_b", "D2_c"]
    cases = {"x1": ("D1_a", "D1_b"), "x2": ("D1_a", "D1_b"), "y1": ("D2_c",), "y2": ("D2_c",)}

    def summ(v: float, bump: dict[str, float] | None = None) -> dict:
        return _summary({c: {h: v + (bump or {}).get(h, 0.0) + 0.01 * i for h in hs}
                         for i, (c, hs) in enumerate(cases.items())})

    mt_ref, single_ref = summ(0.5), summ(0.6)  # the reference's gap: -0.1 everywhere
    mt, single = summ(0.7, {"D1_b": 0.05, "D2_c": 0.02}), summ(0.7)  # the change's gap: 0, +0.05, +0.02
    t = ablate.gap_tests(mt, single, mt_ref, single_ref, heads)
    assert t["heads"]["n"] == 3 and t["heads"]["mean_difference"] == pytest.approx(0.1 + 0.07 / 3)
    assert t["heads"]["p_greater"] < 0.05 < t["heads"]["p_less"]
    assert t["cases"]["n"] == 4  # a case's score: the mean over its dataset's heads
    assert t["cases"]["mean_difference"] == pytest.approx(0.1 + (0.025 * 2 + 0.02 * 2) / 4)
    # no change: the same gap, no t statistic
    same = ablate.gap_tests(mt_ref, single_ref, mt_ref, single_ref, heads)
    assert same["heads"]["mean_difference"] == pytest.approx(0.0) and same["heads"]["p_greater"] == 1.0


def test_the_recorded_models_are_read_from_the_reproduction_report(ablate, tmp_path):
    rec = ablate.recorded_dice(BENCHMARKS.parent / "docs" / "results.md")
    assert set(rec) == set(ablate.RECORDED) and len(rec["single-dataset (U-Net)"]) == 19
    assert rec["single-dataset (U-Net)"]["D006_heart"] == pytest.approx(0.946)
    assert rec["MultiTalent (U-Net)"]["D006_heart"] == pytest.approx(0.655)
    assert rec["ablation_mt_2n"]["D001_tumor"] == pytest.approx(0.574)
    assert ablate.recorded_dice(tmp_path / "missing.md") == {}
    (tmp_path / "other.md").write_text("# a report without the table\n")
    assert ablate.recorded_dice(tmp_path / "other.md") == {}


def test_a_reading_is_a_verdict_only_between_flattened_runs(ablate):
    better = {"heads": {"p_greater": 0.01, "p_less": 0.99}, "cases": {"p_greater": 0.02, "p_less": 0.98}}
    mixed = {"heads": {"p_greater": 0.01, "p_less": 0.99}, "cases": {"p_greater": 0.2, "p_less": 0.8}}
    worse = {"heads": {"p_greater": 0.99, "p_less": 0.01}, "cases": {"p_greater": 0.97, "p_less": 0.03}}
    assert ablate.reading(better, True) == "**better**"
    assert ablate.reading(worse, True) == "**worse**"
    assert ablate.reading(mixed, True) == "no significant difference"
    assert ablate.reading(better, False).startswith("not measurable at this budget")


@pytest.mark.slow  # trains two tiny runs and predicts the test cases (~1 min)
def test_the_ablations_run_end_to_end_and_keep_their_evidence(ablate, tmp_path):
    out, report = tmp_path / "out", tmp_path / "docs" / "results_ablations.md"
    argv = ["--sizes", "tiny", "--out", str(out), "--ablation", "w6:base_features=6", "--jobs", "1",
            "--singles", "w6", "--singles", "mt_2n", "--report", str(report)]
    assert ablate.main(argv) == 0
    text = report.read_text()
    assert text == (out / "ablations.md").read_text().replace(
        "ablations_evidence/", "results_ablations_evidence/")
    for run in ("ablation_mt_2n", "ablation_w6"):
        assert (out / "runs" / run / "checkpoint_final.pt").is_file()
        assert f"| {run} |" in text
    assert "| D005_spleen | " in text and "| over heads | " in text
    # the comparison with the reference, over heads and over cases, with p-values and a reading
    rows = [ln for ln in text.splitlines() if ln.startswith("| ablation_w6 | heads |")
            or ln.startswith("| ablation_w6 | cases |")]
    assert len(rows) == 2 and all("not measurable at this budget" in r for r in rows)  # 2 epochs: not judged
    assert "base_features=6" in text and "`python benchmarks/ablate.py --sizes tiny" in text
    assert "summed over all 1 invocation(s) on this output folder" in text
    # beside the recorded reproduction (docs/results.md by default): the heads the two collections share
    beside = text.split("## Beside the models of the recorded reproduction")[1]
    assert "`docs/results.md`" in beside and "15 heads in common" in beside
    for row in ("| recorded single-dataset (U-Net) | ", "| recorded MultiTalent (U-Net) | ", "| ablation_w6 | "):
        assert row in beside
    evidence = report.parent / "results_ablations_evidence"
    for run in ("ablation_mt_2n", "ablation_w6"):
        with tarfile.open(evidence / "runs" / f"{run}.tar.xz") as tar:
            assert f"runs/{run}/log.jsonl" in tar.getnames()
        assert (evidence / "evaluation" / f"{run}.tar.xz").is_file()
    with tarfile.open(evidence / "folder.tar.xz") as tar:
        assert "results/ablations.json" in tar.getnames()
    # the single-dataset models of both, with the change (one dataset each, N iterations), and the tests
    import json

    for ds in ("D005", "D006", "D007"):
        for run, width in ((f"ablation_w6_single_{ds}", 6), (f"single_{ds}", 4)):
            cfg = json.loads((out / "runs" / run / "config.json").read_text())["config"]
            assert (cfg["datasets"], cfg["base_features"], cfg["epochs"]) == ([ds], width, 1)
            assert f"| {run} | single-dataset model of {ds}" in text
            with tarfile.open(evidence / "runs" / f"{run}.tar.xz") as tar:
                assert f"runs/{run}/log.jsonl" in tar.getnames()
    section = text.split("## MultiTalent against single-dataset models with the same change")[1]
    assert "N = 2 iterations" in section and "2N = 4" in section  # tiny: 1 and 2 epochs of 2
    tests, gap = section.split("Does the change close MultiTalent's gap?")
    for what in ("MultiTalent as in the paper (the reference)", "base_features=6"):  # heads and cases each
        assert len([ln for ln in tests.splitlines() if ln.startswith(f"| {what} | ")]) == 2
    assert "| mean over heads | " in tests and "| D006 | " in tests
    assert len([ln for ln in gap.splitlines() if ln.startswith("| base_features=6 | ")]) == 2
    assert "| single_* | ablation_w6_single_* |" in text  # their per-head Dice beside the ablations'
    # a second invocation trains nothing and writes the same tables
    before = (out / "runs" / "ablation_w6" / "log.jsonl").read_text()
    singles_before = (out / "runs" / "ablation_w6_single_D005" / "log.jsonl").read_text()
    assert ablate.main(argv) == 0
    assert (out / "runs" / "ablation_w6" / "log.jsonl").read_text() == before
    assert (out / "runs" / "ablation_w6_single_D005" / "log.jsonl").read_text() == singles_before
    assert report.read_text().split("## Convergence")[1] == text.split("## Convergence")[1]
    assert "summed over all 2 invocation(s)" in report.read_text()
