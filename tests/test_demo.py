"""The one-command demo runs end to end (reduced: a few training iterations) and reports every dataset."""

import json

import pytest

from multitalent.cli import main


@pytest.mark.slow  # generates, preprocesses, trains, predicts and evaluates
def test_demo_quick_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "-o", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "evaluation" / "summary.json").read_text(encoding="utf-8"))
    datasets = {f"D{n:03d}" for n in range(1, 8)}
    assert set(summary["datasets"]) == datasets
    for d in datasets:
        assert d in printed  # the per-dataset table is printed
    for path in ["run/checkpoint_final.pt", "run/progress.png", "evaluation/summary.md", "evaluation/boxplot.png"]:
        assert (out / path).is_file(), path
    cases = [p for p in (out / "predictions").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(cases) == 14  # two test cases per dataset
    assert all((c / "preview.png").is_file() for c in cases)
