"""Evaluation: Dice and HD95 per head and case, summaries over datasets and head groups, reports."""

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

__all__ = [
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
