"""Which of PyTorch's SDPA kernels runs the rollout's attention: a quick probe, then one choice for the whole run.

Without a flash-attn package (no wheel of it can be carried to the GPU machine) the model's attention is
``torch.nn.functional.scaled_dot_product_attention``, which has several CUDA kernels: FlashAttention-2
(``flash``), cuDNN's fused attention (``cudnn``), the memory-efficient kernel (``efficient``) and the reference
(``math``). ``probe`` times each on the rollout's own shape (a chunk's queries against a full window of cached keys,
read in place through the same strided views as ``wan.attention.attention``), and ``backend_context(name)`` makes
that kernel the first choice (the others stay allowed, in order, for calls it cannot run: fp32, the VAE's
single-head attention).
"""
from __future__ import annotations

import contextlib
import statistics

import torch
import torch.nn.functional as F

NAMES = ("flash", "cudnn", "efficient", "math")


def _backend(name: str):
    """The ``torch.nn.attention.SDPBackend`` member of ``name``."""
    from torch.nn.attention import SDPBackend
    return {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]


def backend_context(name: str | None):
    """A context in which SDPA tries ``name`` first, then the other kernels (``nullcontext`` for None)."""
    if name is None:
        return contextlib.nullcontext()
    if name not in NAMES:
        raise ValueError(f"SDPA backend {name!r}: use one of {', '.join(NAMES)}")
    from torch.nn.attention import sdpa_kernel
    order = [_backend(name)] + [_backend(n) for n in NAMES if n != name]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # a torch without priorities: only the choice, with math as the fallback
        return sdpa_kernel([_backend(name), _backend("math")])


def probe(device, dtype: torch.dtype, query_tokens: int, key_tokens: int, heads: int, head_dim: int,
          repeats: int = 5, names=NAMES) -> dict:
    """Seconds per call of every SDPA kernel on q [1, Lq, H, D] against k/v [1, Lk, H, D] slices of a longer buffer.

    Returns {"shape", "dtype", "seconds": {name: s}, "errors": {name: reason}, "max_abs_diff_vs_math", "chosen"}
    (``chosen``: the fastest kernel that ran, None when none did).
    """
    from torch.nn.attention import sdpa_kernel

    from .clock import Clock
    device = torch.device(device)
    clock = Clock(device)
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, query_tokens, heads, head_dim, generator=g, device=device, dtype=dtype)
    buf = torch.randn(2, 1, key_tokens + query_tokens, heads, head_dim, generator=g, device=device, dtype=dtype)
    k, v = buf[0, :, :key_tokens], buf[1, :, :key_tokens]  # cache-like: batch stride of the whole capacity

    def call():
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

    out = {"shape": {"query_tokens": query_tokens, "key_tokens": key_tokens, "heads": heads, "head_dim": head_dim},
           "dtype": str(dtype).replace("torch.", ""), "device": str(device), "seconds": {}, "errors": {},
           "max_abs_diff_vs_math": {}}
    reference = None
    for name in names:
        try:
            with sdpa_kernel([_backend(name)]):
                result = call()  # warm-up (and the check that this kernel takes the shape)
                times = []
                for _ in range(repeats):
                    m0 = clock.mark()
                    call()
                    m1 = clock.mark()
                    times.append((m0, m1))
                clock.sync()
        except RuntimeError as exc:
            out["errors"][name] = str(exc).strip().splitlines()[0][:300]
            continue
        out["seconds"][name] = statistics.median(clock.seconds(a, b) for a, b in times)
        if name == "math":
            reference = result
        out.setdefault("_results", {})[name] = result
    results = out.pop("_results", {})
    if reference is not None:
        for name, result in results.items():
            out["max_abs_diff_vs_math"][name] = (result.float() - reference.float()).abs().max().item()
    out["chosen"] = min(out["seconds"], key=out["seconds"].get) if out["seconds"] else None
    return out
