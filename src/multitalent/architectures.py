"""The architectures' names and the training options each takes, as plain data (no torch).

``--arch`` choices and :meth:`multitalent.training.config.TrainConfig.model_kwargs` come from this table,
so that building the CLI does not import the networks. The builders declare the same options on
``@register(name, options=...)`` in :mod:`multitalent.models`; tests/test_architectures.py checks that every
registered architecture is here with the same options, and that every name here is registered.
"""

from __future__ import annotations

#: architecture -> the ``TrainConfig`` fields passed to its builder as keyword options, in this order
ARCHITECTURE_OPTIONS: dict[str, tuple[str, ...]] = {
    "plain_unet": ("base_features", "max_features", "n_stages"),
    "resenc_unet": ("base_features", "max_features", "n_stages"),
    "swin_unetr": ("feature_size",),
}

#: option values that mean "the builder's default": the option is then not passed (n_stages 0: all stages)
UNSET_VALUES: dict[str, object] = {"n_stages": 0}


def list_architectures() -> list[str]:
    """Names of the architectures, sorted (the same as :func:`multitalent.models.list_models`)."""
    return sorted(ARCHITECTURE_OPTIONS)


def architecture_options(name: str) -> tuple[str, ...]:
    """The training options architecture ``name`` takes (none for an unknown name; building it then fails
    with the registry's message)."""
    return ARCHITECTURE_OPTIONS.get(name, ())
