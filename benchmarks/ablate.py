r"""MultiTalent's ablations on their own: one option of the training changed at a time, against MultiTalent as in the
paper at the same budget, on the reproduction's collection and grid (the ``--full`` sizes).

Why: ``docs/results.md`` has MultiTalent 2 points below the single-dataset models (no significant difference), the
loss concentrated in a few heads (the thorax's heart, trachea and lungs; the pancreas). Each ablation asks whether
one part of the method, or of its scale here, explains it. Besides the ablations it trains the reference
``ablation_mt_2n``: MultiTalent as in the paper at the paper's budget 2N (at the full sizes 160 x 50 = 8000
iterations; the reproduction's own run of that name), and every ablation gets the same budget, so that every
comparison is between runs of this invocation's code and machine. Every run predicts all test cases of the
collection and is scored per head; paired one-sided t-tests over heads and over test cases compare each ablation
with the reference. A comparison is a *verdict* only between runs whose validation curves have flattened (less
than one point gained over the last quarter, ``repro.statistics.convergence``); otherwise it is a measurement at
equal budget, and the report says so.

    python benchmarks/ablate.py --out /work/ablate --ablation width16:base_features=16 \
        --ablation batch4:batch_size=4 --ablation uniform:sampling=uniform --ablation noprior:head_prior=0.5 \
        --ablation diceonly:bce_weight=0 --ablation bce2:bce_weight=2     # docs/results_ablations.md

``--singles NAME`` (``mt_2n`` or an ablation's name) also trains the single-dataset models with that ablation's
change, N = half the reference's 2N each (the paper's rule), and tests MultiTalent with the change against them;
with two names, whether the change closes MultiTalent's gap to its single-dataset models (a paired test of the
gaps):

    python benchmarks/ablate.py --out /work/ablate ... --singles mt_2n --singles width16

``--budget-factor K`` trains every run at K times the budget in a folder of its own; ``--half-budget DIR`` pairs
each run with its namesake in the folder of half the budget, and budget doubling on held-out whole scans (the
criterion of ``docs/results.md``, ``budget_doubling``) then decides the readings instead of the last quarter;
``--double-budget DIR`` pairs them with the runs of a folder at twice the budget (it may hold only some); named
again, with a folder at four times the budget, eight times, ..., it extends each run's chain, and a single-dataset
model that converged only at a longer budget of its chain is compared through that run, its *stand-in* (the
paper's rule: N large enough to converge; chosen on the held-out folds, never on a test case):

    python benchmarks/ablate.py --out /work/ablate2x --budget-factor 2 --half-budget /work/ablate ...
    python benchmarks/ablate.py --out /work/ablate4x --budget-factor 4 --half-budget /work/ablate2x \
        --double-budget /work/ablate8x --double-budget /work/ablate16x ...

``--ablation NAME:FIELD=VALUE[,FIELD=VALUE...]`` sets ``TrainConfig`` fields (``multitalent train --help``:
base_features, sampling, head_prior, batch_size, fg_fraction, lr, ...); the run is ``ablation_NAME``. The output
folder is a reproduction folder (``benchmarks/reproduce.py``): resumable, and its runs are reused by a later
invocation. The report goes to ``OUT/ablations.md`` and to ``--report`` (default ``docs/results_ablations.md``),
its evidence beside each (``repro.evidence``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from repro.cli import _only_invocation, _write_reports  # noqa: E402
from repro.common import REPO, _date_utc, _read_json, _write_json, machine_description, run_stats  # noqa: E402
from repro.evidence import EVIDENCE_NOTE, PAIRED_NOTE, evidence_path  # noqa: E402
from repro.experiments import Reproduction  # noqa: E402
from repro.sizes import FULL, SIZES, Sizes  # noqa: E402
from repro.statistics import (  # noqa: E402
    ALPHA,
    budget_pair_rows,
    by_budget_pairs,
    compare,
    convergence,
    dataset_average,
    merge_datasets,
    paired,
    per_case,
    per_head,
    samples_per_dataset,
)
from repro.text import _pct  # noqa: E402

from multitalent.errors import UserInputError  # noqa: E402

REFERENCE = "mt_2n"  # the reproduction's own name for MultiTalent at the paper's 2N
DEFAULT_REPORT = REPO / "docs" / "results_ablations.md"


def parse_ablation(text: str) -> tuple[str, tuple[tuple[str, object], ...]]:
    """``NAME:FIELD=VALUE[,FIELD=VALUE]`` -> (NAME, ((FIELD, value), ...)), each value converted to its
    ``TrainConfig`` field's type; a ValueError names what is wrong."""
    import typing

    from multitalent.config import _literal_choices
    from multitalent.training.config import TrainConfig

    name, sep, rest = text.partition(":")
    if not sep or not name or not rest or not name.replace("_", "").isalnum():
        raise ValueError(f"{text!r} is not NAME:FIELD=VALUE[,FIELD=VALUE...] (NAME: letters, digits, _)")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    defaults = TrainConfig()
    out = []
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        if not eq or key not in fields or key in ("epochs", "device", "seed", "resume", "quiet", "datasets"):
            raise ValueError(f"{text!r}: {key!r} is not a TrainConfig field an ablation may set "
                             f"(see `multitalent train --help`; the budget is the reference's)")
        default = getattr(defaults, key)
        try:
            if isinstance(default, bool):
                v: object = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False,
                             "no": False, "off": False}[value.lower()]
            else:
                v = type(default)(value) if isinstance(default, (int, float)) else value
        except (KeyError, ValueError):
            raise ValueError(f"{text!r}: {key}={value!r} is not of type {type(default).__name__}") from None
        choices = fields[key].metadata.get("choices") or _literal_choices(typing.get_type_hints(TrainConfig)[key])
        if choices and v not in choices:
            raise ValueError(f"{text!r}: {key}={value!r} is not one of {', '.join(map(str, choices))}")
        out.append((key, v))
    return name, tuple(out)


def reference_epochs(base: Sizes) -> int:
    """The budget of every run: the sizes' own ``mt_2n`` ablation's epochs, else the paper's 2N."""
    own = dict(dict(base.ablations).get(REFERENCE, ()))
    return int(own.get("epochs", 2 * base.single_epochs))


def scaled_budget(base: Sizes, factor: int) -> Sizes:
    """``base`` with the reference's budget (and so every ablation's) and the single-dataset models' N multiplied
    by ``factor``: the same comparisons at K times the budget, in a folder of their own, to take them to
    convergence. The paper's rule (MultiTalent 2N) is kept; a ValueError for a factor below 1."""
    if factor < 1:
        raise ValueError(f"{factor} is not a budget factor (1 or more)")
    if factor == 1:
        return base
    own = [(n, tuple((k, v * factor if k == "epochs" else v) for k, v in kw)) for n, kw in base.ablations]
    if REFERENCE not in dict(own):
        own.insert(0, (REFERENCE, (("epochs", reference_epochs(base) * factor),)))
    return dataclasses.replace(base, single_epochs=base.single_epochs * factor, ablations=tuple(own))


def ablation_sizes(base: Sizes, ablations: list[tuple[str, tuple]], singles: list[str] = ()) -> Sizes:
    """``base`` with the reference and the ablations, every one trained ``reference_epochs`` epochs; the base's
    own ablations come first, so that a reproduction folder of the same sizes accepts these runs. After them, for
    every ablation named in ``singles``, its single-dataset models (``singles_key``: N = ``single_epochs`` epochs
    each, on one dataset, with the ablation's change); the reference's are the reproduction's own ``single_<ds>``.
    A ValueError when ``singles`` cannot be trained (sizes without named datasets, a reference that is not 2N) or
    when an ablation takes the name of one of the sizes' own with another change."""
    epochs = reference_epochs(base)
    if any(n != REFERENCE for n in singles) and not base.datasets:
        raise ValueError(f"single-dataset models of an ablation need sizes that name their datasets ({base.name}: "
                         "the whole collection)")
    if singles and epochs != 2 * base.single_epochs:
        raise ValueError(f"the single-dataset models train N = {base.single_epochs} epochs and the reference "
                         f"{epochs}, not 2N ({base.name} sizes)")
    clash = name_clash(base, ablations)
    if clash:
        raise ValueError(clash)
    own = list(base.ablations)
    names = [n for n, _ in own]
    added = [(n, (("epochs", epochs), *kw)) for n, kw in ablations if n not in names]
    given = dict(ablations)
    added += [(f"{n}_single_{ds}", (("epochs", base.single_epochs), ("datasets", (ds,)), *given[n]))
              for n in singles if n != REFERENCE for ds in base.datasets if f"{n}_single_{ds}" not in names]
    if REFERENCE not in names:
        own.insert(0, (REFERENCE, (("epochs", epochs),)))
    return dataclasses.replace(base, ablations=tuple(own + added))


def name_clash(base: Sizes, ablations: list[tuple[str, tuple]]) -> str | None:
    """Why an ablation cannot be trained under its name: the sizes give one of that name with another change
    (theirs would be trained and reported as yours); None when none does."""
    own = {n: dict(kw) for n, kw in base.ablations}
    for n, kw in ablations:
        if n in own and dict(kw) != own[n]:
            return f"{n!r} is an ablation of the {base.name} sizes ({own[n]}), not {dict(kw)}: name yours otherwise"
    return None


def singles_key(name: str) -> str:
    """The name of ablation ``name``'s single-dataset models, each run ``<key>_<dataset>`` (the reference's: the
    reproduction's own, ``single_<dataset>``)."""
    return "single" if name == REFERENCE else f"ablation_{name}_single"


RECORDED = ("single-dataset (U-Net)", "MultiTalent (U-Net)", "ablation_mt_2n")  # columns read from the report


def recorded_dice(path: Path) -> dict[str, dict[str, float]]:
    """The per-head Dice of ``RECORDED`` models in a reproduction report (``docs/results.md``, section 1's table
    "| head | lesion | ..."), as fractions: column -> head -> Dice; empty when the file or table is missing. The
    report is all that is left of those runs when their folder is gone."""
    if not Path(path).is_file():
        return {}
    lines = Path(path).read_text().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("| head | lesion |")), None)
    if start is None:
        return {}
    cols = [c.strip() for c in lines[start].strip("|").split("|")]
    out: dict[str, dict[str, float]] = {c: {} for c in RECORDED if c in cols}
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in ln.strip("|").split("|")]
        for c in out:
            try:
                out[c][cells[0]] = float(cells[cols.index(c)]) / 100
            except (ValueError, IndexError):
                pass
    return out


def recorded_iterations(path: Path, run: str) -> int | None:
    """The iterations the reproduction report ``path`` gives run ``run`` (the first table row that starts with the
    run and its iterations, as section 0's tables do); None when the report or the row is missing."""
    if not Path(path).is_file():
        return None
    for ln in Path(path).read_text().splitlines():
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        if ln.startswith("|") and len(cells) > 1 and cells[0] == run and cells[1].isdigit():
            return int(cells[1])
    return None


def _shown(path: Path | None) -> str:
    """``path`` relative to the repository when inside it (as the report names it)."""
    if path is None:
        return ""
    try:
        return Path(path).resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "—" if v is None else format(v, spec)


def _points(v: float | None, spec: str = "+.1f") -> str:
    """A difference of Dice fractions in points."""
    return _fmt(None if v is None else 100 * v, spec)


def _p(v: float | None) -> str:
    return "n/a" if v is None else "<0.001" if v < 0.001 else f"{v:.3f}"


# TrainConfig fields that may differ between a run and its namesake at another budget (the budget, how it was run)
PAIR_FREE = ("epochs", "resume", "quiet", "device", "num_workers")
# what config.json records beside the TrainConfig and the pair must share (checked where both runs recorded it):
# the batch as trained, the training cases, the heads and the resolved exclusion relation (a changed exclusions
# file behind the same path is another run)
PAIR_SAME = ("batch_size", "world_size", "train_cases", "heads", "exclusions")


class PairError(UserInputError):
    """A run in a --half-budget / --double-budget folder is not the same run at another budget."""


def namesake_run(run: Path, folder: Path, longer: bool = False) -> Path | None:
    """``run``'s namesake in the ablation folder ``folder`` when it is finished (None when it is not there or not
    finished): the same run at half the iterations, or at twice them when ``longer``. A ``PairError``, naming both
    configurations, when it is not (other settings, training cases, heads or exclusions, another held-out fold,
    another budget)."""
    other = folder / "runs" / run.name
    if not (other / "checkpoint_final.pt").is_file():
        return None
    from multitalent.training.config import TrainConfig

    meta = {k: json.loads((d / "config.json").read_text(encoding="utf-8")) for k, d in (("a", other), ("b", run))}
    default = dataclasses.asdict(TrainConfig())  # a field older code did not write: its behaviour, the default
    a, b = ({**default, **meta[k]["config"]} for k in ("a", "b"))
    differ = sorted(k for k in set(a) | set(b) if k not in PAIR_FREE and a.get(k) != b.get(k))
    if differ:
        raise PairError(f"{other / 'config.json'} and {run / 'config.json'}: not the same run at two budgets "
                        f"({', '.join(f'{k}: {a.get(k)!r} vs {b.get(k)!r}' for k in differ)})")
    if meta["a"].get("val_cases") != meta["b"].get("val_cases"):
        raise PairError(f"{other / 'config.json'} and {run / 'config.json'}: different held-out cases")

    def recorded(k: str, m: dict):  # the training cases as a set: the same cases listed in another order
        return sorted(m[k]) if k == "train_cases" else m[k]

    unlike = [k for k in PAIR_SAME if k in meta["a"] and k in meta["b"]
              and recorded(k, meta["a"]) != recorded(k, meta["b"])]
    if unlike:
        raise PairError(f"{other / 'config.json'} and {run / 'config.json'}: not the same run at two budgets "
                        f"(different {', '.join(unlike)})")
    its_a, its_b = (c["epochs"] * c["iterations_per_epoch"] for c in (a, b))
    if (its_a != 2 * its_b) if longer else (2 * its_a != its_b):
        raise PairError(f"{other / 'config.json'}: {its_a} iterations, not {'twice' if longer else 'half'} "
                        f"of {run / 'config.json'}'s {its_b}")
    return other


def check_pairs(out: Path, names: list[str], half: Path | None, double: list[Path] | None) -> int:
    """Before any training: each of the runs ``names`` that has started in ``out`` (its ``config.json`` written)
    against its finished namesakes in ``half`` and along its chain through ``double`` (``chain_pairs``), so that a
    folder of other runs is refused before hours of training rather than after them (``PairError``); returns the
    number of pairs checked. A run not yet started is checked when it is scored."""
    return sum(1 for name in names if (out / "runs" / name / "config.json").is_file()
               for _ in chain_pairs(out / "runs" / name, half, double))


def chain_pairs(run: Path, half: Path | None, double: list[Path] | None):
    """The budget pairs of ``run`` (a run folder of this invocation): with its finished namesake in ``half`` (the
    folder at half the budget), then along its chain through ``double`` (the folders at twice, four times, ... the
    budget), going on only as long as each folder holds the run finished. Yields (shorter run, longer run, the
    shorter's folder, the longer's folder), a folder None for this invocation's; ``PairError`` from
    ``namesake_run``."""
    other = namesake_run(run, half) if half is not None else None
    if other is not None:
        yield other, run, half, None
    prev, at = run, None
    for folder in double or ():
        other = namesake_run(prev, folder, True)
        if other is None:
            return
        yield prev, other, at, folder
        prev, at = other, folder


def chain_key(name: str, folder: Path) -> str:
    """How a run of another folder is named among this folder's runs in the budget pairs: ``<run>@<folder>``."""
    return f"{name}@{folder}"


def budget_doubling(rep, runs: dict[str, Path], half: Path | None = None,
                    double: list[Path] | None = None) -> list[dict]:
    """The criterion of ``docs/results.md`` (section 0) between this folder's runs and their namesakes in the
    ablation folders ``half`` (the same runs at half the budget) and ``double`` (at twice, four times, ... the
    budget; each may hold only some runs), pair by pair along each run's chain (``chain_pairs``): both runs of a
    pair predict their held-out fold as whole scans (``Reproduction.heldout_scores``), and the pair is within one
    point when doubling the budget gained less than one Dice point (``repro.statistics.budget_pair_rows``). One row
    per pair, with ``run`` (this folder's run), ``from`` (None, or the folder of the chain's shorter run when it is
    not this one), ``folder`` (the other run's), ``iterations`` (shorter, longer), ``shorter`` / ``longer`` (the
    runs' keys: the name, or ``chain_key``) and ``dirs`` (both runs' folders); ``PairError`` from
    ``namesake_run``."""
    pairs: dict = {"pairs": [], "heldout": {}, "heldout_cases": {}}
    extra = []
    for name, run in runs.items():
        for short, long, at_short, at_long in chain_pairs(run, half, double):
            keys = [name if at is None else chain_key(name, at) for at in (at_short, at_long)]
            pairs["pairs"].append(tuple(keys))
            extra.append({"run": name, "from": _shown(at_short) if at_short and at_long else None,
                          "folder": _shown(at_long or at_short),
                          "iterations": [run_stats(short)["iterations"], run_stats(long)["iterations"]],
                          "dirs": [str(short), str(long)]})
            for k, d in zip(keys, (short, long)):
                if k not in pairs["heldout"]:
                    pairs["heldout"][k], pairs["heldout_cases"][k] = rep.heldout_scores(d)
    return [{**r, **e} for r, e in zip(budget_pair_rows(pairs, set()), extra)]


def single_stand_ins(decided: dict, singles: list[str], double: list[Path]) -> dict[str, Path]:
    """For each single-dataset model (its run's name) that has not converged by budget doubling
    (``decided``: ``by_budget_pairs`` over this folder's runs and the chains' runs, ``chain_key``), the first run of
    its chain in the longer folders ``double`` that has: the same model trained long enough, compared in its place
    (the paper's rule: N large enough to converge). Chosen on the held-out folds, never on a test case."""
    out = {}
    for name in singles:
        if decided.get(name, {}).get("converged") is True:
            continue
        for folder in double:
            if decided.get(chain_key(name, folder), {}).get("converged") is True:
                out[name] = folder / "runs" / name
                break
    return out


def stand_in_scores(rep, name: str, ds: str, run: Path, its: int, registry) -> dict:
    """The evaluation summary of ``run`` (another folder's run, the stand-in of this folder's single-dataset model
    ``name``) on dataset ``ds``'s test cases, predicted and scored into this folder under ``<name>@<its>@<folder>``
    once, and again when that run is another or was trained again (its final checkpoint changed)."""
    key = f"{name}@{its}@{run.resolve().parents[1].name}"
    pred = rep.preds / key
    source = {"run": str(run.resolve()), "checkpoint_mtime_ns": (run / "checkpoint_final.pt").stat().st_mtime_ns}
    if pred.exists() and _read_json(pred / "stand_in.json", None) != source:
        shutil.rmtree(pred)
        shutil.rmtree(rep.evals / key, ignore_errors=True)
    if any(not (pred / c / "case.json").is_file() for c in rep.test_cases[ds]):
        rep.say(f"predicting {run} (the stand-in of {name}) on {ds}'s test cases")
        rep.predict(run, rep.dataset_dirs[ds] / "imagesTs", pred)
        _write_json(pred / "stand_in.json", source)
    return rep.evaluate(pred, [ds], registry, key)


def write_ablation_report(path: Path, ctx: dict) -> str:
    """Write the Markdown report to ``path`` (its evidence, ``repro.evidence``, goes beside it); returns the text."""
    from multitalent.errors import atomic_path

    text = report(ctx, evidence_path(path).name)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return text


def report(ctx: dict, evidence: str) -> str:
    """The Markdown of the report whose evidence folder, beside it, is named ``evidence``."""
    ref, names, heads = ctx["reference"], ctx["names"], ctx["heads"]
    s, conv = ctx["summaries"], ctx["convergence"]
    lines = [
        "# MultiTalent's ablations at the reproduction's sizes",
        "",
        "Written by `benchmarks/ablate.py`. Each ablation changes one option of MultiTalent's training; everything "
        "else (collection, grid, network, budget, seed) is the reference's, MultiTalent as in the paper "
        f"(`ablation_{ref}`). Dice (%) on every test case of the collection, mean over each head's dataset's test "
        "cases. Paper: the same method at 13 datasets, 47 classes (`docs/results.md`, section 1).",
        "",
        "## Run",
        "",
        f"- command: `{ctx['command']}`",
        f"- date: {ctx['date']}; machine: {ctx['machine']}; device `{ctx['device']}`",
        f"- wall time: {ctx['wall_s'] / 60:.1f} min for this invocation; {ctx['wall_total_s'] / 60:.1f} min summed "
        f"over all {ctx['n_invocations']} invocation(s) on this output folder (training resumes where it stopped)",
        f"- collection and grid: the `{ctx['sizes']}` sizes of `benchmarks/repro/sizes.py` ({len(ctx['datasets'])} "
        f"datasets: {', '.join(ctx['datasets'])}; {len(heads)} heads); budget {ctx['iterations']} iterations "
        "for MultiTalent and every ablation" + (f", {ctx['single_iterations']} (N) for every single-dataset model"
                                               if ctx.get("singles") else ""),
        f"- evidence: `{evidence}/` beside this report ({EVIDENCE_NOTE}"
        + (f"; {PAIRED_NOTE})" if ctx.get("paired") else ")"),
        "",
        "## Convergence",
        "",
    ]
    if ctx.get("doubling") is not None:
        lines += doubling_section(ctx)
    lines += [
        "Validation curve: mean patch pseudo-Dice over the held-out fold after every epoch. Criterion"
        + (" reported beside the one above" if ctx.get("doubling") is not None else "") + ": less than one "
        "point gained over the last quarter of training (`repro.statistics.convergence`), and its noise-aware reading "
        "(less than one point plus two standard errors).",
        "",
        "| run | what changes | iterations | s/it | gain over the last quarter (points) | flattened | within noise |",
        "|---|---|---:|---:|---:|---|---|",
    ]

    def row(run: str, what: str, c: dict, st: dict) -> str:
        flat = c.get("converged_last_quarter", c.get("converged"))
        return (f"| {run} | {what} | {st['iterations']} | {_fmt(st['s_per_it'], '.2f')} | "
                f"{_points(c.get('gain_last_quarter'), '+.2f')} | {'yes' if flat else '**no**'} | "
                f"{'yes' if c.get('converged_within_noise') else '**no**'} |")

    lines += [row(f"ablation_{n}", ctx["what"][n], conv[n], ctx["stats"][n]) for n in names]
    singles = ctx.get("singles") or []
    lines += [row(f"{singles_key(n)}_{ds}", f"single-dataset model of {ds}" + ("" if n == ref else
                                                                              f", {ctx['what'][n]}"),
                  c, ctx["single_stats"][n][ds]) for n in singles for ds, c in ctx["single_convergence"][n].items()]
    cols = [f"ablation_{n}" for n in names] + [f"{singles_key(n)}_*" for n in singles]
    lines += ["", "## Dice per head", "", "| head | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for h in heads:
        lines.append(f"| {h} | " + " | ".join(_pct(v[h]["dice_mean"]) for v in
                                              [s[n]["heads"] for n in names]
                                              + [ctx["single_summaries"][n]["heads"] for n in singles]) + " |")
    lines += ["", "| average | " + " | ".join(f"ablation_{n}" for n in names) + " |", "|---|" + "---:|" * len(names)]
    lines.append("| over datasets | " + " | ".join(_pct(ctx["avg_datasets"][n]) for n in names) + " |")
    lines.append("| over heads | " + " | ".join(_pct(ctx["avg_heads"][n]) for n in names) + " |")
    for ds in ctx["datasets"]:
        lines.append(f"| {ds} | " + " | ".join(_pct(ctx["by_dataset"][n].get(ds)) for n in names) + " |")
    lines += ["", "## Each ablation against the reference", "",
              f"Paired one-sided t-tests (`scipy.stats.ttest_rel`, alpha = {ALPHA}); a = the ablation, b = "
              f"`ablation_{ref}`; mean difference in points.", "",
              "| ablation | over | n | mean difference | p (a > b) | p (a < b) | reading |",
              "|---|---|---:|---:|---:|---:|---|"]
    for n in names[1:]:
        for over in ("heads", "cases"):
            t = ctx["tests"][n][over]
            lines.append(f"| ablation_{n} | {over} | {t['n']} | {_points(t['mean_difference'])} | "
                         f"{_p(t['p_greater'])} | {_p(t['p_less'])} | {ctx['readings'][n]} |")
    lines += ["", "A *verdict* (better / worse / no significant difference) needs both runs "
              f"{converged_word(ctx)} and both tests agreeing; otherwise the row is a measurement at equal budget "
              "(*not measurable at this budget* as a verdict)."]
    lines += singles_section(ctx)
    rec = ctx.get("recorded") or {}
    single = rec.get("single-dataset (U-Net)", {})
    rheads = [h for h in heads if h in single]
    if rheads:
        lines += ["", "## Beside the models of the recorded reproduction", "",
                  f"From `{ctx['recorded_path']}` (section 1's per-head table, {len(rheads)} heads in common): the "
                  "single-dataset models at the budget where each converged and MultiTalent at 4N (converged), "
                  "trained by an earlier invocation on the same collection, grid and test cases. Only their per-head "
                  "means are left, so the tests pair heads (a = the run, b = the recorded single-dataset models). "
                  + recorded_reference_note(ctx), "",
                  "| run | mean over heads | vs single-dataset (points) | p (a > b) | p (a < b) | "
                  "vs recorded ablation_mt_2n (points, mean absolute per head) |", "|---|---:|---:|---:|---:|---:|"]
        old_ref = rec.get("ablation_mt_2n", {})
        rows = [(f"recorded {c}", rec[c]) for c in RECORDED[:2] if c in rec]
        rows += [(f"ablation_{n}", {h: s[n]["heads"][h]["dice_mean"] or 0.0 for h in rheads}) for n in names]
        for label, d in rows:
            if not all(h in d for h in rheads):
                continue
            t = paired([d[h] for h in rheads], [single[h] for h in rheads])
            noise = (_points(sum(abs(d[h] - old_ref[h]) for h in rheads) / len(rheads), ".1f")
                     if label == f"ablation_{ref}" and all(h in old_ref for h in rheads) else "")
            lines.append(f"| {label} | {_pct(sum(d[h] for h in rheads) / len(rheads))} | "
                         f"{_points(t['mean_difference'])} | {_p(t['p_greater'])} | {_p(t['p_less'])} | {noise} |")
    return "\n".join(lines) + "\n"


def recorded_reference_note(ctx: dict) -> str:
    """What the last column of the section on the recorded reproduction measures: the rerun's noise when the
    recorded ``ablation_mt_2n`` trained as many iterations as this invocation's reference, else the budget's effect
    with it."""
    its, own = ctx.get("recorded_iterations"), ctx["iterations"]
    if its == own:
        return ("The recorded `ablation_mt_2n` is the same run as this invocation's reference, trained by older "
                "code: the difference between the two is the rerun's noise.")
    return (f"The recorded `ablation_mt_2n` is this invocation's reference at {its or 'unknown'} iterations instead "
            f"of {own}: the difference between the two is the budget's effect together with the rerun's noise.")


def converged_word(ctx: dict) -> str:
    """How the report says that a run meets its criterion."""
    return "converged (budget doubling)" if ctx.get("doubling") is not None else "flattened"


def doubling_section(ctx: dict) -> list[str]:
    """The report's lines on the criterion that decides its readings when ``--half-budget`` or ``--double-budget``
    names a folder."""
    lines = ["**Criterion: budget doubling on held-out whole scans** (decides the readings below; the criterion of "
             "`docs/results.md`, section 0). Every run is paired with its namesake in the folders named (the same "
             "run: settings, data, seed, held-out fold) at half or at twice its iterations. Both runs of a pair "
             "predict their held-out fold (fold 0 of their training cases, never a test case) as whole scans "
             "(`multitalent validate`), scored by the mean Dice over their heads. A run has converged when a pair "
             "it belongs to gained less than one Dice point from the shorter run to the longer: then the shorter "
             "run has reached the plateau and the longer lies on it, unless a later doubling of its chain gained a "
             "point or more (the plateau was not reached); a run in no pair cannot be judged.", "",
             "| run | paired with (folder) | iterations, shorter -> longer | held-out Dice, shorter -> longer (%) | "
             "gain of doubling (points) | held-out cases | the gain's standard error (points) | within one point |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for r in ctx["doubling"]:
        within = "n/a" if r["within"] is None else "yes" if r["within"] else "**no**"
        run = r["run"] if r.get("from") is None else f"{r['run']} in `{r['from']}`"
        lines.append(f"| {run} | `{r['folder']}` | {r['iterations'][0]} -> {r['iterations'][1]} | "
                     f"{_pct(r['dice'][0])} -> {_pct(r['dice'][1])} | {_points(r['gain'], '+.2f')} | "
                     f"{r['n_cases']} | {_points(r['se'], '.2f')} | {within} |")
    judged = {r["run"] for r in ctx["doubling"]}
    alone = [f"ablation_{n}" for n in ctx["names"] if f"ablation_{n}" not in judged]
    alone += [f"{singles_key(n)}_{ds}" for n in ctx.get("singles") or [] for ds in ctx["single_convergence"][n]
              if f"{singles_key(n)}_{ds}" not in judged]
    if alone:
        lines += ["", f"In no pair (cannot be judged): {', '.join(alone)}."]
    return lines + (["", stand_in_note(ctx), ""] if ctx.get("stand_ins") else [""])


def stand_in_note(ctx: dict) -> str:
    """The sentence naming the single-dataset models compared through a longer run of their chain (``stand_ins``)."""
    return ("Compared at the budget where they converged (stand-ins: the first run of the chain shown converged; "
            "chosen on the held-out folds, never on a test case; the paper's rule is N large enough to converge): "
            + ", ".join(f"{n} by its run in `{v['folder']}` ({v['iterations']} iterations)"
                        for n, v in ctx["stand_ins"].items()) + ".")


def gap_tests(mt: dict, single: dict, mt_ref: dict, single_ref: dict, heads: list[str]) -> dict:
    """Whether a change closes MultiTalent's gap to the single-dataset models: paired one-sided tests of the gap
    (MultiTalent minus the single-dataset models, each with the change) against the reference's gap (both
    without), over heads and over test cases; ``p_greater``: the change narrows the gap (or widens a lead)."""
    gap = np.subtract(per_head(mt, heads), per_head(single, heads))
    gap_ref = np.subtract(per_head(mt_ref, heads), per_head(single_ref, heads))
    c = [per_case(x, heads) for x in (mt, single, mt_ref, single_ref)]
    cases = sorted(set(c[0]).intersection(*c[1:]))
    return {"heads": paired(list(gap), list(gap_ref)),
            "cases": paired([c[0][k] - c[1][k] for k in cases], [c[2][k] - c[3][k] for k in cases])}


GAP_WORDS = {"**better**": "**narrows the gap**", "**worse**": "**widens the gap**"}


def singles_context(singles: list[str], summaries: dict, single_sums: dict, single_conv: dict, single_stats: dict,
                    mt_state: dict, heads: list[str], datasets: list[str], iterations: int,
                    why: str = "not flattened") -> dict:
    """The report's part on the single-dataset models trained with an ablation's change (``--singles``): their
    scores, convergence, MultiTalent-against-them tests and readings, and the gap tests against the reference's.
    An ablation without single-dataset models of its own is tested against the reference's (``against``), when
    they are trained: whether MultiTalent with the change beats the paper's single-dataset models. ``mt_state``: each
    MultiTalent run's convergence under the report's criterion (True, False, or None for a run not judged)."""
    against = {n: n for n in singles}
    if REFERENCE in singles:
        against.update({n: REFERENCE for n in mt_state if n not in singles})
    states = {n: [mt_state[n], *(c.get("converged") for c in single_conv[s].values())] for n, s in against.items()}
    both = {n: all(states[n]) for n in against}
    vs = {n: compare(summaries[n], single_sums[s], heads) for n, s in against.items()}
    gaps = {n: gap_tests(summaries[n], single_sums[n], summaries[REFERENCE], single_sums[REFERENCE], heads)
            for n in singles if n != REFERENCE and REFERENCE in singles}
    return {"singles": singles, "single_summaries": single_sums, "single_convergence": single_conv,
            "single_stats": single_stats, "single_iterations": iterations, "vs_singles": vs, "against": against,
            "single_readings": {n: reading(vs[n], both[n], unjudged_why(states[n], why)) for n in against},
            "gaps": gaps,
            "gap_readings": {n: GAP_WORDS.get(r, r) for n in gaps
                             for r in [reading(gaps[n], both[n] and both[REFERENCE],
                                               unjudged_why(states[n] + states[REFERENCE], why))]},
            "subsets": {n: sub for n, s in against.items()
                        for sub in [converged_subset(summaries[n], single_sums[s], single_conv[s],
                                                     bool(mt_state[n]), heads, why)] if sub},
            "single_avg_heads": {n: float(np.mean(per_head(single_sums[n], heads))) for n in singles},
            "single_avg_datasets": {n: dataset_average(single_sums[n], heads) for n in singles},
            "single_by_dataset": {n: per_dataset(single_sums[n], heads, datasets) for n in singles}}


def converged_subset(mt: dict, single: dict, single_conv: dict, mt_converged: bool, heads: list[str],
                     why: str = "not flattened") -> dict | None:
    """MultiTalent against its single-dataset models on the datasets whose single model has converged, when
    MultiTalent has and some but not all of them have (as ``docs/results.md`` does): the heads of those datasets,
    their tests and reading; the datasets are chosen by the training runs' criterion, never by a test case. None
    otherwise."""
    kept = [ds for ds, c in single_conv.items() if c.get("converged") is True]
    if not mt_converged or not kept or len(kept) == len(single_conv):
        return None
    hs = [h for h in heads if single["heads"][h]["dataset"] in kept]
    tests = compare(mt, single, hs)
    return {"datasets": kept, "heads": hs, "tests": tests, "reading": reading(tests, True, why),
            "mt_avg": dataset_average(mt, hs), "single_avg": dataset_average(single, hs)}


def per_dataset(summary: dict, heads: list[str], datasets: list[str]) -> dict[str, float | None]:
    """Dataset -> the mean Dice over its heads among ``heads``."""
    return {ds: dataset_average(summary, [h for h in heads if summary["heads"][h]["dataset"] == ds])
            for ds in datasets}


def singles_section(ctx: dict) -> list[str]:
    """The report's lines on MultiTalent against the single-dataset models with the same change."""
    singles, ref = ctx.get("singles") or [], ctx["reference"]
    if not singles:
        return []
    label = {n: f"`ablation_{n}`" for n in singles}
    lines = ["", "## MultiTalent against single-dataset models with the same change", "",
             "The paper's main comparison (its Table 1) with the change made on both sides: every single-dataset "
             f"model trains N = {ctx['single_iterations']} iterations on its own dataset's training cases, "
             f"MultiTalent 2N = {ctx['iterations']} on all of them (the paper's budget rule: 1000 against 2000 "
             "epochs), each predicts the test cases of its datasets. Paired one-sided t-tests; a = MultiTalent, "
             "b = the single-dataset models of the same change (an ablation without single-dataset models of its "
             "own: the paper's, `single_<dataset>`). A reading is a verdict only when MultiTalent and "
             f"all its single-dataset models have {converged_word(ctx)}; where MultiTalent has and only some of "
             "them have, the comparison is also made on the datasets whose single model has (chosen by the "
             "training runs' criterion, never by a test case)."
             + (" " + stand_in_note(ctx) if ctx.get("stand_ins") else "")
             + " Paper (13 datasets, converged): MultiTalent +1.05 points over datasets against the single-dataset "
             "nnU-Nets.", "",
             "| change | MultiTalent, over datasets | single-dataset, over datasets | over | n | mean difference | "
             "p (a > b) | p (a < b) | reading |", "|---|---:|---:|---|---:|---:|---:|---:|---|"]
    against = ctx.get("against") or {n: n for n in singles}
    for n, s in against.items():
        what = (ctx["what"][n] if n == s else
                f"`ablation_{n}` ({ctx['what'][n]}), against the paper's single-dataset models")
        for over in ("heads", "cases"):
            t = ctx["vs_singles"][n][over]
            lines.append(f"| {what} | {_pct(ctx['avg_datasets'][n])} | "
                         f"{_pct(ctx['single_avg_datasets'][s])} | {over} | {t['n']} | "
                         f"{_points(t['mean_difference'])} | {_p(t['p_greater'])} | {_p(t['p_less'])} | "
                         f"{ctx['single_readings'][n]} |")
        sub = (ctx.get("subsets") or {}).get(n)
        for over in ("heads", "cases") if sub else ():
            t = sub["tests"][over]
            lines.append(f"| {what}, on the datasets whose single model has converged "
                         f"({', '.join(sub['datasets'])}) | {_pct(sub['mt_avg'])} | {_pct(sub['single_avg'])} | "
                         f"{over} | {t['n']} | {_points(t['mean_difference'])} | {_p(t['p_greater'])} | "
                         f"{_p(t['p_less'])} | {sub['reading']} |")
    lines += ["", "| dataset | " + " | ".join(f"MultiTalent {label[n]} | single-dataset {label[n]}" for n in singles)
              + " |", "|---|" + "---:|---:|" * len(singles)]
    for ds in ctx["datasets"]:
        lines.append(f"| {ds} | " + " | ".join(f"{_pct(ctx['by_dataset'][n].get(ds))} | "
                                               f"{_pct(ctx['single_by_dataset'][n].get(ds))}" for n in singles)
                     + " |")
    lines.append("| mean over heads | " + " | ".join(f"{_pct(ctx['avg_heads'][n])} | "
                                                   f"{_pct(ctx['single_avg_heads'][n])}" for n in singles) + " |")
    lines += samples_table(ctx, singles, label)
    if ctx.get("gaps"):
        lines += ["", "**Does the change close MultiTalent's gap?** The gap is MultiTalent minus its single-dataset "
                  "models, per head and per test case; paired one-sided t-tests of the gap with the change (a) "
                  f"against the gap of the paper's recipe (b, `ablation_{ref}` against `single_<dataset>`). "
                  "p (a > b): the change narrows the gap.", "",
                  "| change | over | n | gap with the change | gap of the reference | difference | p (a > b) | "
                  "p (a < b) | reading |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for n, tests in ctx["gaps"].items():
            for over in ("heads", "cases"):
                t, own, base = tests[over], ctx["vs_singles"][n][over], ctx["vs_singles"][ref][over]
                lines.append(f"| {ctx['what'][n]} | {over} | {t['n']} | {_points(own['mean_difference'])} | "
                             f"{_points(base['mean_difference'])} | {_points(t['mean_difference'])} | "
                             f"{_p(t['p_greater'])} | {_p(t['p_less'])} | {ctx['gap_readings'][n]} |")
    return lines


def samples_table(ctx: dict, singles: list[str], label: dict[str, str]) -> list[str]:
    """The report's table of the training patches each model drew from each dataset (``ctx["samples"]``)."""
    samples = ctx.get("samples") or {}
    if not samples:
        return []
    lines = ["", "Training samples drawn per dataset (patches: iterations x batch x the dataset's share under each "
             "run's own case sampling, for MultiTalent as in the paper 1/sqrt(n) per case; expected counts of the "
             "random sampler; the single-dataset model compared, a stand-in included):", "",
             "| dataset | " + " | ".join(f"MultiTalent {label[n]} | single-dataset {label[n]}" for n in singles)
             + " |", "|---|" + "---:|---:|" * len(singles)]
    for ds in ctx["datasets"]:
        lines.append(f"| {ds} | " + " | ".join(f"{samples[n]['multitalent'].get(ds, 0.0):.0f} | "
                                               f"{samples[n]['single'].get(ds, 0.0):.0f}" for n in singles) + " |")
    return lines


def unjudged_why(states: list[bool | None], why: str) -> str:
    """Why a comparison of runs whose convergence ``states`` are these gets no verdict: ``why``, unless budget
    doubling decides (``why`` "not converged") and no run was shown unconverged, only some left unjudged."""
    if why == "not converged" and False not in states and None in states:
        return "not judged: a run in no budget pair"
    return why


def reading(tests: dict, flattened: bool, why: str = "not flattened") -> str:
    """The verdict of a comparison's tests (over heads and over cases) when both sides have converged under the
    report's criterion (``flattened``); otherwise *not measurable at this budget*, ``why`` saying which. A test
    without a p-value (fewer than two pairs) gives no verdict, as ``repro.statistics.judge``."""
    if not flattened:
        return f"not measurable at this budget ({why})"
    if any(t["p_greater"] is None or t["p_less"] is None for t in tests.values()):
        return "not testable (too few pairs)"
    if all(t["p_greater"] < ALPHA for t in tests.values()):
        return "**better**"
    if all(t["p_less"] < ALPHA for t in tests.values()):
        return "**worse**"
    if any(t["p_greater"] < ALPHA for t in tests.values()) and any(t["p_less"] < ALPHA for t in tests.values()):
        return "the tests disagree (one significant each way)"
    return "no significant difference"


def run(sizes: Sizes, out: Path, ablations: list[tuple[str, tuple]], seed: int, device: str, jobs: int,
        quiet: bool, reports: list[Path], command: str, recorded: Path | None = None,
        singles: list[str] = (), half: Path | None = None, double: list[Path] | None = None) -> dict:
    """Train (or resume) the reference and every ablation in ``out``, predict and score them, and write the report
    to ``OUT/ablations.md`` and each of ``reports``, with the evidence beside each (``recorded``: a reproduction
    report whose per-head Dice the runs are set beside; ``half``, ``double``: ablation folders of the same runs at
    half and at twice, four times, ... the budget, whose pairs with these decide convergence, ``budget_doubling``; a
    single-dataset model converged only in a longer folder is compared through that run, ``single_stand_ins``);
    returns the report context."""
    out.mkdir(parents=True, exist_ok=True)
    with _only_invocation(out):  # a second invocation on the folder would train the same unfinished run twice
        return _run(sizes, out, ablations, seed, device, jobs, quiet, reports, command, recorded, list(singles),
                    half, double)


def _run(sizes: Sizes, out: Path, ablations: list[tuple[str, tuple]], seed: int, device: str, jobs: int,
         quiet: bool, reports: list[Path], command: str, recorded: Path | None, singles: list[str],
         half: Path | None = None, double: list[Path] | None = None) -> dict:
    from multitalent.registry import HeadRegistry

    t0 = time.perf_counter()
    epochs = reference_epochs(sizes)
    sizes = ablation_sizes(sizes, ablations, singles)
    names = [REFERENCE] + [n for n, _ in ablations if n != REFERENCE]
    singles = [n for n in names if n in singles]  # in the report's order
    rep = Reproduction(sizes, out, seed, device, quiet, jobs=jobs)
    rep.check_sizes()
    rep.start_invocation(command)
    rep.say(f"ablations {', '.join(names)} ({sizes.name} sizes, {epochs} epochs, seed {seed}) -> {out}")
    rep.prepare_data()
    rep.train_all(only=[f"ablation_{n}" for n in names] + [f"{singles_key(n)}_{ds}" for n in singles
                                                             for ds in rep.dataset_ids])
    registry = HeadRegistry.load(rep.pre["all"] / "heads.json")
    heads = [h.id for h in registry.heads]
    summaries, conv, stats = {}, {}, {}
    folders = {}  # run name -> its folder, for the budget pairs
    for n in names:
        run_dir = folders[f"ablation_{n}"] = rep.train(f"ablation_{n}")  # trained above; in turn when --jobs 1
        summaries[n] = rep.predict_and_evaluate(f"ablation_{n}", run_dir, registry, None)
        conv[n], stats[n] = convergence(run_dir), run_stats(run_dir)
    single_sums, single_conv, single_stats, single_runs = {}, {}, {}, {}
    for n in singles:
        runs, single_sums[n] = rep.single_models_named(singles_key(n), registry, None)
        single_runs[n] = dict(runs)
        single_conv[n] = {ds: convergence(r) for ds, r in runs.items()}
        single_stats[n] = {ds: run_stats(r) for ds, r in runs.items()}
        folders.update({r.name: r for r in runs.values()})
    doubling, why, stand = None, "not flattened", {}
    if half is not None or double:  # the criterion of docs/results.md decides; the last quarter's reading stays
        # beside it
        doubling, why = budget_doubling(rep, folders, half, double), "not converged"
        others = {k: {} for r in doubling for k in (r["shorter"], r["longer"]) if k not in folders}  # other folders'
        decided = by_budget_pairs({f"ablation_{n}": conv[n] for n in names}
                                  | {f"{singles_key(n)}_{ds}": c for n in singles for ds, c in single_conv[n].items()}
                                  | others, doubling)
        conv = {n: decided[f"ablation_{n}"] for n in names}
        single_conv = {n: {ds: decided[f"{singles_key(n)}_{ds}"] for ds in single_conv[n]} for n in singles}
        for n in singles:  # a single model converged only at a longer budget: compared through that run
            of = {f"{singles_key(n)}_{ds}": ds for ds in single_conv[n]}
            for name, run_dir in single_stand_ins(decided, list(of), double or ()).items():
                ds, its = of[name], run_stats(run_dir)["iterations"]
                single_sums[n] = merge_datasets(single_sums[n], {ds: stand_in_scores(rep, name, ds, run_dir, its,
                                                                                     registry)})
                single_conv[n][ds] = {**single_conv[n][ds], "converged": True, "stand_in": _shown(run_dir)}
                stand[name] = {"folder": _shown(run_dir.parents[1]), "iterations": its}
                single_runs[n][ds] = run_dir
    by_dataset = {n: per_dataset(summaries[n], heads, rep.dataset_ids) for n in names}
    tests = {n: compare(summaries[n], summaries[REFERENCE], heads) for n in names[1:]}
    state = {n: conv[n].get("converged") for n in names}  # True / False / None (in no budget pair)
    given = dict(ablations)
    ctx = {"reference": REFERENCE, "names": names, "heads": heads, "summaries": summaries, "convergence": conv,
           "stats": stats, "tests": tests, "datasets": rep.dataset_ids, "by_dataset": by_dataset,
           "avg_heads": {n: float(np.mean(per_head(summaries[n], heads))) for n in names},
           "avg_datasets": {n: dataset_average(summaries[n], heads) for n in names},
           "readings": {n: reading(tests[n], bool(state[n] and state[REFERENCE]),
                                   unjudged_why([state[n], state[REFERENCE]], why)) for n in names[1:]},
           "doubling": doubling, "why": why, "stand_ins": stand,
           "paired": sorted({d for r in doubling or () for d in r["dirs"] if Path(d).parents[1] != out}),
           "what": {n: "MultiTalent as in the paper (the reference)" if n == REFERENCE else
                    ", ".join(f"{k}={v}" for k, v in given[n]) for n in names},
           "iterations": epochs * sizes.iterations_per_epoch, "sizes": sizes.name, "command": command,
           "date": _date_utc(), "machine": machine_description(device), "device": device,
           "cases": {n: per_case(summaries[n], heads) for n in names},
           "recorded": recorded_dice(recorded) if recorded else {}, "recorded_path": _shown(recorded),
           "recorded_iterations": recorded_iterations(recorded, f"ablation_{REFERENCE}") if recorded else None}
    ctx.update(singles_context(singles, summaries, single_sums, single_conv, single_stats, state, heads,
                               rep.dataset_ids, sizes.single_epochs * sizes.iterations_per_epoch, why))
    if singles:  # the patches of each dataset that each model drew (the runs compared: stand-ins included)
        from multitalent.preprocessing.pipeline import Preprocessed

        cases = Preprocessed.open(rep.pre["all"]).cases
        ctx["samples"] = {n: {"multitalent": samples_per_dataset(folders[f"ablation_{n}"], cases),
                              "single": {ds: samples_per_dataset(r, cases).get(ds, 0.0)
                                         for ds, r in single_runs[n].items()}} for n in singles}
    _write_json(rep.results / "ablations.json",
                {k: v for k, v in ctx.items() if k not in ("summaries", "single_summaries")})
    ctx["wall_s"] = time.perf_counter() - t0
    rep.say(f"{len(names)} runs scored")  # brings this invocation's wall time in results/invocations.json up to date
    invocations = rep.invocations()
    ctx["wall_total_s"], ctx["n_invocations"] = sum(i["wall_s"] for i in invocations), len(invocations)
    _write_reports(rep, write_ablation_report, ctx, [out / "ablations.md", *reports],
                   [Path(d) for d in ctx["paired"]])
    return ctx


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder (a reproduction folder; resumable)")
    p.add_argument("--ablation", action="append", default=[], metavar="NAME:FIELD=VALUE[,FIELD=VALUE]",
                   help="one ablation: TrainConfig fields changed from MultiTalent as in the paper (repeatable; "
                        "on a folder of an earlier invocation, name its ablations again)")
    p.add_argument("--singles", action="append", default=[], metavar="NAME",
                   help="also train the single-dataset models with ablation NAME's change (mt_2n: the paper's "
                        "recipe), N = half the reference's budget each (the paper's rule: MultiTalent 2N), and "
                        "test MultiTalent with the change against them; two names: whether the change closes "
                        "MultiTalent's gap (repeatable)")
    p.add_argument("--sizes", choices=sorted(SIZES), default="full", help=argparse.SUPPRESS)  # tests: tiny
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--jobs", type=int, default=2, help="training runs at once (default 2)")
    p.add_argument("--report", type=Path, default=DEFAULT_REPORT,
                   help="also write the report here (default docs/results_ablations.md); OUT/ablations.md always")
    p.add_argument("--recorded", type=Path, default=REPO / "docs" / "results.md",
                   help="a reproduction report whose single-dataset and MultiTalent per-head Dice the runs are set "
                        "beside (default docs/results.md; skipped when missing)")
    p.add_argument("--budget-factor", type=int, default=1, metavar="K",
                   help="K times the budget: the reference, every ablation and the single-dataset models (N) "
                        "(default 1: the full sizes' 2N = 8000 iterations); use a folder of its own")
    p.add_argument("--half-budget", type=Path, metavar="DIR",
                   help="an ablation folder of the same runs at half this budget (for --budget-factor 2: the "
                        "folder of --budget-factor 1): each run and its namesake there predict their held-out fold "
                        "as whole scans (multitalent validate, once, into each run's folder), and a run has "
                        "converged when doubling its budget gained less than one point of held-out Dice (the "
                        "criterion of docs/results.md), which then decides the readings")
    p.add_argument("--double-budget", type=Path, metavar="DIR", action="append", default=[],
                   help="a folder of some of the same runs at twice this budget (the same settings; it may hold "
                        "only the runs that --half-budget could not show converged), paired in the same way; "
                        "repeatable: the next at four times the budget, ..., each run's chain going on through "
                        "them, and a single-dataset model converged only at a longer budget is compared through "
                        "that run (its stand-in)")
    p.add_argument("--verbose", action="store_true", help="progress bars")
    args = p.parse_args(argv)
    if not args.ablation:
        p.error("name at least one --ablation NAME:FIELD=VALUE")
    try:
        ablations = [parse_ablation(a) for a in args.ablation]
    except ValueError as e:
        p.error(f"--ablation: {e}")
    names = [n for n, _ in ablations]
    taken = [n for n in names if n == REFERENCE or names.count(n) > 1]
    if taken:
        p.error(f"--ablation: {taken[0]!r} is named twice or is the reference's name ({REFERENCE})")
    unknown = [n for n in args.singles if n not in names + [REFERENCE]]
    if unknown:
        p.error(f"--singles: {unknown[0]!r} is not {REFERENCE} or an --ablation's name")
    if args.jobs < 1:
        p.error(f"--jobs: {args.jobs} is not a number of runs (1 or more)")
    argv = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/ablate.py " + " ".join(shlex.quote(a) for a in argv)
    sizes = FULL if args.sizes == "full" else SIZES[args.sizes]
    try:
        sizes = scaled_budget(sizes, args.budget_factor)
    except ValueError as e:
        p.error(f"--budget-factor: {e}")
    clash = name_clash(sizes, ablations)
    if clash:
        p.error(f"--ablation: {clash}")
    try:
        ablation_sizes(sizes, ablations, args.singles)
    except ValueError as e:
        p.error(f"--singles: {e}")
    if args.half_budget is not None:
        ref = args.half_budget / "runs" / f"ablation_{REFERENCE}" / "config.json"
        cfg = json.loads(ref.read_text(encoding="utf-8"))["config"] if ref.is_file() else None
        if cfg is None or 2 * cfg["epochs"] * cfg["iterations_per_epoch"] != (reference_epochs(sizes)
                                                                               * sizes.iterations_per_epoch):
            p.error(f"--half-budget: {ref}: " + ("missing; is the folder one of benchmarks/ablate.py?" if cfg is None
                                                 else f"{cfg['epochs'] * cfg['iterations_per_epoch']} iterations, "
                                                 f"not half of this invocation's "
                                                 f"{reference_epochs(sizes) * sizes.iterations_per_epoch}"))
    for folder in args.double_budget:
        if not (folder / "runs").is_dir():
            p.error(f"--double-budget: {folder}: no runs/ folder")
    try:
        singles = list(dict.fromkeys(args.singles))
        check_pairs(args.out, [f"ablation_{n}" for n in [REFERENCE, *names]]
                    + [f"{singles_key(n)}_{ds}" for n in singles for ds in sizes.datasets],
                    args.half_budget, args.double_budget)
        run(sizes, args.out, ablations, args.seed, args.device, args.jobs, not args.verbose,
            [args.report], command, args.recorded, singles, args.half_budget, args.double_budget)
    except PairError as e:  # namesake_run: a run in those folders is not one of these at another budget
        print(f"ablate.py: error: --half-budget/--double-budget: {e}", file=sys.stderr)
        return 2
    except UserInputError as e:  # bad input elsewhere (an exclusions file, ...): its message names the file
        print(f"ablate.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
