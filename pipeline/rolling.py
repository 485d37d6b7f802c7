"""Rolling Forcing's loop: a rolling window of blocks at staggered noise levels, one DiT call per window.

With W denoising steps, window w holds blocks ``max(0, w - W + 1) .. min(nb - 1, w)`` (oldest first) and block b sits
at step ``w - b`` of the (warped) step list: every block is denoised once per step, from the noisiest down, in W
consecutive windows, and is final after window ``b + W - 1``, where it is the oldest block. Per window: one DiT call
on the whole window with a per-frame timestep (the newest block from its fresh initial noise), a re-noise of every
block that is not at the last step (one draw shaped like the whole window per block, oldest first, only that block's
rows kept: the released draw order), and a clean pass of the oldest block at ``context_noise``, whose keys and values
are the only thing of the window that enters the cache.

The cache holds a sink (the anchor: block 0 as released, or ``sink_frames`` frames for a Deep Sink on top) and a FIFO
of the newest blocks; a denoising call attends ``[sink | working cache | window]`` with the sink placed right before
the working cache and everything bounded by ``attention_cap_frames``. The strategy decides which frames each call
attends and at which positions (``WindowPlan``); ``KVCache.begin_window`` applies it. Semantics, the worked example and
what differs from upstream: docs/rolling.md.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch

from .kv_cache import WindowPlan, WindowSelect
from .loops import LoopStrategy, clean_pass
from .policies import CachePolicyError

if TYPE_CHECKING:  # only for annotations
    from .rollout import RolloutConfig, RolloutSession


@dataclass(frozen=True)
class Window:
    """One window of the schedule: its index, its blocks (oldest first) and the block taking fresh noise (or None)."""

    index: int
    blocks: tuple
    fresh: int | None

    def step(self, block: int) -> int:
        """Index into the step list at which ``block`` is denoised in this window (0: the noisiest)."""
        return self.index - block


def window_schedule(num_blocks: int | None, steps: int) -> Iterator[Window]:
    """The windows of a rollout of ``num_blocks`` blocks with ``steps`` denoising steps (docs/rolling.md).

    Finite: ``num_blocks + steps - 1`` windows (steps - 1 warm-up, then full, then steps - 1 tail windows). Endless
    (None): warm-up and full windows for ever; with no known end there are no tail windows.
    """
    for w in itertools.count():
        if num_blocks is not None and w >= num_blocks + steps - 1:
            return
        last = w if num_blocks is None else min(num_blocks - 1, w)
        fresh = w if num_blocks is None or w < num_blocks else None
        yield Window(w, tuple(range(max(0, w - steps + 1), last + 1)), fresh)


def _runs(frames: list, first_position: int | None) -> tuple:
    """Frames (ascending) as ``WindowPlan.attend`` runs of consecutive frames; with ``first_position`` the frames are
    placed at consecutive positions from it, else they keep their stored positions."""
    runs = []
    for fr in frames:
        if runs and fr == runs[-1][0] + runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([fr, 1])
    out, pos = [], first_position
    for first, count in runs:
        out.append((first, count, pos))
        pos = None if pos is None else pos + count
    return tuple(out)


@dataclass
class RollingLoop(LoopStrategy):
    """Rolling Forcing (TencentARC/RollingForcing, and Causal Forcing's long_video) as a loop strategy.

    ``attention_cap_frames``: most frames any call attends (21 as released); ``buffer_frames``: KV storage per layer
    (24 as released: the sink plus a FIFO of the newest blocks); ``sink_frames``: frames of the sink, the first
    frames of the video, kept for ever and placed right before the working cache on every call (None: one block, the
    released anchor; a larger multiple of the block is Deep Sink on top of the rolling window);
    ``clean_pass_sees_anchor``: False as released (the clean pass attends the newest ``attention_cap_frames`` frames
    of the buffer, so from block 7 on it no longer sees the anchor); True: it attends the sink plus the newest blocks
    that fit, like a denoising call of one block.

    Participative Compression on top (off by default, docs/rolling.md section 7): ``pc_budget_frames`` = C frames'
    worth of tokens chosen per call from the held blocks older than the working cache (which shrinks to make room),
    scored against the queries of the last ``recent_frames`` frames of the denoising calls, each token picked at most
    ``reuse_cap`` times while others compete (0: no cap); use a ``buffer_frames`` larger than the cap so there is a
    history to choose from.
    """

    attention_cap_frames: int = 21
    buffer_frames: int = 24
    sink_frames: int | None = None
    clean_pass_sees_anchor: bool = False
    pc_budget_frames: int | None = None
    recent_frames: int = 4
    reuse_cap: int = 7

    name = "rolling"
    uses_rotated_key_buffer = False  # every call gathers its own context; the rotated-key buffer is never read

    # ------------------------------------------------------------------------------------------------ checks
    def sink(self, block_frames: int) -> int:
        """S: sink frames (``sink_frames``, or one block of ``block_frames`` when unset)."""
        return block_frames if self.sink_frames is None else self.sink_frames

    def validate(self, config: "RolloutConfig", policy) -> None:
        """Reject the settings Rolling Forcing has no meaning for, and windows that do not fit the attention cap."""
        B, W = config.num_frame_per_block, len(config.denoising_step_list)
        if config.denoising_step_list_first_chunk is not None:
            raise ValueError("denoising_step_list_first_chunk is a chunk-loop setting: in the rolling window every "
                             "block is denoised once per step of denoising_step_list; leave it unset")
        name = getattr(policy, "name", None)
        if name not in ("base", "self_forcing"):
            raise CachePolicyError(f"cache mode {name!r} cannot run under the rolling window, whose cache is its own "
                                   f"(anchor + working cache); use mode self_forcing, and RollingLoop(sink_frames="
                                   f"...) for a Deep Sink on top of the rolling window")
        if policy.sink_size != 0:
            raise CachePolicyError(f"sink_size={policy.sink_size}: Rolling Forcing ignores sink_size (its anchor is "
                                   f"the first block); use sink_size 0, or RollingLoop(sink_frames=...) for a Deep "
                                   f"Sink on top of the rolling window")
        if policy.local_attn_size not in (-1, self.attention_cap_frames):
            raise CachePolicyError(f"local_attn_size={policy.local_attn_size}: Rolling Forcing ignores it (its "
                                   f"attention cap is attention_cap_frames={self.attention_cap_frames} frames); use "
                                   f"-1 or {self.attention_cap_frames}")
        S, cap = self.sink(B), self.attention_cap_frames
        if S < 0 or S % B:
            raise ValueError(f"sink_frames={S} must be a multiple of num_frame_per_block={B} (whole blocks)")
        if S + W * B > cap:
            raise ValueError(f"a window of {W} blocks ({W * B} frames, one per denoising step) plus the sink of {S} "
                             f"frames exceeds attention_cap_frames={cap}; use fewer steps, a smaller sink or a "
                             f"larger cap")
        if self.buffer_frames < S + B:
            raise ValueError(f"buffer_frames={self.buffer_frames} cannot hold the sink ({S} frames) and one block "
                             f"({B} frames); use buffer_frames >= {S + B}")
        C = self.pc_budget_frames
        if C is None:
            return
        if C < 1 or self.recent_frames < 1 or self.reuse_cap < 0:
            raise ValueError(f"pc_budget_frames={C} and recent_frames={self.recent_frames} must be >= 1 and "
                             f"reuse_cap={self.reuse_cap} >= 0 (0 = no cap)")
        if S + W * B + B + C > cap:
            raise ValueError(f"Participative Compression on the rolling window: the sink ({S} frames), one working "
                             f"block ({B}), the selected tokens (pc_budget_frames={C}) and a full window ({W * B}) "
                             f"need {S + W * B + B + C} frames > attention_cap_frames={cap}; use pc_budget_frames <= "
                             f"{cap - S - W * B - B} or attention_cap_frames >= {S + W * B + B + C}")

    def check_recache(self, recache) -> None:
        """No re-cache: a prompt switch only changes the prompt of the windows that follow."""
        if recache.name != "off":
            raise ValueError(f"re-cache variant {recache.name!r} is not supported by the rolling window; "
                             f"use 'off' (prompt switches then apply to the following windows as they are)")

    def check_inputs(self, config: "RolloutConfig", inputs) -> None:
        """Text-to-video only (the released code crashes on image-to-video)."""
        if inputs.image_latent is not None:
            from .rollout import ImageToVideoError  # the driver imports this module
            raise ImageToVideoError("image-to-video is not supported by the rolling window (Rolling Forcing is "
                                    "text-to-video); drop the image")

    def check_length(self, config: "RolloutConfig", num_frames: int | None) -> None:
        """A multiple of the block and at least one full window (W blocks); None (endless) is allowed."""
        super().check_length(config, num_frames)
        B, W = config.num_frame_per_block, len(config.denoising_step_list)
        if num_frames is not None and num_frames < W * B:
            raise ValueError(f"{num_frames} latent frames is shorter than one rolling window of {W} blocks "
                             f"({W * B} frames, one block per denoising step); use at least {W * B}")

    def cache_frames(self, config: "RolloutConfig", policy) -> int:
        """``buffer_frames`` per layer."""
        return self.buffer_frames

    # ------------------------------------------------------------------------------------------ cache plans
    def context(self, held: list, oldest: int, frames: int, B: int) -> tuple:
        """(sink blocks, working blocks) a call of ``frames`` frames starting at block ``oldest`` attends.

        The sink: every held sink block before ``oldest``. The working cache: the k newest held non-sink blocks
        before ``oldest``, k = (attention_cap_frames - frames - S) // B at most.
        """
        sink_blocks = self.sink(B) // B
        usable = [h for h in held if h < oldest]
        sink = [h for h in usable if h < sink_blocks]
        rest = [h for h in usable if h >= sink_blocks]
        k = max(0, min((self.attention_cap_frames - frames - self.sink(B)) // B, len(rest)))
        return sink, rest[len(rest) - k:]

    def pc_context(self, held: list, oldest: int, frames: int, B: int) -> tuple:
        """(sink, candidate, working blocks) of a call under Participative Compression.

        The working cache: the k newest held non-sink blocks before ``oldest``, k = (attention_cap_frames - frames -
        S - pc_budget_frames) // B at most; the candidates: the held non-sink blocks older than the working cache.
        """
        sink_blocks = self.sink(B) // B
        usable = [h for h in held if h < oldest]
        sink = [h for h in usable if h < sink_blocks]
        rest = [h for h in usable if h >= sink_blocks]
        room = self.attention_cap_frames - frames - self.sink(B) - self.pc_budget_frames
        k = max(0, min(room // B, len(rest)))
        return sink, rest[:len(rest) - k], rest[len(rest) - k:]

    def pc_plan(self, held: list, oldest: int, q: int, B: int, write, evict, extras) -> WindowPlan:
        """``[sink | chosen tokens | working | call]``: the chosen tokens (at most pc_budget_frames * F, from the
        candidate blocks) at contiguous positions right before the working cache, the sink right before them."""
        candidates_held = [h for h in held if h * B not in {first for first, _ in evict}]
        sink, cand, working = self.pc_context(candidates_held, oldest, q, B)
        first = working[0] * B if working else oldest * B
        g = min(self.pc_budget_frames, len(cand) * B)  # frames' worth of chosen tokens
        sink_frames = [h * B + j for h in sink for j in range(B)]
        head = _runs(sink_frames, first - g - len(sink_frames))
        own = tuple((fr, n, fr) for fr, n, _ in _runs([h * B + j for h in working for j in range(B)], None))
        select = WindowSelect(tuple(h * B + j for h in cand for j in range(B)), self.pc_budget_frames, first - g,
                              len(head), self.reuse_cap) if cand else None
        return WindowPlan(oldest * B, q, head + own, write, evict, extras, 0, select)

    def denoise_plan(self, held: list, window: Window, B: int) -> WindowPlan:
        """The window's denoising call: ``[sink | working | window]``, sink right before the working cache."""
        oldest, q = window.blocks[0], len(window.blocks) * B
        extras = dict(window=window.index, call="denoise", blocks=window.blocks)
        if self.pc_budget_frames is not None:
            plan = self.pc_plan(held, oldest, q, B, 0, (), extras)
            plan.remember = self.recent_frames
            return plan
        sink, working = self.context(held, oldest, q, B)
        return self._plan(sink, working, oldest, q, B, 0, (), extras)

    def clean_plan(self, held: list, window: Window, B: int) -> tuple[WindowPlan, list]:
        """The clean pass of the window's oldest block: its slot written (a new block may evict the oldest non-sink
        block), and what it attends (``clean_pass_sees_anchor``). Returns the plan and the blocks held after it."""
        S, block = self.sink(B), window.blocks[0]
        after, evict = list(held), ()
        if block not in after:
            rest = [h for h in after if h * B >= S]
            if block * B >= S and len(rest) >= (self.buffer_frames - S) // B:
                evict = ((rest[0] * B, B),)
                after.remove(rest[0])
            after.append(block)
        extras = dict(window=window.index, call="clean", blocks=(block,))
        if self.clean_pass_sees_anchor and self.pc_budget_frames is not None:
            return self.pc_plan(held, block, B, B, B, evict, extras), after
        if self.clean_pass_sees_anchor:
            sink, working = self.context(held, block, B, B)
            return self._plan(sink, working, block, B, B, B, evict, extras), after
        # as released: the newest min(cap, held) frames of the buffer, the block itself included
        frames = [h * B + j for h in sorted(after) for j in range(B)][-self.attention_cap_frames:]
        frames = [fr for fr in frames if fr // B != block]
        sink = [fr for fr in frames if fr < S]
        rest = [fr for fr in frames if fr >= S]
        first = rest[0] if rest else block * B
        if self.pc_budget_frames is None:
            attend = _runs(sink, first - len(sink)) + _runs(rest, None)
        else:  # a frame an earlier selection moved is put back at its own frame
            attend = _runs(sink, first - len(sink)) + tuple((fr, n, fr) for fr, n, _ in _runs(rest, None))
        return WindowPlan(block * B, B, attend, B, evict, extras), after

    @staticmethod
    def _plan(sink, working, oldest, q, B, write, evict, extras) -> WindowPlan:
        first = working[0] * B if working else oldest * B  # the sink ends right before this frame
        sink_frames = [h * B + j for h in sink for j in range(B)]
        attend = _runs(sink_frames, first - len(sink_frames)) + \
            _runs([h * B + j for h in working for j in range(B)], None)
        return WindowPlan(oldest * B, q, attend, write, evict, extras)

    # ------------------------------------------------------------------------------------------------- loop
    def run(self, session: "RolloutSession") -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield (block b, frame b * B, x0 [batch, B, C, H, W]) right after window b + W - 1, for b = 0, 1, ..."""
        B = session.config.num_frame_per_block
        steps = session.timesteps(0)  # float32 [W], on the device
        W, T = steps.shape[0], session.noise.num_frames
        model, scheduler, kv = session.model, session.scheduler, session.kv
        held: list[int] = []                    # blocks in the cache, oldest first
        latents: dict[int, torch.Tensor] = {}   # noisy latent of every block in flight [batch, B, C, H, W]
        for window in window_schedule(None if T is None else T // B, W):
            if window.fresh is not None:
                b = window.fresh
                if b > 0:
                    session.switch(b, b * B)
                latents[b] = session.noise.frames(b * B, B).to(session.device)
            blocks, oldest = window.blocks, window.blocks[0]
            s, q = oldest * B, len(blocks) * B
            xt = torch.cat([latents.pop(b) for b in blocks], dim=1)  # [batch, q, C, H, W]
            batch = xt.shape[0]
            # step of each block, oldest first (consecutive, descending); made on the device: no host copy
            levels = torch.arange(window.step(oldest), window.step(blocks[-1]) - 1, -1, device=steps.device)
            t = steps[levels].repeat_interleave(B).expand(batch, q)  # [batch, q] float32, one value per frame
            kv.begin_window(self.denoise_plan(held, window, B))
            flow = model(xt, t, session.text_kv, kv, start_frame=s)
            x0 = scheduler.flow_to_x0(flow.flatten(0, 1), xt.flatten(0, 1).to(flow.dtype),
                                      t.flatten()).unflatten(0, (batch, q))
            for j, b in enumerate(blocks):  # oldest first: one whole-window draw per re-noised block
                step = window.step(b)
                if step + 1 < W:
                    eps = session.renoise((batch * q, *xt.shape[2:]), x0.dtype, xt.device)
                    rows = eps.unflatten(0, (batch, q))[:, j * B:(j + 1) * B].flatten(0, 1)
                    latents[b] = scheduler.add_noise(x0[:, j * B:(j + 1) * B].flatten(0, 1), rows,
                                                     steps[step + 1].expand(batch * B)).unflatten(0, (batch, B))
            x_old = x0[:, :B].clone()
            plan, held = self.clean_plan(held, window, B)
            kv.begin_window(plan)
            clean_pass(session, x_old, s)
            session.commit(s, x_old)
            if window.step(oldest) == W - 1:
                yield oldest, s, x_old
