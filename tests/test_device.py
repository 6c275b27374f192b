"""``multitalent.device``: one device resolution, one mixed-precision choice, one prefix stripping."""

from __future__ import annotations

import pytest
import torch

from multitalent.device import amp_dtype, resolve_device, strip_wrapper_prefixes, strip_wrappers
from multitalent.errors import UserInputError


def test_devices_are_checked_against_this_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "gpu:0", "cuda:x", ""):
        with pytest.raises(UserInputError, match="--device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UserInputError, match="CUDA is not available"):
            resolve_device("cuda")
    # an index beyond the GPUs present: refused by training and prediction alike (both use this function)
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(UserInputError):
        resolve_device(f"cuda:{n + 6}")


def test_training_refuses_a_gpu_index_that_is_not_there(tmp_path):
    from multitalent.training.config import TrainConfig
    from multitalent.training.loop import train

    with pytest.raises(UserInputError, match="--device cuda:7"):
        train(tmp_path / "pre", tmp_path / "run", TrainConfig(device="cuda:7"))
    assert not (tmp_path / "run").exists()


def test_mixed_precision_only_on_cuda():
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("off", cpu) is None  # float32 unless asked
    assert amp_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(UserInputError, match="fp16 needs a CUDA device"):
        amp_dtype("fp16", cpu)
    with pytest.raises(UserInputError, match="--amp"):
        amp_dtype("fp8", cpu)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        assert amp_dtype("fp16", gpu) == torch.float16 and amp_dtype("bf16", gpu) == torch.bfloat16
        assert amp_dtype("off", gpu) is None


def test_wrapper_prefixes_are_stripped_in_any_nesting():
    assert strip_wrapper_prefixes("module._orig_mod.backbone.w") == "backbone.w"
    assert strip_wrapper_prefixes("_orig_mod.module.x") == "x" and strip_wrapper_prefixes("x.module.y") == "x.module.y"
    assert strip_wrappers({"module.a": 1, "b": 2}) == {"a": 1, "b": 2}
