"""The statistics of the reproduction: convergence of the validation curves, samples drawn per dataset,
structure thickness, paired one-sided tests, verdicts (``judge``), comparisons of two models and the
findings (every paper claim with what was measured and its verdict)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np

from repro.common import (
    DIFFICULT_THRESHOLD,
    FT_PRETRAINING,
    PAPER_FIG2,
    PAPER_TABLE2_UNET,
    TARGET,
    _read_json,
    _train_log,
    _write_json,
    finetune_run,
    single_key,
)
from repro.text import CONDITIONS, _p, _pct, _points, _tests_text, _title

CONVERGENCE_TOL = 0.01  # one Dice point
ALPHA = 0.05


def convergence(run: Path) -> dict:
    """The run's validation curve and whether it has converged.

    The curve is the mean patch pseudo-Dice over the held-out fold after every epoch (``log.jsonl``). The
    criterion (the issue's): the run gained less than one Dice point over the last quarter of training,
    measured between the curve's mean over the ``w`` epochs that end at 75 % of training and its mean over
    the last ``w`` epochs, ``w`` = an eighth of the epochs (at least 2), so that the noise of a few
    validation patches does not decide. Fewer than 8 validated epochs cannot be judged.
    """
    recs = [r for r in _train_log(run) if r.get("mean_pseudo_dice") is not None]
    its = [int(r["iteration"]) for r in recs]
    y = [float(r["mean_pseudo_dice"]) for r in recs]
    out = {"iterations": its, "curve": y, "epochs": len(y), "gain_last_quarter": None, "converged": None}
    if len(y) < 8:
        return out
    w = max(2, round(len(y) / 8))
    q3 = round(0.75 * len(y))
    out["gain_last_quarter"] = float(np.mean(y[-w:]) - np.mean(y[q3 - w:q3]))
    out["converged"] = bool(out["gain_last_quarter"] < CONVERGENCE_TOL)
    out["final"] = float(np.mean(y[-max(1, len(y) // 4):]))
    out.update(noise_aware(y, w, out["gain_last_quarter"]))
    return out


def noise_aware(y: list[float], w: int, gain: float) -> dict:
    """The secondary, noise-aware reading of the same gain: the validation noise of one epoch's pseudo-Dice,
    estimated from the epoch-to-epoch differences over the second half of the curve (sd / sqrt 2, which a
    trend only inflates), gives the standard error of the difference of two means of ``w`` epochs; a run
    has converged *within noise* when its gain is below one point plus two standard errors, i.e. when the
    curve gives no evidence (one-sided, ~97.5 %) of a gain of a point or more."""
    d = np.diff(np.asarray(y[len(y) // 2:], dtype=np.float64))
    sigma = float(np.std(d, ddof=1) / np.sqrt(2)) if len(d) > 1 else 0.0
    se = sigma * float(np.sqrt(2.0 / w))
    return {"noise_sd": sigma, "gain_se": se, "converged_within_noise": bool(gain < CONVERGENCE_TOL + 2 * se)}


def within_noise(conv: dict) -> dict:
    """``conv`` with each run's ``converged`` replaced by the noise-aware reading of its last-quarter gain."""
    return {n: {**c, "converged": c.get("converged_within_noise", c.get("converged"))} for n, c in conv.items()}


def last_quarter(conv: dict) -> dict:
    """``conv`` with each run's ``converged`` replaced by the last-quarter criterion of the earlier runs."""
    return {n: {**c, "converged": c.get("converged_last_quarter", c.get("converged"))} for n, c in conv.items()}


def budget_pair_rows(pairs: dict, below: set[str]) -> list[dict]:
    """One row per budget pair (``Reproduction.budget_pairs``): each run's mean whole-scan Dice on the held-out
    fold over its heads (but those ``below`` resolution), the gain of the longer run over the shorter and whether
    it is below one point (None where a run has no held-out score)."""
    def mean(run: str) -> float | None:
        v = [d for h, d in pairs["heldout"].get(run, {}).items() if h not in below]
        return float(np.mean(v)) if v else None

    rows = []
    for shorter, longer in pairs["pairs"]:
        a, b = mean(shorter), mean(longer)
        gain = None if a is None or b is None else b - a
        se, n_cases = gain_standard_error(pairs.get("heldout_cases", {}), shorter, longer, below)
        rows.append({"shorter": shorter, "longer": longer, "dice": [a, b], "gain": gain,
                     "within": None if gain is None else bool(gain < CONVERGENCE_TOL), "se": se, "n_cases": n_cases})
    return rows


def gain_standard_error(cases: dict, shorter: str, longer: str, below: set[str]) -> tuple[float | None, int]:
    """How much of a pair's gain the choice of held-out cases alone could make: the standard error of the gain (the
    mean over heads of each head's mean paired difference over the cases both runs scored), sum_h var_h / n_h / H^2
    under the square root, heads fixed, cases the sample; and the number of held-out cases. Reported beside the
    criterion, never instead of it. (None, n) when a head has a single case."""
    a, b = cases.get(shorter) or {}, cases.get(longer) or {}
    heads = [h for h in a if h in b and h not in below]
    terms, seen = [], set()
    for h in heads:
        common = sorted(set(a[h]) & set(b[h]))
        seen |= set(common)
        d = np.array([b[h][c] - a[h][c] for c in common], dtype=float)
        terms.append(d.var(ddof=1) / len(d) if len(d) > 1 else np.nan)
    if not terms or not np.all(np.isfinite(terms)):
        return None, len(seen)
    return float(np.sqrt(np.sum(terms)) / len(terms)), len(seen)


def by_budget_pairs(conv: dict, rows: list[dict]) -> dict:
    """The criterion that decides the verdicts: a run has converged when a budget pair it belongs to gained less
    than one point of held-out whole-scan Dice from the shorter run to the longer (the same settings, twice the
    iterations): then the shorter run has reached the plateau and the longer lies on it. A run whose pairs all
    gained more has not; a run without a scored pair cannot be judged. A later doubling of the run's chain (from
    the run, or from a longer run of it) that gained a point or more overrides a pair within one point: the plateau
    was not reached, the run has not converged. The last-quarter reading stays in ``converged_last_quarter``."""
    scored = [r for r in rows if r["within"] is not None]

    def grew_later(name: str) -> bool:  # a doubling from ``name`` onward, along its chain, gained a point or more
        seen, todo = set(), [name]
        while todo:
            n = todo.pop()
            for r in scored:
                if r["shorter"] == n and r["longer"] not in seen:
                    if not r["within"]:
                        return True
                    seen.add(r["longer"])
                    todo.append(r["longer"])
        return False

    out = {}
    for name, c in conv.items():
        states = [r["within"] for r in scored if name in (r["shorter"], r["longer"])]
        state = (any(states) and not grew_later(name)) if states else None
        out[name] = {**c, "converged": state, "converged_last_quarter": c.get("converged")}
    return out


def stand_ins(conv: dict, names: list[str]) -> dict[str, str]:
    """For each of the table's runs ``names`` that has not converged by budget doubling, the first run of its chain
    (``double_<run>``, ``double_double_<run>``, ...) that has: the same model trained long enough, which stands in
    for it in every comparison (the paper's rule: N large enough to converge). Decided on the held-out folds, never
    on a test case."""
    out = {}
    for name in names:
        if conv.get(name, {}).get("converged") is True:
            continue
        longer = f"double_{name}"
        while longer in conv:
            if conv[longer].get("converged") is True:
                out[name] = longer
                break
            longer = f"double_{longer}"
    return out


def with_stand_ins(conv: dict, stand: dict[str, str]) -> dict:
    """``conv`` with each table run's state replaced by its stand-in's (``stand_ins``), under any reading."""
    return {**conv, **{name: {**conv[longer], "stand_in": longer} for name, longer in stand.items() if longer in conv}}


def merge_datasets(base: dict, parts: dict[str, dict]) -> dict:
    """The evaluation summary ``base`` (one model per dataset, ``multitalent evaluate``) with the heads, cases and
    dataset of each ``parts[ds]`` (another model of dataset ds, scored on the same test cases) in place of its own;
    the averages recomputed."""
    out = copy.deepcopy(base)
    for ds, part in parts.items():
        out["heads"].update({h: v for h, v in part["heads"].items() if v["dataset"] == ds})
        out["cases"][ds] = part["cases"][ds]
        out["datasets"][ds] = part["datasets"][ds]
    means = [v["dice_mean"] for v in out["datasets"].values() if v.get("dice_mean") is not None]
    out["dataset_average"]["dice_mean"] = float(np.mean(means)) if means else None
    for group in out.get("groups", {}).values():
        for field in ("dice_mean", "hd95_mean"):
            vals = [out["heads"][h].get(field) for h in group.get("heads", []) if h in out["heads"]]
            vals = [v for v in vals if v is not None]
            if field in group:
                group[field] = float(np.mean(vals)) if vals else None
    return out


def apply_stand_ins(ctx: dict, samples_of: Callable[[str], dict[str, float]] | None = None) -> dict:
    """The comparisons' models: each single-dataset model (main backbone) and fine-tuning that has converged only at
    a longer budget is replaced by its stand-in (``stand_ins``) in ``summaries["single"]`` and in the transfer's
    per-seed scores; the table's own models stay in ``summaries_table_budget`` / ``transfer_table_budget``; with
    ``samples_of`` (run -> samples drawn per dataset) the samples table gains the compared single-dataset models.
    Returns the keys to add to the report context (``stand_ins`` among them)."""
    conv, chains = ctx["convergence"], ctx.get("chains") or {}
    singles = [f"single_{ds}" for ds in ctx["dataset_ids"]]
    tr = ctx.get("transfer") or {"per_seed": {}}
    runs = transfer_runs(tr)
    fts = [runs[c][s] for c, seeds in tr["per_seed"].items() for s in seeds]
    stand = {n: longer for n, longer in stand_ins(conv, singles + fts).items() if longer in chains}
    out: dict = {"stand_ins": stand}
    parts = {n.removeprefix("single_"): chains[longer] for n, longer in stand.items() if n in singles}
    if parts and "single" in ctx["summaries"]:
        out["summaries_table_budget"] = {"single": ctx["summaries"]["single"]}
        out["summaries"] = {**ctx["summaries"], "single": merge_datasets(ctx["summaries"]["single"], parts)}
        if samples_of is not None:  # a stand-in drew 2x, 4x, ... its table run's samples
            out["samples"] = {**ctx.get("samples", {}), "its single-dataset model, as compared": {
                ds: samples_of(stand.get(f"single_{ds}", f"single_{ds}")).get(ds, 0.0) for ds in ctx["dataset_ids"]}}
    ft = {n: longer for n, longer in stand.items() if n in fts}
    if ft:
        per_seed = copy.deepcopy(tr["per_seed"])
        for c, seeds in per_seed.items():
            for seed in seeds:
                longer = ft.get(runs[c][seed])
                if longer:
                    sm = chains[longer]
                    seeds[seed] = {"dataset_dice": sm["datasets"][TARGET]["dice_mean"],
                                   "heads": {h: v["dice_mean"] for h, v in sm["heads"].items()}}
        out["transfer_table_budget"] = tr
        out["transfer"] = {**tr, "per_seed": per_seed}
    return out


def transfer_runs(tr: dict) -> dict[str, dict]:
    """The fine-tuning run of each condition and seed of the transfer ``tr`` ({cond: {seed: run}}; a context from
    before the fine-tunings could start from a longer pre-training names none: the table's own names)."""
    return tr.get("runs") or {c: {s: finetune_run(c, s) for s in seeds} for c, seeds in tr["per_seed"].items()}


def transfer_starts(tr: dict) -> list[str]:
    """The pre-trainings whose fine-tunings the transfer compares (from scratch takes none of their weights)."""
    starts = tr.get("starts") or FT_PRETRAINING
    return list(dict.fromkeys(starts[c] for c in tr["per_seed"] if c != "scratch"))


def samples_per_dataset(run: Path, pre_cases: list[dict]) -> dict[str, float]:
    """Expected training samples drawn from each dataset over the run: iterations x batch x the dataset's
    share under the run's case sampling (``case_probabilities`` over its training cases)."""
    from multitalent.data.sampling import case_probabilities

    cfg = _read_json(run / "config.json", {}) or {}
    ds_of = {c["case"]: c["dataset"] for c in pre_cases}
    cases = cfg.get("train_cases") or []
    if not cases:
        return {}
    datasets = [ds_of.get(c, "?") for c in cases]
    p = case_probabilities(datasets, (cfg.get("config") or {}).get("sampling", "inv_sqrt"))
    log = _train_log(run)
    total = (int(log[-1]["iteration"]) if log else 0) * int(cfg.get("batch_size") or 1)
    share: dict[str, float] = {}
    for d, q in zip(datasets, p, strict=True):
        share[d] = share.get(d, 0.0) + float(q)
    return {d: v * total for d, v in sorted(share.items())}


def head_thickness(dataset_dirs: dict[str, Path], test_cases: dict[str, list[str]], registry) -> dict:
    """Per head, the median over its dataset's test cases of the largest inscribed ball's diameter (mm) of
    the head's true mask: how thick the structure is, which decides whether a grid resolves it."""
    from scipy.ndimage import distance_transform_edt

    from multitalent import io

    out: dict[str, float | None] = {}
    labels = {}
    for ds, cases in test_cases.items():
        for c in cases:
            labels[c] = io.read_label(dataset_dirs[ds] / "labelsTs" / f"{c}.nii.gz")
    for h in registry.heads:
        vals = []
        for c in test_cases.get(h.dataset, []):
            lab, geo = labels[c]
            mask = np.isin(lab, h.labels)
            if mask.any():
                vals.append(2 * float(distance_transform_edt(mask, sampling=geo.spacing).max()))
        out[h.id] = float(np.median(vals)) if vals else None
    return out


def paired(a: list[float], b: list[float]) -> dict:
    """Paired one-sided t-tests of a against b: p for H1 a > b and for H1 a < b (``scipy.stats.ttest_rel``);
    identical differences have no t statistic: p is 0 or 1 by the sign of the difference."""
    from scipy.stats import ttest_rel

    d = np.subtract(a, b, dtype=float)
    res = {"n": len(d), "mean_difference": float(d.mean()) if len(d) else None, "p_greater": None,
           "p_less": None}
    if len(d) < 2:
        return res
    if np.allclose(d, d[0]):
        res["p_greater"] = 0.0 if d[0] > 0 else 1.0
        res["p_less"] = 0.0 if d[0] < 0 else 1.0
    else:
        res["p_greater"] = float(ttest_rel(a, b, alternative="greater").pvalue)
        res["p_less"] = float(ttest_rel(a, b, alternative="less").pvalue)
    return res


NOT_CONVERGED = "not measurable at this budget"
QUICK_VERDICT = "not judged (--quick checks the machinery)"


def judge(tests: list[dict], converged: bool | None, judged: bool) -> str:
    """The verdict of a 'a beats b' claim from its paired tests: it holds when every test finds a > b at
    ALPHA, does not hold when any finds a < b, and otherwise the difference is not significant; only between
    converged models, and never for ``--quick``."""
    if not judged:
        return QUICK_VERDICT
    if not converged:
        return NOT_CONVERGED
    if any(t["p_greater"] is None for t in tests):
        return "not testable (too few pairs)"
    if all(t["p_greater"] < ALPHA for t in tests):
        return "holds"
    if any(t["p_less"] < ALPHA for t in tests):
        return "does not hold"
    return "no significant difference"


def per_head(summary: dict, heads: list[str]) -> list[float]:
    return [summary["heads"][h]["dice_mean"] or 0.0 for h in heads]


def per_case(summary: dict, heads: list[str]) -> dict[str, float]:
    """Per test case, the mean Dice over those of ``heads`` that belong to the case's dataset."""
    out = {}
    for cases in summary["cases"].values():
        for case, hs in cases.items():
            vals = [hs[h]["dice"] for h in heads if h in hs and hs[h]["dice"] is not None]
            if vals:
                out[case] = float(np.mean(vals))
    return out


def compare(a: dict, b: dict, heads: list[str]) -> dict:
    """Paired tests of summary a against summary b over heads and over test cases."""
    ca, cb = per_case(a, heads), per_case(b, heads)
    cases = sorted(set(ca) & set(cb))
    return {"heads": paired(per_head(a, heads), per_head(b, heads)),
            "cases": paired([ca[c] for c in cases], [cb[c] for c in cases])}


def _mean_dice(summary: dict, heads: list[str]) -> float | None:
    vals = [summary["heads"][h]["dice_mean"] for h in heads if h in summary["heads"]]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def dataset_average(summary: dict, heads: list[str]) -> float | None:
    """Mean over datasets of the mean Dice over each dataset's heads among ``heads``."""
    by_ds: dict[str, list[float]] = {}
    for h in heads:
        v = summary["heads"].get(h, {})
        if v.get("dice_mean") is not None:
            by_ds.setdefault(v["dataset"], []).append(v["dice_mean"])
    return float(np.mean([np.mean(v) for v in by_ds.values()])) if by_ds else None


def all_converged(conv: dict, names: list[str]) -> bool | None:
    """True when every named run met the convergence criterion; None when one cannot be judged."""
    states = [conv.get(n, {}).get("converged") for n in names]
    if any(s is False for s in states):
        return False
    return None if any(s is None for s in states) else True


def _conv_note(conv: dict, names: list[str]) -> str:
    bad = [n for n in names if conv.get(n, {}).get("converged") is not True]
    return "" if not bad else f"; not shown converged: {', '.join(bad)}"


# --- the findings: every paper claim, what was measured, the verdict --------------------------------
def _finding(key: str, claim: str, paper: str, measured: str, verdict: str, tests: dict | None = None) -> dict:
    return {"key": key, "claim": claim, "paper": paper, "measured": measured, "verdict": verdict, "tests": tests}


def _arch_findings(ctx: dict, arch: str, heads: list[str]) -> list[dict]:
    """Table 1 for one backbone: MultiTalent against its single-dataset models, on all, lesion and difficult
    heads."""
    sizes, summaries, conv, judged = ctx["sizes"], ctx["summaries"], ctx["convergence"], ctx["judged"]
    mt_key, sg_key = f"multitalent_{arch}", single_key(arch, sizes.archs[0])
    if mt_key not in summaries or sg_key not in summaries:
        return []
    mt, sg = summaries[mt_key], summaries[sg_key]
    names = [mt_key] + [f"{sg_key}_{ds}" for ds in ctx["dataset_ids"]]
    converged = all_converged(conv, names)
    cnote = _conv_note(conv, names)
    paper = PAPER_FIG2.get(arch, {})
    title = _title(mt_key)
    lesion_ids = {h.id for h in ctx["registry"].heads if h.lesion}
    lesions = [h for h in heads if h in lesion_ids]
    difficult = [h for h in heads if summaries["single"]["heads"][h]["difficult"]]
    t_all = compare(mt, sg, heads)
    d_avg = _diff(dataset_average(mt, heads), dataset_average(sg, heads))
    pf = paper.get("datasets")
    out = [_finding(
        f"t1_average_{arch}", f"{title} beats the single-dataset models of its architecture",
        f"Fig. 2: {pf[1]:.2f} vs {pf[0]:.2f} ({pf[1] - pf[0]:+.2f}) over datasets" if pf else "Fig. 2",
        f"over datasets {_pct(dataset_average(mt, heads))} vs {_pct(dataset_average(sg, heads))} "
        f"({_points(d_avg)}), over heads {_pct(_mean_dice(mt, heads))} vs {_pct(_mean_dice(sg, heads))}; "
        f"{_tests_text(t_all)}{cnote}", judge([t_all["heads"], t_all["cases"]], converged, judged), t_all)]
    d_all = _diff(_mean_dice(mt, heads), _mean_dice(sg, heads))
    for group, hs, fig in (("lesions", lesions, "lesions"), ("difficult", difficult, "difficult")):
        t = compare(mt, sg, hs)
        d = _diff(_mean_dice(mt, hs), _mean_dice(sg, hs))
        verdict = judge([t["heads"], t["cases"]], converged, judged) if hs else "no such heads"
        if verdict == "holds" and (d is None or d_all is None or d <= d_all):
            verdict = "holds, but the gain is not larger than on all heads"
        pf = paper.get(fig)
        label = "lesion heads" if group == "lesions" else \
            f"difficult heads (single-dataset Dice < {DIFFICULT_THRESHOLD:.0f} %)"
        out.append(_finding(
            f"t1_{group}_{arch}", f"{title}: the gain is largest on {label}",
            f"Fig. 2: {pf[1]:.2f} vs {pf[0]:.2f} ({pf[1] - pf[0]:+.2f}; all classes "
            f"{paper['heads'][1] - paper['heads'][0]:+.2f})" if pf else "Fig. 2",
            f"{len(hs)} heads: {_pct(_mean_dice(mt, hs))} vs {_pct(_mean_dice(sg, hs))} ({_points(d)}; all "
            f"heads {_points(d_all)}); {_tests_text(t)}{cnote}", verdict, t))
    return out + _converged_subset_findings(ctx, arch, heads)


def _converged_subset_findings(ctx: dict, arch: str, heads: list[str]) -> list[dict]:
    """MultiTalent against the single-dataset models on the datasets whose single model has converged, when
    MultiTalent has and some but not all of the single models have: the same claim judged where the evidence
    allows (the subset is chosen by the training runs' held-out folds, never by a test case)."""
    sizes, summaries, conv, judged = ctx["sizes"], ctx["summaries"], ctx["convergence"], ctx["judged"]
    mt_key, sg_key = f"multitalent_{arch}", single_key(arch, sizes.archs[0])
    single = {ds: conv.get(f"{sg_key}_{ds}", {}).get("converged") is True for ds in ctx["dataset_ids"]}
    if conv.get(mt_key, {}).get("converged") is not True or all(single.values()) or not any(single.values()):
        return []
    kept = [ds for ds, ok in single.items() if ok]
    mt, sg = summaries[mt_key], summaries[sg_key]
    hs = [h for h in heads if sg["heads"][h]["dataset"] in kept]
    t = compare(mt, sg, hs)
    title = _title(mt_key)
    where = f"on the datasets whose single model has converged ({', '.join(kept)})"
    out = [_finding(
        f"t1_converged_{arch}", f"{title} beats the single-dataset models of its architecture, {where}",
        "Fig. 2 (all datasets)",
        f"{len(kept)} of {len(single)} datasets, {len(hs)} heads: over datasets {_pct(dataset_average(mt, hs))} vs "
        f"{_pct(dataset_average(sg, hs))}, over heads {_pct(_mean_dice(mt, hs))} vs {_pct(_mean_dice(sg, hs))}; "
        f"{_tests_text(t)}", judge([t["heads"], t["cases"]], True, judged) if hs else "no such heads", t)]
    # the same rule for the lesion and difficult heads of those datasets (the paper's largest gains)
    lesion_ids = {h.id for h in ctx["registry"].heads if h.lesion}
    d_all = _diff(_mean_dice(mt, hs), _mean_dice(sg, hs))
    for group, sub in (("lesions", [h for h in hs if h in lesion_ids]),
                       ("difficult", [h for h in hs if sg["heads"][h]["difficult"]])):
        if not sub:
            continue
        tg = compare(mt, sg, sub)
        d = _diff(_mean_dice(mt, sub), _mean_dice(sg, sub))
        verdict = judge([tg["heads"], tg["cases"]], True, judged)
        if verdict == "holds" and (d is None or d_all is None or d <= d_all):
            verdict = "holds, but the gain is not larger than on all heads"
        label = "lesion heads" if group == "lesions" else \
            f"difficult heads (single-dataset Dice < {DIFFICULT_THRESHOLD:.0f} %)"
        out.append(_finding(
            f"t1_converged_{group}_{arch}", f"{title}: the gain is largest on {label}, {where}",
            f"Fig. 2 ({group})",
            f"{len(sub)} heads: {_pct(_mean_dice(mt, sub))} vs {_pct(_mean_dice(sg, sub))} ({_points(d)}; all "
            f"{len(hs)} heads of those datasets {_points(d_all)}); {_tests_text(tg)}", verdict, tg))
    return out


def _merged_findings(ctx: dict, heads: list[str]) -> list[dict]:
    """Sigmoid heads against the merged softmax."""
    summaries, conv = ctx["summaries"], ctx["convergence"]
    if "merged_softmax" not in summaries:
        return []
    main = f"multitalent_{ctx['sizes'].archs[0]}"
    ms = summaries["merged_softmax"]
    t = compare(summaries[main], ms, heads)
    names = [main, "merged_softmax"]
    found = {h for cases in ms.get("cases", {}).values() for heads_ in cases.values()
             for h, r in heads_.items() if (r.get("pred_voxels") or 0) > 0}
    collapsed = ("; the merged softmax predicted no foreground for any head on any test case"
                 if not found else f"; the merged softmax predicted foreground for {len(found)} heads")
    return [_finding(
        "t1_merged", "Sigmoid heads per (dataset, class) beat one softmax over merged classes",
        "Sect. 2: a merged softmax cannot represent overlapping or conflicting classes (no figure)",
        f"over datasets {_pct(dataset_average(summaries[main], heads))} vs "
        f"{_pct(dataset_average(ms, heads))}; {_tests_text(t)}{collapsed}{_conv_note(conv, names)}",
        judge([t["heads"], t["cases"]], all_converged(conv, names), ctx["judged"]), t)]


def _fidelity_findings(ctx: dict) -> list[dict]:
    """Each conflicting head of MultiTalent against its own and the other protocols' truths."""
    conv, judged = ctx["convergence"], ctx["judged"]
    main = f"multitalent_{ctx['sizes'].archs[0]}"
    out = []
    for conflict, entry in ctx["fidelity"]["conflicts"].items():
        rows = [r for r in entry["rows"] if r["model"] == main]
        if not entry["cases"] or not rows:
            out.append(_finding(f"fidelity_{conflict}", f"{conflict}: each head follows its own dataset's protocol",
                                "Fig. 1 / Sect. 2", "no test case holds every protocol's truth", "not testable"))
            continue
        tests, parts = [], []
        for r in rows:
            own = r["per_case"][r["own"]]
            for other in entry["truths"]:
                if other == r["own"]:
                    continue
                t = paired(own, r["per_case"][other])
                tests.append(t)
                parts.append(f"{r['head']} own - other {_points(t['mean_difference'])} (p = {_p(t['p_greater'])})")
        out.append(_finding(
            f"fidelity_{conflict}", f"{conflict}: each {_title(main)} head follows its own dataset's protocol",
            "Fig. 1 / Sect. 2: conflicting protocols are kept apart (no figure)",
            f"{len(entry['cases'])} cases; " + "; ".join(parts) + _conv_note(conv, [main]),
            judge(tests, all_converged(conv, [main]), judged), {"per_head": tests}))
    return out


def _transfer_findings(ctx: dict) -> list[dict]:
    """MultiTalent pre-training against from scratch and against supervised pre-training (Table 2)."""
    tr, conv = ctx["transfer"], ctx["convergence"]
    seeds = sorted(tr["per_seed"]["multitalent"], key=int)
    runs = transfer_runs(tr)
    ft_runs = [runs[c][s] for c in CONDITIONS for s in seeds] + transfer_starts(tr)

    def mean(c: str) -> float:
        return float(np.mean([tr["per_seed"][c][s]["dataset_dice"] for s in seeds]))

    out = []
    for other in ("scratch", "supervised"):
        a = [tr["per_seed"]["multitalent"][s]["dataset_dice"] for s in seeds]
        b = [tr["per_seed"][other][s]["dataset_dice"] for s in seeds]
        th = tr["heads"]
        ha = [float(np.mean([tr["per_seed"]["multitalent"][s]["heads"][h] for s in seeds])) for h in th]
        hb = [float(np.mean([tr["per_seed"][other][s]["heads"][h] for s in seeds])) for h in th]
        t = {"seeds": paired(a, b), "heads": paired(ha, hb)}
        pb = PAPER_TABLE2_UNET["BTCV"]
        paper = (f"Table 2 (U-Net, BTCV): {pb[3]:.2f} vs {pb[0]:.2f} from scratch (p {pb[4]})" if other == "scratch"
                 else f"Table 2 (U-Net, BTCV): {pb[3]:.2f} vs {pb[1]:.2f} supervised")
        out.append(_finding(
            f"transfer_{other}", f"MultiTalent pre-training beats {CONDITIONS[other]}", paper,
            f"{_pct(mean('multitalent'))} vs {_pct(mean(other))} ({_points(mean('multitalent') - mean(other))}; "
            f"one-sided paired p = {_p(t['seeds']['p_greater'])} over {t['seeds']['n']} seeds, "
            f"{_p(t['heads']['p_greater'])} over {t['heads']['n']} heads){_conv_note(conv, ft_runs)}",
            judge([t["seeds"], t["heads"]], all_converged(conv, ft_runs), ctx["judged"]), t))
    return out


def _cost_findings(ctx: dict) -> list[dict]:
    """Training and inference cost of one MultiTalent model against the K single-dataset models."""
    cost, inf, judged = ctx["cost"], ctx["inference"], ctx["judged"]
    k = len(ctx["dataset_ids"])
    exp = cost.get("expected", k / 2)
    return [
        _finding("cost_training", f"Training one MultiTalent model is ~K/{k / exp:.0f} = {exp:.2f}x cheaper than "
                 f"K = {k} single-dataset models", "~6.5x for K = 13",
                 f"{cost['ratio']:.2f}x (median epoch x epochs: {cost['multitalent_s']:.0f} s vs "
                 f"{cost['singles_s']:.0f} s)",
                 ("holds" if cost["ratio"] >= 0.75 * exp else "does not hold") if judged else QUICK_VERDICT),
        _finding("cost_inference", f"Inference with one model is ~K = {k}x faster than the K single-dataset models",
                 "~13x for K = 13", f"{inf['ratio']:.2f}x ({inf['multitalent_s']:.1f} s vs {inf['ensemble_s']:.1f} s "
                 f"on {len(inf['scans'])} scan(s))",
                 ("holds" if inf["ratio"] >= 0.5 * k else "does not hold") if judged else QUICK_VERDICT),
    ]


def not_worse(tests: list[dict], converged: bool | None, judged: bool) -> str:
    """The verdict of an 'a keeps up with b' claim: it does not hold when any paired test finds a < b at ALPHA,
    and holds otherwise; only between converged models, and never for ``--quick``."""
    if not judged:
        return QUICK_VERDICT
    if not converged:
        return NOT_CONVERGED
    if any(t["p_less"] is None for t in tests):
        return "not testable (too few pairs)"
    return "does not hold" if any(t["p_less"] < ALPHA for t in tests) else "holds"


def mean_summary(summaries: list[dict]) -> dict:
    """The per-head and per-case Dice of several summaries (seeds of one model) averaged, in summary form (what
    ``per_head``, ``per_case`` and ``compare`` read)."""
    first = summaries[0]
    heads = {h: {**v, "dice_mean": _mean_or_none([s["heads"][h]["dice_mean"] for s in summaries])}
             for h, v in first["heads"].items()}
    cases = {ds: {c: {h: {"dice": _mean_or_none([s["cases"][ds][c][h]["dice"] for s in summaries])} for h in hs}
                  for c, hs in cs.items()} for ds, cs in first["cases"].items()}
    return {"heads": heads, "cases": cases}


def _mean_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


EXT_PAPER = "no figure (the paper's closing remark: no restrictions on additional datasets)"


def extension_findings(ctx: dict) -> list[dict]:
    """Adding a dataset (``--extend``): no forgetting of the old heads, new heads as good as the alternatives."""
    ext, conv, judged = ctx.get("extension"), ctx["convergence"], ctx["judged"]
    if not ext:
        return []
    sm, base, scratch = ext["summaries"], "pretrain_multitalent", ext["scratch"]
    old = [h for h in ext["old_heads"] if h in ctx["resolved"]]
    new = [h for h in ext["new_heads"] if h in ctx["resolved"]]
    finetuned = mean_summary(list(ext["finetuned"].values()))
    out = []
    for run, label in (("extend_union", "with the original data"), ("extend_distill", "without it (distillation)")):
        t = compare(sm[run], sm[base], old)
        out.append(_finding(
            f"ext_old_{run}", f"Extending {label} keeps the old heads (no significant loss against the base model)",
            EXT_PAPER, f"{_pct(_mean_dice(sm[run], old))} vs {_pct(_mean_dice(sm[base], old))} "
            f"({_points(_diff(_mean_dice(sm[run], old), _mean_dice(sm[base], old)))}; {_tests_less(t)})"
            f"{_conv_note(conv, [run, base])}",
            not_worse([t["heads"], t["cases"]], all_converged(conv, [run, base]), judged), t))
        for other, name, runs in ((scratch, f"a model from scratch on all datasets ({scratch})", [scratch]),
                                  ("finetuned", "fine-tuning the base model to the new dataset alone",
                                   list(ext["finetuned"]))):
            b = finetuned if other == "finetuned" else sm[other]
            t = compare(sm[run], b, new)
            out.append(_finding(
                f"ext_new_{run}_{other if other == 'finetuned' else 'scratch'}",
                f"Extending {label}: the new heads keep up with {name}", EXT_PAPER,
                f"{_pct(_mean_dice(sm[run], new))} vs {_pct(_mean_dice(b, new))} "
                f"({_points(_diff(_mean_dice(sm[run], new), _mean_dice(b, new)))}; {_tests_less(t)})"
                f"{_conv_note(conv, [run, *runs])}",
                not_worse([t["heads"], t["cases"]], all_converged(conv, [run, *runs]), judged), t))
    return out


def _tests_less(t: dict) -> str:
    return (f"one-sided paired p (a < b) = {_p(t['heads']['p_less'])} over {t['heads']['n']} heads, "
            f"{_p(t['cases']['p_less'])} over {t['cases']['n']} cases")


def findings(ctx: dict) -> list[dict]:
    """Every paper claim with what was measured here and its verdict (``judge``); a run with a stand-in
    (``apply_stand_ins``) is judged by its stand-in's convergence."""
    ctx = {**ctx, "convergence": with_stand_ins(ctx["convergence"], ctx.get("stand_ins") or {})}
    heads = [h for h in ctx["summaries"]["single"]["heads"] if h in ctx["resolved"]]
    out = []
    for arch in ctx["sizes"].archs:
        out += _arch_findings(ctx, arch, heads)
    return (out + _merged_findings(ctx, heads) + _fidelity_findings(ctx) + _transfer_findings(ctx)
            + _cost_findings(ctx) + extension_findings(ctx))


# --- the analysis of the runs ------------------------------------------------------------------------
JUDGED_SIZES = ("full", "gpu")  # sizes whose report gives verdicts; --quick and the test sizes judge nothing


def analysis(rep, runs: dict, pre_all, sizes, spacing, pairs: dict | None = None) -> dict:
    """Convergence of every run (by its budget pairs, ``pairs`` from ``Reproduction.budget_pairs``; the
    last-quarter readings beside), samples drawn per dataset, head thickness and the resolved heads (``rep``: the
    ``Reproduction``)."""
    conv = {name: convergence(rep.runs / name) for name in runs}
    # the single-dataset model of each dataset (any backbone: same N and batch) and the multi-dataset runs
    samples: dict[str, dict[str, float]] = {"its single-dataset model": {
        ds: samples_per_dataset(rep.runs / f"single_{ds}", pre_all.cases).get(ds, 0.0)
        for ds in rep.dataset_ids if (rep.runs / f"single_{ds}" / "config.json").is_file()}}
    for name in [f"multitalent_{a}" for a in sizes.archs] + ["merged_softmax"]:
        if (rep.runs / name / "config.json").is_file():
            samples[_title(name)] = samples_per_dataset(rep.runs / name, pre_all.cases)
    cache = rep.results / "head_thickness.json"
    thickness = _read_json(cache)
    if thickness is None:
        thickness = head_thickness(rep.dataset_dirs, rep.test_cases, rep.registry)
        _write_json(cache, thickness)
    limit = 2 * max(spacing)
    resolved = [h for h, t in thickness.items() if t is not None and t >= limit]
    per_ds: dict[str, int] = {}
    for c in pre_all.cases:
        per_ds[c["dataset"]] = per_ds.get(c["dataset"], 0) + 1
    rows = budget_pair_rows(pairs or {"pairs": [], "heldout": {}}, set(thickness) - set(resolved))
    conv = by_budget_pairs(conv, rows)
    return {"convergence": conv, "pair_rows": rows, "samples": samples, "thickness": thickness, "resolved": resolved,
            "resolution_limit_mm": limit, "judged": sizes.name in JUDGED_SIZES,
            "train_cases_per_dataset": per_ds}
