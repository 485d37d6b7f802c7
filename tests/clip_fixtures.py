"""Tiny CLIP checkpoints in the real on-disk layout of ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``.

``write_clip_checkpoint(path)`` ``torch.save``s a flat state dict with the real key names: the whole visual tower
(image 224, patch 14, so 257 tokens, ``num_layers`` blocks including the last one that never runs, ``post_norm`` and a
``head`` of the real layout [dim, 1024]), a few ``textual.*`` tensors and the scalar ``log_scale``. Random but
deterministic weights, scaled so that every block changes the output.
"""
from __future__ import annotations

from pathlib import Path

import torch

PATCH, IMAGE, TEXT_DIM = 14, 224, 1024


def clip_state_dict(dim: int = 160, num_layers: int = 3, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The flat CLIP state dict (visual tower, textual stubs, log_scale) for a tower of width ``dim``."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, offset=0.0):
        return (offset + scale * torch.randn(shape, generator=g)).to(dtype)

    tokens = 1 + (IMAGE // PATCH) ** 2
    state = {"visual.patch_embedding.weight": rand(dim, 3, PATCH, PATCH, scale=(3 * PATCH * PATCH) ** -0.5),
             "visual.cls_embedding": rand(1, 1, dim), "visual.pos_embedding": rand(1, tokens, dim, scale=0.5),
             "visual.pre_norm.weight": rand(dim, scale=0.1, offset=1.0), "visual.pre_norm.bias": rand(dim, scale=0.1)}
    for i in range(num_layers):
        p = f"visual.transformer.{i}."
        for norm in ("norm1", "norm2"):
            state[p + norm + ".weight"] = rand(dim, scale=0.1, offset=1.0)
            state[p + norm + ".bias"] = rand(dim, scale=0.1)
        for name, out, inp in (("attn.to_qkv", 3 * dim, dim), ("attn.proj", dim, dim), ("mlp.0", 4 * dim, dim),
                               ("mlp.2", dim, 4 * dim)):
            state[p + name + ".weight"] = rand(out, inp, scale=inp ** -0.5)
            state[p + name + ".bias"] = rand(out, scale=0.1)
    state.update({"visual.post_norm.weight": rand(dim, offset=1.0), "visual.post_norm.bias": rand(dim, scale=0.1),
                  "visual.head": rand(dim, TEXT_DIM, scale=dim ** -0.5),
                  "textual.token_embedding.weight": rand(64, 32), "textual.type_embedding.weight": rand(1, 32),
                  "textual.blocks.0.attn.q.weight": rand(32, 32), "textual.blocks.0.attn.q.bias": rand(32),
                  "textual.norm.weight": rand(32), "textual.head.0.weight": rand(32, 32),
                  "log_scale": torch.tensor(4.6052, dtype=dtype)})
    return state


def write_clip_checkpoint(path: str | Path, dim: int = 160, num_layers: int = 3, seed: int = 0,
                          dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Write a tiny CLIP ``.pth`` at ``path`` (parents created) and return the state dict written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = clip_state_dict(dim, num_layers, seed, dtype)
    torch.save(state, path)
    return state
