r"""Where the models' errors lie: every head's false positives on the test cases, sorted by the true structure
they fall in, from the phantom collection's full ground truth.

Why: ``docs/results.md`` and ``docs/results_ablations.md`` have MultiTalent below its single-dataset models on a few
heads (the thorax's heart, the pancreas), and no ablation of the method's parts explained it. A partially labelled
collection gives each head negatives only in its own dataset's images, so a head can fire on anatomy that its
own dataset rarely shows but that the shared backbone has learnt to pick out for other datasets' heads. The
phantoms know every structure in every case (``ground_truth/<case>/<structure>.nii.gz``), so each false positive
can be placed. A *misfire* is one of two kinds: *off-target*, inside a structure that cannot overlap the head's
own (the heart head on the liver), rather than at the head's border or in a neighbour it shares tissue with (the
heart head on the aortic root, which another protocol gives to the aorta); or *distant*, more than 15 mm from the
head's truth in any tissue (the lung head on abdominal fat; ``--distant-mm``). For each run the report gives, per
head, the Dice, the false-positive volume, both kinds of misfire and the structures they lie in; and, as an
*oracle* that no model could use (it reads the truth), the Dice with the misfires removed, so that the share of
MultiTalent's gap they make is measured. Test cases are only read here, never used to choose anything.

    python benchmarks/error_anatomy.py --out /work/ablate --run single=single \
        --run multitalent=ablation_mt_2n_test --run single_w16=ablation_width16_single \
        --run multitalent_w16=ablation_width16_test --gap multitalent:single --gap multitalent_w16:single_w16

``--run LABEL=KEY`` names ``OUT/predictions/KEY/<case>/<dataset>.nii.gz`` (what ``reproduce.py`` and ``ablate.py``
write: every run's label maps per source dataset; KEY may list several folders, comma-separated). Each head is
scored on its own dataset's cases that the first run predicted. ``--heldout`` scores the held-out training cases
instead (never a test case): KEY then names runs, ``OUT/runs/KEY``, whose held-out fold ``multitalent validate``
predicted (``RUN/validation/predictions``):

    for r in ablation_mt_2n single_D001 single_D003 single_D005 single_D006 single_D007; do
        multitalent validate /work/ablate/runs/$r; done
    python benchmarks/error_anatomy.py --out /work/ablate --heldout \
        --run single=single_D001,single_D003,single_D005,single_D006,single_D007 \
        --run multitalent=ablation_mt_2n --gap multitalent:single

``--gap A:B`` adds the paired tests of A against B over heads and over cases, as predicted and with the misfires
removed from both. Exit code 2 for a folder without the collection, a run without the first run's cases, or a
bad option.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from repro.common import _date_utc, machine_description  # noqa: E402
from repro.statistics import paired  # noqa: E402

from multitalent.errors import UserInputError  # noqa: E402
from multitalent.evaluation.metrics import dice  # noqa: E402
from multitalent.io import read_label  # noqa: E402
from multitalent.phantoms import anatomy as A  # noqa: E402
from multitalent.phantoms.collection import _may_overlap, dataset_def, head_recipe  # noqa: E402

# a false positive this far from the head's truth (mm) is a misfire, not a border error
DISTANT_MM = 15.0
# a (head, case) with this much misfire volume (mL) gets a row of its own in the report
MISFIRE_ROW_ML = 10.0
# a derived truth structure stands for the anatomical one it is drawn from
DERIVED_FROM = {"spleen_coarse": "spleen"}


def off_target_structures(head: str) -> list[str]:
    """The truth structures that cannot overlap head ``head``'s own (by the phantom's anatomy): a false
    positive there is the head firing on another organ. The body, which holds everything, is never one."""
    d = dataset_def(head.split("_", 1)[0])
    union = [DERIVED_FROM.get(s, s) for s in head_recipe(d)[head]["union"]]
    return [s for s in sorted(A.STRUCTURES) if s != "body" and not any(_may_overlap(s, u) for u in union)]


def case_errors(pred: np.ndarray, truth: np.ndarray, structures: dict[str, np.ndarray],
                spacing: tuple[float, float, float], distant_mm: float = DISTANT_MM) -> dict:
    """One head on one case: Dice (%), false-positive volume (mL); the false positives inside another organ
    (``structures``: the off-target structures' masks) with where they lie, and those farther than
    ``distant_mm`` from the head's truth in any tissue (all of them when the truth is empty); and the Dice with
    both kinds removed (the oracle)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    fp = pred & ~truth
    off = np.zeros_like(fp)
    where = {}
    for name, mask in structures.items():
        hit = fp & mask
        n = int(np.count_nonzero(hit))
        if n:
            where[name] = n * voxel_ml
            off |= hit
    if truth.any():
        distant = fp & (ndimage.distance_transform_edt(~truth, sampling=spacing) > distant_mm)
    else:
        distant = fp
    misfire = off | distant
    return {"dice": 100 * dice(pred, truth), "fp_ml": int(np.count_nonzero(fp)) * voxel_ml,
            "off_target_ml": int(np.count_nonzero(off)) * voxel_ml, "where_ml": where,
            "distant_ml": int(np.count_nonzero(distant)) * voxel_ml,
            "misfire_ml": int(np.count_nonzero(misfire)) * voxel_ml,
            "dice_without_misfires": 100 * dice(pred & ~misfire, truth)}


def _dataset_dir(raw: Path, dataset: str) -> Path:
    found = sorted(raw.glob(f"Dataset{int(dataset[1:]):03d}_*"))
    if not found:
        raise UserInputError(f"{raw}: no folder of dataset {dataset}.")
    return found[0]


def _sources(out: Path, key: str, heldout: bool) -> list[Path]:
    """The prediction folders of ``--run LABEL=KEY``: ``OUT/predictions/KEY``, or with ``--heldout`` the held-out
    predictions of run ``OUT/runs/KEY`` (``multitalent validate``); KEY may list several, comma-separated (the
    single-dataset models, one per dataset)."""
    names = [k for k in key.split(",") if k]
    if heldout:
        return [out / "runs" / k / "validation" / "predictions" for k in names]
    return [out / "predictions" / k for k in names]


def _prediction(sources: list[Path], case: str, dataset: str) -> Path | None:
    for src in sources:
        path = src / case / f"{dataset}.nii.gz"
        if path.exists():
            return path
    return None


def _cases(raw: Path, dataset: str, first: list[Path]) -> list[tuple[str, Path]]:
    """The cases of ``dataset`` that the first run predicted, with their label maps (test cases from
    ``labelsTs``, held-out training cases from ``labelsTr``)."""
    ds_dir = _dataset_dir(raw, dataset)
    found = []
    for split in ("labelsTs", "labelsTr"):
        for p in sorted((ds_dir / split).glob("*.nii.gz")):
            case = p.name[: -len(".nii.gz")]
            if _prediction(first, case, dataset) is not None:
                found.append((case, p))
    return found


def measure(out: Path, runs: dict[str, str], distant_mm: float = DISTANT_MM, heldout: bool = False) -> dict:
    """``{label: {head: {case: case_errors}}}`` for every run and every head of the collection's datasets, on
    the cases of the head's dataset that the first run predicted (every other run must have them too)."""
    raw = out / "raw"
    collection = json.loads((raw / "collection.json").read_text())
    results: dict[str, dict] = {label: {} for label in runs}
    sources = {label: _sources(out, key, heldout) for label, key in runs.items()}
    first = next(iter(runs))
    for entry in collection["datasets"]:
        d = dataset_def(entry["path"])
        heads = head_recipe(d)
        for case, label_path in _cases(raw, d.id, sources[first]):
            label, geometry = read_label(label_path)
            masks = {}
            for head, recipe in heads.items():
                off = off_target_structures(head)
                for s in off:
                    if s not in masks:
                        masks[s] = read_label(raw / collection["ground_truth"] / case / f"{s}.nii.gz")[0] > 0
                truth = np.isin(label, recipe["labels"])
                for run_label in runs:
                    path = _prediction(sources[run_label], case, d.id)
                    if path is None:
                        raise UserInputError(f"{sources[run_label][0]}: no {case}/{d.id}.nii.gz; --run "
                                             f"{run_label}={runs[run_label]} must have every case that --run "
                                             f"{first}={runs[first]} has.")
                    pred = read_label(path)[0]
                    if pred.shape != label.shape:
                        raise UserInputError(f"{path}: shape {pred.shape} differs from the label map's "
                                             f"{label.shape}.")
                    results[run_label].setdefault(head, {})[case] = case_errors(
                        np.isin(pred, recipe["labels"]), truth, {s: masks[s] for s in off}, geometry.spacing,
                        distant_mm)
    if not any(results.values()):
        where = ", ".join(str(s) for s in sources[first])
        raise UserInputError(f"{where}: no predicted case of the collection.")
    return results


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def per_head(res: dict, key: str) -> dict[str, float]:
    return {h: _mean(c[key] for c in cases.values()) for h, cases in res.items()}


def per_case(res: dict, key: str) -> dict[str, float]:
    """Each test case's mean over the heads of its dataset."""
    by_case: dict[str, list[float]] = {}
    for cases in res.values():
        for case, r in cases.items():
            by_case.setdefault(case, []).append(r[key])
    return {c: _mean(v) for c, v in sorted(by_case.items())}


def gap_tests(results: dict, a: str, b: str) -> dict:
    """Paired tests of run a against run b over heads and over cases, as predicted (``dice``) and with the
    misfires removed from both (``dice_without_misfires``)."""
    out = {}
    for key in ("dice", "dice_without_misfires"):
        ha, hb = per_head(results[a], key), per_head(results[b], key)
        ca, cb = per_case(results[a], key), per_case(results[b], key)
        heads, cases = sorted(ha), sorted(ca)
        out[key] = {"heads": paired([ha[h] for h in heads], [hb[h] for h in heads]),
                    "cases": paired([ca[c] for c in cases], [cb[c] for c in cases])}
    return out


def _p(v: float | None) -> str:
    return "n/a" if v is None else ("<0.001" if v < 0.001 else f"{v:.3f}")


def _head_cases(results: dict, lab: str, head: str):
    return results[lab][head].values()


def report(results: dict, gaps: list[tuple[str, str]], command: str, machine: str,
           distant_mm: float = DISTANT_MM, heldout: bool = False) -> str:
    labels = list(results)
    scope = ("the held-out training cases of its own dataset (each run's fold 0, predicted by `multitalent "
             "validate`; no test case)" if heldout else "its own dataset's test cases")
    heads = sorted(next(iter(results.values())))
    lines = [
        "# Where the errors lie: false positives by true structure",
        "",
        "Written by `benchmarks/error_anatomy.py` from the predictions of runs already trained (no training); "
        f"test cases are only read, never used to choose anything. For every head, on {scope}: the Dice (%) "
        "and the false-positive volume (mL, summed over the cases), split into two kinds "
        "of *misfire*: *off-target*, inside a true structure that cannot overlap the head's own by the phantom's "
        "anatomy (the heart head on the liver; not on the aortic root, which another protocol gives to the "
        "aorta), and *distant*, farther than "
        f"{distant_mm:g} mm from the head's truth in any tissue (fat, bowel, air; every false positive of a "
        "case where the head's structure is absent). *Oracle*: the Dice with the misfires (either kind) "
        "removed; it reads the truth and so is no method: it measures how much of a difference the misfires make.",
        "",
        f"- command: `{command}`",
        f"- date: {_date_utc()}",
        f"- machine: {machine}",
        "",
        "## Per head",
        "",
        "Per run: Dice / false positives / off-target / distant (mL) / oracle Dice.",
        "",
        "| head | " + " | ".join(labels) + " | off-target structures (largest first, run: mL) |",
        "|---|" + "---|" * len(labels) + "---|",
    ]
    for h in heads:
        cells, where = [], []
        for lab in labels:
            cases = _head_cases(results, lab, h)
            cells.append(f"{_mean(c['dice'] for c in cases):.1f} / {sum(c['fp_ml'] for c in cases):.0f} / "
                         f"{sum(c['off_target_ml'] for c in cases):.0f} / {sum(c['distant_ml'] for c in cases):.0f}"
                         f" / {_mean(c['dice_without_misfires'] for c in cases):.1f}")
            totals: dict[str, float] = {}
            for c in cases:
                for s, ml in c["where_ml"].items():
                    totals[s] = totals.get(s, 0.0) + ml
            big = [f"{s} {ml:.0f}" for s, ml in sorted(totals.items(), key=lambda kv: -kv[1]) if ml >= 1.0][:2]
            if big:
                where.append(f"{lab}: " + ", ".join(big))
        lines.append(f"| {h} | " + " | ".join(cells) + f" | {'; '.join(where)} |")
    every = {lab: [c for cases in results[lab].values() for c in cases.values()] for lab in labels}

    def total(lab: str, key: str) -> str:
        return f"{sum(c[key] for c in every[lab]):.0f}"

    lines.append("| all heads (Dice: mean over heads; mL: sum) | " + " | ".join(
        f"{_mean(per_head(results[lab], 'dice').values()):.1f} / {total(lab, 'fp_ml')} / "
        f"{total(lab, 'off_target_ml')} / {total(lab, 'distant_ml')} / "
        f"{_mean(per_head(results[lab], 'dice_without_misfires').values()):.1f}" for lab in labels)
        + " | misfires in all (mL): " + ", ".join(f"{lab} {total(lab, 'misfire_ml')}" for lab in labels) + " |")
    lines += ["", "## Misfires per case", "",
              f"Every (head, test case) with at least {MISFIRE_ROW_ML:g} mL of misfires in some run: misfire volume "
              "(mL), Dice (%) as predicted -> with them removed.", "",
              "| head | case | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for h in heads:
        for case in sorted(results[labels[0]][h]):
            rs = [results[lab][h][case] for lab in labels]
            if max(r["misfire_ml"] for r in rs) >= MISFIRE_ROW_ML:
                lines.append(f"| {h} | {case} | " + " | ".join(
                    f"{r['misfire_ml']:.0f} mL, {r['dice']:.1f} -> {r['dice_without_misfires']:.1f}"
                    for r in rs) + " |")
    if gaps:
        lines += ["", "## How much of the gap the misfires make", "",
                  "Paired one-sided t-tests (`scipy.stats.ttest_rel`) of run a against run b: over heads (each "
                  "head's mean over its cases) and over cases (each case's mean over its dataset's "
                  "heads); *as predicted* and with the misfires removed from both runs (oracle). Mean difference "
                  "a - b in points; p for a > b and for a < b.", "",
                  "| a | b | scores | over | n | mean a - b | p (a > b) | p (a < b) |",
                  "|---|---|---|---|---:|---:|---:|---:|"]
        for a, b in gaps:
            t = gap_tests(results, a, b)
            for key, name in (("dice", "as predicted"), ("dice_without_misfires", "misfires removed (oracle)")):
                for over in ("heads", "cases"):
                    r = t[key][over]
                    lines.append(f"| {a} | {b} | {name} | {over} | {r['n']} | {r['mean_difference']:+.1f} | "
                                 f"{_p(r['p_greater'])} | {_p(r['p_less'])} |")
    return "\n".join(lines) + "\n"


def _rounded(value):
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="a reproduction folder (reproduce.py, ablate.py)")
    ap.add_argument("--run", action="append", default=[], metavar="LABEL=KEY", required=True,
                    help="a run's predictions, OUT/predictions/KEY; KEY may list several, comma-separated, "
                         "looked up in turn (repeatable)")
    ap.add_argument("--gap", action="append", default=[], metavar="A:B",
                    help="paired tests of run A against run B, as predicted and oracle (repeatable)")
    ap.add_argument("--heldout", action="store_true",
                    help="score the runs' held-out cases: KEY names runs (OUT/runs/KEY) whose held-out predictions "
                         "`multitalent validate` wrote, instead of OUT/predictions/KEY")
    ap.add_argument("--distant-mm", type=float, default=DISTANT_MM,
                    help="a false positive farther than this from the head's truth is a misfire (default %(default)s)")
    ap.add_argument("--report", type=Path, default=None,
                    help="write the report here (and the numbers beside it, .json); default: print it")
    args = ap.parse_args(argv)
    try:
        runs = {}
        for spec in args.run:
            label, sep, key = spec.partition("=")
            if not sep or not label or not key:
                raise UserInputError(f"--run {spec!r}: expected LABEL=KEY.")
            runs[label] = key
        gaps = []
        for spec in args.gap:
            a, sep, b = spec.partition(":")
            if not sep or a not in runs or b not in runs:
                raise UserInputError(f"--gap {spec!r}: expected A:B with A and B labels of --run "
                                     f"({', '.join(runs)}).")
            gaps.append((a, b))
        if not (args.out / "raw" / "collection.json").is_file():
            raise UserInputError(f"{args.out}: not a reproduction folder (no raw/collection.json).")
        if not args.distant_mm > 0:
            raise UserInputError(f"--distant-mm must be positive, got {args.distant_mm}.")
        results = measure(args.out, runs, args.distant_mm, args.heldout)
    except UserInputError as e:
        print(f"error_anatomy.py: error: {e}", file=sys.stderr)
        return 2
    command = "python benchmarks/error_anatomy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(results, gaps, command, machine_description("cpu"), args.distant_mm,
                  args.heldout)
    if args.report is None:
        print(text, end="")
    else:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
        args.report.with_suffix(".json").write_text(json.dumps(_rounded(results), indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.report} and {args.report.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
