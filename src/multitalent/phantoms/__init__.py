"""Synthetic "phantom" collection: partially-labelled CT datasets with conflicting protocols and full truth.

``generate_collection(out)`` writes seven nnU-Net raw datasets, a manifest and the complete ground truth;
see docs/phantoms.md.
"""

from multitalent.phantoms.collection import (
    CONFLICTS,
    DATASETS,
    TRUTH_NAMES,
    CasePlan,
    DatasetDef,
    PhantomCase,
    dataset_def,
    generate_case,
    generate_collection,
    head_recipe,
    plan_dataset,
    render_case,
    truth_for_head,
)
from multitalent.phantoms.preview import save_preview

__all__ = [
    "CONFLICTS",
    "DATASETS",
    "TRUTH_NAMES",
    "CasePlan",
    "DatasetDef",
    "PhantomCase",
    "dataset_def",
    "generate_case",
    "generate_collection",
    "head_recipe",
    "plan_dataset",
    "render_case",
    "save_preview",
    "truth_for_head",
]
