"""The reproduction of the MultiTalent paper's experiments on the phantom collection (``benchmarks/reproduce.py``).

Modules: ``sizes`` (``Sizes``: FULL, QUICK, GPU, TINY; the cost projection), ``data`` (phantom
sub-collection, the fully-labelled dataset), ``experiments`` (``Reproduction``: the training runs and the
stages), ``statistics`` (convergence, paired tests, verdicts, findings), ``report`` (``results.md``, one
renderer per section, the plots), ``evidence`` (the records a report comes from, kept beside it), ``cli``
(``run``, ``main``; the full description). Imported with ``benchmarks/`` on ``sys.path``, as
``benchmarks/reproduce.py`` does.
"""

from repro.cli import main, run, run_extension_only
from repro.common import base_run
from repro.evidence import evidence_files, evidence_path, write_evidence
from repro.experiments import Reproduction
from repro.report import write_report
from repro.sizes import (
    FULL,
    GPU,
    QUICK,
    SIZES,
    TINY,
    Sizes,
    calibration_note,
    gpu_projection,
    pairs_iterations,
    projection,
)
from repro.statistics import (
    ALPHA,
    NOT_CONVERGED,
    QUICK_VERDICT,
    analysis,
    apply_stand_ins,
    budget_pair_rows,
    by_budget_pairs,
    compare,
    convergence,
    extension_findings,
    findings,
    judge,
    last_quarter,
    paired,
    within_noise,
)

__all__ = [
    "ALPHA", "FULL", "GPU", "NOT_CONVERGED", "QUICK", "QUICK_VERDICT", "SIZES", "TINY", "Reproduction", "Sizes",
    "analysis", "apply_stand_ins", "base_run", "budget_pair_rows", "by_budget_pairs", "calibration_note", "compare",
    "convergence", "evidence_files", "evidence_path", "extension_findings", "findings", "gpu_projection", "judge",
    "last_quarter", "main", "paired", "pairs_iterations", "projection", "run", "run_extension_only", "within_noise",
    "write_evidence", "write_report",
]
