"""Aggregate per-case metrics into ``summary.json`` means, head groups and Markdown tables.

Units: in the summary dict/JSON, Dice is a fraction in 0..1 and HD95 is in mm. Human-facing text
(Markdown tables, plots) shows Dice in percent with the unit in the header. ``reference`` Dice
values and ``difficult_threshold`` are given in percent, as papers report them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from multitalent.errors import UserInputError
from multitalent.evaluation.config import EvaluateConfig
from multitalent.registry import HeadRegistry

FORMAT = "multitalent-evaluation/1"
GROUPS = ("all", "lesions", "difficult")
GROUP_TITLES = {"all": "all heads", "lesions": "lesions", "difficult": "difficult"}


def _num(x: float) -> float | None:
    """A JSON-safe float: NaN (undefined) becomes None."""
    x = float(x)
    return None if math.isnan(x) else x


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return _num(np.mean(vals)) if vals else None


def summarize(results: dict[str, dict[str, dict[str, dict]]], registry: HeadRegistry, head_ids: list[str],
              reference: dict[str, float] | None = None,
              difficult_threshold: float = EvaluateConfig.difficult_threshold) -> dict:
    """Build the summary from ``results`` (dataset -> case -> head id -> metrics of one case).

    Head means are over cases (HD95 with undefined values counted as the image diagonal); dataset
    means are over the dataset's heads; the dataset average is over datasets; groups are over heads.
    """
    if not 0 <= difficult_threshold <= 100:
        raise UserInputError(f"difficult threshold {difficult_threshold} must be a Dice in percent (0..100).")
    if reference is not None:
        _check_reference(reference, head_ids)
    heads = {hid: _head_summary(registry, hid, results) for hid in head_ids}
    for hid, h in heads.items():
        ref = reference[hid] / 100.0 if reference is not None else h["dice_mean"]
        h["reference_dice"] = ref
        h["difficult"] = ref is not None and ref < difficult_threshold / 100.0
    datasets = _dataset_summaries(registry, heads, results)
    members = {
        "all": list(heads),
        "lesions": [hid for hid, h in heads.items() if h["lesion"]],
        "difficult": [hid for hid, h in heads.items() if h["difficult"]],
    }
    groups = {g: {"heads": ids, "n_heads": len(ids), **_means([heads[i] for i in ids])} for g, ids in members.items()}
    cases = {ds: {case: {hid: {**m, "hd95": _num(m["hd95"]) if m["hd95"] is not None else None}
                         for hid, m in per_head.items()}
                  for case, per_head in per_case.items()}
             for ds, per_case in results.items()}
    return {
        "format": FORMAT,
        "units": {"dice": "fraction 0..1", "hd95": "mm"},
        "rules": {
            "both_empty": "dice 1.0, hd95 0.0",
            "one_empty": "dice 0.0, hd95 null (undefined); counted as the image diagonal in mm in means",
            "hd95": "95th percentile of pooled symmetric surface distances (6-connected surface voxels)",
        },
        "difficult_threshold_dice": difficult_threshold / 100.0,
        "reference": "given" if reference is not None else "own mean Dice",
        "n_cases": sum(len(v) for v in results.values()),
        "dataset_average": {"n_datasets": len(datasets), **_means(list(datasets.values()))},
        "groups": groups,
        "datasets": datasets,
        "heads": heads,
        "cases": cases,
    }


def _means(items: list[dict]) -> dict:
    """Mean Dice and mean HD95 over ``items`` (heads or datasets), the undefined ones left out."""
    return {"dice_mean": _mean([x["dice_mean"] for x in items]), "hd95_mean": _mean([x["hd95_mean"] for x in items])}


def _head_summary(registry: HeadRegistry, hid: str, results: dict) -> dict:
    """One head's means over its dataset's cases (HD95 with undefined values counted as the image diagonal)."""
    head = registry.heads[registry.index(hid)]
    per_case = [m[hid] for m in results.get(head.dataset, {}).values()]
    d = np.array([m["dice"] for m in per_case], dtype=float)
    counted = np.array([m["hd95_counted"] for m in per_case], dtype=float)
    return {
        "dataset": head.dataset,
        "name": head.name,
        "lesion": head.lesion,
        "n_cases": len(per_case),
        "dice_mean": _num(d.mean()) if d.size else None,
        "dice_std": _num(d.std()) if d.size else None,
        "dice_median": _num(np.median(d)) if d.size else None,
        "hd95_mean": _num(counted.mean()) if counted.size else None,
        "hd95_median": _num(np.median(counted)) if counted.size else None,
        "n_hd95_undefined": sum(1 for m in per_case if m["hd95"] is None or math.isnan(m["hd95"])),
    }


def _dataset_summaries(registry: HeadRegistry, heads: dict, results: dict) -> dict:
    """Per dataset with scored heads: its name, heads, cases and the means over its heads."""
    datasets: dict[str, dict] = {}
    for ds in registry.dataset_ids:
        ids = [hid for hid, h in heads.items() if h["dataset"] == ds]
        if ids:
            datasets[ds] = {"name": registry.datasets[ds].get("name", ds), "heads": ids,
                            "n_cases": len(results.get(ds, {})), **_means([heads[i] for i in ids])}
    return datasets


def _check_reference(reference: dict[str, float], head_ids: list[str]) -> None:
    missing = [h for h in head_ids if h not in reference]
    if missing:
        more = "..." if len(missing) > 5 else ""
        raise UserInputError(f"the reference Dice lacks head(s) {missing[:5]}{more}; "
                             "give a reference for every evaluated head.")
    bad = {h: v for h, v in reference.items()
           if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 100}
    if bad:
        raise UserInputError("reference Dice must be numbers in percent (0..100); "
                             f"bad: {dict(list(bad.items())[:5])}")


def reference_from_summary(summary: dict) -> dict[str, float]:
    """Per-head mean Dice in percent from another run's summary (e.g. a single-dataset baseline)."""
    heads = summary["heads"]
    return {hid: 100.0 * h["dice_mean"] for hid, h in heads.items() if h.get("dice_mean") is not None}


def load_reference(path: str | os.PathLike) -> dict[str, float]:
    """Read reference Dice: another run's ``summary.json`` or a JSON object head id -> Dice in percent."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserInputError(f"{path}: cannot read the reference Dice ({e}).") from None
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return reference_from_summary(data)
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             for v in data.values()):
        raise UserInputError(f"{path}: expected a summary.json or an object head id -> Dice in percent.")
    try:
        _check_reference(data, [])
    except UserInputError as e:
        raise UserInputError(f"{path}: {e}") from None
    return {k: float(v) for k, v in data.items()}


# --- Markdown -----------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100.0 * x:.2f}"


def _mm(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def format_dataset_table(summary: dict) -> str:
    """Markdown table: one row per dataset (mean over its heads), then the average over datasets."""
    rows = ["| dataset | name | heads | cases | Dice (%) | HD95 (mm) |",
            "|---|---|---:|---:|---:|---:|"]
    for ds, d in summary["datasets"].items():
        rows.append(f"| {ds} | {d['name']} | {len(d['heads'])} | {d['n_cases']} | "
                    f"{_pct(d['dice_mean'])} | {_mm(d['hd95_mean'])} |")
    avg = summary["dataset_average"]
    n_heads = summary["groups"]["all"]["n_heads"]
    rows.append(f"| **average over datasets** | | {n_heads} | {summary['n_cases']} | "
                f"{_pct(avg['dice_mean'])} | {_mm(avg['hd95_mean'])} |")
    return "\n".join(rows) + "\n"


def format_group_table(summary: dict) -> str:
    """Markdown table: mean over the heads of each group (all heads, lesions, difficult)."""
    thr = 100.0 * summary["difficult_threshold_dice"]
    titles = {**GROUP_TITLES, "difficult": f"difficult (reference Dice < {thr:g}%, {summary['reference']})"}
    rows = ["| group | heads | Dice (%) | HD95 (mm) |", "|---|---:|---:|---:|"]
    for g in GROUPS:
        grp = summary["groups"][g]
        rows.append(f"| {titles[g]} | {grp['n_heads']} | {_pct(grp['dice_mean'])} | "
                    f"{_mm(grp['hd95_mean'])} |")
    return "\n".join(rows) + "\n"


def format_head_table(summary: dict) -> str:
    """Markdown table: one row per head (means over cases)."""
    rows = ["| head | dataset | lesion | difficult | cases | Dice (%) | HD95 (mm) | HD95 undefined |",
            "|---|---|:---:|:---:|---:|---:|---:|---:|"]
    for hid, h in summary["heads"].items():
        rows.append(f"| {hid} | {h['dataset']} | {'yes' if h['lesion'] else ''} | "
                    f"{'yes' if h['difficult'] else ''} | {h['n_cases']} | {_pct(h['dice_mean'])} | "
                    f"{_mm(h['hd95_mean'])} | {h['n_hd95_undefined']} |")
    return "\n".join(rows) + "\n"


def format_markdown(summary: dict) -> str:
    """The whole ``summary.md`` report."""
    parts = [
        "# Evaluation\n",
        f"Predictions `{summary.get('pred_dir', '?')}`: {summary['n_cases']} case(s) in "
        f"{len(summary['datasets'])} dataset(s). Dice in percent, HD95 in mm; head values are means over "
        "cases (an undefined HD95, one mask empty, counts as the image diagonal); dataset values are means "
        "over the dataset's heads.\n",
    ]
    if summary.get("missing"):
        parts.append(f"**{len(summary['missing'])} case(s) had no prediction and were skipped** "
                     "(see `missing` in summary.json).\n")
    parts += ["## Datasets\n", format_dataset_table(summary), "## Head groups\n", format_group_table(summary),
              "## Heads\n", format_head_table(summary)]
    return "\n".join(parts)
