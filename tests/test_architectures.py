"""The torch-free architecture table (``multitalent.architectures``) is the model registry."""

from __future__ import annotations

from multitalent.models import list_models, model_options, training_options


def test_the_torch_free_table_is_the_registry():
    """``multitalent.architectures`` (``--arch`` choices and ``TrainConfig.model_kwargs`` without importing
    torch) lists every registered architecture with the options declared on ``@register``, and nothing else;
    those options are keyword-only builder parameters and ``TrainConfig`` fields."""
    from dataclasses import fields

    from multitalent.architectures import ARCHITECTURE_OPTIONS, list_architectures
    from multitalent.training.config import TrainConfig

    assert list_architectures() == list_models()
    train_fields = {f.name for f in fields(TrainConfig)}
    for name in list_models():
        assert ARCHITECTURE_OPTIONS[name] == training_options(name), name
        assert set(training_options(name)) <= set(model_options(name)) & train_fields, name
        assert set(TrainConfig(arch=name).model_kwargs()) <= set(training_options(name)), name
