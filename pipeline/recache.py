"""Re-caching at a prompt switch (LongLive-style): recompute cached keys/values under the new prompt.

One clean pass (t = context_noise) runs over the clean latents of every frame the cache still references, each
frame at its current time position, attending among themselves; every cached token then takes the key/value of its
(frame, token-in-frame) from that pass, in every layer. Which tokens are cached, and their positions, do not change.
"""
from __future__ import annotations

import torch

from .kv_cache import KVCache

SLOT = "slot"  # per-token aux field: index of the token inside its source frame


def mark_token_slots(kv: KVCache) -> None:
    """Record, for the staged chunk of every layer, each token's index inside its frame (before ``commit``)."""
    F = kv.tokens_per_frame
    for cache in kv.layers:
        slot = cache.aux_field(SLOT)
        end = cache.n + cache.staged
        slot[:, cache.n:end] = torch.arange(cache.staged, device=slot.device) % F


def referenced_frames(kv: KVCache) -> list[int]:
    """Sorted source frames that any layer (any sample) of the cache still holds tokens of."""
    found = [cache.frame[:, :cache.n].unique() for cache in kv.layers if cache.n]
    if not found:
        return []
    return torch.cat(found).unique().tolist()


def frame_positions(kv: KVCache, frames: list[int]) -> torch.Tensor:
    """Current time position of each frame [R]: from the first layer holding it (sample 0), else its index."""
    device = kv.layers[0].t_pos.device
    pos = torch.tensor(frames, dtype=torch.long, device=device)
    found = torch.zeros(len(frames), dtype=torch.bool, device=device)
    wanted = pos.clone()
    for cache in kv.layers:
        fr, tp = cache.frame[0, :cache.n], cache.t_pos[0, :cache.n]
        match = fr[None, :] == wanted[:, None]  # [R, n]
        has = match.any(1) & ~found
        first = match.float().argmax(1)
        pos = torch.where(has, tp[first], pos)
        found |= has
    return pos


class CleanLatentStore:
    """Clean latents of the frames a KV cache still references; pruned after every chunk."""

    def __init__(self):
        self._frames: dict[int, torch.Tensor] = {}

    def add(self, start_frame: int, x0: torch.Tensor) -> None:
        """Remember the chunk's clean latents x0 [B, n, C, H, W] starting at ``start_frame``."""
        for j in range(x0.shape[1]):
            self._frames[start_frame + j] = x0[:, j]

    def get(self, frame: int) -> torch.Tensor:
        """Clean latent [B, C, H, W] of ``frame``."""
        return self._frames[frame]

    def prune(self, kv: KVCache) -> None:
        """Drop frames no layer references any more (memory bounded by the cache size)."""
        keep = set(referenced_frames(kv))
        for fr in [fr for fr in self._frames if fr not in keep]:
            del self._frames[fr]

    def __len__(self) -> int:
        return len(self._frames)


class _Recorder:
    """Cache stand-in for the re-cache pass: tokens attend among themselves; each layer's k/v are recorded."""

    def __init__(self, base: int):
        self.base = base
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, layer, q, k, v, pos, rotation):
        """Record k (time-unrotated) and v [B, R*F, H, D]; return them time-rotated for attention."""
        self.keys.append(k)
        self.values.append(v)
        return rotation.apply(k), v


@torch.no_grad()
def recache_kv(model, kv: KVCache, text_kv: list, clean: CleanLatentStore, context_noise: float) -> None:
    """Recompute every cached token's key/value under ``text_kv`` (see module docstring)."""
    frames = referenced_frames(kv)
    if not frames:
        return
    latents = torch.stack([clean.get(fr) for fr in frames], dim=1)  # [B, R, C, H, W]
    positions = frame_positions(kv, frames)
    recorder = _Recorder(kv.base)
    t = torch.full(latents.shape[:2], float(context_noise), device=latents.device)
    model(latents, t, text_kv, recorder, frame_positions=positions)
    F = kv.tokens_per_frame
    rank = torch.full((max(frames) + 1,), -1, dtype=torch.long, device=positions.device)
    rank[torch.tensor(frames, device=positions.device)] = torch.arange(len(frames), device=positions.device)
    for cache, k_new, v_new in zip(kv.layers, recorder.keys, recorder.values):
        n = cache.n
        idx = rank[cache.frame[:, :n]] * F + cache.aux_field(SLOT)[:, :n]  # [B, n] rows of the pass
        g = idx[:, :, None, None].expand(-1, -1, *cache.k.shape[2:])
        cache.k[:, :n] = torch.gather(k_new, 1, g)
        cache.v[:, :n] = torch.gather(v_new, 1, g)
