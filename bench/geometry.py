"""Sizes and work derived from the model config and the resolution: KV-cache bytes, parameters, FLOPs per call."""
from __future__ import annotations

import torch

from wan.config import WanConfig


def element_size(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty(0, dtype=dtype).element_size()


def kv_bytes_per_frame(cfg: WanConfig, tokens_per_frame: int, dtype: torch.dtype, batch: int = 1) -> int:
    """Keys + values of one latent frame in every layer: layers x 2 x F x dim x bytes.

    287.5 MB for the 1.3B model at 480x832 in bf16.
    """
    return cfg.num_layers * 2 * tokens_per_frame * cfg.dim * element_size(dtype) * batch


def cache_storage_bytes(kv) -> int:
    """Bytes actually allocated by a ``KVCache`` (k, v, t_pos, frame and policy fields of every layer)."""
    total = 0
    for layer in kv.layers:
        tensors = [layer.k, layer.v, layer.t_pos, layer.frame, *getattr(layer, "aux", {}).values()]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def param_count(model: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def call_flops(cfg: WanConfig, query_tokens: int, key_tokens: int) -> dict:
    """Multiply-add FLOPs (2 per MAC) of one DiT call over ``query_tokens`` with ``key_tokens`` self-attention keys.

    Returns {"linear", "self_attention", "cross_attention"} summed over layers (head and embeddings neglected;
    the text keys/values are projected once per prompt and are not counted).
    """
    d, L, n = cfg.dim, cfg.num_layers, query_tokens
    per_token_linear = 4 * d * d + 2 * d * d + 2 * d * cfg.ffn_dim  # self q,k,v,o + cross q,o + ffn
    return {
        "linear": 2 * n * per_token_linear * L,
        "self_attention": 4 * n * key_tokens * d * L,  # q.k and p.v
        "cross_attention": 4 * n * cfg.text_len * d * L,
    }


def chunk_flops(cfg: WanConfig, tokens_per_frame: int, chunk_frames: int, context_frames: int,
                calls: int) -> dict:
    """FLOPs of one chunk (``calls`` DiT calls, each over the chunk plus ``context_frames`` cached frames)."""
    q = chunk_frames * tokens_per_frame
    k = q + context_frames * tokens_per_frame
    one = call_flops(cfg, q, k)
    out = {key: value * calls for key, value in one.items()}
    out["total"] = sum(out.values())
    return out
