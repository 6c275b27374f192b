"""Inference: sliding window over all heads at once, bounded memory, export to the input's geometry.

Use ``from multitalent.inference.predict import predict``; this package imports only the
configuration so that building the CLI does not import torch.
"""

from multitalent.inference.config import PredictConfig

__all__ = ["PredictConfig"]
