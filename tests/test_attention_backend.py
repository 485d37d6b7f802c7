"""Attention backend selection (FA3 on Hopper, then FA2, then SDPA) with faked packages and GPU capabilities."""
import sys
import types

import pytest
import torch

from wan import attention as attn


@pytest.fixture
def fake_gpu(monkeypatch):
    """``fake_gpu(capability, fa3=bool, fa2=bool)``: fake flash packages in sys.modules and a fake CUDA capability."""
    calls = []

    def install(capability, fa3=False, fa2=False):
        for name, present in (("flash_attn_interface", fa3), ("flash_attn", fa2)):
            if present:
                mod = types.ModuleType(name)

                def kernel(q, k, v, _name=name):
                    calls.append((_name, q, k, v))
                    out = torch.zeros_like(q)
                    return (out, None) if _name == "flash_attn_interface" else out  # FA3 may return (out, lse)
                mod.flash_attn_func = kernel
                monkeypatch.setitem(sys.modules, name, mod)
            else:
                monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        attn.reset_backend_choice()
        return calls

    yield install
    attn.reset_backend_choice()


@pytest.mark.parametrize("capability, fa3, fa2, dtype, expected", [
    ((9, 0), True, True, torch.bfloat16, "fa3"),
    ((9, 0), False, True, torch.float16, "fa2"),
    ((8, 0), True, True, torch.bfloat16, "fa2"),      # FA3 needs Hopper
    ((8, 9), False, False, torch.bfloat16, "sdpa"),
    ((7, 5), False, True, torch.float16, "sdpa"),     # FA2 needs Ampere or newer
    ((9, 0), True, True, torch.float32, "sdpa"),      # flash kernels are half-precision only
])
def test_selection_order(fake_gpu, capability, fa3, fa2, dtype, expected):
    fake_gpu(capability, fa3=fa3, fa2=fa2)
    assert attn.attention_backend("cuda", dtype) == expected
    assert attn.attention_backend("cuda:0", dtype) == expected  # same device, same choice


def test_cpu_is_always_sdpa(fake_gpu):
    fake_gpu((9, 0), fa3=True, fa2=True)
    assert attn.attention_backend("cpu", torch.bfloat16) == "sdpa"


def test_choice_is_made_once(fake_gpu, monkeypatch):
    fake_gpu((9, 0), fa3=True, fa2=True)
    assert attn.attention_backend("cuda", torch.bfloat16) == "fa3"
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert attn.attention_backend("cuda", torch.bfloat16) == "fa3"
    attn.reset_backend_choice()
    assert attn.attention_backend("cuda", torch.bfloat16) == "sdpa"


def test_flash_kernels_get_the_cache_view_itself(fake_gpu):
    calls = fake_gpu((9, 0), fa3=True, fa2=True)
    storage = torch.randn(1, 10, 2, 8)  # [B, capacity, H, D]
    k = v = storage[:, :6]  # what the cache returns: a slice, not contiguous over the capacity
    q = torch.randn(1, 3, 2, 8)
    assert attn.attention(q, k, v, backend="fa3").shape == q.shape
    attn.attention(q, k, v, backend="fa2")
    for _, _, kk, vv in calls:
        assert kk is k and vv is v  # passed through: no copy of the cache


def test_sdpa_reads_the_cache_view_without_copying_it():
    storage = torch.randn(1, 10, 2, 8)
    k = storage[:, :6]
    q = torch.randn(1, 3, 2, 8)
    seen = []

    class Ops(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Ops():
        out = attn.attention(q, k, k, backend="sdpa")
    assert not {"clone", "contiguous", "copy_", "_to_copy"} & set(seen), seen
    ref = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / 8 ** 0.5, -1)
    assert torch.allclose(out, torch.einsum("bhqk,bkhd->bqhd", ref, k), atol=1e-5)


def test_missing_package_is_a_clear_error(fake_gpu):
    fake_gpu((9, 0))
    with pytest.raises(RuntimeError, match="not importable"):
        attn.attention(torch.zeros(1, 1, 1, 8), torch.zeros(1, 1, 1, 8), torch.zeros(1, 1, 1, 8), backend="fa3")
    with pytest.raises(ValueError, match="unknown"):
        attn.attention(torch.zeros(1, 1, 1, 8), torch.zeros(1, 1, 1, 8), torch.zeros(1, 1, 1, 8), backend="xformers")
