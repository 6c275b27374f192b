"""The throughput benchmark a GPU session runs must work: its real-loader parts, tried on the CPU with a tiny
patch (the same code path as ``--device cuda --parts paper-real``)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, monkeypatch: pytest.MonkeyPatch):
    # by name from sys.path, so that the spawned measurement processes can import it too
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module(name)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_paper_real_and_loader_parts_run(tmp_path, monkeypatch):
    tt = _load("train_throughput", monkeypatch)
    out = tmp_path / "report.md"
    rc = tt.main(["--parts", "paper-loader", "paper-real", "--paper-patch", "16", "32", "32", "--archs",
                  "plain_unet", "--paper-workers", "1", "--iterations", "2", "--warmup", "1",
                  "--workdir", str(tmp_path / "work"), "--out", str(out)])
    assert rc == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| paper")]
    assert len(rows) == 2 and not any("failed" in r for r in rows), rows
    loader, real = rows
    assert "47 heads in 13 datasets" in loader
    cells = [c.strip() for c in real.split("|")]
    assert cells[1] == "paper step, real loader" and cells[7] == "1"  # one loader worker
    assert cells[15].endswith("%") and float(cells[13]) > 0  # data wait and a step time were measured
