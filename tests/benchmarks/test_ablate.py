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
                      (["--ablation", "w:base_features=6", "--singles", "v"], "'v' is not mt_2n or an --ablation"),
                      (["--sizes", "tiny", "--ablation", "width16:batch_size=4"],
                       "--ablation: 'width16' is an ablation of the tiny sizes")):
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
    # the sizes' own ablation under the same name trains only when the change is the same: never silently theirs
    assert ablate.ablation_sizes(repro.TINY, [("width16", (("base_features", 8),))]) \
        == ablate.ablation_sizes(repro.TINY, [])
    with pytest.raises(ValueError, match="'width16' is an ablation of the tiny sizes"):
        ablate.ablation_sizes(repro.TINY, [("width16", (("batch_size", 4),))])
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


def test_where_only_some_single_models_converged_multitalent_is_also_judged_on_their_datasets(ablate):
    mt = _summary({"c1": {"A_x": 0.9, "A_y": 0.8}, "c2": {"A_x": 0.85, "A_y": 0.75},
                   "c3": {"B_z": 0.5}, "c4": {"B_z": 0.6}})
    single = _summary({"c1": {"A_x": 0.7, "A_y": 0.6}, "c2": {"A_x": 0.72, "A_y": 0.5},
                       "c3": {"B_z": 0.9}, "c4": {"B_z": 0.95}})
    heads = ["A_x", "A_y", "B_z"]
    conv = {"A": {"converged": True}, "B": {"converged": False}}
    sub = ablate.converged_subset(mt, single, conv, True, heads, "not converged")
    assert sub["datasets"] == ["A"] and sub["heads"] == ["A_x", "A_y"]
    assert sub["tests"]["heads"]["n"] == 2 and sub["tests"]["cases"]["n"] == 2  # B's head and cases left out
    assert sub["mt_avg"] == pytest.approx(0.825) and sub["single_avg"] == pytest.approx(0.63)
    assert not sub["reading"].startswith("not measurable")  # judged: both sides converged
    # nothing to add when MultiTalent has not converged, or when none or all of the single models have
    assert ablate.converged_subset(mt, single, conv, False, heads) is None
    assert ablate.converged_subset(mt, single, {"A": {"converged": False}, "B": {}}, True, heads) is None
    assert ablate.converged_subset(mt, single, {"A": {"converged": True}, "B": {"converged": True}}, True,
                                   heads) is None


def test_an_ablation_without_single_models_of_its_own_is_tested_against_the_paper_s(ablate):
    heads, datasets = ["A_x", "A_y", "B_z"], ["A", "B"]
    mt = _summary({"c1": {"A_x": 0.9, "A_y": 0.8}, "c2": {"A_x": 0.85, "A_y": 0.75},
                   "c3": {"B_z": 0.5}, "c4": {"B_z": 0.6}})
    excl = _summary({"c1": {"A_x": 0.95, "A_y": 0.9}, "c2": {"A_x": 0.9, "A_y": 0.85},
                     "c3": {"B_z": 0.7}, "c4": {"B_z": 0.8}})
    single = _summary({"c1": {"A_x": 0.7, "A_y": 0.6}, "c2": {"A_x": 0.72, "A_y": 0.5},
                       "c3": {"B_z": 0.9}, "c4": {"B_z": 0.95}})
    conv = {"A": {"converged": True}, "B": {"converged": False}}
    ctx = ablate.singles_context(["mt_2n"], {"mt_2n": mt, "excl": excl}, {"mt_2n": single}, {"mt_2n": conv},
                                 {}, {"mt_2n": False, "excl": True}, heads, datasets, 4, "not converged")
    assert ctx["against"] == {"mt_2n": "mt_2n", "excl": "mt_2n"}
    assert ctx["vs_singles"]["excl"]["heads"]["mean_difference"] == pytest.approx((0.215 + 0.325 - 0.175) / 3)
    assert ctx["single_readings"]["excl"] == "not measurable at this budget (not converged)"  # B's single: no
    assert set(ctx["subsets"]) == {"excl"}  # judged on A alone; the reference has not converged
    # B's single model in no budget pair, none shown unconverged: the reading says it was not judged
    unjudged = ablate.singles_context(["mt_2n"], {"mt_2n": mt, "excl": excl}, {"mt_2n": single},
                                      {"mt_2n": {"A": {"converged": True}, "B": {"converged": None}}}, {},
                                      {"mt_2n": None, "excl": True}, heads, datasets, 4, "not converged")
    assert unjudged["single_readings"]["excl"] == "not measurable at this budget (not judged: a run in no budget pair)"
    assert unjudged["single_readings"]["mt_2n"] == unjudged["single_readings"]["excl"]
    assert ablate.unjudged_why([True, None, False], "not converged") == "not converged"
    assert ablate.unjudged_why([True, None], "not flattened") == "not flattened"  # the last quarter judges all
    ctx.update({"reference": "mt_2n", "iterations": 8, "datasets": datasets,
                "what": {"mt_2n": "MultiTalent as in the paper (the reference)", "excl": "exclusions=e.json"},
                "avg_datasets": {n: ablate.dataset_average(v, heads) for n, v in (("mt_2n", mt), ("excl", excl))},
                "avg_heads": {"mt_2n": 0.7, "excl": 0.8}, "by_dataset": {"mt_2n": {}, "excl": {}}})
    text = "\n".join(ablate.singles_section(ctx))
    label = "| `ablation_excl` (exclusions=e.json), against the paper's single-dataset models |"
    assert len([ln for ln in text.splitlines() if ln.startswith(label)]) == 2
    assert len([ln for ln in text.splitlines() if ln.startswith(
        "| `ablation_excl` (exclusions=e.json), against the paper's single-dataset models, on the datasets whose "
        "single model has converged (A) |")]) == 2


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
    # a test over one head (a dataset of one head) has no p-value: no verdict, as the reproduction's judge says
    one_head = {"heads": {"p_greater": None, "p_less": None}, "cases": {"p_greater": 0.01, "p_less": 0.99}}
    assert ablate.reading(one_head, True) == "not testable (too few pairs)"
    opposite = {"heads": {"p_greater": 0.01, "p_less": 0.99}, "cases": {"p_greater": 0.98, "p_less": 0.02}}
    assert ablate.reading(opposite, True) == "the tests disagree (one significant each way)"


def _run_folder(path: Path, epochs: int, finished: bool = True, val_cases=("a_001", "a_002"), recorded=None,
                **config) -> Path:
    import json

    path.mkdir(parents=True)
    cfg = {"epochs": epochs, "iterations_per_epoch": 10, "base_features": 8, "seed": 0, "resume": False, **config}
    (path / "config.json").write_text(json.dumps({"config": cfg, "val_cases": list(val_cases), **(recorded or {})}))
    if finished:
        (path / "checkpoint_final.pt").write_bytes(b"")
    return path


def test_a_run_is_paired_only_with_itself_at_half_or_twice_the_iterations(ablate, tmp_path):
    from multitalent.errors import UserInputError

    run = _run_folder(tmp_path / "out" / "runs" / "ablation_w6", 8, resume=True, exclusions="")
    half, double = tmp_path / "half", tmp_path / "double"
    # older code wrote no `exclusions` field: its behaviour is the default, the same run
    twin = _run_folder(half / "runs" / "ablation_w6", 4)
    assert ablate.namesake_run(run, half) == twin
    assert ablate.namesake_run(run, _run_folder(double / "runs" / "ablation_w6", 16).parents[1], longer=True) \
        == double / "runs" / "ablation_w6"
    assert ablate.namesake_run(run, tmp_path / "elsewhere") is None  # no namesake: not judged
    # what config.json records beside the settings: compared where both runs recorded it, the training cases as a set
    same = _run_folder(tmp_path / "same" / "runs" / "r", 8, recorded={"train_cases": ["a_003", "a_004"]})
    assert ablate.namesake_run(same, _run_folder(tmp_path / "same_half" / "runs" / "r", 4, recorded={
        "train_cases": ["a_004", "a_003"]}).parents[1]) == tmp_path / "same_half" / "runs" / "r"
    for name, epochs, kw, longer, match in (
            ("unfinished", 4, {"finished": False}, False, None),
            ("wider", 4, {"base_features": 16}, False, "base_features: 16 vs 8"),
            ("fold", 4, {"val_cases": ("a_003",)}, False, "different held-out cases"),
            ("budget", 3, {}, False, "30 iterations, not half of"),
            ("shorter", 4, {}, True, "40 iterations, not twice"),
            # the same exclusions path with another relation behind it, other training cases: other runs
            ("relation", 4, {"recorded": {"exclusions": {"A_x": ["B_y"]}}}, False, "different exclusions"),
            ("cases", 4, {"recorded": {"train_cases": ["a_003", "a_005"], "heads": 3}}, False,
             "different train_cases, heads")):
        run = _run_folder(tmp_path / name / "runs" / "r", 8,
                          recorded={"exclusions": {"A_x": ["B_z"]}, "train_cases": ["a_004", "a_003"], "heads": 2})
        _run_folder(tmp_path / f"{name}_other" / "runs" / "r", epochs, **kw)
        if match is None:
            assert ablate.namesake_run(run, tmp_path / f"{name}_other", longer) is None
        else:
            with pytest.raises(UserInputError, match=match) as exc:
                ablate.namesake_run(run, tmp_path / f"{name}_other", longer)
            assert str(tmp_path / f"{name}_other" / "runs" / "r" / "config.json") in str(exc.value)


def test_a_folder_of_other_runs_is_refused_before_any_training(ablate, tmp_path, capsys):
    out, half = tmp_path / "out", tmp_path / "half"
    tiny = ablate.SIZES["tiny"]
    its = ablate.reference_epochs(tiny) * tiny.iterations_per_epoch  # the reference's budget at the tiny sizes
    assert its % 2 == 0
    _run_folder(half / "runs" / "ablation_mt_2n", its // 2, iterations_per_epoch=1)
    # a started run of this invocation (its config.json written) whose namesake was trained with another width
    _run_folder(out / "runs" / "ablation_mt_2n", its, finished=False, iterations_per_epoch=1, base_features=16)
    rc = ablate.main(["--sizes", "tiny", "--out", str(out), "--ablation", "w6:base_features=6",
                      "--half-budget", str(half), "--report", str(tmp_path / "r.md")])
    err = capsys.readouterr().err
    assert rc == 2 and "--half-budget/--double-budget" in err and "base_features: 8 vs 16" in err
    assert sorted(p.name for p in out.iterdir()) == ["runs"]  # nothing prepared, nothing trained
    assert not (tmp_path / "r.md").exists()
    assert ablate.check_pairs(out, ["ablation_w6"], half, None) == 0  # a run not started is checked when scored


def test_a_wrong_folder_further_along_the_chain_is_refused_before_any_training(ablate, tmp_path):
    from multitalent.errors import UserInputError

    out, x2, x4 = tmp_path / "out", tmp_path / "x2", tmp_path / "x4"
    _run_folder(out / "runs" / "single_D005", 8, finished=False)  # started here
    _run_folder(x2 / "runs" / "single_D005", 16)
    _run_folder(x4 / "runs" / "single_D005", 32)
    assert ablate.check_pairs(out, ["single_D005"], None, [x2, x4]) == 2
    _run_folder(tmp_path / "bad" / "runs" / "single_D005", 32, base_features=16)  # at four times: another run
    with pytest.raises(UserInputError, match="base_features: 16 vs 8"):
        ablate.check_pairs(out, ["single_D005"], None, [x2, tmp_path / "bad"])
    assert ablate.check_pairs(out, ["single_D005"], None, [tmp_path / "none", x4]) == 0  # the chain stops


def test_the_recorded_reference_is_called_the_rerun_s_noise_only_at_its_own_budget(ablate, tmp_path):
    assert ablate.recorded_iterations(BENCHMARKS.parent / "docs" / "results.md", "ablation_mt_2n") == 8000
    assert ablate.recorded_iterations(tmp_path / "missing.md", "ablation_mt_2n") is None
    assert "the rerun's noise." in ablate.recorded_reference_note({"recorded_iterations": 8000, "iterations": 8000})
    note = ablate.recorded_reference_note({"recorded_iterations": 8000, "iterations": 32000})
    assert "at 8000 iterations instead of 32000" in note and "the budget's effect" in note


def test_budget_doubling_decides_the_readings_and_says_so(ablate):
    rows = [{"run": "ablation_mt_2n", "folder": "/work/half", "iterations": [4, 8], "dice": [0.5, 0.505],
             "gain": 0.005, "within": True, "se": None, "n_cases": 2},
            {"run": "ablation_w6", "folder": "/work/half", "iterations": [4, 8], "dice": [0.4, 0.45],
             "gain": 0.05, "within": False, "se": 0.01, "n_cases": 2},
            {"run": "ablation_w6", "folder": "/work/double", "iterations": [8, 16], "dice": [0.45, 0.452],
             "gain": 0.002, "within": True, "se": 0.01, "n_cases": 2}]
    ctx = {"doubling": rows, "names": ["mt_2n", "w6", "w8"], "singles": []}
    text = "\n".join(ablate.doubling_section(ctx))
    assert "| ablation_mt_2n | `/work/half` | 4 -> 8 | 50.0 -> 50.5 | +0.50 | 2 | — | yes |" in text
    assert "| ablation_w6 | `/work/half` | 4 -> 8 | 40.0 -> 45.0 | +5.00 | 2 | 1.00 | **no** |" in text
    assert "| ablation_w6 | `/work/double` | 8 -> 16 | 45.0 -> 45.2 | +0.20 | 2 | 1.00 | yes |" in text
    assert "In no pair (cannot be judged): ablation_w8." in text
    assert ablate.converged_word(ctx) == "converged (budget doubling)"
    assert ablate.converged_word({"doubling": None}) == "flattened"
    better = {"heads": {"p_greater": 0.01, "p_less": 0.99}, "cases": {"p_greater": 0.02, "p_less": 0.98}}
    assert ablate.reading(better, False, "not converged") == "not measurable at this budget (not converged)"


def test_a_chain_of_longer_folders_is_paired_in_turn_and_a_single_model_converged_later_stands_in(ablate,
                                                                                                     tmp_path):
    import json

    def trained(folder: Path, name: str, epochs: int) -> Path:
        run = _run_folder(folder / "runs" / name, epochs)
        (run / "log.jsonl").write_text(json.dumps({"epoch": epochs - 1, "iteration": epochs * 10}) + "\n")
        return run

    half, out, d2, d4 = (tmp_path / n for n in ("half", "out", "x2", "x4"))
    dice = {  # held-out Dice by folder: D005 gains 10 points, then 10 more, then 0.2 (converged at x2 only)
        "single_D005": {half: 0.40, out: 0.50, d2: 0.60, d4: 0.602},
        "single_D001": {out: 0.70, d2: 0.705, d4: 0.80},  # within one point at x1, then +9.5: not converged
        "single_D006": {out: 0.80, d4: 0.90},  # not at x2: its chain stops there, x4 is never paired
    }
    runs = {}
    for name, by in dice.items():
        for folder in by:
            run = trained(folder, name, {half: 4, out: 8, d2: 16, d4: 32}[folder])
            if folder == out:
                runs[name] = run

    class Rep:  # the held-out scores (Reproduction.heldout_scores) by the run's folder
        def heldout_scores(self, run: Path):
            v = dice[run.name][run.parents[1]]
            return {"h": v}, {"h": {"c1": v, "c2": v + 0.001}}

    rows = ablate.budget_doubling(Rep(), runs, half, [d2, d4])
    got = [(r["run"], r["from"], r["folder"], r["iterations"], r["within"]) for r in rows]
    assert got == [("single_D005", None, str(half), [40, 80], False),
                   ("single_D005", None, str(d2), [80, 160], False),
                   ("single_D005", str(d2), str(d4), [160, 320], True),
                   ("single_D001", None, str(d2), [80, 160], True),
                   ("single_D001", str(d2), str(d4), [160, 320], False)]
    assert rows[2]["shorter"] == ablate.chain_key("single_D005", d2) == f"single_D005@{d2}"
    others = {k: {} for r in rows for k in (r["shorter"], r["longer"]) if k not in runs}
    decided = ablate.by_budget_pairs({n: {} for n in runs} | others, rows)
    assert [decided[n]["converged"] for n in runs] == [False, False, None]
    stand = ablate.single_stand_ins(decided, list(runs), [d2, d4])
    assert stand == {"single_D005": d2 / "runs" / "single_D005"}  # D001's chain grew later: no stand-in
    # the report's table names where a chain's shorter run lies, and the stand-in
    ctx = {"doubling": rows, "names": [], "singles": ["mt_2n"],
           "single_convergence": {"mt_2n": {"D005": {}, "D001": {}, "D006": {}}},
           "stand_ins": {"single_D005": {"folder": str(d2), "iterations": 160}}}
    text = "\n".join(ablate.doubling_section(ctx))
    assert f"| single_D005 in `{d2}` | `{d4}` | 160 -> 320 | 60.0 -> 60.2 | +0.20 | 2 |" in text
    assert f"| single_D005 | `{d2}` | 80 -> 160 | 50.0 -> 60.0 | +10.00 |" in text
    assert "In no pair (cannot be judged): single_D006." in text
    assert f"single_D005 by its run in `{d2}` (160 iterations)" in text
    # one folder: the first doubling only
    assert len(ablate.budget_doubling(Rep(), runs, None, [d2])) == 2


@pytest.mark.slow  # trains two tiny runs and predicts the test cases (~1 min)
def test_the_ablations_run_end_to_end_and_keep_their_evidence(ablate, tmp_path, capsys, monkeypatch):
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
    # the patches each model drew per dataset: MultiTalent 2N x batch in all, each single model N x batch of its own
    samples = section.split("Training samples drawn per dataset")[1]
    rows = {ln.split(" | ")[0][2:]: [float(c) for c in ln.strip(" |").split(" | ")[1:]]
            for ln in samples.splitlines() if ln.startswith("| D00")}
    assert set(rows) == {"D005", "D006", "D007"} and all(len(v) == 4 for v in rows.values())  # 2 changes x 2
    assert rows["D005"][1] > 0  # each count is rounded to a patch: the sum of three within 1.5 of the total
    assert sum(v[0] for v in rows.values()) == pytest.approx(2 * rows["D005"][1], abs=1.5)
    assert rows["D005"][1] == rows["D006"][1] == rows["D007"][1]
    # a second invocation trains nothing and writes the same tables
    before = (out / "runs" / "ablation_w6" / "log.jsonl").read_text()
    singles_before = (out / "runs" / "ablation_w6_single_D005" / "log.jsonl").read_text()
    assert ablate.main(argv) == 0
    assert (out / "runs" / "ablation_w6" / "log.jsonl").read_text() == before
    assert (out / "runs" / "ablation_w6_single_D005" / "log.jsonl").read_text() == singles_before
    assert report.read_text().split("## Convergence")[1] == text.split("## Convergence")[1]
    assert "summed over all 2 invocation(s)" in report.read_text()
    # twice the budget, paired with these runs: budget doubling on the held-out fold decides the readings
    out2, report2 = tmp_path / "out2", tmp_path / "docs" / "results_ablations_2x.md"
    argv2 = ["--sizes", "tiny", "--out", str(out2), "--ablation", "w6:base_features=6", "--jobs", "1",
             "--singles", "w6", "--singles", "mt_2n", "--report", str(report2), "--budget-factor", "2"]
    assert ablate.main([*argv2, "--half-budget", str(out)]) == 0
    text2 = report2.read_text()
    doubling = text2.split("**Criterion: budget doubling on held-out whole scans**")[1].split("Validation curve")[0]
    within = {}
    for run in ("ablation_mt_2n", "ablation_w6", "single_D005", "ablation_w6_single_D007"):
        row = next(ln for ln in doubling.splitlines() if ln.startswith(f"| {run} | `{out}` | 4 -> 8 | ") or
                   ln.startswith(f"| {run} | `{out}` | 2 -> 4 | "))
        within[run] = row.endswith("| yes |")
        for folder in (out, out2):  # both runs of the pair predicted their held-out fold
            assert (folder / "runs" / run / "validation" / "summary.json").is_file()
    rows = [ln for ln in text2.splitlines() if ln.startswith("| ablation_w6 | heads |")]
    if not (within["ablation_mt_2n"] and within["ablation_w6"]):
        assert rows[0].endswith("| not measurable at this budget (not converged) |")
    else:
        assert "not measurable" not in rows[0]
    assert "needs both runs converged (budget doubling)" in text2
    # the other way: the first folder's runs paired with their namesakes at twice the budget (nothing trained)
    assert ablate.main([*argv, "--double-budget", str(out2)]) == 0
    up = report.read_text().split("**Criterion: budget doubling")[1].split("Validation curve")[0]
    rows_up = [ln for ln in up.splitlines() if ln.startswith("| ablation_") or ln.startswith("| single_")]
    assert len(rows_up) == 8 and all(f"| `{out2}` | " in ln for ln in rows_up)  # 2 + 2 x 3 single models
    assert next(ln for ln in rows_up if ln.startswith("| ablation_w6 |")).split(" | ")[2:4] == \
        next(ln for ln in doubling.splitlines() if ln.startswith("| ablation_w6 |")).split(" | ")[2:4]
    # a single-dataset model converged only at the longer budget stands in for this folder's: predicted on its
    # dataset's test cases and compared in its place (the decision forced: nothing converges at these sizes)
    real = ablate.budget_doubling

    def forced(rep, runs, half=None, double=None):
        rows = real(rep, runs, half, double)
        for r in rows:  # D005's single model gained a point or more from x1 to x2, the others less ...
            r["within"] = r["run"] != "single_D005"
        return rows + [{**rows[0], "run": "single_D005", "from": str(out2), "folder": f"{out2}_x4",
                        "shorter": f"single_D005@{out2}", "longer": "x4", "within": True}]  # ... then less

    monkeypatch.setattr(ablate, "budget_doubling", forced)
    assert ablate.main([*argv, "--double-budget", str(out2)]) == 0
    text3 = report.read_text()
    assert f"single_D005 by its run in `{out2}` (4 iterations)" in text3.split("## Dice per head")[0]
    assert f"single_D005 by its run in `{out2}` (4 iterations)" in text3.split("with the same change")[1]
    part = json.loads((out / "evaluation" / "single_D005@4@out2" / "summary.json").read_text())
    pred = out / "predictions" / "single_D005@4@out2"
    assert all((pred / c / "case.json").is_file() for c in part["cases"]["D005"])
    assert json.loads((pred / "stand_in.json").read_text())["run"] == str((out2 / "runs" / "single_D005").resolve())
    for h in ("D005_spleen", "D005_liver"):  # the single-dataset column: the stand-in's scores
        row = next(ln for ln in text3.splitlines() if ln.startswith(f"| {h} | "))
        assert row.split(" | ")[3] == ablate._pct(part["heads"][h]["dice_mean"])
    drawn = {ln.split(" | ")[0][2:]: ln.split(" | ")[2] for ln in
             text3.split("Training samples drawn per dataset")[1].splitlines() if ln.startswith("| D00")}
    assert float(drawn["D005"]) == 2 * float(drawn["D006"])  # the stand-in trained twice the iterations
    assert next(ln for ln in text3.splitlines() if ln.startswith("| D006_heart | ")) == \
        next(ln for ln in text.splitlines() if ln.startswith("| D006_heart | "))  # the others: their own runs
    assert "under `paired/<folder>/`" in text3.split("## Convergence")[0]  # the other folder's runs: kept too
    with tarfile.open(evidence / "paired" / out2.name / "single_D005.tar.xz") as tar:
        assert f"paired/{out2.name}/runs/single_D005/validation/summary.json" in tar.getnames()
    monkeypatch.undo()
    # a folder of another budget is refused before anything is trained
    with pytest.raises(SystemExit) as exc:
        ablate.main([*argv2[:-1], "3", "--half-budget", str(out)])
    assert exc.value.code == 2 and "not half of this invocation's" in capsys.readouterr().err
