"""The architecture registry (``multitalent.models``, its core): every registered model, small, on CPU --
shapes, deep supervision, heads, backbone loading, rebuilding from its config."""

from __future__ import annotations

import pytest
import torch

from multitalent.errors import UserInputError
from multitalent.models import (
    backbone_parameters,
    create_model,
    deep_supervision_scales,
    head_parameters,
    init_head_bias,
    list_models,
    load_backbone,
    register,
    replace_heads,
)
from multitalent.preprocessing.plans import Plans

PATCH = (32, 64, 64)  # z, y, x; divisible by 32 for SwinUNETR
# small CPU variants; an architecture missing here is tested with its defaults
SMALL = {"plain_unet": {"base_features": 4}, "resenc_unet": {"base_features": 4, "n_stages": 4},
         "swin_unetr": {"feature_size": 12}}


@pytest.fixture(scope="module")
def plans() -> Plans:
    return Plans(spacing=[4.0, 4.0, 4.0], patch_size=list(PATCH))


def _small(name: str, plans: Plans, num_heads: int, deep_supervision: bool = True):
    torch.manual_seed(0)
    return create_model(name, plans, num_heads, deep_supervision=deep_supervision, **SMALL.get(name, {}))


def _as_list(y):
    return y if isinstance(y, list) else [y]


def test_registry_lists_the_three_architectures():
    assert {"plain_unet", "resenc_unet", "swin_unetr"} <= set(list_models())


def test_register_refuses_options_its_builder_does_not_take():
    def builder(plans, num_heads, deep_supervision=True, *, width=8):
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="keyword-only"):
        register("test_only_net", options=("height",))(builder)
    with pytest.raises(ValueError, match="keyword-only"):
        register("test_only_net", options=("num_heads",))(builder)
    assert "test_only_net" not in list_models()


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_shapes_match_deep_supervision_scales(name: str, plans: Plans):
    model = _small(name, plans, num_heads=3)
    x = torch.randn(1, 1, *PATCH)
    outs = _as_list(model(x))
    scales = model.output_strides()
    assert len(outs) == len(scales)
    for out, s in zip(outs, scales, strict=True):
        assert tuple(out.shape) == (1, 3, *(p // f for p, f in zip(PATCH, s, strict=True)))
    if model.deep_supervision:
        assert scales == deep_supervision_scales(plans, SMALL.get(name, {}).get("n_stages"))
        assert scales[0] == (1, 1, 1) and scales[1] == (2, 2, 2)
    sum(o.float().pow(2).mean() for o in outs).backward()
    # every parameter, every deep-supervision head included, takes part and gets a finite gradient
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(p.grad.abs().sum() > 0 for p in head_parameters(model))


@pytest.mark.parametrize("name", list_models())
def test_without_deep_supervision_one_tensor(name: str, plans: Plans):
    model = _small(name, plans, num_heads=2, deep_supervision=False)
    assert model.deep_supervision is False
    assert model.output_strides() == [(1, 1, 1)]
    with torch.no_grad():
        y = model(torch.randn(1, 1, *PATCH))
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (1, 2, *PATCH)
    if model.supports_deep_supervision:  # the property toggles the decoder
        model.deep_supervision = True
        assert model.deep_supervision is True and len(model.output_strides()) > 1
    else:  # e.g. SwinUNETR: stays off
        model.deep_supervision = True
        assert model.deep_supervision is False


@pytest.mark.parametrize("name", list_models())
def test_replace_heads_changes_every_output_and_keeps_backbone(name: str, plans: Plans):
    model = _small(name, plans, num_heads=3)
    backbone_before = {k: v.clone() for k, v in model.state_dict().items()}
    heads_before = list(head_parameters(model))  # keep them alive so ids are not reused
    replace_heads(model, 5)
    assert model.num_heads == 5
    model.eval()
    with torch.no_grad():
        outs = _as_list(model(torch.randn(1, 1, *PATCH)))
    assert len(outs) == len(model.output_strides())
    assert all(o.shape[1] == 5 for o in outs)
    assert all(h.out_channels == 5 for h in model.heads())
    heads = list(head_parameters(model))
    assert heads and not ({id(p) for p in heads} & {id(p) for p in heads_before})
    # head and backbone parameters partition the model's parameters
    assert len(heads) + len(list(backbone_parameters(model))) == len(list(model.parameters()))
    after = model.state_dict()
    kept = [k for k in backbone_before if after[k].shape == backbone_before[k].shape]
    assert all(torch.equal(after[k], backbone_before[k]) for k in kept if not _is_head_key(model, k))
    assert model.config["name"] == name


def _is_head_key(model, key: str) -> bool:
    return any(key.startswith(f"backbone.{p}.") for p in model.head_paths)


@pytest.mark.parametrize("name", list_models())
def test_load_backbone_skips_shape_mismatched_heads(name: str, plans: Plans):
    source = _small(name, plans, num_heads=3)
    target = _small(name, plans, num_heads=5)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)  # make the source weights distinguishable
    # keys as saved from a DDP-wrapped model
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    loaded, skipped = load_backbone(target, state)
    assert skipped and all(_is_head_key(target, k[len("module."):]) for k in skipped)
    assert {k[len("module."):] for k in skipped} == {k for k in source.state_dict() if _is_head_key(source, k)
                                                      and k.endswith(("weight", "bias"))}
    got = target.state_dict()
    for k in loaded:
        assert torch.equal(got[k[len("module."):]], state[k])
    for k in skipped:
        assert got[k[len("module."):]].shape[0] == 5


@pytest.mark.parametrize("name", list_models())
def test_config_rebuilds_the_model(name: str, plans: Plans):
    model = _small(name, plans, num_heads=4)
    rebuilt = create_model(**model.config, plans=plans, num_heads=4)
    assert rebuilt.arch == name and rebuilt.config == model.config
    a, b = model.state_dict(), rebuilt.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert rebuilt.load_state_dict(a) is not None


def test_user_errors(plans: Plans):
    with pytest.raises(UserInputError, match="unknown architecture"):
        create_model("no_such_net", plans, 2)
    with pytest.raises(UserInputError, match="no option"):
        create_model("plain_unet", plans, 2, not_an_option=1)
    with pytest.raises(UserInputError, match="divisible by 32"):
        create_model("swin_unetr", Plans(spacing=[4.0] * 3, patch_size=[40, 64, 64]), 2, feature_size=12)
    with pytest.raises(UserInputError, match="n_stages"):
        create_model("plain_unet", plans, 2, n_stages=1)


@pytest.mark.parametrize("name", list_models())
def test_head_prior_sets_every_output_to_the_prior(name: str, plans: Plans):
    model = _small(name, plans, num_heads=3)
    backbone_before = {k: v.clone() for k, v in model.state_dict().items()}
    init_head_bias(model, 0.01)
    head_ids = {id(p) for p in head_parameters(model)}
    for head in model.heads():
        assert torch.allclose(torch.sigmoid(head.bias), torch.full((3,), 0.01), atol=1e-6)
    # only the biases of the heads changed
    after = dict(model.named_parameters())
    for k, v in after.items():
        if id(v) not in head_ids or not k.endswith("bias"):
            assert torch.equal(v, backbone_before[k]), k
    with pytest.raises(UserInputError, match="between 0 and 1"):
        init_head_bias(model, 1.0)
