"""Inference: sliding window over all heads at once, bounded memory, export to the input's geometry."""

from __future__ import annotations

from typing import Any

from multitalent.inference.config import PredictConfig

__all__ = ["PredictConfig", "predict"]


def __getattr__(name: str) -> Any:
    # `predict` pulls in torch; loaded on first use so that importing the configuration stays light
    if name == "predict":
        from multitalent.inference.predict import predict

        return predict
    raise AttributeError(name)
