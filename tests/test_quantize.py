"""Opt-in FP8 linear layers (``wan.quantize``): which layers convert, and the clear errors where FP8 cannot run."""
import sys

import pytest

from tiny import tiny_model
from wan.quantize import FP8Unavailable, convert_fp8_linear, fp8_layers, fp8_unavailable


def test_only_the_blocks_linears_are_converted():
    model = tiny_model()
    names = fp8_layers(model)
    per_block = {"self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"}
    assert set(names) == {f"blocks.{i}.{n}" for i in range(model.config.num_layers) for n in per_block}


def test_cpu_model_is_refused_with_the_reason():
    model = tiny_model()
    with pytest.raises(FP8Unavailable, match=r"compute capability >= 8\.9.*on cpu"):
        convert_fp8_linear(model)
    assert "CUDA GPU" in fp8_unavailable("cpu")
    assert all(p.dtype.is_floating_point and p.element_size() == 4 for p in model.parameters())  # untouched


def test_missing_torchao_is_named(monkeypatch):
    from wan import quantize
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao -> ImportError
    with pytest.raises(FP8Unavailable, match="torchao.*pip install torchao"):
        quantize._torchao()


def test_unknown_granularity_is_an_error():
    with pytest.raises(ValueError, match="granularity"):
        convert_fp8_linear(tiny_model(), granularity="block")


def test_torchao_config_builds_when_installed():
    pytest.importorskip("torchao")
    from wan.quantize import _config
    assert type(_config("row")).__name__ == "Float8DynamicActivationFloat8WeightConfig"
