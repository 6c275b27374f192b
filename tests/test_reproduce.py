"""``benchmarks/reproduce.py``: the reduced (``--tiny``) reproduction runs end to end, writes a report with
every section and table filled with numbers, and a second invocation resumes without training again."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce.py"


def _load():
    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reproduce():
    return _load()


def _section(text: str, title: str) -> str:
    start = text.index(title)
    nxt = text.find("\n## ", start + len(title))
    return text[start: nxt if nxt >= 0 else len(text)]


def _table_numbers(section: str) -> list[float]:
    rows = [line for line in section.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return [float(x) for line in rows[1:] for x in re.findall(r"(?<![\w.])[-+]?\d+\.\d+", line)]


def test_transfer_tests_are_one_sided_paired(reproduce):
    per_seed = {c: {s: {"dataset_dice": d, "heads": {"h1": d, "h2": d / 2}} for s, d in zip((0, 1, 2), v)}
                for c, v in {"multitalent": (0.8, 0.7, 0.9), "scratch": (0.5, 0.6, 0.55),
                             "supervised": (0.85, 0.75, 0.95)}.items()}
    tests = reproduce.transfer_tests(per_seed)
    assert tests["multitalent_vs_scratch"]["seeds"]["n"] == 3
    assert tests["multitalent_vs_scratch"]["seeds"]["p"] < 0.1  # clearly better
    assert tests["multitalent_vs_supervised"]["seeds"]["p"] > 0.9  # clearly worse: one-sided p near 1
    assert tests["multitalent_vs_scratch"]["seeds"]["mean_difference"] == pytest.approx(0.25)


def test_tiny_reproduction_writes_the_report_and_resumes(reproduce, tmp_path):
    out = tmp_path / "repro"
    ctx = reproduce.run(reproduce.TINY, out, seed=0, quiet=True)
    report = out / "results.md"
    text = report.read_text()
    assert (out / "results_boxplot.png").stat().st_size > 0
    for title in ("## Run", "## 1. MultiTalent vs single-dataset", "## 2. Protocol fidelity",
                  "## 3. Transfer", "## 4. Cost", "## Runs and calibration", "## Summary"):
        assert title in text, title
    assert "date: " in text and "machine: " in text and "wall time: " in text and "command: " in text

    t1 = _section(text, "## 1. MultiTalent")
    for head in ctx["registry"].ids:
        assert f"| {head} |" in t1
    assert "| over datasets |" in t1 and "| lesion heads |" in t1 and "| difficult heads |" in t1
    assert len(_table_numbers(t1)) >= 3 * len(ctx["registry"].ids)

    fid = _section(text, "## 2. Protocol fidelity")
    for conflict in ("**aorta**", "**heart**", "**spleen**"):
        assert conflict in fid
    assert len(_table_numbers(fid)) > 0
    # the merged softmax merges same-name classes: its two aorta heads are one class
    rows = ctx["fidelity"]["conflicts"]["aorta"]["rows"]
    merged = [r["dice"] for r in rows if r["model"] == "merged_softmax"]
    assert len(merged) == 2 and merged[0] == merged[1]

    tr = _section(text, "## 3. Transfer")
    assert "| 0 |" in tr and "mean ± sd" in tr and "MultiTalent vs from scratch" in tr
    assert len(_table_numbers(tr)) > 0
    cost = _section(text, "## 4. Cost")
    assert "training time" in cost and "inference on" in cost
    assert ctx["cost"]["ratio"] > 0 and ctx["inference"]["ratio"] > 0

    # resumable: a second invocation finds every run, prediction, evaluation and timing done
    lines_before = (out / "reproduce.log").read_text().count("\n")
    reproduce.run(reproduce.TINY, out, seed=0, quiet=True)
    new = (out / "reproduce.log").read_text().splitlines()[lines_before:]
    assert not [line for line in new if "training" in line or "predicting" in line or "preprocessing" in line]
    invocations = json.loads((out / "results" / "invocations.json").read_text())
    assert len(invocations) == 2
