"""MultiTalent: one 3D segmentation network trained on many partially-labelled CT datasets.

The public API (``docs/usage.md``): :func:`preprocess`, :func:`train`, :func:`finetune`, :func:`extend`,
:func:`predict`, :func:`evaluate`, :func:`validate` and :class:`Predictor`. They are imported on first use, so that
``import multitalent`` (and the CLI's ``--help``) does not load torch.
"""

from multitalent.errors import UserInputError

__version__ = "0.1.0"
_API = ("preprocess", "train", "finetune", "extend", "predict", "evaluate", "validate")
__all__ = ["UserInputError", "__version__", "Predictor", *_API]


def __getattr__(name: str):
    if name in _API:
        from multitalent import api

        return getattr(api, name)
    if name == "Predictor":
        from multitalent.inference.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'multitalent' has no attribute {name!r}")
