"""Attention kernel selection: FA3 on Hopper, then FA2, then PyTorch SDPA; chosen once per (device, dtype).

Backends (``attention_backend(device, dtype)``):

- ``fa3``: ``flash_attn_interface.flash_attn_func`` (FlashAttention 3), CUDA devices of compute capability 9.x
  (Hopper), float16/bfloat16, when the module imports.
- ``fa2``: ``flash_attn.flash_attn_func`` (FlashAttention 2), CUDA devices of capability >= 8.0, half types,
  when the package imports.
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` everywhere else (CPU, float32, no flash package).

The cache hands attention a slice of its preallocated storage (``k[:, :n]``, [B, n, H, D] with the last two dims
contiguous and a batch stride of the whole capacity). No backend copies it here: the flash kernels take any batch and
sequence strides as long as the last dim is contiguous, and SDPA gets a transposed view ([B, H, n, D]), which its
CUDA flash / memory-efficient kernels read in place. Nothing calls ``.contiguous()`` on the cache.
"""
from __future__ import annotations

import importlib
import logging
from typing import Callable

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BACKENDS = ("fa3", "fa2", "sdpa")
HALF_TYPES = (torch.float16, torch.bfloat16)
_chosen: dict[tuple[str, torch.dtype], str] = {}
_imported: dict[str, Callable | None] = {}


def _kernel(module: str) -> Callable | None:
    """``module.flash_attn_func`` when the module imports, else None (the import is tried once)."""
    if module not in _imported:
        try:
            _imported[module] = getattr(importlib.import_module(module), "flash_attn_func", None)
        except Exception:  # noqa: BLE001 - any import failure (missing, wrong CUDA/torch build) = "not available"
            _imported[module] = None
    return _imported[module]


def fa3_kernel() -> Callable | None:
    """FlashAttention 3's ``flash_attn_func`` (package ``flash_attn_interface``), or None."""
    return _kernel("flash_attn_interface")


def fa2_kernel() -> Callable | None:
    """FlashAttention 2's ``flash_attn_func`` (package ``flash_attn``), or None."""
    return _kernel("flash_attn")


def flash_attn_available() -> bool:
    """Whether FA3 or FA2 could be imported."""
    return fa3_kernel() is not None or fa2_kernel() is not None


def _device_key(device) -> torch.device:
    """``device`` with the CUDA index filled in (``cuda`` -> ``cuda:<current>``)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def select_backend(device, dtype: torch.dtype) -> str:
    """The fastest usable backend for ``device`` and ``dtype`` (see the module docstring), decided now."""
    device = torch.device(device)
    if device.type != "cuda" or dtype not in HALF_TYPES:
        return "sdpa"
    major, minor = torch.cuda.get_device_capability(device)
    if major == 9 and fa3_kernel() is not None:
        return "fa3"
    if (major, minor) >= (8, 0) and fa2_kernel() is not None:
        return "fa2"
    return "sdpa"


def attention_backend(device, dtype: torch.dtype) -> str:
    """The backend ``attention`` uses on ``device`` for ``dtype``: ``fa3``, ``fa2`` or ``sdpa`` (chosen once)."""
    key = (str(_device_key(device)), dtype)
    backend = _chosen.get(key)
    if backend is None:
        backend = select_backend(key[0], dtype)
        _chosen[key] = backend
        logger.info("attention backend on %s for %s: %s", key[0], dtype, backend)
    return backend


def reset_backend_choice() -> None:
    """Forget the backends chosen and the imports tried so far (tests, or after installing a flash package)."""
    _chosen.clear()
    _imported.clear()


def _flash(kernel: Callable | None, name: str, q, k, v) -> torch.Tensor:
    """Run a flash kernel on [B, L, H, D] tensors (FA3 may return (out, lse): keep out)."""
    if kernel is None:
        raise RuntimeError(f"attention backend {name!r} requested but its package is not importable "
                           f"(install flash-attn / FlashAttention 3, or use the default backend 'auto')")
    out = kernel(q, k, v)
    return out[0] if isinstance(out, tuple) else out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Unmasked attention. q [B, Lq, H, D], k/v [B, Lk, H, D] (views are read in place) -> [B, Lq, H, D].

    ``backend``: ``auto`` (``attention_backend(q.device, q.dtype)``), ``fa3``, ``fa2`` (alias ``flash``) or ``sdpa``.
    """
    if backend == "auto":
        backend = attention_backend(q.device, q.dtype)
    if backend == "fa3":
        return _flash(fa3_kernel(), "fa3", q, k, v)
    if backend in ("fa2", "flash"):
        return _flash(fa2_kernel(), "fa2", q, k, v)
    if backend != "sdpa":
        raise ValueError(f"attention backend {backend!r} is unknown; use auto, fa3, fa2 or sdpa")
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # [B, H, Lq, D]
    return out.transpose(1, 2)
