"""The public API: the same code paths as the CLI, with the same options as keyword arguments.

    import multitalent as mt
    mt.preprocess("raw/collection.json", "pre", preset="small")
    final = mt.train("pre", "run", epochs=20, base_features=8)      # any `multitalent train` option
    predictor = mt.Predictor.from_run("run")
    maps = predictor(sitk_image)                                     # {dataset id: label map}
"""

from __future__ import annotations

import os
from pathlib import Path


def preprocess(manifest: str | os.PathLike, out: str | os.PathLike, **options) -> Path:
    """``multitalent preprocess``: ``options`` are :class:`~multitalent.preprocessing.config.PreprocessConfig`
    fields (``preset``, ``spacing``, ``patch_size``, ``batch_size``, ``workers``) and ``progress``."""
    from multitalent.preprocessing.pipeline import run_preprocessing

    return Path(run_preprocessing(manifest, out, **options))


def train(preprocessed: str | os.PathLike, out: str | os.PathLike, **options) -> Path:
    """``multitalent train``: ``options`` are :class:`~multitalent.training.config.TrainConfig` fields.
    Returns the path of ``checkpoint_final.pt``."""
    from multitalent.training.config import TrainConfig
    from multitalent.training.loop import train as _train

    return _train(preprocessed, out, TrainConfig(**options))


def finetune(model: str | os.PathLike, preprocessed: str | os.PathLike, out: str | os.PathLike, **options) -> Path:
    """``multitalent finetune``: ``options`` are :class:`~multitalent.training.config.FinetuneConfig` fields."""
    from multitalent.finetune import finetune as _finetune
    from multitalent.training.config import FinetuneConfig

    return _finetune(model, preprocessed, out, FinetuneConfig(**options))


def extend(model: str | os.PathLike, manifest: str | os.PathLike, out: str | os.PathLike,
           preprocessed: str | os.PathLike | None = None, **options) -> Path:
    """``multitalent extend``: add the datasets of ``manifest`` to the trained ``model``; ``options`` are
    :class:`~multitalent.training.config.ExtendConfig` fields. Returns the extended run's ``checkpoint_final.pt``."""
    from multitalent.extend import extend as _extend
    from multitalent.training.config import ExtendConfig

    return _extend(model, manifest, out, ExtendConfig(**options), preprocessed=preprocessed)


def predict(model: str | os.PathLike | list, input: str | os.PathLike, output: str | os.PathLike,
            **options) -> list[Path]:
    """``multitalent predict`` on files: ``model`` is a run, a checkpoint or a list of them (an ensemble);
    ``options`` are :class:`~multitalent.inference.config.PredictConfig` fields. Returns the case folders
    written."""
    from multitalent.inference.config import PredictConfig
    from multitalent.inference.predict import predict as _predict

    return _predict(model, input, output, PredictConfig(**options))


def evaluate(predictions: str | os.PathLike, ground_truth: list, heads: str | os.PathLike,
             out: str | os.PathLike | None = None, **options) -> dict:
    """``multitalent evaluate``: ``ground_truth`` label folders (or ``"D001=PATH"``), ``heads`` a
    ``heads.json``; ``options`` are :class:`~multitalent.evaluation.config.EvaluateConfig` fields
    (``difficult_threshold``, ``workers``), ``reference`` and ``progress``. Returns the summary (and writes it
    to ``out``)."""
    from multitalent.evaluation import evaluate as _evaluate
    from multitalent.registry import HeadRegistry

    return _evaluate(Path(predictions), list(ground_truth), HeadRegistry.load(heads),
                     Path(out) if out is not None else None, **options)


def validate(run: str | os.PathLike, **options) -> dict | None:
    """``multitalent validate``: whole-scan validation of a run's held-out fold into ``RUN/validation/``;
    ``options`` are :class:`~multitalent.training.validation.ValidateConfig` fields (``checkpoint``, ``device``,
    ``workers``)."""
    from multitalent.training.validation import final_validation

    return final_validation(run, **options)
