"""KV-cache policies: what the cache keeps and which time positions its tokens use (docs/cache.md).

A policy is a dataclass whose fields are its configuration (validated in ``__post_init__`` and ``validate``). On the
first call of a new chunk, before the chunk is staged, ``plan(kv, layer)`` reads the layer's cache and returns a
``Plan`` (slots to free for the chunk, or tokens to keep; fields to write) or None; the cache applies it and emits
the trace record. A policy may observe every call's queries (``observe_queries``). It never writes the cache and
never knows which model runs.

Every subclass with its own ``name`` registers itself (``POLICIES``); ``build_policy(mode, ...)`` builds one from the
mode name (the CLI maps upstream's ``--is_ds_only 1`` to ``deep_sink``). The semantics of every mode, the trace format
and worked examples are in docs/cache.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable

import torch

from .kv_cache import KVCache, Plan

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
        """Check the configuration against the chunk size; raise CachePolicyError naming the values."""
        self._check()
        L, S = self.window_frames, self.sink_size
        if chunk_frames < 1:
            raise CachePolicyError(f"num_frame_per_block={chunk_frames} must be >= 1")
        if S + chunk_frames > L:
            fix = (f"use sink_size <= {L - chunk_frames}" if L >= chunk_frames else
                   f"use local_attn_size >= {S + chunk_frames} (or -1 for global attention)")
            raise CachePolicyError(f"sink_size={S} + chunk of {chunk_frames} frames exceeds the window "
                                   f"local_attn_size={L}: no frame could ever be evicted; {fix}")

    def capacity_frames(self, chunk_frames: int) -> int:
        """Storage to preallocate, in frames: the window (the chunk is staged into the slots an event freed)."""
        return self.window_frames

    def reset(self, num_layers: int) -> None:
        """Forget all per-video state."""

    def observe_queries(self, kv: KVCache, layer: int, q: torch.Tensor, pos: torch.Tensor) -> None:
        """Called with every DiT call's queries q [batch, m, H, D] (spatially rotated) and positions [m]."""

    def plan(self, kv: KVCache, layer: int) -> Plan | None:
        """The cache event of ``layer`` at this chunk start (None: the chunk is only appended)."""
        return None

    def describe(self) -> dict:
        """The mode, its parameters (unset ones left out) and the window, for sidecars and logs."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.init and f.name != "trace"
               and getattr(self, f.name) is not None}
        return {"mode": self.name, **own, "window_frames": self.window_frames}


def fifo_evict_slots(kv: KVCache, layer: int, sink_frames: int, window_frames: int) -> torch.Tensor | None:
    """Slots [e] of the oldest non-sink frames (chronological) FIFO drops so context + chunk fit the window.

    The sink is the first ``sink_frames`` frames' worth of slots; the chunk is later written into the freed slots,
    so no kept token moves (docs/cache.md).
    """
    cache, chunk = kv.layers[layer], kv.chunk
    F = chunk.tokens_per_frame
    evict = cache.n // F + chunk.num_frames - window_frames
    if evict <= 0:
        return None  # nothing has to go
    sink = min(sink_frames * F, cache.n)
    order = torch.sort(cache.frame[0, sink:cache.n], stable=True).indices  # [n - sink], oldest first
    return order[:evict * F] + sink


def place_sink(plan: Plan, kv: KVCache, sink_frames: int, gap: int, kept: int) -> Plan:
    """Add the sink's positions to ``plan``: sink frame j at ``f - c - gap + j``, c = ceil(kept / F) (docs/cache.md)."""
    F = kv.tokens_per_frame
    sink = min(sink_frames * F, kept)
    if sink:  # ``gap`` unused positions between the sink and the oldest kept frame
        plan.sink_start = kv.chunk.start_frame - -(-kept // F) - gap
        frames = torch.arange(plan.sink_start, plan.sink_start + sink_frames, device=kv.layers[0].t_pos.device)
        plan.writes.append(("t_pos", 0, frames.repeat_interleave(F)[:sink]))
    return plan


@dataclass
class SelfForcingWindow(CachePolicy):
    """Self Forcing's cache: FIFO eviction of non-sink frames, positions never move."""

    name = "self_forcing"

    def plan(self, kv: KVCache, layer: int) -> Plan | None:
        """Evict the oldest non-sink frames when the new chunk would overflow the window (their slots are reused)."""
        slots = fifo_evict_slots(kv, layer, self.sink_size, self.window_frames)
        if slots is None:
            return None
        return Plan("evict", evict=slots, extras={"evicted_frames": slots.shape[0] // kv.tokens_per_frame})


@dataclass
class DeepSink(SelfForcingWindow):
    """Deep Sink: FIFO eviction after a large sink whose time positions follow the window at every eviction.

    ``sink_gap`` unused indices lie between the sink and the oldest tail frame: None = the chunk size (as released,
    the sink at ``[f - L, f - L + S)``), 0 = the sink right before the oldest kept frame (a V-sink placement).
    """

    sink_gap: int | None = None

    name = "deep_sink"

    def _check(self) -> None:
        """Base checks plus S < L and a non-negative gap."""
        super()._check()
        if self.sink_size >= self.window_frames:
            raise CachePolicyError(f"sink_size={self.sink_size} must be smaller than the window "
                                   f"local_attn_size={self.window_frames}; use sink_size <= {self.window_frames - 1} "
                                   f"(model_kwargs.sink_size) or a larger window")
        if self.sink_gap is not None and self.sink_gap < 0:
            raise CachePolicyError(f"sink_gap={self.sink_gap} is invalid: use 0 (sink right before the oldest "
                                   f"frame), a positive number of frames, or leave it unset (the chunk size)")

    def gap(self, chunk_frames: int) -> int:
        """Unused time indices between the sink and the oldest kept frame (``sink_gap``, None = the chunk size)."""
        return chunk_frames if self.sink_gap is None else self.sink_gap

    def plan(self, kv: KVCache, layer: int) -> Plan | None:
        """FIFO-evict when the chunk would overflow, then place the sink ``gap`` indices before the tail."""
        plan = super().plan(kv, layer)
        if plan is None:
            return None
        kept = kv.layers[layer].n - plan.evict.shape[0]
        return place_sink(plan, kv, self.sink_size, self.gap(kv.chunk.num_frames), kept)


def select_top(scores: torch.Tensor, picks: torch.Tensor, keep: int, reuse_cap: int) -> torch.Tensor:
    """Indices [batch, min(keep, n)] (ascending) of the ``keep`` best candidates of scores [batch, n].

    Preference: picked fewer than ``reuse_cap`` times (picks [batch, n]; cap 0 = no cap), then higher score, then the
    earlier token; capped candidates fill the budget when too few are under the cap (docs/cache.md).
    """
    k = min(keep, scores.shape[1])
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # [batch, n]
    if reuse_cap > 0:
        capped = torch.gather(picks >= reuse_cap, 1, order).to(torch.int8)
        order = torch.gather(order, 1, torch.sort(capped, dim=1, stable=True).indices)
    return order[:, :k].sort(dim=1).values


@dataclass
class ParticipativeCompression(DeepSink):
    """Deep Sink + Participative Compression, the default Deep Forcing mode (docs/cache.md).

    When the new chunk would overflow the window, the cache becomes [sink | top-C candidates | committed recent]
    (budget - B frames): ``score`` rates the candidates against the remembered queries of the last ``recent``
    frames, ``select_top`` keeps the C = (budget - S - recent) * F best under the reuse cap, and the sink moves
    ``gap`` indices before the oldest kept frame (gap B as released: ``[f - budget, f - budget + S)``). With
    ``realign_topc`` (the paper's variant) the kept candidates are renumbered into a run ending right before the
    committed recent frames and the default gap is 0.
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
            fix = (f"choose --Budget between {S + R} and {L}" if S + R <= L else
                   f"sink_size + --Recent = {S + R} exceeds the window, so no budget fits: use --Recent <= {L - S} "
                   f"or sink_size <= {L - R}")
            raise CachePolicyError(f"Deep Sink + PC needs sink_size + --Recent <= --Budget <= local_attn_size, got "
                                   f"sink_size={S}, --Recent={R}, --Budget={N}, local_attn_size={L}; {fix}")

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

    def gap(self, chunk_frames: int) -> int:
        """``sink_gap``; unset: the chunk size as released, 0 with ``realign_topc``."""
        return (0 if self.realign_topc else chunk_frames) if self.sink_gap is None else self.sink_gap

    def reset(self, num_layers: int) -> None:
        """Forget the recent queries (pick counts live in the cache, which resets itself)."""
        self._q_sum = [None] * num_layers
        self._q_pos = [None] * num_layers

    def observe_queries(self, kv: KVCache, layer: int, q: torch.Tensor, pos: torch.Tensor) -> None:
        """Append this call's queries q [batch, m, H, D] (positions [m]) to the layer's last ``recent`` frames."""
        F = kv.tokens_per_frame
        m = q.shape[1]
        if m % F:
            raise RuntimeError(f"{m} query tokens is not a whole number of frames of {F} tokens")
        q_sum = q.unflatten(1, (m // F, F)).sum(dim=2, dtype=torch.float32)  # [batch, m/F, H, D]
        q_pos = pos[::F]  # [m/F], one time index per frame
        if self._q_sum[layer] is not None:
            q_sum = torch.cat([self._q_sum[layer], q_sum], dim=1)
            q_pos = torch.cat([self._q_pos[layer], q_pos])
        self._q_sum[layer] = q_sum[:, -self.recent:]
        self._q_pos[layer] = q_pos[-self.recent:]

    def score(self, kv: KVCache, layer: int, start: int, end: int) -> torch.Tensor:
        """Scores [batch, end - start] (float32) of tokens ``[start, end)``: sum over recent q and heads of q.k."""
        cache = kv.layers[layer]
        q_sum = self._q_sum[layer]
        if q_sum is None or end <= start:
            return torch.zeros(cache.k.shape[0], max(end - start, 0), device=cache.k.device)
        q = kv.rotate_time(q_sum, self._q_pos[layer] - kv.base).sum(dim=1)  # [batch, H, D], reduced first
        keys = kv.rotate_time(cache.k[:, start:end], cache.t_pos[:, start:end] - kv.base)  # [batch, n, H, D]
        return torch.einsum("bnhd,bhd->bn", keys.float(), q)

    def plan(self, kv: KVCache, layer: int) -> Plan | None:
        """Compress to [sink | top-C | committed recent] when the new chunk would overflow the window."""
        cache, chunk = kv.layers[layer], kv.chunk
        F, B, f, n = chunk.tokens_per_frame, chunk.num_frames, chunk.start_frame, cache.n
        if n + chunk.num_tokens <= self.window_frames * F:
            return None
        batch, device = cache.k.shape[0], cache.k.device
        sink = min(self.sink_size * F, n)
        cand_end = max(n - (self.recent - B) * F, sink)
        scores = self.score(kv, layer, sink, cand_end)  # [batch, nc]
        picks = cache.aux[self.PICKS][:, sink:cand_end] if self.PICKS in cache.aux else \
            torch.zeros(scores.shape, dtype=torch.long, device=device)  # [batch, nc]
        chosen = select_top(scores, picks, self.candidate_tokens(F), self.reuse_cap)  # [batch, c], into candidates
        c = chosen.shape[1]
        new_picks = torch.gather(picks, 1, chosen) + 1  # [batch, c]
        keep = torch.cat([torch.arange(sink, device=device).expand(batch, -1), chosen + sink,
                          torch.arange(cand_end, n, device=device).expand(batch, -1)], dim=1)  # [batch, m]
        plan = Plan("compress", keep, writes=[(self.PICKS, sink, new_picks)])
        if self.realign_topc:  # kept candidate i at f - (R - B) - ceil(c / F) + i // F
            run_start = f - (self.recent - B) - -(-c // F)
            plan.writes.append(("t_pos", sink, run_start + torch.arange(c, device=device) // F))
        if self.trace is not None:
            eligible = (picks < self.reuse_cap).sum(1) if self.reuse_cap > 0 else torch.full((batch,), cand_end - sink)
            plan.extras = {"candidates": (sink, cand_end), "scores": scores, "selected": chosen + sink,
                           "picks": new_picks, "eligible": eligible}
        return place_sink(plan, kv, self.sink_size, self.gap(B), keep.shape[-1])


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
