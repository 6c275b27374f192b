"""Synthetic "phantom" collection: partially-labelled CT datasets with conflicting protocols and full truth.

``generate_collection(out)`` writes seven nnU-Net raw datasets, a manifest and the complete ground truth;
see docs/phantoms.md. The names below are imported on first use, so that the CLI can read
:class:`~multitalent.phantoms.config.PhantomsConfig` without loading numpy, SciPy and SimpleITK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
        phantom_exclusions,
        plan_dataset,
        render_case,
        truth_for_head,
    )
    from multitalent.phantoms.config import PhantomsConfig
    from multitalent.phantoms.preview import save_preview

_MODULES = {
    **dict.fromkeys(["CONFLICTS", "DATASETS", "TRUTH_NAMES", "CasePlan", "DatasetDef", "PhantomCase", "dataset_def",
                     "generate_case", "generate_collection", "head_recipe", "phantom_exclusions", "plan_dataset",
                     "render_case", "truth_for_head"], "multitalent.phantoms.collection"),
    "PhantomsConfig": "multitalent.phantoms.config",
    "save_preview": "multitalent.phantoms.preview",
}

__all__ = [
    "CONFLICTS",
    "DATASETS",
    "TRUTH_NAMES",
    "CasePlan",
    "DatasetDef",
    "PhantomCase",
    "PhantomsConfig",
    "dataset_def",
    "generate_case",
    "generate_collection",
    "head_recipe",
    "phantom_exclusions",
    "plan_dataset",
    "render_case",
    "save_preview",
    "truth_for_head",
]


def __getattr__(name: str):
    if name in _MODULES:
        value = globals()[name] = getattr(importlib.import_module(_MODULES[name]), name)
        return value
    raise AttributeError(f"module 'multitalent.phantoms' has no attribute {name!r}")
