"""A released-style Self Forcing / Deep Sink rollout over the same model: the same-GPU baseline of ``bench.gpu``.

An independent, straightforward re-implementation of how the released inference loop works (written from its
description, no code taken from it), so that its speed can be measured beside the project's on the same GPU:

- KV cache: per layer, preallocated buffers ``k``, ``v`` [B, L*F, H, D] and two index counters kept as device
  tensors, ``global_end_index`` (the absolute token index where the last written chunk ends) and
  ``local_end_index`` (the end of the occupied part of the buffer). Every layer of every call reads them on the host
  (``.item()``), as released.
- Keys are stored after the full 3D RoPE at their absolute positions (all head channels rotated at once as float64
  complex numbers, cast back). When a new chunk would overflow the buffer, the oldest non-sink tokens are dropped
  by rolling the kept tail down over them (``k[:, s:s+r] = k[:, s+e:s+e+r].clone()``) and the chunk is written
  after the tail; the later calls of the same chunk (same start, ``current_end == global_end_index``) overwrite the
  same slots.
- Deep Sink: when the window rolls, the stored sink keys are re-rotated in place by the shift of their time
  position: sink frame j moves to ``f - (L - B) - gap + j`` (gap B as released: the sink at ``[f - L, f - L + S)``).
- Cross-attention keys/values are computed on a video's first call and kept (a cross-attention cache); the text
  embedding MLP runs on every call.
- Per chunk: one call per denoising step, re-noising in between from the same noise source in the same order as
  the project's loop, then the clean pass at ``context_noise`` that writes the chunk's final keys. The scheduler
  tables live on the host and are moved to the device on every conversion, as released.

It uses the same weights (the modules of the project's ``CausalWanModel``, called one by one), the same attention
function (``wan.attention.attention``: SDPA without a flash package) and the same inputs; its latents equal the
project's within float rounding (``tests/test_release_style.py``), so the FPS ratio of the two compares equal work.
Modes: ``self_forcing`` and ``deep_sink`` (any ``SelfForcingWindow`` / ``DeepSink`` policy); Participative
Compression is not re-implemented.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch

from pipeline.policies import DeepSink, ParticipativeCompression, SelfForcingWindow
from wan.attention import attention


RELEASED_ROPE_ROWS = 1024  # rows of the released code's RoPE table (its length limit), not a geometry value


def _sinusoidal(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's 1D timestep embedding in float64: cat(cos, sin) of ``t * 10000^(-i/half)``. t [N] -> [N, dim]."""
    half = dim // 2
    pos = t.to(torch.float64)
    sinusoid = torch.outer(pos, torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half))
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)


def _rope_table(positions: int, dim: int, theta: float) -> torch.Tensor:
    """Unit complex numbers [positions, dim/2] (complex128) of one RoPE axis of ``dim`` channels."""
    inv = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.outer(torch.arange(positions, dtype=torch.float64), inv)
    return torch.polar(torch.ones_like(angles), angles)


class ReleaseLayerCache:
    """One layer's released-style cache: k, v [B, capacity, H, D] and the two index counters (device tensors)."""

    def __init__(self, batch: int, capacity: int, heads: int, head_dim: int, dtype, device):
        self.k = torch.zeros(batch, capacity, heads, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.reset()

    def reset(self) -> None:
        """A new video: both counters back to 0 (the buffers are overwritten as they fill)."""
        device = self.k.device
        self.global_end_index = torch.tensor([0], dtype=torch.long, device=device)
        self.local_end_index = torch.tensor([0], dtype=torch.long, device=device)
        self.sink_start = 0  # time position of sink frame 0 (host; moves with the window in Deep Sink)


class ReleaseStyleRollout:
    """``frames(inputs)`` / ``generate(...)`` like ``pipeline.rollout.Rollout``, computed the released way."""

    def __init__(self, model, config, policy):
        if isinstance(policy, ParticipativeCompression) or not isinstance(policy, SelfForcingWindow):
            raise NotImplementedError(f"the released-style baseline covers self_forcing and deep_sink, not "
                                      f"{policy.name!r}")
        policy.validate(config.num_frame_per_block)
        if config.independent_first_frame:
            raise NotImplementedError("independent_first_frame is not supported")
        self.model, self.config, self.policy = model, config, policy
        self.deep_sink = isinstance(policy, DeepSink)
        cfg = model.config
        # the flow-matching tables, float32 on the host (shifted sigmas over num_train_timesteps)
        n, shift = config.num_train_timesteps, config.timestep_shift
        sigmas = torch.linspace(1.0, 0.0, n + 1)[:-1]
        self.sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        self.timesteps = self.sigmas * n
        self.step_list = self._warp(config.denoising_step_list)
        first = config.denoising_step_list_first_chunk
        self.first_step_list = self.step_list if first is None else self._warp(first)
        # RoPE tables (time, height, width), full complex128 rows as in Wan's rope_params; grown when needed
        d = cfg.head_dim
        self.rope_dims = (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))
        self.theta = cfg.rope_theta
        self.freqs = [_rope_table(RELEASED_ROPE_ROWS, dim, self.theta).to(model.device) for dim in self.rope_dims]
        self.caches: list[ReleaseLayerCache] | None = None
        self.crossattn: list | None = None
        self.committed_tokens = 0  # host mirror of layer 0's local_end_index after a block (bench labels)

    def _warp(self, steps) -> torch.Tensor:
        """Denoising steps -> scheduler timesteps (``timesteps[1000 - step]``, 0 -> 0), float32 on the host."""
        steps = torch.tensor([int(s) for s in steps], dtype=torch.long)
        if not self.config.warp_denoising_step:
            return steps.float()
        table = torch.cat([self.timesteps, torch.zeros(1)])
        return table[self.config.num_train_timesteps - steps]

    # ------------------------------------------------------------------------------------------------ scheduler

    def _flow_to_x0(self, flow: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 = xt - sigma(t) flow in float64 (tables moved to the device on every call). [N, ...], t [N]."""
        dtype = flow.dtype
        flow, xt, sigmas, timesteps = (x.double().to(flow.device) for x in (flow, xt, self.sigmas, self.timesteps))
        idx = torch.argmin((timesteps.unsqueeze(0) - t.unsqueeze(1)).abs(), dim=1)
        sigma = sigmas[idx].reshape(-1, *([1] * (flow.dim() - 1)))
        return (xt - sigma * flow).to(dtype)

    def _add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(1 - sigma) x0 + sigma noise with float32 sigma. x0/noise [N, ...], t [N]."""
        sigmas, timesteps = self.sigmas.to(noise.device), self.timesteps.to(noise.device)
        idx = torch.argmin((timesteps.unsqueeze(0) - t.unsqueeze(1)).abs(), dim=1)
        sigma = sigmas[idx].reshape(-1, *([1] * (x0.dim() - 1)))
        return ((1 - sigma) * x0 + sigma * noise).type_as(noise)

    # ------------------------------------------------------------------------------------------------ the DiT

    def _call_freqs(self, start_frame: int, frames: int, gh: int, gw: int) -> torch.Tensor:
        """Complex128 [frames*gh*gw, 1, D/2]: every token's full 3D rotation at absolute positions."""
        ft, fh, fw = self.freqs
        if start_frame + frames > ft.shape[0]:  # past the released table's rows: grow it instead of failing
            rows = 2 ** math.ceil(math.log2(start_frame + frames))
            self.freqs[0] = ft = _rope_table(rows, self.rope_dims[0], self.theta).to(ft.device)
        f = torch.cat([ft[start_frame:start_frame + frames].view(frames, 1, 1, -1).expand(frames, gh, gw, -1),
                       fh[:gh].view(1, gh, 1, -1).expand(frames, gh, gw, -1),
                       fw[:gw].view(1, 1, gw, -1).expand(frames, gh, gw, -1)], dim=-1)
        return f.reshape(frames * gh * gw, 1, -1)

    @staticmethod
    def _rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        """x [B, L, H, D] rotated by freqs [L, 1, D/2] in float64 -> float64 [B, L, H, D]."""
        xc = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * freqs).flatten(3)

    def _rotate_time(self, keys: torch.Tensor, shift: int) -> torch.Tensor:
        """Stored keys [B, n, H, D] moved by ``shift`` time positions (their time channels rotated again)."""
        pt = self.rope_dims[0] // 2
        inv = 1.0 / torch.pow(self.theta, torch.arange(0, self.rope_dims[0], 2, dtype=torch.float64,
                                                       device=keys.device) / self.rope_dims[0])
        rot = torch.polar(torch.ones_like(inv), shift * inv)  # [pt]
        out = keys.clone()
        seg = torch.view_as_complex(keys[..., :2 * pt].to(torch.float64).reshape(*keys.shape[:-1], pt, 2)) * rot
        out[..., :2 * pt] = torch.view_as_real(seg).flatten(-2).to(keys.dtype)
        return out

    def _self_attention(self, layer: int, sa, x: torch.Tensor, freqs: torch.Tensor, current_start: int,
                        tokens_per_frame: int) -> torch.Tensor:
        """The released cache update and attention of one layer. x [B, L, dim] -> [B, L, dim]."""
        heads = (sa.num_heads, sa.head_dim)
        q = sa.norm_q(sa.q(x)).unflatten(-1, heads)
        k = sa.norm_k(sa.k(x)).unflatten(-1, heads)
        v = sa.v(x).unflatten(-1, heads)
        roped_q = self._rope(q, freqs).type_as(v)
        roped_k = self._rope(k, freqs).type_as(v)
        cache = self.caches[layer]
        new = roped_q.shape[1]
        current_end = current_start + new
        capacity = cache.k.shape[1]
        sink = self.policy.sink_size * tokens_per_frame
        if current_end > cache.global_end_index.item() and new + cache.local_end_index.item() > capacity:
            evicted = new + cache.local_end_index.item() - capacity
            rolled = cache.local_end_index.item() - evicted - sink
            cache.k[:, sink:sink + rolled] = cache.k[:, sink + evicted:sink + evicted + rolled].clone()
            cache.v[:, sink:sink + rolled] = cache.v[:, sink + evicted:sink + evicted + rolled].clone()
            local_end = cache.local_end_index.item() + current_end - cache.global_end_index.item() - evicted
            if self.deep_sink and sink:
                self._move_sink(cache, current_start // tokens_per_frame, (capacity - new) // tokens_per_frame,
                                new // tokens_per_frame, sink)
        else:
            local_end = cache.local_end_index.item() + current_end - cache.global_end_index.item()
        local_start = local_end - new
        cache.k[:, local_start:local_end] = roped_k
        cache.v[:, local_start:local_end] = v
        lo = max(0, local_end - capacity)  # max_attention_size: the window
        out = attention(roped_q, cache.k[:, lo:local_end], cache.v[:, lo:local_end])
        cache.global_end_index.fill_(current_end)
        cache.local_end_index.fill_(local_end)
        if layer == 0:
            self.committed_tokens = local_end
        return sa.o(out.flatten(2))

    def _move_sink(self, cache: ReleaseLayerCache, start_frame: int, kept_frames: int, chunk_frames: int,
                   sink: int) -> None:
        """Deep Sink: the sink follows the window, ``gap`` positions before the oldest kept frame."""
        new_start = start_frame - kept_frames - self.policy.gap(chunk_frames)
        shift = new_start - cache.sink_start
        if shift:
            cache.k[:, :sink] = self._rotate_time(cache.k[:, :sink], shift)
            cache.sink_start = new_start

    def _cross_attention(self, layer: int, ca, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Text cross-attention with its keys/values computed on the video's first call. x [B, L, dim]."""
        heads = (ca.num_heads, ca.head_dim)
        q = ca.norm_q(ca.q(x)).unflatten(-1, heads)
        if self.crossattn[layer] is None:
            self.crossattn[layer] = (ca.norm_k(ca.k(context)).unflatten(-1, heads), ca.v(context).unflatten(-1, heads))
        return ca.o(attention(q, *self.crossattn[layer]).flatten(2))

    def _block(self, layer: int, blk, x, e0, context, freqs, current_start: int, frames: int, F: int):
        """One transformer block: modulated self-attention, cross-attention, modulated FFN."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (blk.modulation.unsqueeze(1) + e0).chunk(6, dim=2)
        y = (blk.norm1(x).unflatten(1, (frames, F)) * (1 + scale1) + shift1).flatten(1, 2)
        y = self._self_attention(layer, blk.self_attn, y, freqs, current_start, F)
        x = x + (y.unflatten(1, (frames, F)) * gate1).flatten(1, 2)
        x = x + self._cross_attention(layer, blk.cross_attn, blk.norm3(x), context)
        y = blk.ffn((blk.norm2(x).unflatten(1, (frames, F)) * (1 + scale2) + shift2).flatten(1, 2))
        return x + (y.unflatten(1, (frames, F)) * gate2).flatten(1, 2)

    def _forward(self, x: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor,
                 current_start: int) -> torch.Tensor:
        """Flow [B, n, C, H, W] of the chunk x [B, n, C, H, W] at timesteps t [B, n]; ``current_start`` in tokens."""
        model, cfg = self.model, self.model.config
        B, T = x.shape[:2]
        h = model.patch_embedding(x.permute(0, 2, 1, 3, 4).to(model.dtype))  # [B, dim, T, gh, gw]
        gh, gw = h.shape[-2:]
        F = gh * gw
        h = h.flatten(2).transpose(1, 2)  # [B, T*F, dim]
        e = model.time_embedding(_sinusoidal(cfg.freq_dim, t.flatten()).type_as(h))  # [B*T, dim]
        e0 = model.time_projection(e).unflatten(1, (6, cfg.dim)).unflatten(0, (B, T))  # [B, T, 6, dim]
        context = model.text_embedding(prompt_embeds.to(model.dtype))  # every call, as released
        freqs = self._call_freqs(current_start // F, T, gh, gw)
        for layer, blk in enumerate(model.blocks):
            h = self._block(layer, blk, h, e0, context, freqs, current_start, T, F)
        head = model.head
        shift, scale = (head.modulation.unsqueeze(1) + e.unflatten(0, (B, T)).unsqueeze(2)).chunk(2, dim=2)
        out = head.head(head.norm(h).unflatten(1, (T, F)) * (1 + scale) + shift)  # [B, T, F, C*pt*ph*pw]
        pt, ph, pw = cfg.patch_size
        u = out.reshape(B, T, gh, gw, pt, ph, pw, cfg.out_dim)
        u = torch.einsum("bfhwpqrc->bcfphqwr", u).reshape(B, cfg.out_dim, T * pt, gh * ph, gw * pw)
        return u.permute(0, 2, 1, 3, 4)

    # ------------------------------------------------------------------------------------------------ the loop

    def _reset(self, batch: int, tokens_per_frame: int) -> None:
        """Caches allocated on the first video (and when the batch or resolution changes), counters reset."""
        cfg, model = self.model.config, self.model
        capacity = self.policy.capacity_frames(self.config.num_frame_per_block) * tokens_per_frame
        if (self.caches is None or self.caches[0].k.shape[:2] != (batch, capacity)
                or self.caches[0].k.dtype != model.dtype):
            self.caches = None
            self.caches = [ReleaseLayerCache(batch, capacity, cfg.num_heads, cfg.head_dim, model.dtype, model.device)
                           for _ in range(cfg.num_layers)]
        for cache in self.caches:
            cache.reset()
        self.crossattn = [None] * cfg.num_layers
        self.committed_tokens = 0

    @torch.no_grad()
    def frames(self, inputs) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield (block index, first frame, x0 [B, n, C, H, W]) per chunk (``RolloutInputs`` with tensor noise)."""
        if not isinstance(inputs.noise, torch.Tensor):
            raise NotImplementedError("the released-style baseline takes the initial noise as one tensor")
        if inputs.prompt_switch is not None or inputs.image_latent is not None:
            raise NotImplementedError("the released-style baseline has no prompt switches or image input")
        noise, renoise, device = inputs.noise, inputs.renoise, self.model.device
        if isinstance(renoise, torch.Generator):
            gen = renoise
            renoise = lambda shape, dtype, dev: torch.randn(shape, generator=gen, dtype=dtype, device=dev)  # noqa: E731
        B, T, C, H, W = noise.shape
        n = self.config.num_frame_per_block
        if T % n:
            raise ValueError(f"{T} latent frames is not a multiple of num_frame_per_block={n}")
        F = self.model.config.tokens_per_frame(H, W)
        self._reset(B, F)
        prompt = inputs.prompt_embeds.to(device)
        for block in range(T // n):
            f = block * n
            xt = noise[:, f:f + n].to(device)
            steps = self.first_step_list if block == 0 else self.step_list
            for j, step in enumerate(steps):
                timestep = torch.ones([B, n], device=device, dtype=torch.int64) * step  # float32 [B, n]
                flow = self._forward(xt, timestep, prompt, f * F)
                x0 = self._flow_to_x0(flow.flatten(0, 1), xt.flatten(0, 1), timestep.flatten(0, 1)).unflatten(0, (B, n))
                if j + 1 < len(steps):
                    eps = renoise((B * n, C, H, W), x0.dtype, device)
                    nxt = steps[j + 1] * torch.ones([B * n], device=device, dtype=torch.long)
                    xt = self._add_noise(x0.flatten(0, 1), eps, nxt).unflatten(0, (B, n))
            clean_t = torch.ones_like(timestep) * self.config.context_noise
            self._forward(x0, clean_t, prompt, f * F)
            yield block, f, x0

    def generate(self, prompt_embeds: torch.Tensor, noise: torch.Tensor, renoise) -> torch.Tensor:
        """The whole video's latents [B, T, C, H, W]."""
        from pipeline.rollout import RolloutInputs
        out = torch.empty(noise.shape, dtype=self.model.dtype, device=self.model.device)
        for _, f, x0 in self.frames(RolloutInputs(prompt_embeds, noise, renoise)):
            out[:, f:f + x0.shape[1]] = x0
        return out
