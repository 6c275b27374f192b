"""The architecture registry, the multi-head wrapper and the head/backbone utilities."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from multitalent.device import strip_wrapper_prefixes
from multitalent.errors import UserInputError
from multitalent.preprocessing.plans import Plans

Scale = tuple[int, int, int]

#: name -> builder ``fn(plans, num_heads, deep_supervision, **kwargs) -> MultiHeadNet``.
ARCHITECTURES: dict[str, Callable[..., MultiHeadNet]] = {}
#: name -> the keyword options that training sets from ``TrainConfig`` fields of the same name (``--flags``)
TRAINING_OPTIONS: dict[str, tuple[str, ...]] = {}


def register(name: str, options: Sequence[str] = ()) -> Callable[[Callable[..., MultiHeadNet]],
                                                                  Callable[..., MultiHeadNet]]:
    """Decorator: register an architecture builder under ``name`` (timm style). ``options`` are the builder's
    keyword-only options that ``multitalent train`` sets from its flags of the same name (the torch-free
    table :data:`multitalent.architectures.ARCHITECTURE_OPTIONS` lists them for the CLI)."""

    def deco(fn: Callable[..., MultiHeadNet]) -> Callable[..., MultiHeadNet]:
        if name in ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is registered twice")
        params = inspect.signature(fn).parameters
        missing = [o for o in options if o not in params or params[o].kind is not inspect.Parameter.KEYWORD_ONLY]
        if missing:
            raise ValueError(f"architecture {name!r}: options {missing} are not keyword-only parameters of its builder")
        ARCHITECTURES[name] = fn
        TRAINING_OPTIONS[name] = tuple(options)
        return fn

    return deco


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(ARCHITECTURES)


def model_options(name: str) -> list[str]:
    """The keyword options (``**kwargs`` of :func:`create_model`) that architecture ``name`` accepts."""
    fn = _builder(name)
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def training_options(name: str) -> tuple[str, ...]:
    """The options of architecture ``name`` that training sets from its flags (declared on ``@register``)."""
    _builder(name)
    return TRAINING_OPTIONS[name]


def _builder(name: str) -> Callable[..., MultiHeadNet]:
    if name not in ARCHITECTURES:
        raise UserInputError(f"unknown architecture {name!r}; choose one of: {', '.join(list_models())}.")
    return ARCHITECTURES[name]


def create_model(name: str, plans: Plans, num_heads: int, deep_supervision: bool = True,
                 **kwargs: Any) -> MultiHeadNet:
    """Build architecture ``name`` for ``plans`` with ``num_heads`` output channels (one logit per head).

    ``kwargs`` are the architecture's small-variant options (see each builder's docstring and
    :func:`model_options`). The returned model carries ``.config`` = ``{"name": name, **kwargs}`` so that
    ``create_model(**model.config, plans=plans, num_heads=n)`` rebuilds it from a checkpoint.
    """
    fn = _builder(name)
    allowed = model_options(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise UserInputError(f"architecture {name!r} has no option(s) {', '.join(unknown)}; "
                             f"its options are: {', '.join(allowed) or '(none)'}.")
    if int(num_heads) < 1:
        raise UserInputError(f"a model needs at least one head, got num_heads={num_heads}.")
    model = fn(plans, int(num_heads), bool(deep_supervision), **kwargs)
    model.arch = name
    model.config = {"name": name, **kwargs}
    return model


class MultiHeadNet(nn.Module):
    """A segmentation backbone whose final 1x1x1 convolutions output one logit channel per head.

    ``forward(x)`` with ``x`` of shape [B, C, z, y, x] returns logits [B, H, z, y, x]; with deep supervision
    on, a list of logits, highest resolution first, downsampled by :meth:`output_strides`.

    Args:
        backbone: the network; its output convolutions are the modules named in ``head_paths``.
        arch: registry name.
        num_heads: number of output channels.
        head_paths: dotted names (inside ``backbone``) of the output convolutions (all deep-supervision
            outputs included).
        ds_scales: per deep-supervision output, its downsampling factor relative to the input (highest
            resolution first), or None when the backbone has no deep supervision.
        ds_module: dotted name of the submodule whose ``deep_supervision`` attribute toggles it.
        deep_supervision: initial state (ignored when unsupported).
    """

    def __init__(self, backbone: nn.Module, arch: str, num_heads: int, head_paths: list[str],
                 ds_scales: list[Scale] | None = None, ds_module: str | None = None,
                 deep_supervision: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.arch = arch
        self.num_heads = num_heads
        self.head_paths = list(head_paths)
        self._ds_scales = list(ds_scales) if ds_scales is not None else None
        self._ds_module = ds_module
        self.config: dict[str, Any] = {"name": arch}
        self.deep_supervision = deep_supervision

    @property
    def supports_deep_supervision(self) -> bool:
        return self._ds_scales is not None and self._ds_module is not None

    @property
    def deep_supervision(self) -> bool:
        """Whether forward returns the list of deep-supervision outputs. Setting it to True on an
        architecture without deep supervision (SwinUNETR) is a no-op: it stays False."""
        if not self.supports_deep_supervision:
            return False
        return bool(self.backbone.get_submodule(self._ds_module).deep_supervision)

    @deep_supervision.setter
    def deep_supervision(self, value: bool) -> None:
        if self.supports_deep_supervision:
            self.backbone.get_submodule(self._ds_module).deep_supervision = bool(value)

    def output_strides(self) -> list[Scale]:
        """Per output that forward returns, its downsampling factor (z, y, x) relative to the input."""
        if self.deep_supervision:
            return list(self._ds_scales)
        return [(1, 1, 1)]

    def heads(self) -> list[nn.Module]:
        """The output convolutions (one per deep-supervision level)."""
        return [self.backbone.get_submodule(p) for p in self.head_paths]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.backbone(x)


def deep_supervision_scales(plans: Plans, n_stages: int | None = None) -> list[Scale]:
    """Downsampling factors (z, y, x) of a U-Net's deep-supervision outputs, highest resolution first:
    the cumulative product of the topology's strides, one per decoder output (``n_stages - 1`` of them),
    e.g. ``[(1,1,1), (2,2,2), (4,4,4), ...]``. ``n_stages`` truncates the topology as the ``n_stages``
    model option does. For a built model prefer ``model.output_strides()``, which also knows about
    architectures without deep supervision and about deep supervision being switched off."""
    topo = plans.topology
    n = topo.n_stages if n_stages is None else int(n_stages)
    if not 2 <= n <= topo.n_stages:
        raise UserInputError(f"n_stages must be between 2 and {topo.n_stages} for these plans, got {n}.")
    cum = np.cumprod(np.asarray(topo.strides[:n], dtype=np.int64), axis=0)
    return [tuple(int(v) for v in row) for row in cum[:-1]]


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, module)


def replace_heads(model: MultiHeadNet, num_heads: int) -> MultiHeadNet:
    """Give ``model`` new, freshly initialised output convolutions with ``num_heads`` channels (every
    deep-supervision output included), keeping the backbone. Modifies and returns ``model``."""
    if int(num_heads) < 1:
        raise UserInputError(f"a model needs at least one head, got num_heads={num_heads}.")
    for path in model.head_paths:
        old = model.backbone.get_submodule(path)
        if not isinstance(old, nn.modules.conv._ConvNd):
            raise TypeError(f"head {path} is a {type(old).__name__}, not a convolution")
        new = type(old)(old.in_channels, int(num_heads), old.kernel_size, old.stride, old.padding,
                        bias=old.bias is not None)
        new = new.to(device=old.weight.device, dtype=old.weight.dtype)
        # dynamic-network-architectures nets carry nnU-Net's He initialisation
        init = getattr(model.backbone, "initialize", None)
        if callable(init):
            new.apply(init)
        _set_submodule(model.backbone, path, new)
    # the decoder of dynamic-network-architectures records its class count; keep it truthful
    decoder = getattr(model.backbone, "decoder", None)
    if decoder is not None and hasattr(decoder, "num_classes"):
        decoder.num_classes = int(num_heads)
    model.num_heads = int(num_heads)
    return model


def init_head_bias(model: MultiHeadNet, prior: float) -> MultiHeadNet:
    """Start every head at foreground probability ``prior``: the output convolutions' biases are set to
    ``logit(prior)`` (the focal-loss paper's prior initialisation). With the default bias of 0 every
    sigmoid head starts at 0.5 on every voxel, and the first steps are a burst of background gradient
    that, with momentum 0.99, drives rare heads far into saturation, where their Dice gradient vanishes.
    Modifies and returns ``model``."""
    if not 0.0 < float(prior) < 1.0:
        raise UserInputError(f"the head prior must be between 0 and 1 (exclusive), got {prior}.")
    value = math.log(prior / (1.0 - prior))
    with torch.no_grad():
        for head in model.heads():
            if head.bias is not None:
                head.bias.fill_(value)
    return model


def _head_param_ids(model: MultiHeadNet) -> set[int]:
    return {id(p) for h in model.heads() for p in h.parameters()}


def head_parameters(model: MultiHeadNet) -> Iterator[nn.Parameter]:
    """Parameters of the output convolutions (for the head-only warm-up of fine-tuning)."""
    ids = _head_param_ids(model)
    return (p for p in model.parameters() if id(p) in ids)


def backbone_parameters(model: MultiHeadNet) -> Iterator[nn.Parameter]:
    """All parameters except those of the output convolutions."""
    ids = _head_param_ids(model)
    return (p for p in model.parameters() if id(p) not in ids)


def load_backbone(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy into ``model`` the entries of ``state_dict`` whose name and shape match (DDP ``module.`` and
    ``torch.compile`` ``_orig_mod.`` prefixes are ignored). Returns ``(loaded_keys, skipped_keys)``, with
    keys as named in ``state_dict``; the heads of a model with a different head count are skipped."""
    own = model.state_dict()
    loaded: list[str] = []
    skipped: list[str] = []
    to_load: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = strip_wrapper_prefixes(key)
        if name in own and tuple(own[name].shape) == tuple(value.shape):
            to_load[name] = value
            loaded.append(key)
        else:
            skipped.append(key)
    model.load_state_dict(to_load, strict=False)
    return loaded, skipped
