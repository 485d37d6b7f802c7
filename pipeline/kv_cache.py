"""Per-layer KV-cache storage, preallocated once, and the cache object the model talks to.

Keys are stored with the spatial (height/width) RoPE applied and *without* the time rotation; every token carries its
time index ``t_pos`` (what RoPE uses, which a policy may rewrite) and its source ``frame`` (never changes). The time
rotation is applied when the cache is read, relative to ``base`` (the current chunk's first frame), so positions never
grow without bound and moving a position is a write to ``t_pos``. On a chunk's first call the policy returns a ``Plan``
and the cache applies it and emits the one trace record. A FIFO eviction frees the evicted tokens' slots and the chunk
is written into them (slot reuse, no copy of the kept tokens), so storage order is not chronological; attention does
not depend on it. The contract and the trace format: docs/cache.md.

Rolling windows (``pipeline.rolling``) use the same storage differently: the strategy announces each DiT call with a
``WindowPlan`` (``begin_window``): the committed frames it attends, at which positions, and which of its own frames are
written; the call's other tokens are attended by concatenation and never stored (docs/rolling.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class ChunkInfo:
    """The chunk being generated: absolute first frame ``f``, ``num_frames`` and tokens per frame (F)."""

    start_frame: int
    num_frames: int
    tokens_per_frame: int

    @property
    def num_tokens(self) -> int:
        """Tokens in the chunk (num_frames * F)."""
        return self.num_frames * self.tokens_per_frame


@dataclass
class Plan:
    """A policy's decision for one layer at a chunk start, applied by ``KVCache.apply`` (docs/cache.md)."""

    event: str                               # trace event name: "evict" or "compress"
    keep: torch.Tensor | None = None         # int64 [m] or [batch, m]: committed tokens kept, in that order
    evict: torch.Tensor | None = None        # int64 [e]: slots of committed tokens dropped; the chunk reuses them
    writes: list = field(default_factory=list)  # (field, first token, values [n] or [batch, n]) after the keep
    sink_start: int | None = None            # new time index of sink frame 0, when the plan moves the sink
    extras: dict = field(default_factory=dict)  # event-specific trace keys (filled only when tracing)


SLOT = "slot"  # per-token aux field: index of the token inside its source frame (kept for re-caching)


@dataclass
class Rewrite:
    """A re-cache's new keys/values for one layer, applied by ``KVCache.rewrite`` (pipeline.recache).

    ``replace`` False: k, v [batch, n, H, D] for the committed slots [0, n), taken where ``where`` [batch, n] is
    true (None: everywhere), with new positions ``t_pos`` [batch, n] (None: unchanged). ``replace`` True: k, v
    [batch, m, H, D] become the whole layer, with ``t_pos`` and ``frame`` [m] for every sample.
    """

    k: torch.Tensor
    v: torch.Tensor
    where: torch.Tensor | None = None
    t_pos: torch.Tensor | None = None
    frame: torch.Tensor | None = None
    replace: bool = False


@dataclass
class WindowPlan:
    """One DiT call of a rolling window (``pipeline.rolling``), decided by the strategy, applied by the cache.

    The call attends the committed frames of ``attend`` (runs ``(first frame, frames, position)``, in that order;
    ``position`` None: the frames' stored ``t_pos``, else their ``t_pos`` is rewritten to ``position``,
    ``position + 1``, ... before the call reads them), then its own ``num_frames`` frames, which are *not* stored.
    Only its first ``write`` frames are written into the cache: over the stored copy when a frame is already held,
    else into the slots of the ``evict`` runs ``(first frame, frames)``, dropped first, else after the occupied slots.
    ``extras`` are copied into the trace record (docs/rolling.md). Participative Compression (off unless set):
    ``remember`` > 0 appends the call's queries to each layer's memory of the last ``remember`` frames before the
    call selects; ``select`` (``WindowSelect``) adds score-chosen tokens of held frames to the context.
    """

    start_frame: int
    num_frames: int
    attend: tuple = ()
    write: int = 0
    evict: tuple = ()
    extras: dict = field(default_factory=dict)
    remember: int = 0                       # > 0: the call's queries join the memory of the last ``remember`` frames
    select: "WindowSelect | None" = None    # token-level context chosen per layer by score (Participative Compression)


@dataclass(frozen=True)
class WindowSelect:
    """Participative Compression on a rolling-window call (docs/rolling.md section 7): which held frames' tokens
    compete, how many are taken, where they go.

    In every layer the tokens of the ``candidates`` frames (ascending) are scored against the remembered queries
    (``WindowPlan.remember``: sum over the remembered frames' queries and the heads of q . k, both time-rotated, the
    key at its source frame), and ``select_top`` keeps the ``frames * F`` best (fewer when fewer compete) under
    ``reuse_cap`` (pick counts per token, 0 = no cap). Chosen token i (chronological order) gets ``t_pos`` =
    ``position + i // F`` and is attended right after the first ``after`` runs of ``WindowPlan.attend`` (the sink).
    """

    candidates: tuple
    frames: int
    position: int
    after: int
    reuse_cap: int = 7


WINDOW_PICKS = "pc_picks"  # per-token field: how many rolling-window selections picked the token since it was written


@dataclass
class _Window:
    """A ``WindowPlan`` resolved to slots (host decisions done once per call, shared by every layer)."""

    plan: WindowPlan
    context: torch.Tensor | None        # int64 [m]: slots attended, in order (None: nothing)
    place: torch.Tensor | None          # int64 [p]: slots whose t_pos is rewritten
    place_pos: torch.Tensor | None      # int64 [p]: their new t_pos
    write: torch.Tensor | None          # int64 [write * F]: slots of the written frames' tokens
    n: int                              # occupied tokens after the write
    written: list
    evicted: list
    candidates: torch.Tensor | None = None  # int64 [nc]: slots of the selection's candidate tokens, chronological
    split: int = 0                      # context tokens before the chosen ones (the sink's)


class LayerKVCache:
    """Storage of one layer: k, v [batch, cap, H, D]; t_pos, frame [batch, cap] (int64); ``n`` committed tokens.

    The committed tokens occupy slots [0, n), in no particular order (``order()`` gives the chronological one). The
    chunk being denoised is *staged* (``staged`` tokens): first into the slots an eviction freed (``holes``, in their
    order), then after the occupied slots; every call of the chunk overwrites the staged slots and ``commit()`` (after
    the clean pass) makes them part of the context. Between an eviction and the staging the committed tokens occupy
    [0, n + holes) minus the holes.
    """

    def __init__(self, batch: int, capacity: int, heads: int, head_dim: int, dtype, device):
        self.capacity = capacity
        self.k = torch.zeros(batch, capacity, heads, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.t_pos = torch.zeros(batch, capacity, dtype=torch.long, device=device)
        self.frame = torch.zeros(batch, capacity, dtype=torch.long, device=device)
        self.n = 0
        self.staged = 0
        self.holes: torch.Tensor | None = None  # int64 [h]: slots freed by an eviction, filled by the next stage
        self.slots: torch.Tensor | None = None  # int64 [staged]: the staged slots (None: [n, n + staged))
        self.aux: dict[str, torch.Tensor] = {}  # per-token fields [batch, cap] of policies (see aux_field)

    def aux_field(self, name: str, dtype: torch.dtype = torch.long) -> torch.Tensor:
        """Per-token field ``name`` [batch, cap] (zero when staged, gathered by ``keep()``), created on first use."""
        # e.g. Participative Compression's pick counts: they follow their tokens when the cache is compacted.
        field = self.aux.get(name)
        if field is None:
            field = torch.zeros(self.t_pos.shape, dtype=dtype, device=self.t_pos.device)
            self.aux[name] = field
        return field

    @property
    def num_holes(self) -> int:
        """Slots freed by an eviction and not yet refilled by the chunk."""
        return 0 if self.holes is None else self.holes.shape[0]

    @property
    def extent(self) -> int:
        """One past the last occupied slot (committed tokens, holes and staged chunk)."""
        return self.n + (self.staged if self.staged else self.num_holes)

    def reset(self) -> None:
        """Forget all entries (storage is kept)."""
        self.n = 0
        self.staged = 0
        self.holes = None
        self.slots = None

    def evict(self, slots: torch.Tensor) -> None:
        """Drop the committed tokens at ``slots`` [e] (shared by the batch); the next ``stage`` writes into them."""
        if self.staged or self.holes is not None:
            raise RuntimeError("evict() must run once, before the chunk is staged")
        self.holes = slots.to(self.k.device)
        self.n -= slots.shape[0]

    def write_staged(self, target: torch.Tensor, values: torch.Tensor) -> None:
        """Write ``values`` ([staged, ...] or [batch, staged, ...]) into the staged slots of a per-token field."""
        if self.slots is None:
            target[:, self.n:self.n + self.staged] = values
        else:
            target[:, self.slots] = values  # a scatter into the chunk's slots only

    def stage(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> None:
        """Write the chunk's k/v [batch, m, H, D] and positions [m] into freed slots, then after the occupied ones."""
        m = k.shape[1]
        h = self.num_holes
        if h > m:
            raise RuntimeError(f"an eviction freed {h} slots for a chunk of {m} tokens; evict at most the chunk")
        end = self.n + m
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} tokens > capacity {self.capacity}; the cache policy "
                               f"did not make room for the chunk")
        if h and self.slots is None:  # first call of the chunk: the freed slots, then [n + h, n + m)
            self.slots = torch.cat([self.holes, torch.arange(self.n + h, end, device=self.holes.device)])
        self.staged = m
        self.write_staged(self.k, k)
        self.write_staged(self.v, v)
        self.write_staged(self.t_pos, pos)
        self.write_staged(self.frame, pos)
        for aux in self.aux.values():
            self.write_staged(aux, 0)

    def put(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, n: int) -> None:
        """Write tokens k/v [batch, m, H, D] at positions ``pos`` [m] into ``slots`` [m] now (no staging: a rolling
        window's clean pass); every per-token field is reset; ``n`` occupied tokens after the write."""
        if self.staged or self.holes is not None:
            raise RuntimeError("put() writes committed slots; a chunk is staged or an eviction is pending")
        self.k[:, slots] = k
        self.v[:, slots] = v
        self.t_pos[:, slots] = pos
        self.frame[:, slots] = pos
        for aux in self.aux.values():
            aux[:, slots] = 0
        self.n = n

    def commit(self) -> None:
        """Make the staged chunk part of the committed context."""
        self.n += self.staged
        self.staged = 0
        self.holes = None
        self.slots = None

    def view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k, v, t_pos) of committed + staged tokens: [batch, n+staged, H, D] x2, [batch, n+staged]."""
        end = self.n + self.staged
        return self.k[:, :end], self.v[:, :end], self.t_pos[:, :end]

    def order(self, sample: int = 0) -> torch.Tensor:
        """Slots [n] of the committed tokens in chronological order (by source frame, then slot); for inspection."""
        committed = torch.ones(self.extent, dtype=torch.bool, device=self.frame.device)
        if self.slots is not None:
            committed[self.slots] = False
        elif self.staged:
            committed[self.n:] = False
        elif self.holes is not None:
            committed[self.holes] = False
        slots = committed.nonzero().flatten()
        return slots[torch.sort(self.frame[sample, slots], stable=True).indices]

    def keep(self, idx: torch.Tensor) -> None:
        """Keep committed tokens ``idx`` ([m] shared or [batch, m] per sample), in that order, at the front."""
        if self.staged or self.holes is not None:
            raise RuntimeError("keep() must run before the chunk is staged, without an eviction")
        m = idx.shape[-1]
        if idx.dim() == 1:
            idx = idx.unsqueeze(0).expand(self.k.shape[0], -1)
        idx = idx.to(self.k.device)
        gk = idx[:, :, None, None].expand(-1, -1, *self.k.shape[2:])
        self.k[:, :m] = torch.gather(self.k[:, :self.n], 1, gk)
        self.v[:, :m] = torch.gather(self.v[:, :self.n], 1, gk)
        self.t_pos[:, :m] = torch.gather(self.t_pos[:, :self.n], 1, idx)
        self.frame[:, :m] = torch.gather(self.frame[:, :self.n], 1, idx)
        for aux in self.aux.values():
            aux[:, :m] = torch.gather(aux[:, :self.n], 1, idx)
        self.n = m


class KVCache:
    """All layers' caches plus the policy that manages them; the object the model's self-attention calls.

    ``rotate_time(x [batch, n, H, D], rel_pos [n] or [batch, n])`` is the model's time rotation, applied on read.
    """

    def __init__(self, num_layers: int, batch: int, capacity: int, heads: int, head_dim: int, dtype, device,
                 policy, tokens_per_frame: int, rotate_time: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 rebase: bool = True, rotated_key_buffer: bool = True):
        self.layers = [LayerKVCache(batch, capacity, heads, head_dim, dtype, device) for _ in range(num_layers)]
        # Time-rotated keys, per layer [batch, cap, H, D]: the committed part is rotated once per chunk (after the
        # policy's events) and each call adds only its own chunk, instead of re-rotating the whole cache on each
        # of the chunk's calls. Costs one more key buffer; without it every call rotates the cache on read.
        self.rotated = [torch.empty_like(layer.k) for layer in self.layers] if rotated_key_buffer else None
        self.policy = policy
        self.tokens_per_frame = tokens_per_frame
        self.rotate_time = rotate_time
        self.rebase = rebase
        self.chunk: ChunkInfo | None = None
        self.base = 0
        self._first_call = [False] * num_layers
        self.window: _Window | None = None       # the rolling-window call in progress (``begin_window``)
        self.frame_slots: dict[int, int] = {}    # rolling windows: first slot of every held frame (host side)
        self.window_queries: list = [None] * num_layers  # rolling PC: per layer (q sums [batch, R, H, D], pos [R])
        self.frame_caches: dict[tuple[int, str], FrameKVCache] = {}  # (layer, name) -> frame cache (``frame_cache``)

    def reset(self) -> None:
        """Start a new video: empty every layer and reset the policy's per-video state."""
        for layer in self.layers:
            layer.reset()
        self.policy.reset(len(self.layers))
        self.chunk = None
        self.base = 0
        self.window = None
        self.frame_slots = {}
        self.window_queries = [None] * len(self.layers)
        self.frame_caches = {}

    def begin_chunk(self, start_frame: int, num_frames: int) -> None:
        """Announce a new chunk; the next call of each layer is its first call (where cache events happen)."""
        self.chunk = ChunkInfo(start_frame, num_frames, self.tokens_per_frame)
        self.base = start_frame if self.rebase else 0
        self._first_call = [True] * len(self.layers)
        self.window = None

    def begin_window(self, plan: WindowPlan) -> None:
        """Announce one call of a rolling window: every layer's next ``update`` applies ``plan`` (``WindowPlan``).

        Resolves the plan's frames to slots once, on the host (the cache's own map of held frames), so the layers only
        gather, rotate and write. Raises RuntimeError when the plan names a frame that is not held, evicts a frame it
        attends, frees more slots than it writes new frames, or overflows the capacity.
        """
        F, dev = self.tokens_per_frame, self.layers[0].k.device
        self.chunk = ChunkInfo(plan.start_frame, plan.num_frames, F)
        self.base = plan.start_frame if self.rebase else 0
        self._first_call = [False] * len(self.layers)
        tok = torch.arange(F)

        slots = dict(self.frame_slots)  # updated, then kept only when the whole plan is valid

        def held(frame: int) -> int:
            if frame not in slots:
                raise RuntimeError(f"rolling window at frame {plan.start_frame}: frame {frame} is not in the cache "
                                   f"(held: {sorted(slots)})")
            return slots[frame]

        ctx, place, place_pos, attended = [], [], [], set()
        for first, count, position in plan.attend:
            starts = torch.tensor([held(first + j) for j in range(count)], dtype=torch.long)
            attended.update(range(first, first + count))
            ctx.append((starts[:, None] + tok).flatten())
            if position is not None:
                place.append(ctx[-1])
                place_pos.append(torch.arange(position, position + count).repeat_interleave(F))
        freed, evicted = [], []
        for first, count in plan.evict:
            for fr in range(first, first + count):
                if fr in attended:
                    raise RuntimeError(f"rolling window at frame {plan.start_frame} attends frame {fr} it evicts")
                freed.append(held(fr))
                evicted.append(fr)
                del slots[fr]
        n = self.layers[0].n
        writes, written = [], []
        for fr in range(plan.start_frame, plan.start_frame + plan.write):
            slot = slots.get(fr)
            if slot is None:
                if freed:
                    slot = freed.pop(0)
                else:
                    slot, n = n, n + F
                    if n > self.layers[0].capacity:
                        raise RuntimeError(f"KV cache overflow: {n} tokens > capacity {self.layers[0].capacity}; "
                                           f"the rolling window did not evict before writing frame {fr}")
                slots[fr] = slot
            writes.append(slot + tok)
            written.append(fr)
        if freed:
            raise RuntimeError(f"rolling window at frame {plan.start_frame} evicts {len(evicted)} frames but writes "
                               f"only {len(written)} new ones: the freed slots would stay empty")

        cand, split = None, 0
        if plan.select is not None:
            sel = plan.select
            for fr in sel.candidates:
                if fr in attended or fr in evicted:
                    raise RuntimeError(f"rolling window at frame {plan.start_frame}: candidate frame {fr} is also "
                                       f"attended or evicted")
            if sel.candidates:
                cand = torch.cat([held(fr) + tok for fr in sel.candidates]).to(dev)
            split = sum(run[1] for run in plan.attend[:sel.after]) * F

        def cat(parts):
            return torch.cat(parts).to(dev) if parts else None
        self.frame_slots = slots
        self.window = _Window(plan, cat(ctx), cat(place), cat(place_pos), cat(writes), n, written, evicted, cand,
                              split)

    def remember_queries(self, layer: int, q: torch.Tensor, pos: torch.Tensor, frames: int) -> None:
        """Rolling PC: append the call's per-frame query sums (q [batch, m, H, D], pos [m]) to ``layer``'s memory and
        keep its last ``frames`` frames (Participative Compression's ``observe_queries``)."""
        F = self.tokens_per_frame
        q_sum = q.unflatten(1, (q.shape[1] // F, F)).sum(dim=2, dtype=torch.float32)  # [batch, m/F, H, D]
        q_pos = pos[::F]
        mem = self.window_queries[layer]
        if mem is not None:
            q_sum, q_pos = torch.cat([mem[0], q_sum], 1), torch.cat([mem[1], q_pos])
        self.window_queries[layer] = (q_sum[:, -frames:], q_pos[-frames:])

    def window_scores(self, layer: int, slots: torch.Tensor) -> torch.Tensor:
        """Rolling PC: scores [batch, n] (float32) of the tokens at ``slots`` [n]: sum over the remembered queries and
        the heads of q . k, time-rotated (queries at their frames, keys at their source frames, relative to base)."""
        cache, mem = self.layers[layer], self.window_queries[layer]
        if mem is None:
            return torch.zeros(cache.k.shape[0], slots.shape[0], device=cache.k.device)
        q = self.rotate_time(mem[0], mem[1] - self.base).sum(dim=1)  # [batch, H, D]
        keys = self.rotate_time(cache.k[:, slots], cache.frame[:, slots] - self.base)  # [batch, n, H, D]
        return torch.einsum("bnhd,bhd->bn", keys.float(), q)

    def window_select(self, layer: int) -> tuple:
        """Rolling PC: choose ``layer``'s tokens for the call in progress, count the picks, rewrite their ``t_pos``.

        -> (chosen slots [batch, c], chosen indices into the candidates [batch, c], scores [batch, nc], new picks)."""
        from .policies import select_top  # policies imports this module
        cache, w = self.layers[layer], self.window
        sel, cand, F = w.plan.select, w.candidates, self.tokens_per_frame
        scores = self.window_scores(layer, cand)
        picks_field = cache.aux_field(WINDOW_PICKS)
        picks = picks_field[:, cand]  # [batch, nc]
        chosen = select_top(scores, picks, sel.frames * F, sel.reuse_cap)  # [batch, c], ascending
        slots = cand[chosen]
        new_picks = torch.gather(picks, 1, chosen) + 1
        picks_field.scatter_(1, slots, new_picks)
        pos = sel.position + torch.arange(chosen.shape[1], device=slots.device) // F
        cache.t_pos.scatter_(1, slots, pos.expand_as(slots))
        return slots, chosen, scores, new_picks

    def rotated_keys(self, layer: int, end: int | None = None) -> torch.Tensor:
        """Keys of ``layer`` (first ``end`` slots, default all occupied) with the time rotation -> [batch, end, H, D]."""
        cache = self.layers[layer]
        end = cache.extent if end is None else end
        return self.rotate_time(cache.k[:, :end], cache.t_pos[:, :end] - self.base)

    def update(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
               rotation) -> tuple[torch.Tensor, torch.Tensor]:
        """Model entry point: observe q, run cache events on a chunk's first call, stage k/v, return context.

        q/k/v [batch, m, H, D] (q and k spatially rotated), pos [m] absolute time index of the chunk's tokens,
        ``rotation`` their time rotation relative to ``base`` (the model builds it once per call for all layers).
        Returns (time-rotated keys, values) [batch, n+m, H, D].
        """
        if self.window is not None:
            return self.window_update(layer, q, k, v, pos, rotation)
        cache = self.layers[layer]
        self.policy.observe_queries(self, layer, q, pos)
        if self._first_call[layer]:
            self._first_call[layer] = False
            self.chunk_events(layer)
            if self.rotated is not None:  # committed slots (and any freed ones, which the chunk overwrites)
                self.rotated[layer][:, :cache.extent] = self.rotated_keys(layer, cache.extent)
        cache.stage(k, v, pos)
        values = cache.view()[1]
        if self.rotated is None:
            return self.rotated_keys(layer), values
        buf = self.rotated[layer]
        cache.write_staged(buf, rotation.apply(k))
        return buf[:, :cache.extent], values

    def window_update(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                      rotation) -> tuple[torch.Tensor, torch.Tensor]:
        """``update`` during a rolling-window call: [planned context | the call's own tokens], nothing staged.

        Rewrites the planned ``t_pos``, gathers the context (keys time-rotated at ``t_pos - base``), appends the
        call's own keys and values, then writes the call's first ``write`` frames. -> keys, values [batch, m + L, H, D].
        """
        cache, w = self.layers[layer], self.window
        self.policy.observe_queries(self, layer, q, pos)
        if w.plan.remember:
            self.remember_queries(layer, q, pos, w.plan.remember)
        if w.place is not None:
            cache.t_pos[:, w.place] = w.place_pos
        own_keys = rotation.apply(k)
        chosen = None
        if w.candidates is not None:  # Participative Compression: [head runs | chosen tokens | other runs]
            chosen = self.window_select(layer)
            batch = cache.k.shape[0]
            idx = chosen[0] if w.context is None else torch.cat(
                [w.context[:w.split].expand(batch, -1), chosen[0], w.context[w.split:].expand(batch, -1)], 1)
            gk = idx[:, :, None, None].expand(-1, -1, *cache.k.shape[2:])
            ctx_pos = torch.gather(cache.t_pos, 1, idx)
            keys = torch.cat([self.rotate_time(torch.gather(cache.k, 1, gk), ctx_pos - self.base), own_keys], dim=1)
            values = torch.cat([torch.gather(cache.v, 1, gk), v], dim=1)
        elif w.context is None:
            keys, values = own_keys, v
        else:
            ctx_k = cache.k.index_select(1, w.context)
            ctx_pos = cache.t_pos.index_select(1, w.context)
            keys = torch.cat([self.rotate_time(ctx_k, ctx_pos - self.base), own_keys], dim=1)
            values = torch.cat([cache.v.index_select(1, w.context), v], dim=1)
        trace = self.policy.trace
        if trace is not None:
            F = self.tokens_per_frame
            ctx = w.context[::F] if w.context is not None else w.context
            frames = [] if ctx is None else [cache.frame[:, ctx], cache.t_pos[:, ctx]]
            own = pos[::F].expand(cache.k.shape[0], -1)
            attended = (torch.cat([frames[0], own], 1), torch.cat([frames[1], own], 1)) if frames else (own, own)
        if w.write is not None:
            m = w.write.shape[0]
            cache.put(w.write, k[:, :m], v[:, :m], pos[:m], w.n)
        if trace is not None:
            order = cache.order()[::F]
            rec = {"event": "window", "layer": layer, "start_frame": w.plan.start_frame,
                   "num_frames": w.plan.num_frames, "tokens_per_frame": F,
                   "frames": _host(attended[0]), "t_pos": _host(attended[1]),
                   "written": list(w.written), "evicted": list(w.evicted),
                   "held_frames": _host(cache.frame[:, order]), "held_t_pos": _host(cache.t_pos[:, order]),
                   **w.plan.extras}
            if chosen is not None:  # the chosen tokens, listed apart from the frame runs above
                slots, idx, scores, picks = chosen
                rec.update(candidates=list(w.plan.select.candidates), scores=_host(scores), chosen=_host(idx),
                           selected_frames=_host(cache.frame.gather(1, slots)), selected_tokens=_host(slots % F),
                           selected_t_pos=_host(cache.t_pos.gather(1, slots)), picks=_host(picks))
            trace(rec)
        return keys, values

    def chunk_events(self, layer: int) -> None:
        """Ask the policy for ``layer``'s plan at this chunk start and apply it (nothing when it returns None)."""
        plan = self.policy.plan(self, layer)
        if plan is not None:
            self.apply(layer, plan)

    def apply(self, layer: int, plan: Plan) -> None:
        """Free ``plan.evict``'s slots or gather with ``plan.keep``, write its fields, send the one trace record."""
        cache, trace = self.layers[layer], self.policy.trace
        before = cache.n
        old = int(cache.t_pos[0, 0]) if trace is not None and before else 0  # host read only when tracing
        if plan.evict is not None and plan.evict.shape[0] > self.chunk.num_tokens:
            # more freed slots than the chunk fills: compact instead (never the case for a FIFO window)
            kept = torch.ones(before, dtype=torch.bool, device=cache.k.device)
            kept[plan.evict.to(kept.device)] = False
            plan.keep, plan.evict = kept.nonzero().flatten(), None
        if plan.evict is not None:
            cache.evict(plan.evict)
        if plan.keep is not None:
            cache.keep(plan.keep)
        for name, start, values in plan.writes:
            target = cache.t_pos if name == "t_pos" else cache.aux_field(name)
            target[:, start:start + values.shape[-1]] = values
        if trace is None:
            return
        n, batch = cache.n, cache.k.shape[0]
        if plan.evict is not None:  # kept slots (pre-event indices: they did not move), chronologically
            live = torch.ones(before, dtype=torch.bool)
            live[_host(plan.evict)] = False
            slots = live.nonzero().flatten()
            kept = slots[torch.sort(_host(cache.frame[0, :before])[slots], stable=True).indices]
        else:
            kept = _host(plan.keep if plan.keep is not None else torch.arange(n))
        kept = kept.expand(batch, -1) if kept.dim() == 1 else kept
        at = kept.to(cache.frame.device)
        rec = {"event": plan.event, "layer": layer, "chunk_start": self.chunk.start_frame,
               "chunk_frames": self.chunk.num_frames, "tokens_per_frame": self.tokens_per_frame,
               "tokens_before": before, "num_tokens": n, "kept": kept,
               "frames": _host(cache.frame.gather(1, at) if plan.evict is not None else cache.frame[:, :n]),
               "t_pos": _host(cache.t_pos.gather(1, at) if plan.evict is not None else cache.t_pos[:, :n])}
        if plan.sink_start is not None:
            rec.update(sink_start=plan.sink_start, shift=plan.sink_start - old)
        rec.update({k: _host(v) if isinstance(v, torch.Tensor) else v for k, v in plan.extras.items()})
        trace(rec)

    def commit(self) -> None:
        """After the clean pass: the staged chunk becomes context in every layer (and every frame cache)."""
        for layer in self.layers:
            layer.commit()
        for frames in self.frame_caches.values():
            frames.commit()

    def frame_cache(self, layer: int, name: str) -> "FrameKVCache":
        """The frame cache ``name`` of ``layer`` (e.g. an action branch's), created on first use."""
        key = (layer, name)
        if key not in self.frame_caches:
            self.frame_caches[key] = FrameKVCache(self, layer)
        return self.frame_caches[key]

    def whole_frames(self, layer: int) -> dict[int, int]:
        """Committed frames ``layer`` holds whole in every sample (all F tokens at one time position) -> position.

        One host read of the committed tokens' frame and position (per layer and chunk, for frame caches).
        """
        cache, F = self.layers[layer], self.tokens_per_frame
        slots = cache.order()
        frames, pos = _host(cache.frame[:, slots]), _host(cache.t_pos[:, slots])  # [batch, n]
        held = None
        for f, p in zip(frames, pos):
            ids, inverse, counts = torch.unique(f, return_inverse=True, return_counts=True)
            lo = torch.full(ids.shape, 2 ** 62, dtype=torch.long).scatter_reduce(0, inverse, p, "amin")
            hi = torch.full(ids.shape, -2 ** 62, dtype=torch.long).scatter_reduce(0, inverse, p, "amax")
            whole = (counts == F) & (lo == hi)
            sample = dict(zip(ids[whole].tolist(), lo[whole].tolist()))
            held = sample if held is None else {k: v for k, v in held.items() if sample.get(k) == v}
        return held or {}

    def mark_token_slots(self) -> None:
        """Record, for the staged chunk of every layer, each token's index inside its frame (before ``commit``)."""
        F = self.tokens_per_frame
        for cache in self.layers:
            slot = cache.aux_field(SLOT)
            cache.write_staged(slot, torch.arange(cache.staged, device=slot.device) % F)

    def rewrite(self, layer: int, r: Rewrite) -> None:
        """Apply a re-cache's ``Rewrite`` to ``layer`` (see ``Rewrite``)."""
        cache = self.layers[layer]
        if r.replace:
            m = r.k.shape[1]
            if m > cache.capacity:
                raise RuntimeError(f"a re-cache of {m} tokens does not fit the cache capacity {cache.capacity}")
            cache.k[:, :m], cache.v[:, :m] = r.k, r.v
            cache.t_pos[:, :m], cache.frame[:, :m] = r.t_pos, r.frame
            for name, values in cache.aux.items():
                values[:, :m] = torch.arange(m, device=values.device) % self.tokens_per_frame if name == SLOT else 0
            cache.n = m
            return
        n = cache.n
        if r.where is None:
            cache.k[:, :n], cache.v[:, :n] = r.k, r.v
        else:
            keep = r.where[:, :, None, None]
            cache.k[:, :n] = torch.where(keep, r.k, cache.k[:, :n])
            cache.v[:, :n] = torch.where(keep, r.v, cache.v[:, :n])
        if r.t_pos is not None:
            cache.t_pos[:, :n] = r.t_pos if r.where is None else torch.where(r.where, r.t_pos, cache.t_pos[:, :n])


class FrameKVCache:
    """K/V with one entry per row and latent frame beside one layer's self-attention cache (docs/cache.md).

    It keeps the committed frames the layer's self-attention cache keeps whole (``KVCache.whole_frames``), at their
    time positions there, so every eviction, sink move or compression of the policy applies to it frame by frame; a
    frame the policy keeps only in part (a Participative Compression candidate) is dropped here. The chunk being
    denoised is staged on every call and committed with the layers. Keys are stored without their time rotation.
    """

    def __init__(self, kv: KVCache, layer: int):
        self.kv, self.layer = kv, layer
        self.k: torch.Tensor | None = None        # [rows, n, H, D] committed frames, chronological
        self.v: torch.Tensor | None = None
        self.frames: list[int] = []               # their source frames (host)
        self.pos: torch.Tensor | None = None      # int64 [n]: their absolute time positions
        self.staged: tuple | None = None          # (k, v, absolute positions [m]) of the chunk
        self._chunk: ChunkInfo | None = None

    def _follow(self) -> None:
        """At a chunk's first call: keep the frames the layer holds whole, at their positions there."""
        held = self.kv.whole_frames(self.layer)
        keep = [i for i, f in enumerate(self.frames) if f in held]
        if len(keep) < len(self.frames):
            idx = torch.tensor(keep, dtype=torch.long, device=self.k.device)
            self.k, self.v = self.k.index_select(1, idx), self.v.index_select(1, idx)
            self.frames = [self.frames[i] for i in keep]
        if self.frames:
            self.pos = torch.tensor([held[f] for f in self.frames], dtype=torch.long, device=self.k.device)

    def update(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Stage this call's k/v [rows, m, H, D] at positions ``pos`` [m] (relative to the base) -> (keys, values
        [rows, n + m, H, D], key positions [n + m] relative to the base)."""
        if self._chunk is not self.kv.chunk:
            self._chunk = self.kv.chunk
            self._follow()
        self.staged = (k, v, pos + self.kv.base)
        if not self.frames:
            return k, v, pos
        return (torch.cat([self.k, k], dim=1), torch.cat([self.v, v], dim=1),
                torch.cat([self.pos - self.kv.base, pos]))

    def commit(self) -> None:
        """The staged chunk becomes committed frames."""
        if self.staged is None:
            return
        k, v, pos = self.staged
        frames = list(range(self.kv.chunk.start_frame, self.kv.chunk.start_frame + k.shape[1]))
        if self.frames:
            k, v, pos = torch.cat([self.k, k], 1), torch.cat([self.v, v], 1), torch.cat([self.pos, pos])
        self.k, self.v, self.pos, self.frames = k, v, pos, self.frames + frames
        self.staged = None


def _host(x: torch.Tensor) -> torch.Tensor:
    """A CPU copy of ``x`` that later cache writes cannot change (trace records)."""
    return x.detach().to("cpu", copy=True)
