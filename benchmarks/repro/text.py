"""Text formatting shared by the findings and the report: numbers, p-values, method titles."""

from __future__ import annotations

import math

METHOD_TITLES = {"single": "single-dataset (U-Net)", "single_resenc_unet": "single-dataset (residual U-Net)",
                 "single_swin_unetr": "single-dataset (SwinUNETR)", "multitalent_plain_unet": "MultiTalent (U-Net)",
                 "multitalent_resenc_unet": "MultiTalent (residual U-Net)",
                 "multitalent_swin_unetr": "MultiTalent (SwinUNETR)",
                 "merged_softmax": "merged softmax (U-Net)"}
CONDITIONS = {"scratch": "from scratch", "multitalent": "MultiTalent pre-training",
              "supervised": "supervised pre-training"}


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _title(key: str) -> str:
    return METHOD_TITLES.get(key, key)


def _points(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} points"


def _verdict(v: str) -> str:
    return f"**{v}**" if v in ("holds", "does not hold") else v


def _p(x: float | None) -> str:
    return "n/a" if x is None else ("<0.001" if x < 0.001 else f"{x:.3f}")


def _tests_text(t: dict) -> str:
    return (f"one-sided paired p = {_p(t['heads']['p_greater'])} over {t['heads']['n']} heads, "
            f"{_p(t['cases']['p_greater'])} over {t['cases']['n']} cases")
