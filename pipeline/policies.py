"""KV-cache policies: what the cache keeps and which time positions its tokens use.

A policy is a dataclass whose fields are its configuration (validated in ``__post_init__`` and ``validate``). It
acts only on the first call of a new chunk (``on_new_chunk``), before the chunk is staged, and may observe every
call's queries (``observe_queries``). It never knows which model runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .kv_cache import KVCache

TraceHook = Callable[[dict], None]


@dataclass
class CachePolicy:
    """Base policy: a window of ``local_attn_size`` frames (-1: global, capped at ``global_cap_frames``)."""

    local_attn_size: int = 21
    sink_size: int = 0
    global_cap_frames: int = 21
    trace: TraceHook | None = field(default=None, repr=False, compare=False)

    name = "base"

    def __post_init__(self):
        if self.local_attn_size != -1 and self.local_attn_size < 1:
            raise ValueError(f"local_attn_size={self.local_attn_size}: use -1 (global) or a positive frame count")
        if self.sink_size < 0:
            raise ValueError(f"sink_size={self.sink_size} must be >= 0")

    @property
    def window_frames(self) -> int:
        """L: the most frames' worth of tokens the cache holds with the current chunk."""
        return self.global_cap_frames if self.local_attn_size == -1 else self.local_attn_size

    def validate(self, chunk_frames: int) -> None:
        """Check the configuration against the chunk size B; raise ValueError naming the values."""
        L, S, B = self.window_frames, self.sink_size, chunk_frames
        if S + B > L:
            raise ValueError(f"sink_size={S} + chunk of {B} frames exceeds the window local_attn_size={L}: "
                             f"no frame could ever be evicted; use sink_size <= {L - B}")

    def capacity_frames(self, chunk_frames: int) -> int:
        """Storage to preallocate, in frames: the committed window plus one staged chunk."""
        return self.window_frames + chunk_frames

    def reset(self, num_layers: int) -> None:
        """Forget all per-video state."""

    def observe_queries(self, kv: KVCache, layer: int, q: torch.Tensor, pos: torch.Tensor) -> None:
        """Called with every DiT call's queries q [B, m, H, D] (spatially rotated) and positions [m]."""

    def on_new_chunk(self, kv: KVCache, layer: int) -> None:
        """Cache events on the first call of a new chunk (evict / compress / move positions)."""

    def describe(self) -> dict:
        """The policy's parameters, for sidecars and logs."""
        return {"mode": self.name, "local_attn_size": self.local_attn_size, "sink_size": self.sink_size,
                "window_frames": self.window_frames}

    def _emit(self, kv: KVCache, layer: int, event: str, **extra) -> None:
        """Send a trace record of the layer's committed tokens to the trace hook, if any."""
        if self.trace is None:
            return
        cache = kv.layers[layer]
        rec = {"event": event, "layer": layer, "chunk_start": kv.chunk.start_frame,
               "num_tokens": cache.n, "frames": cache.frame[:, :cache.n].detach().cpu(),
               "t_pos": cache.t_pos[:, :cache.n].detach().cpu()}
        rec.update(extra)
        self.trace(rec)


def evict_after_sink(kv: KVCache, layer: int, sink_frames: int, window_frames: int) -> int:
    """FIFO eviction of the oldest non-sink frames so that context + new chunk fits ``window_frames``.

    Returns the number of frames evicted (0 when it fits).
    """
    cache, chunk = kv.layers[layer], kv.chunk
    F = chunk.tokens_per_frame
    cached_frames = cache.n // F
    evict = cached_frames + chunk.num_frames - window_frames
    if evict <= 0:
        return 0
    sink = sink_frames * F
    device = cache.k.device
    idx = torch.cat([torch.arange(sink, device=device), torch.arange(sink + evict * F, cache.n, device=device)])
    cache.keep(idx)
    return evict


@dataclass
class SelfForcingWindow(CachePolicy):
    """Self Forcing's cache (SPEC 4.1): FIFO eviction of non-sink frames, positions never move."""

    name = "self_forcing"

    def on_new_chunk(self, kv: KVCache, layer: int) -> None:
        """Evict the oldest non-sink frames when the new chunk would overflow the window."""
        evicted = evict_after_sink(kv, layer, self.sink_size, self.window_frames)
        if evicted:
            self._emit(kv, layer, "evict", evicted_frames=evicted)
