"""Re-caching at a prompt switch: recompute cached keys/values under the new prompt.

A ``Recache`` is chosen by the method (or ``--recache``): it keeps a ``CleanLatentStore`` of the clean latents the
cache may need, and at a switch computes ``Rewrite`` plans that the cache applies (``KVCache.rewrite``). Variants
register themselves by ``name`` (``RECACHES``): ``off`` (keep the cache as it is, training-free) and ``ours`` below;
a method may add its own (``methods/``).

``ours``: one clean pass (t = context_noise) runs over the clean latents of every frame the cache still references,
each frame at its current time position, attending among themselves; every cached token then takes the key/value of
its (frame, token-in-frame) from that pass, in every layer. Which tokens are cached, and their positions, do not
change.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .kv_cache import SLOT, KVCache, Rewrite

RECACHES: dict[str, type["Recache"]] = {}  # filled below: off, ours (a method may add its own)


def referenced_frames(kv: KVCache) -> torch.Tensor:
    """Sorted source frames [R] that any layer (any sample) of the cache still holds tokens of (on the device)."""
    found = [cache.frame[:, :cache.n].flatten() for cache in kv.layers if cache.n]
    if not found:
        return torch.zeros(0, dtype=torch.long, device=kv.layers[0].frame.device)
    return torch.cat(found).unique()


def frame_positions(kv: KVCache, frames: torch.Tensor) -> torch.Tensor:
    """Current time position of each frame [R]: from the first layer holding it (sample 0), else its index."""
    pos = frames.clone()
    found = torch.zeros(frames.shape[0], dtype=torch.bool, device=frames.device)
    for cache in kv.layers:
        fr, tp = cache.frame[0, :cache.n], cache.t_pos[0, :cache.n]
        match = fr[None, :] == frames[:, None]  # [R, n]
        has = match.any(1) & ~found
        first = match.float().argmax(1)
        pos = torch.where(has, tp[first], pos)
        found |= has
    return pos


class CleanLatentStore:
    """Clean latents of the frames a KV cache still references (and of the last ``keep_last`` frames)."""

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

    def stack(self, frames: list[int]) -> torch.Tensor:
        """Clean latents of ``frames`` -> [B, R, C, H, W]."""
        return torch.stack([self._frames[fr] for fr in frames], dim=1)

    def prune(self, kv: KVCache) -> None:
        """Drop frames no layer references any more (memory bounded by the cache size)."""
        keep = set(referenced_frames(kv).tolist()) | set(range(self.next_frame - self.keep_last, self.next_frame))
        for fr in [fr for fr in self._frames if fr not in keep]:
            del self._frames[fr]

    def __len__(self) -> int:
        return len(self._frames)


class _Recorder:
    """Cache stand-in for a re-cache pass: ``frozen`` tokens (per layer, may be empty) + the pass's own tokens.

    Records each layer's k (time-unrotated) and v [B, R*F, H, D] of the pass.
    """

    def __init__(self, base: int, rotate_time, frozen: list | None = None):
        self.base, self.rotate_time, self.frozen = base, rotate_time, frozen
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, layer, q, k, v, pos, rotation):
        """Record k/v; attend over the frozen tokens (rotated at their positions) and the pass."""
        self.keys.append(k)
        self.values.append(v)
        if self.frozen is None:
            return rotation.apply(k), v
        fk, fv, fpos = self.frozen[layer]  # k unrotated [B, s, H, D], v, t_pos [B, s]
        keys = torch.cat([self.rotate_time(fk, fpos - self.base), rotation.apply(k)], dim=1)  # [B, s+R*F, H, D]
        return keys, torch.cat([fv, v], dim=1)


@torch.no_grad()
def clean_pass_kv(model, kv: KVCache, text_kv: list, latents: torch.Tensor, positions: torch.Tensor,
                  context_noise: float, frozen: list | None = None) -> _Recorder:
    """One clean pass over latents [B, R, C, H, W] at ``positions`` [R]; returns the recorded per-layer k/v."""
    recorder = _Recorder(kv.base, kv.rotate_time, frozen)
    t = torch.full(latents.shape[:2], float(context_noise), device=latents.device)
    model(latents, t, text_kv, recorder, frame_positions=positions)
    return recorder


@dataclass
class Recache:
    """No re-cache (``off``): the cache keeps the keys/values it has at a prompt switch (training-free)."""

    name = "off"

    def __init_subclass__(cls, **kwargs):
        """Register a subclass under its own ``name``."""
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            RECACHES[cls.name] = cls

    def new_store(self, policy) -> CleanLatentStore | None:
        """The clean-latent store of one video (None: nothing to remember)."""
        return None

    def apply(self, model, kv: KVCache, text_kv: list, store: CleanLatentStore, context_noise: float) -> None:
        """Re-cache ``kv`` under ``text_kv`` before the block at ``store.next_frame``."""
        for layer, rewrite in enumerate(self.rewrites(model, kv, text_kv, store, context_noise)):
            kv.rewrite(layer, rewrite)

    def rewrites(self, model, kv: KVCache, text_kv: list, store: CleanLatentStore,
                 context_noise: float) -> list[Rewrite]:
        """The per-layer plans of the re-cache (none: the cache stays as it is)."""
        return []

    def describe(self) -> dict:
        """The variant and its parameters, for sidecars."""
        return {"recache": self.name, **{f.name: getattr(self, f.name) for f in fields(self)}}


RECACHES[Recache.name] = Recache  # the base class is the "off" variant (first in the choice list)


@dataclass
class OursRecache(Recache):
    """Every cached frame recomputed at its current position (module docstring)."""

    name = "ours"

    def new_store(self, policy) -> CleanLatentStore:
        """Remember the clean latents of every frame the cache references."""
        return CleanLatentStore()

    def rewrites(self, model, kv: KVCache, text_kv: list, store: CleanLatentStore,
                 context_noise: float) -> list[Rewrite]:
        """New k/v of every committed token, from one pass over the referenced frames."""
        frames = referenced_frames(kv)
        if frames.numel() == 0:
            return []
        frame_list = frames.tolist()
        rec = clean_pass_kv(model, kv, text_kv, store.stack(frame_list), frame_positions(kv, frames), context_noise)
        F = kv.tokens_per_frame
        rank = torch.full((frame_list[-1] + 1,), -1, dtype=torch.long, device=frames.device)
        rank[frames] = torch.arange(frames.shape[0], device=frames.device)
        out = []
        for cache, k_new, v_new in zip(kv.layers, rec.keys, rec.values):
            n = cache.n
            idx = rank[cache.frame[:, :n]] * F + cache.aux_field(SLOT)[:, :n]  # [B, n] rows of the pass
            g = idx[:, :, None, None].expand(-1, -1, *cache.k.shape[2:])
            out.append(Rewrite(torch.gather(k_new, 1, g), torch.gather(v_new, 1, g)))
        return out


def recache_choices() -> tuple[str, ...]:
    """Names of the registered re-cache variants."""
    return tuple(RECACHES)


def build_recache(name: str, **params) -> Recache:
    """The registered re-cache variant ``name``, built from the ``params`` its class declares."""
    try:
        cls = RECACHES[name]
    except KeyError:
        raise ValueError(f"re-cache variant {name!r} is unknown; use one of {', '.join(RECACHES)}") from None
    own = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in params.items() if k in own})

