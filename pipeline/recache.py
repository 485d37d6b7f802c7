"""Re-caching at a prompt switch: recompute cached keys/values under the new prompt. Two variants.

``ours`` (``recache=True`` / ``"ours"``): one clean pass (t = context_noise) runs over the clean latents of every
frame the cache still references, each frame at its current time position, attending among themselves; every cached
token then takes the key/value of its (frame, token-in-frame) from that pass, in every layer. Which tokens are cached,
and their positions, do not change.

``longlive`` (``recache="longlive"``): LongLive's re-cache as released. Before the chunk at f, with L the window
(frames, chunk included) and S the sink, one clean pass with no mask runs over the clean latents of the last
m = min(L, f) frames:

- f <= L: frames 0 .. f-1 are recomputed together and replace their cached keys/values (sink included).
- f > L, ``global_sink`` true (as released): frames f-(L-S) .. f-1 are recomputed with the sink's cached keys/values
  as extra frozen keys; the sink is never rewritten (it keeps the first prompt's keys/values for ever).
- f > L, ``global_sink`` false: frames f-L .. f-1 are recomputed together and replace the whole cache, so the sink
  becomes frames f-L .. f-L+S-1 at their own positions.

The pass's frames sit at consecutive time positions ending at the current position of frame f-1: their absolute
indices in the Self Forcing window (LongLive's normal mode), their slots relative to the sink placed right before the
window (LongLive's infinite mode, the ``infinite_forcing`` cache). The clean-latent store of this variant keeps the
last L frames, since frames the cache has already evicted may be recomputed.
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
        cache.write_staged(slot, torch.arange(cache.staged, device=slot.device) % F)


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
    """Clean latents of the frames a KV cache still references (and of the last ``keep_last`` frames); pruned after
    every chunk. ``recache`` re-caches with our variant (see the module docstring)."""

    def __init__(self, keep_last: int = 0):
        self._frames: dict[int, torch.Tensor] = {}
        self.keep_last = keep_last
        self.next_frame = 0  # one past the newest frame added

    def add(self, start_frame: int, x0: torch.Tensor) -> None:
        """Remember the chunk's clean latents x0 [B, n, C, H, W] starting at ``start_frame``."""
        for j in range(x0.shape[1]):
            self._frames[start_frame + j] = x0[:, j]
        self.next_frame = max(self.next_frame, start_frame + x0.shape[1])

    def get(self, frame: int) -> torch.Tensor:
        """Clean latent [B, C, H, W] of ``frame``."""
        return self._frames[frame]

    def prune(self, kv: KVCache) -> None:
        """Drop frames no layer references any more (memory bounded by the cache size)."""
        keep = set(referenced_frames(kv)) | set(range(self.next_frame - self.keep_last, self.next_frame))
        for fr in [fr for fr in self._frames if fr not in keep]:
            del self._frames[fr]

    def __len__(self) -> int:
        return len(self._frames)

    def recache(self, model, kv: KVCache, text_kv: list, context_noise: float) -> None:
        """Re-cache ``kv`` under ``text_kv`` (our variant: every cached frame at its current position)."""
        recache_kv(model, kv, text_kv, self, context_noise)


class LongLiveRecache(CleanLatentStore):
    """LongLive's re-cache (module docstring) for a window of ``window`` frames with a ``sink``-frame sink."""

    def __init__(self, window: int, sink: int, global_sink: bool = True):
        super().__init__(keep_last=window)
        self.window, self.sink, self.global_sink = window, sink, global_sink

    def recache(self, model, kv: KVCache, text_kv: list, context_noise: float) -> None:
        """Re-cache ``kv`` under ``text_kv`` as LongLive does before the chunk at ``next_frame``."""
        longlive_recache_kv(model, kv, text_kv, self, context_noise, self.window, self.sink, self.global_sink)


RECACHE_VARIANTS = ("ours", "longlive")


def recache_store(recache: "bool | str | None", global_sink: bool, policy) -> CleanLatentStore | None:
    """The clean-latent store of the re-cache variant ``recache`` selects (False/None: no re-cache; True: ours)."""
    if recache is None or recache is False:
        return None
    if recache is True or recache == "ours":
        return CleanLatentStore()
    if recache == "longlive":
        return LongLiveRecache(policy.window_frames, policy.sink_size, bool(global_sink))
    raise ValueError(f"recache={recache!r} is not a re-cache variant: use False (keep the cache at a switch), True "
                     f"or 'ours' (recompute every cached frame at its position) or 'longlive' (LongLive's re-cache "
                     f"of the last window frames, with global_sink choosing whether the sink is kept)")


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


class _FrozenPrefix:
    """Cache stand-in for LongLive's pass: keys = frozen cached tokens (e.g. the sink) + the pass's own tokens."""

    def __init__(self, kv: KVCache, frozen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
        self.base = kv.base
        self.kv = kv
        self.frozen = frozen  # per layer (k unrotated [B, s, H, D], v [B, s, H, D], t_pos [B, s])
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, layer, q, k, v, pos, rotation):
        """Record k/v [B, R*F, H, D]; attend over the frozen tokens (rotated at their positions) and the pass."""
        self.keys.append(k)
        self.values.append(v)
        fk, fv, fpos = self.frozen[layer]
        keys = torch.cat([self.kv.rotate_time(fk, fpos - self.base), rotation.apply(k)], dim=1)  # [B, s+R*F, H, D]
        return keys, torch.cat([fv, v], dim=1)


@torch.no_grad()
def longlive_recache_kv(model, kv: KVCache, text_kv: list, clean: CleanLatentStore, context_noise: float,
                        window: int, sink: int, global_sink: bool) -> None:
    """LongLive's re-cache before the chunk at ``clean.next_frame`` (module docstring)."""
    f = clean.next_frame
    if f == 0 or not any(cache.n for cache in kv.layers):
        return
    keep_sink = global_sink and f > window
    first = f - (window - sink) if keep_sink else f - min(window, f)
    frames = list(range(first, f))
    device = kv.layers[0].k.device
    wanted = torch.tensor(frames, device=device)
    last_pos = int(frame_positions(kv, [f - 1])[0])
    positions = torch.arange(last_pos - len(frames) + 1, last_pos + 1, device=device)  # [R]
    frozen = []
    for cache in kv.layers:
        n = cache.n
        outside = ~torch.isin(cache.frame[0, :n], wanted) if keep_sink else torch.zeros(n, dtype=torch.bool,
                                                                                          device=device)
        idx = outside.nonzero().flatten()  # tokens that stay as they are (the sink), used as frozen keys
        frozen.append((cache.k[:, idx], cache.v[:, idx], cache.t_pos[:, idx]))
    latents = torch.stack([clean.get(fr) for fr in frames], dim=1)  # [B, R, C, H, W]
    stand_in = _FrozenPrefix(kv, frozen)
    t = torch.full(latents.shape[:2], float(context_noise), device=latents.device)
    model(latents, t, text_kv, stand_in, frame_positions=positions)
    F = kv.tokens_per_frame
    if keep_sink or f <= window:
        # Rewrite the cached tokens of the pass's frames in place; everything else (the sink) stays.
        rank = torch.full((f,), -1, dtype=torch.long, device=device)
        rank[wanted] = torch.arange(len(frames), device=device)
        for cache, k_new, v_new in zip(kv.layers, stand_in.keys, stand_in.values):
            n = cache.n
            fr = cache.frame[:, :n]
            inside = torch.isin(fr, wanted)  # [B, n]
            idx = (rank[fr].clamp(min=0) * F + cache.aux_field(SLOT)[:, :n])  # [B, n] rows of the pass
            g = idx[:, :, None, None].expand(-1, -1, *cache.k.shape[2:])
            keep = inside[:, :, None, None]
            cache.k[:, :n] = torch.where(keep, torch.gather(k_new, 1, g), cache.k[:, :n])
            cache.v[:, :n] = torch.where(keep, torch.gather(v_new, 1, g), cache.v[:, :n])
            cache.t_pos[:, :n] = torch.where(inside, positions[rank[fr].clamp(min=0)], cache.t_pos[:, :n])
        return
    # global_sink false, f > L: the pass replaces the whole cache (its first S frames become the sink).
    m = len(frames) * F
    for cache, k_new, v_new in zip(kv.layers, stand_in.keys, stand_in.values):
        if m > cache.capacity:
            raise RuntimeError(f"LongLive re-cache of {len(frames)} frames does not fit the cache capacity")
        cache.k[:, :m] = k_new
        cache.v[:, :m] = v_new
        cache.t_pos[:, :m] = positions.repeat_interleave(F)
        cache.frame[:, :m] = wanted.repeat_interleave(F)
        for name, field in cache.aux.items():
            field[:, :m] = torch.arange(m, device=device) % F if name == SLOT else 0
        cache.n = m
