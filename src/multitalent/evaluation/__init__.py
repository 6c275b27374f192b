"""Evaluation: Dice and HD95 per head and case, summaries over datasets and head groups, reports.

The names below are imported on first use, so that the CLI can read
:class:`~multitalent.evaluation.config.EvaluateConfig` without loading numpy and SciPy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multitalent.evaluation.config import EvaluateConfig
    from multitalent.evaluation.evaluator import evaluate, evaluate_case, parse_gt_dirs
    from multitalent.evaluation.metrics import dice, hd95, surface_distances
    from multitalent.evaluation.plots import plot_boxplot, plot_comparison
    from multitalent.evaluation.summary import (
        format_dataset_table,
        format_group_table,
        format_head_table,
        format_markdown,
        load_reference,
        reference_from_summary,
        summarize,
    )

_MODULES = {
    "EvaluateConfig": "multitalent.evaluation.config",
    **dict.fromkeys(["evaluate", "evaluate_case", "parse_gt_dirs"], "multitalent.evaluation.evaluator"),
    **dict.fromkeys(["dice", "hd95", "surface_distances"], "multitalent.evaluation.metrics"),
    **dict.fromkeys(["plot_boxplot", "plot_comparison"], "multitalent.evaluation.plots"),
    **dict.fromkeys(["format_dataset_table", "format_group_table", "format_head_table", "format_markdown",
                     "load_reference", "reference_from_summary", "summarize"], "multitalent.evaluation.summary"),
}

__all__ = [
    "EvaluateConfig",
    "dice",
    "evaluate",
    "evaluate_case",
    "format_dataset_table",
    "format_group_table",
    "format_head_table",
    "format_markdown",
    "hd95",
    "load_reference",
    "parse_gt_dirs",
    "plot_boxplot",
    "plot_comparison",
    "reference_from_summary",
    "summarize",
    "surface_distances",
]


def __getattr__(name: str):
    if name in _MODULES:
        value = globals()[name] = getattr(importlib.import_module(_MODULES[name]), name)
        return value
    raise AttributeError(f"module 'multitalent.evaluation' has no attribute {name!r}")
