"""Attention kernel selection: flash-attn on CUDA when importable, PyTorch SDPA otherwise."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

try:  # optional GPU extra
    from flash_attn import flash_attn_func as _flash_attn_func  # type: ignore
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _flash_attn_func = None


def flash_attn_available() -> bool:
    """Whether the flash-attn package could be imported."""
    return _flash_attn_func is not None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Unmasked attention. q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D].

    ``backend``: ``auto`` (flash-attn for half types on CUDA when installed, else SDPA), ``flash`` or ``sdpa``.
    """
    use_flash = backend == "flash" or (
        backend == "auto" and _flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16))
    if use_flash:
        if _flash_attn_func is None:
            raise RuntimeError("attention backend 'flash' requested but flash-attn is not installed "
                               "(pip install flash-attn, or use the default SDPA backend)")
        return _flash_attn_func(q, k, v)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
