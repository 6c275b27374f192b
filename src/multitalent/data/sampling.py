"""Case sampling probabilities across the collection's datasets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np

SamplingMode = Literal["inv_sqrt", "uniform", "dataset_balanced"]
SAMPLING_MODES: tuple[str, ...] = get_args(SamplingMode)


def case_probabilities(case_datasets: Sequence[str], mode: str = "inv_sqrt") -> np.ndarray:
    """Probability of drawing each case, given the source dataset of every case.

    ``inv_sqrt`` (MultiTalent): proportional to 1/sqrt(n), n = number of cases of the case's dataset, so
    a dataset's total share grows as sqrt(n). ``uniform``: every case alike (share proportional to n).
    ``dataset_balanced``: every dataset alike (proportional to 1/n).
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; choose from {SAMPLING_MODES}")
    counts = Counter(case_datasets)
    n = np.array([counts[d] for d in case_datasets], dtype=np.float64)
    if n.size == 0:
        return n
    weights = {"inv_sqrt": 1.0 / np.sqrt(n), "uniform": np.ones_like(n), "dataset_balanced": 1.0 / n}[mode]
    return weights / weights.sum()
