"""Reproduce the MultiTalent paper's experiments on the phantom collection (the entry script).

    python benchmarks/reproduce.py --quick | --full | --gpu [--out OUT] [--seed S] [--device cpu|cuda]
                                   [--extend | --extend-only]

The code is the package ``benchmarks/repro/`` (what is run and why: ``repro/cli.py``); this script puts its
own folder on ``sys.path`` (also for the training worker processes, which import ``repro``) and calls
``repro.main()``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import repro  # noqa: E402

if __name__ == "__main__":
    sys.exit(repro.main())
