"""Re-caching at a prompt switch: recompute cached keys/values under the new prompt.

A ``Recache`` is chosen by the method (or ``--recache``): it keeps a ``CleanLatentStore`` of the clean latents the
cache may need, and at a switch computes ``Rewrite`` plans that the cache applies (``KVCache.rewrite``). Variants
register themselves by ``name`` (``RECACHES``): ``off`` (keep the cache as it is, training-free) and ``ours`` below;
a method may add its own (``methods/``).

``ours``: one clean pass (t = context_noise) runs over the clean latents of every frame the cache still references,
each frame at its current time position, attending among themselves; every cached token then takes the key/value of
its (frame, token-in-frame) from that pass, in every layer. Which tokens are cached, and their positions, do not
change.

No host reads between switches: the store keeps its latents, which frame each slot holds and which slots are still
needed on the device, and ``prune`` / ``add`` decide with device ops only, so a block without a switch makes no
host<->device transfer (``tests/test_runner_transfers.py``). The store's size is a host-side bound derived from the
policy and the cache size (``referenced_frames_bound``). At a switch the pass needs the number of referenced frames
on the host: a policy that keeps whole frames (FIFO windows) gives it without a read (the tokens of layer 0 / F),
any other (Participative Compression keeps single tokens) pays one sync there (``unique``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .kv_cache import SLOT, KVCache, Rewrite
from .policies import CachePolicy, DeepSink, SelfForcingWindow

RECACHES: dict[str, type["Recache"]] = {}  # filled below: off, ours (a method may add its own)


# Cache events that drop or keep frames only as a whole (every held frame keeps all its F tokens, in every layer and
# sample alike): no event, and the FIFO windows (Self Forcing, Deep Sink and the modes built on them).
WHOLE_FRAME_PLANS = (CachePolicy.plan, SelfForcingWindow.plan, DeepSink.plan)


def holds_whole_frames(policy) -> bool:
    """Whether ``policy``'s cache holds whole frames, the same ones in every layer and sample (its plan is FIFO)."""
    return getattr(type(policy), "plan", None) in WHOLE_FRAME_PLANS


def referenced_frames_bound(kv: KVCache) -> int:
    """Most distinct frames ``kv`` can reference at once, from its policy and size (host-side, nothing read).

    Whole frames: the capacity in frames. Participative Compression: those plus its candidate tokens (C), which may
    each come from another frame. Any other policy: the capacity in tokens (every token from its own frame).
    """
    capacity, F = kv.layers[0].capacity, kv.tokens_per_frame
    if holds_whole_frames(kv.policy):
        return -(-capacity // F)
    candidates = getattr(kv.policy, "candidate_tokens", None)
    if candidates is not None:
        return -(-capacity // F) + int(candidates(F))
    return capacity


def referenced_frames(kv: KVCache) -> torch.Tensor:
    """Sorted source frames [R] that any layer (any sample) of the cache still holds tokens of (on the device).

    ``unique`` has a data-dependent size, so this reads the device (a sync); ``cached_frames`` avoids it where it can.
    """
    found = [cache.frame[:, :cache.n].flatten() for cache in kv.layers if cache.n]
    if not found:
        return torch.zeros(0, dtype=torch.long, device=kv.layers[0].frame.device)
    return torch.cat(found).unique()


def cached_frames(kv: KVCache) -> torch.Tensor | None:
    """``referenced_frames`` (None: the cache is empty); with whole frames without a host read (layer 0 / F)."""
    cache = kv.layers[0]
    if not any(layer.n for layer in kv.layers):
        return None
    if holds_whole_frames(kv.policy):  # every frame held has its F tokens: sorted, every F-th is each frame once
        return torch.sort(cache.frame[0, :cache.n]).values[::kv.tokens_per_frame]
    return referenced_frames(kv)


def _reference_tokens(kv: KVCache) -> torch.Tensor:
    """Source frames of the committed tokens that say which frames are referenced (flat, on the device)."""
    if holds_whole_frames(kv.policy):  # every layer and sample holds the same frames
        cache = kv.layers[0]
        return cache.frame[0, :cache.n]
    return torch.cat([cache.frame[:, :cache.n].flatten() for cache in kv.layers])


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
    """Clean latents of the frames a KV cache still references (and of the last ``keep_last`` frames), on the device.

    The latents sit in the slots of one buffer [B, K, C, H, W]; ``ids`` [K] says which frame each slot holds (-1:
    none) and ``live`` [K] whether it is still needed, both on the device. ``prune(kv)`` marks the slots of frames no
    layer references (and older than the last ``keep_last``) free; ``add`` writes a chunk into free slots. Neither
    reads the device, so the blocks between prompt switches make no host sync. K is a host-side bound, grown as
    frames arrive: the frames the cache can reference at once (``referenced_frames_bound``) plus ``keep_last`` plus
    one chunk, so memory is bounded by the cache (the window for FIFO modes; for Participative Compression the window
    plus its candidate tokens, each of which may keep another frame).
    """

    def __init__(self, keep_last: int = 0):
        self.keep_last = keep_last
        self.next_frame = 0  # one past the newest frame added
        self._latents: torch.Tensor | None = None  # [B, K, C, H, W]
        self._ids: torch.Tensor | None = None      # int64 [K], -1: empty
        self._live: torch.Tensor | None = None     # bool [K]
        self._bound: int | None = None             # referenced_frames_bound of the cache, learnt by ``prune``
        self._held = 0                             # host-side bound on the live slots

    def _reserve(self, need: int, like: torch.Tensor) -> None:
        """At least ``need`` slots for latents like x0 [B, n, C, H, W] (grown geometrically up to the bound)."""
        size = 0 if self._ids is None else self._ids.shape[0]
        if size >= need:
            return
        if self._bound is not None:  # never more than the bound (+ keep_last + one chunk) ever needs
            need = max(need, min(2 * size, self._bound + self.keep_last + like.shape[1]))
        latents = torch.empty((like.shape[0], need, *like.shape[2:]), dtype=like.dtype, device=like.device)
        ids = torch.full((need,), -1, dtype=torch.long, device=like.device)
        live = torch.zeros(need, dtype=torch.bool, device=like.device)
        if size:
            latents[:, :size] = self._latents
            ids[:size] = self._ids
            live[:size] = self._live
        self._latents, self._ids, self._live = latents, ids, live

    def add(self, start_frame: int, x0: torch.Tensor) -> None:
        """Remember the chunk's clean latents x0 [B, n, C, H, W] starting at ``start_frame`` (in free slots)."""
        n = x0.shape[1]
        self._reserve(self._held + n, x0)  # at most _held slots are live: n of the others are free
        slots = torch.sort(self._live.to(torch.int8), stable=True).indices[:n]  # the first n free slots
        self._latents.index_copy_(1, slots, x0.to(self._latents.dtype))
        self._ids.index_copy_(0, slots, torch.arange(start_frame, start_frame + n, device=self._ids.device))
        self._live.index_fill_(0, slots, True)
        self._held += n
        self.next_frame = max(self.next_frame, start_frame + n)

    def prune(self, kv: KVCache) -> None:
        """Free the slots of frames no layer references any more (memory bounded by the cache size); device ops only."""
        if self._ids is None:
            return
        self._bound = referenced_frames_bound(kv)
        referenced = torch.isin(self._ids, _reference_tokens(kv))
        recent = self._ids >= max(self.next_frame - self.keep_last, 0)
        self._live = (self._ids >= 0) & (referenced | recent)
        self._held = min(self._held, self._bound + self.keep_last)

    def slots(self, frames: torch.Tensor) -> torch.Tensor:
        """Slot [R] of each frame of ``frames`` [R] (held frames only; on the device)."""
        match = (self._ids[None, :] == frames[:, None]) & self._live[None, :]  # [R, K]
        torch._assert_async(match.any(1).all(), "a frame asked of the clean-latent store is not held")  # no sync
        return match.to(torch.int8).argmax(1)

    def stack(self, frames: "torch.Tensor | list[int]") -> torch.Tensor:
        """Clean latents of ``frames`` ([R] on the device, or a list) -> [B, R, C, H, W]."""
        if not isinstance(frames, torch.Tensor):
            frames = torch.tensor(list(frames), dtype=torch.long).to(self._ids.device)
        return self._latents.index_select(1, self.slots(frames.to(self._ids.device)))

    def get(self, frame: int) -> torch.Tensor:
        """Clean latent [B, C, H, W] of ``frame``."""
        return self.stack([frame])[:, 0]

    @property
    def _frames(self) -> dict[int, torch.Tensor]:
        """{frame: latent [B, C, H, W]} of every frame held, read on the host (for inspection and tests only)."""
        if self._ids is None:
            return {}
        held = self._live.nonzero().flatten()
        return {int(fr): self._latents[:, int(slot)] for fr, slot in zip(self._ids[held].tolist(), held.tolist())}

    def __len__(self) -> int:
        """Slots allocated: a host-side bound on the frames stored (which are still needed is known on the device)."""
        return 0 if self._ids is None else self._ids.shape[0]


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
        frames = cached_frames(kv)  # sorted [R]; with whole frames no host read
        if frames is None:
            return []
        rec = clean_pass_kv(model, kv, text_kv, store.stack(frames), frame_positions(kv, frames), context_noise)
        F = kv.tokens_per_frame
        rank = torch.full((store.next_frame,), -1, dtype=torch.long, device=frames.device)  # frames < next
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

