"""KV-cache policies: what the cache keeps and which time positions its tokens use (SPEC section 4).

A policy is a dataclass whose fields are its configuration (validated in ``__post_init__`` and ``validate``). It
acts only on the first call of a new chunk (``on_new_chunk``), before the chunk is staged, and may observe every
call's queries (``observe_queries``). It never knows which model runs.

Policies: ``SelfForcingWindow`` (4.1), ``DeepSink`` (4.2), ``ParticipativeCompression`` (4.3, Deep Sink + PC).
Every subclass with its own ``name`` registers itself (``POLICIES``); ``build_policy(mode, ...)`` builds one from
the mode name; ``select_mode(is_ds_only, mode)`` maps the upstream flags.

Trace format. When ``policy.trace`` is a callable, every cache event of every layer calls it with one dict
(nothing is computed for it when ``trace`` is None). Tensors are on the CPU; ``batch`` is the cache's batch size:
  event            "evict" (FIFO eviction), "realign" (sink time positions moved) or "compress" (PC rebuild)
  layer            layer index
  chunk_start      f, first latent frame of the chunk that triggered the event
  chunk_frames     B;  tokens_per_frame: F
  tokens_before    committed tokens before the event
  num_tokens       committed tokens after the event (the new chunk is not staged yet)
  kept             int64 [batch, num_tokens]: index into the pre-event cache of every token kept, in cache order
                   (the identity for "realign")
  frames           int64 [batch, num_tokens]: source latent frame of every kept token
  t_pos            int64 [batch, num_tokens]: time index of every kept token after the event
Event-specific keys:
  evict            evicted_frames (int)
  realign          sink_start (int, new time index of sink frame 0), shift (int, change of sink_start)
  compress         candidates (start, end): token range of the candidates in the pre-event cache;
                   scores float32 [batch, end - start]: candidate scores; selected int64 [batch, c]: kept candidates
                   (indices into the pre-event cache, ascending); picks int64 [batch, c]: their pick counts after
                   this compression; eligible int64 [batch]: candidates under the reuse cap; sink_start, shift.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Callable

import torch

from .kv_cache import KVCache

logger = logging.getLogger(__name__)

TraceHook = Callable[[dict], None]

# Registry of cache modes: every CachePolicy subclass that sets its own ``name`` registers itself under it when the
# class is created, so a new policy is one class in one module (imported before the CLI or bench asks for it).
POLICIES: dict[str, type["CachePolicy"]] = {}


def registered_modes() -> tuple[str, ...]:
    """Names of every registered cache mode, in registration order."""
    return tuple(POLICIES)


class CachePolicyError(ValueError):
    """An invalid cache-policy setting; the message names the values and the fix (print it without a traceback)."""


@dataclass
class CachePolicy:
    """Base policy: a window of ``local_attn_size`` frames (-1: global, capped at ``global_cap_frames``)."""

    local_attn_size: int = 21
    sink_size: int = 0
    global_cap_frames: int = 21
    trace: TraceHook | None = field(default=None, repr=False, compare=False)

    name = "base"

    def __init_subclass__(cls, **kwargs):
        """Register a subclass under its own ``name`` (classes that do not set one are not selectable)."""
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            POLICIES[cls.name] = cls

    def __post_init__(self):
        self._check()

    def _check(self) -> None:
        """Checks that do not depend on the chunk size."""
        if self.local_attn_size != -1 and self.local_attn_size < 1:
            raise CachePolicyError(f"local_attn_size={self.local_attn_size} is invalid: use -1 (global attention) "
                                   f"or a positive number of latent frames (21 in the shipped configs)")
        if self.global_cap_frames < 1:
            raise CachePolicyError(f"global_cap_frames={self.global_cap_frames} must be a positive number of frames")
        if self.sink_size < 0:
            raise CachePolicyError(f"sink_size={self.sink_size} is invalid: use a number of frames >= 0")

    @property
    def window_frames(self) -> int:
        """L: the most frames' worth of tokens the cache holds with the current chunk."""
        return self.global_cap_frames if self.local_attn_size == -1 else self.local_attn_size

    def validate(self, chunk_frames: int) -> None:
        """Check the configuration against the chunk size B; raise CachePolicyError naming the values."""
        self._check()
        L, S, B = self.window_frames, self.sink_size, chunk_frames
        if B < 1:
            raise CachePolicyError(f"num_frame_per_block={B} must be >= 1")
        if S + B > L:
            raise CachePolicyError(f"sink_size={S} + chunk of {B} frames exceeds the window local_attn_size={L}: "
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
                "window_frames": self.window_frames, "global_cap_frames": self.global_cap_frames}

    def _emit(self, kv: KVCache, layer: int, event: str, kept: torch.Tensor | None = None,
              tokens_before: int | None = None, **extra) -> None:
        """Send a trace record (module docstring) of the layer's committed tokens to the trace hook, if any."""
        if self.trace is None:
            return
        cache = kv.layers[layer]
        n, batch = cache.n, cache.k.shape[0]
        if kept is None:
            kept = torch.arange(n)
        kept = _host(kept)
        if kept.dim() == 1:
            kept = kept.unsqueeze(0).expand(batch, -1)
        rec = {"event": event, "layer": layer, "chunk_start": kv.chunk.start_frame,
               "chunk_frames": kv.chunk.num_frames, "tokens_per_frame": kv.chunk.tokens_per_frame,
               "tokens_before": n if tokens_before is None else tokens_before, "num_tokens": n,
               "kept": kept, "frames": _host(cache.frame[:, :n]), "t_pos": _host(cache.t_pos[:, :n])}
        rec.update(extra)
        self.trace(rec)


def _host(x: torch.Tensor) -> torch.Tensor:
    """A CPU copy of ``x`` that later cache writes cannot change (trace records)."""
    return x.detach().to("cpu", copy=True)


def fifo_keep_index(kv: KVCache, layer: int, sink_frames: int, window_frames: int) -> torch.Tensor | None:
    """Indices [m] of the committed tokens FIFO eviction keeps so that context + new chunk fits ``window_frames``.

    The first ``sink_frames`` frames are always kept; None when nothing has to go.
    """
    cache, chunk = kv.layers[layer], kv.chunk
    F = chunk.tokens_per_frame
    evict = cache.n // F + chunk.num_frames - window_frames
    if evict <= 0:
        return None
    sink = min(sink_frames * F, cache.n)
    device = cache.k.device
    return torch.cat([torch.arange(sink, device=device), torch.arange(sink + evict * F, cache.n, device=device)])


@dataclass
class SelfForcingWindow(CachePolicy):
    """Self Forcing's cache (SPEC 4.1): FIFO eviction of non-sink frames, positions never move."""

    name = "self_forcing"

    def on_new_chunk(self, kv: KVCache, layer: int) -> None:
        """Evict the oldest non-sink frames when the new chunk would overflow the window."""
        self._evict(kv, layer)

    def _evict(self, kv: KVCache, layer: int) -> bool:
        """FIFO eviction after the sink (traced as "evict"); False when the chunk fits and nothing happened."""
        cache = kv.layers[layer]
        idx = fifo_keep_index(kv, layer, self.sink_size, self.window_frames)
        if idx is None:
            return False
        before = cache.n
        cache.keep(idx)
        self._emit(kv, layer, "evict", kept=idx, tokens_before=before,
                   evicted_frames=(before - cache.n) // kv.chunk.tokens_per_frame)
        return True


@dataclass
class DeepSink(SelfForcingWindow):
    """Deep Sink (SPEC 4.2): FIFO eviction after a large sink, and the sink's time positions follow the window.

    At every eviction (context + new chunk > L) sink frame j gets time index ``f - L + j``, so the sink occupies
    ``[f - L, f - L + S)`` and B unused indices lie between it and the oldest tail frame (kept as released).
    """

    name = "deep_sink"

    def _check(self) -> None:
        """Base checks plus S < L."""
        super()._check()
        if self.sink_size >= self.window_frames:
            raise CachePolicyError(f"sink_size={self.sink_size} must be smaller than the window "
                                   f"local_attn_size={self.window_frames}; lower sink_size in the YAML model_kwargs")

    def on_new_chunk(self, kv: KVCache, layer: int) -> None:
        """FIFO-evict when the chunk would overflow, then move the sink to ``[f - L, f - L + S)``."""
        if self._evict(kv, layer):
            self._place_sink(kv, layer, kv.chunk.start_frame - self.window_frames)

    def _place_sink(self, kv: KVCache, layer: int, start: int) -> None:
        """Give sink frame j the time index ``start + j`` (all its tokens) and trace a "realign" event."""
        cache, F = kv.layers[layer], kv.chunk.tokens_per_frame
        sink = min(self.sink_size * F, cache.n)
        if sink == 0:
            return
        old = int(cache.t_pos[0, 0]) if self.trace is not None else 0  # host read only when tracing
        frames = torch.arange(start, start + self.sink_size, device=cache.t_pos.device)
        cache.t_pos[:, :sink] = frames.repeat_interleave(F)[:sink]
        self._emit(kv, layer, "realign", sink_start=start, shift=start - old)


def select_top(scores: torch.Tensor, picks: torch.Tensor, keep: int, reuse_cap: int) -> torch.Tensor:
    """Indices [batch, min(keep, n)] (ascending) of the ``keep`` best candidates of scores [batch, n].

    Order of preference: candidates picked fewer than ``reuse_cap`` times (picks [batch, n]; cap 0 = no cap) first,
    then higher score, then the earlier token (ties). So when fewer than ``keep`` candidates are under the cap, the
    rest is filled with the best-scoring capped ones and the cache keeps its budget; when there are fewer than
    ``keep`` candidates at all, every candidate is kept.
    """
    k = min(keep, scores.shape[1])
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # [batch, n]
    if reuse_cap > 0:
        capped = torch.gather(picks >= reuse_cap, 1, order).to(torch.int8)
        order = torch.gather(order, 1, torch.sort(capped, dim=1, stable=True).indices)
    return order[:, :k].sort(dim=1).values


@dataclass
class ParticipativeCompression(DeepSink):
    """Deep Sink + Participative Compression (SPEC 4.3), the default Deep Forcing mode.

    Per layer, the queries of the last ``recent`` frames of every DiT call are remembered (as per-frame sums with
    their time index: the score is linear in the queries and all tokens of a frame share its time rotation).
    On the first call of a chunk whose arrival would overflow the window (committed + B > L frames), the pool
    (committed tokens + the new chunk) is split into sink (first S frames), recent (last R frames: the last R - B
    committed frames and the chunk) and candidates (the rest). Candidate j scores ``sum over recent queries and
    heads of q . k_j`` with both time-rotated (relative positions; no softmax). The ``C = (budget - S - R) * F``
    best are kept (``select_top``: reuse cap, ties to the earlier token), one index set per layer and sample shared
    by all heads, in original order; their pick counts grow by one. The cache becomes [sink | top-C | committed
    recent] (budget - B frames; budget with the chunk) and the sink moves to ``[f - budget, f - budget + S)``.

    Top-C tokens keep their time index (released behaviour). With ``realign_topc=True`` (the paper's variant) the
    kept tokens form one contiguous run ending at the chunk's last frame ``f + B - 1``: with c kept candidates and
    g = ceil(c / F) slots, the committed recent frames keep their true indices ``[f - R + B, f)``, kept candidate i
    (original order) gets ``f - R + B - g + i // F``, and sink frame j gets ``f - R + B - g - S + j`` (for c = C the
    sink starts at ``f + B - budget``: no gap).
    """

    budget: int = 16
    recent: int = 4
    reuse_cap: int = 7
    realign_topc: bool = False
    _q_sum: list = field(default_factory=list, init=False, repr=False, compare=False)
    _q_pos: list = field(default_factory=list, init=False, repr=False, compare=False)

    name = "deep_sink_pc"
    PICKS = "pc_picks"  # name of the pick-count field in the layer caches

    def _check(self) -> None:
        """Deep Sink checks plus budget/recent/reuse cap ranges and S + R <= N <= L."""
        super()._check()
        L, S, N, R = self.window_frames, self.sink_size, self.budget, self.recent
        if N < 1 or R < 1:
            raise CachePolicyError(f"--Budget={N} and --Recent={R} must both be positive numbers of frames "
                                   f"(defaults 16 and 4)")
        if self.reuse_cap < 0:
            raise CachePolicyError(f"reuse_cap={self.reuse_cap} must be >= 0 (7 as released; 0 turns the cap off)")
        if not S + R <= N <= L:
            raise CachePolicyError(f"Deep Sink + PC needs sink_size + --Recent <= --Budget <= local_attn_size, got "
                                   f"sink_size={S}, --Recent={R}, --Budget={N}, local_attn_size={L}; choose --Budget "
                                   f"between {S + R} and {L} (or lower sink_size / --Recent)")

    def validate(self, chunk_frames: int) -> None:
        """Base checks plus R >= B (the new chunk must lie inside the recent frames)."""
        super().validate(chunk_frames)
        if self.recent < chunk_frames:
            raise CachePolicyError(f"--Recent={self.recent} is smaller than the chunk of num_frame_per_block="
                                   f"{chunk_frames} frames; the recent window must hold the new chunk: use "
                                   f"--Recent >= {chunk_frames}")

    def candidate_tokens(self, tokens_per_frame: int) -> int:
        """C: candidate tokens kept per compression, ``(budget - sink_size - recent) * F``."""
        return (self.budget - self.sink_size - self.recent) * tokens_per_frame

    def describe(self) -> dict:
        """All parameters, for sidecars and logs."""
        return {**super().describe(), "budget": self.budget, "recent": self.recent, "reuse_cap": self.reuse_cap,
                "realign_topc": self.realign_topc}

    def reset(self, num_layers: int) -> None:
        """Forget the recent queries (pick counts live in the cache, which resets itself)."""
        self._q_sum = [None] * num_layers
        self._q_pos = [None] * num_layers

    def observe_queries(self, kv: KVCache, layer: int, q: torch.Tensor, pos: torch.Tensor) -> None:
        """Append this call's queries q [B, m, H, D] (positions [m]) to the layer's window of the last R frames."""
        F = kv.tokens_per_frame
        batch, m = q.shape[:2]
        if m % F:
            raise RuntimeError(f"{m} query tokens is not a whole number of frames of {F} tokens")
        if layer >= len(self._q_sum):
            grow = layer + 1 - len(self._q_sum)
            self._q_sum += [None] * grow
            self._q_pos += [None] * grow
        q_sum = q.unflatten(1, (m // F, F)).sum(dim=2, dtype=torch.float32)  # [B, m/F, H, D]
        q_pos = pos[::F]  # [m/F], one time index per frame
        if self._q_sum[layer] is not None:
            q_sum = torch.cat([self._q_sum[layer], q_sum], dim=1)
            q_pos = torch.cat([self._q_pos[layer], q_pos])
        self._q_sum[layer] = q_sum[:, -self.recent:]
        self._q_pos[layer] = q_pos[-self.recent:]

    def score(self, kv: KVCache, layer: int, start: int, end: int) -> torch.Tensor:
        """Scores [B, end - start] (float32) of committed tokens ``[start, end)``: sum over recent q, heads of q.k."""
        cache = kv.layers[layer]
        batch = cache.k.shape[0]
        q_sum = self._q_sum[layer] if layer < len(self._q_sum) else None
        if q_sum is None or end <= start:
            return torch.zeros(batch, max(end - start, 0), device=cache.k.device)
        q = kv.rotate_time(q_sum, self._q_pos[layer] - kv.base).sum(dim=1)  # [B, H, D], reduced first
        keys = kv.rotate_time(cache.k[:, start:end], cache.t_pos[:, start:end] - kv.base)  # [B, n, H, D]
        return torch.einsum("bnhd,bhd->bn", keys.float(), q)

    def on_new_chunk(self, kv: KVCache, layer: int) -> None:
        """Compress when the new chunk would overflow the window; otherwise nothing happens."""
        cache, chunk = kv.layers[layer], kv.chunk
        if cache.n + chunk.num_tokens > self.window_frames * chunk.tokens_per_frame:
            self.compress(kv, layer)

    def compress(self, kv: KVCache, layer: int) -> None:
        """Rebuild the layer's cache as [sink | top-C candidates | committed recent] and move the sink."""
        cache, chunk = kv.layers[layer], kv.chunk
        F, B, f, n = chunk.tokens_per_frame, chunk.num_frames, chunk.start_frame, cache.n
        batch, device = cache.k.shape[0], cache.k.device
        sink = min(self.sink_size * F, n)
        cand_end = max(n - (self.recent - B) * F, sink)
        scores = self.score(kv, layer, sink, cand_end)  # [batch, nc]
        picks = cache.aux_field(self.PICKS)
        cand_picks = picks[:, sink:cand_end]
        selected = select_top(scores, cand_picks, self.candidate_tokens(F), self.reuse_cap) + sink  # [batch, c]
        c = selected.shape[1]
        eligible = None
        if self.trace is not None:  # candidates under the cap, before this compression's increments
            eligible = (cand_picks < self.reuse_cap).sum(1) if self.reuse_cap > 0 else \
                torch.full((batch,), cand_end - sink)
        picks.scatter_add_(1, selected, torch.ones_like(selected))
        idx = torch.cat([torch.arange(sink, device=device).expand(batch, -1), selected,
                         torch.arange(cand_end, n, device=device).expand(batch, -1)], dim=1)  # [batch, m]
        cache.keep(idx)
        old = int(cache.t_pos[0, 0]) if self.trace is not None and sink else 0  # host read only when tracing
        if self.realign_topc:
            slots = -(-c // F)
            run_start = f - (self.recent - B) - slots
            topc_pos = run_start + torch.arange(c, device=device) // F
            cache.t_pos[:, sink:sink + c] = topc_pos
            sink_start = run_start - self.sink_size
        else:
            sink_start = f - self.budget
        if sink:
            cache.t_pos[:, :sink] = torch.arange(sink_start, sink_start + self.sink_size,
                                                 device=device).repeat_interleave(F)[:sink]
        if self.trace is not None:
            self._emit(kv, layer, "compress", kept=idx, tokens_before=n, candidates=(sink, cand_end),
                       scores=_host(scores), selected=_host(selected),
                       picks=_host(cache.aux[self.PICKS][:, sink:sink + c]), eligible=_host(eligible),
                       sink_start=sink_start, shift=sink_start - old)


def policy_parameters(mode: str) -> tuple[str, ...]:
    """Names of the configuration fields of ``mode``'s policy class (its dataclass fields, minus the trace hook)."""
    return tuple(f.name for f in fields(policy_class(mode)) if f.init and f.name != "trace")


def policy_class(mode: str) -> type[CachePolicy]:
    """The registered policy class of ``mode``; CachePolicyError naming the registered modes otherwise."""
    try:
        return POLICIES[mode]
    except KeyError:
        raise CachePolicyError(f"cache mode {mode!r} is unknown; use one of {', '.join(registered_modes())}") from None


def build_policy(mode: str, trace: TraceHook | None = None, **params) -> CachePolicy:
    """The policy of ``mode`` built from the ``params`` its class declares (others are left to other modes).

    A parameter that no registered policy declares is an error (a typo must not be dropped silently).
    """
    cls = policy_class(mode)
    known = {name for m in POLICIES for name in policy_parameters(m)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise CachePolicyError(f"cache parameter(s) {', '.join(unknown)} are not used by any cache mode; known "
                               f"parameters: {', '.join(sorted(known))}")
    own = policy_parameters(mode)
    return cls(trace=trace, **{k: v for k, v in params.items() if k in own})


def select_mode(is_ds_only: int, mode: str | None = None) -> str:
    """The cache mode from upstream's ``--is_ds_only`` (1: deep_sink, 0: deep_sink_pc) or an explicit ``mode``."""
    if is_ds_only not in (0, 1):
        raise CachePolicyError(f"--is_ds_only={is_ds_only} is invalid: use 1 for Deep Sink alone or 0 for "
                               f"Deep Sink + Participative Compression")
    if mode is None:
        return "deep_sink" if is_ds_only else "deep_sink_pc"
    policy_class(mode)
    if is_ds_only and mode != "deep_sink":
        raise CachePolicyError(f"--is_ds_only 1 asks for Deep Sink alone but the cache mode is {mode!r}; drop "
                               f"--is_ds_only or the mode")
    return mode
