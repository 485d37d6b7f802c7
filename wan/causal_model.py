"""The causal Wan2.1 DiT (Self Forcing generator) with the original Wan parameter names.

The model never decides what is cached: self-attention hands its keys and values to a cache object
(``pipeline.kv_cache.KVCache``) and attends over what the cache returns.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn as nn

from .attention import attention
from .config import WanConfig
from .rope import Rotation, WanRope
from .state_dict import compare_state_dicts

logger = logging.getLogger(__name__)


class SelfAttentionCache(Protocol):
    """What the model needs from a KV cache during one call."""

    base: int  # time index that maps to RoPE position 0 in this call (re-basing)

    def update(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
               rotation: Rotation) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this call's k/v and return (time-rotated keys, values) to attend over.

        ``rotation`` is the time rotation of this call's tokens relative to ``base`` (built once per call).
        """
        ...


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: cat(cos, sin) of ``t * 10000^(-i/half)`` in float64. t [N] -> [N, dim]."""
    half = dim // 2
    pos = t.to(torch.float64)
    inv = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(pos, inv)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class RMSNorm(nn.Module):
    """Wan RMSNorm over the last dim, computed in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise then scale."""
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back (Wan's ``WanLayerNorm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise in float32 (affine parameters too)."""
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return nn.functional.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


@dataclass
class CallGeometry:
    """Per-call layout shared by all blocks."""

    num_frames: int              # latent frames in this call
    tokens_per_frame: int        # F
    positions: torch.Tensor      # [num_frames * F] absolute time index of every query token
    spatial: Rotation            # height/width rotation of the call's tokens
    query_time: Rotation         # time rotation of the call's queries, relative to the cache's base


class AttentionProjections(nn.Module):
    """The q/k/v/o projections and QK RMSNorms of a Wan attention layer (original parameter names)."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(cfg.dim, cfg.dim)
        self.v = nn.Linear(cfg.dim, cfg.dim)
        self.o = nn.Linear(cfg.dim, cfg.dim)
        self.norm_q = RMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()


class CausalSelfAttention(AttentionProjections):
    """Self-attention over (cached context + this chunk), with QK RMSNorm and 3D RoPE."""

    def __init__(self, cfg: WanConfig, rope: WanRope):
        super().__init__(cfg)
        self.rope = rope

    def project(self, x: torch.Tensor, geo: CallGeometry) -> tuple[torch.Tensor, ...]:
        """Query-side work (no cache): x [B, L, dim] -> (q, k spatially rotated, v) [B, L, H, D]."""
        heads = (self.num_heads, self.head_dim)
        q = self.norm_q(self.q(x)).unflatten(-1, heads)  # [B, L, H, D]
        k = self.norm_k(self.k(x)).unflatten(-1, heads)
        v = self.v(x).unflatten(-1, heads)
        q = geo.spatial.apply(q)
        k = geo.spatial.apply(k)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geo: CallGeometry, layer: int,
               cache: SelfAttentionCache | None) -> torch.Tensor:
        """Cache update and attention (the cache-length-dependent part): q/k/v [B, L, H, D] -> [B, L, H, D]."""
        if cache is None:
            keys, values = geo.query_time.apply(k), v
        else:
            keys, values = cache.update(layer, q, k, v, geo.positions, geo.query_time)
        return attention(geo.query_time.apply(q), keys, values)

    def forward(self, x: torch.Tensor, geo: CallGeometry, layer: int,
                cache: SelfAttentionCache | None) -> torch.Tensor:
        """x [B, L, dim] -> [B, L, dim]."""
        out = self.attend(*self.project(x, geo), geo, layer, cache)
        return self.o(out.flatten(2))


class CrossAttention(AttentionProjections):
    """Text cross-attention; its keys/values depend only on the prompt (see ``project_text``)."""

    def project_text(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context [B, text_len, dim] -> k, v [B, text_len, H, D] (computed once per prompt)."""
        heads = (self.num_heads, self.head_dim)
        return self.norm_k(self.k(context)).unflatten(-1, heads), self.v(context).unflatten(-1, heads)

    def forward(self, x: torch.Tensor, text_kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x [B, L, dim] -> [B, L, dim]."""
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, self.head_dim))
        return self.o(attention(q, *text_kv).flatten(2))


class CausalWanBlock(nn.Module):
    """One Wan transformer block with per-frame adaptive LayerNorm modulation."""

    def __init__(self, cfg: WanConfig, rope: WanRope):
        super().__init__()
        self.norm1 = LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.self_attn = CausalSelfAttention(cfg, rope)
        self.norm3 = LayerNorm(cfg.dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / math.sqrt(cfg.dim))

    def pre_attention(self, x: torch.Tensor, e: torch.Tensor, geo: CallGeometry) -> tuple[torch.Tensor, ...]:
        """Query-side work before the cache: modulation and q/k/v. x [B, T*F, dim], e [B, T, 6, dim] ->
        (q, k, v [B, T*F, H, D], gate1, shift2, scale2, gate2 [B, T, 1, dim])."""
        frames = (geo.num_frames, geo.tokens_per_frame)
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.unsqueeze(1) + e).chunk(6, dim=2)  # [B,T,1,dim]
        h = (self.norm1(x).unflatten(1, frames) * (1 + scale1) + shift1).flatten(1, 2)  # [B, T*F, dim]
        return (*self.self_attn.project(h, geo), gate1, shift2, scale2, gate2)

    def post_attention(self, x: torch.Tensor, out: torch.Tensor, geo: CallGeometry,
                       text_kv: tuple[torch.Tensor, torch.Tensor], gate1: torch.Tensor, shift2: torch.Tensor,
                       scale2: torch.Tensor, gate2: torch.Tensor) -> torch.Tensor:
        """Query-side work after attention: output projection, cross-attention, FFN. out [B, T*F, H, D] -> x."""
        frames = (geo.num_frames, geo.tokens_per_frame)
        x = x + (self.self_attn.o(out.flatten(2)).unflatten(1, frames) * gate1).flatten(1, 2)
        x = self.condition(x, geo, text_kv)
        h = (self.norm2(x).unflatten(1, frames) * (1 + scale2) + shift2).flatten(1, 2)
        return x + (self.ffn(h).unflatten(1, frames) * gate2).flatten(1, 2)

    def condition(self, x: torch.Tensor, geo: CallGeometry, text_kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The conditioning step after self-attention: the text cross-attention residual."""
        return x + self.cross_attn(self.norm3(x), text_kv)

    def forward(self, x: torch.Tensor, e: torch.Tensor, geo: CallGeometry, layer: int,
                text_kv: tuple[torch.Tensor, torch.Tensor], cache: SelfAttentionCache | None) -> torch.Tensor:
        """x [B, T*F, dim], e [B, T, 6, dim] -> [B, T*F, dim].

        Split in three so that the query-side parts (static shapes per chunk) can be compiled
        (``CausalWanModel.compile_blocks``) while the cache update and attention, whose key length varies, stay eager.
        """
        q, k, v, *mods = self.pre_attention(x, e, geo)
        out = self.self_attn.attend(q, k, v, geo, layer, cache)  # [B, T*F, H, D]
        return self.post_attention(x, out, geo, text_kv, *mods)


class Head(nn.Module):
    """Output head: per-frame modulated LayerNorm then a linear map to patch pixels."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / math.sqrt(cfg.dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
        """x [B, T*F, dim], e [B, T, dim] -> [B, T*F, out_dim * prod(patch)]."""
        shift, scale = (self.modulation.unsqueeze(1) + e.unsqueeze(2)).chunk(2, dim=2)  # [B, T, 1, dim]
        h = self.norm(x).unflatten(1, (e.shape[1], tokens_per_frame))
        return self.head((h * (1 + scale) + shift).flatten(1, 2))


class CausalWanModel(nn.Module):
    """Wan2.1 text-to-video DiT run chunk by chunk; parameter names match the released checkpoints."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.config = cfg
        self.rope = WanRope(cfg.head_dim, cfg.rope_theta)
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.build_context_embedding(cfg)
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList([self.build_block(cfg, i) for i in range(cfg.num_layers)])
        self.head = Head(cfg)
        self._spatial_angles: dict[tuple, torch.Tensor] = {}
        self.compiled: dict | None = None  # set by compile_blocks

    def build_context_embedding(self, cfg: WanConfig) -> None:
        """The embedding of the conditioning context: the text projection (``text_embedding``)."""
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))

    def build_block(self, cfg: WanConfig, index: int) -> nn.Module:
        """Block ``index`` of the stack."""
        return CausalWanBlock(cfg, self.rope)

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype."""
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        """Parameter device."""
        return self.patch_embedding.weight.device

    def compile_blocks(self, backend: str = "inductor", mode: str | None = None) -> int:
        """torch.compile every block's query-side parts (``pre_attention``, ``post_attention``); returns blocks done.

        Their shapes depend only on the chunk (batch, frames per chunk, tokens per frame), so they are compiled with
        static shapes (``dynamic=False``); the cache update and attention, whose key length changes as the cache
        fills, stay eager (the flash/SDPA kernel is one call anyway). All blocks share the same code, so one graph
        per part and chunk shape is compiled and reused by every block. Results equal eager within float rounding.
        """
        for blk in self.blocks:
            blk.pre_attention = torch.compile(blk.pre_attention, backend=backend, mode=mode, dynamic=False)
            blk.post_attention = torch.compile(blk.post_attention, backend=backend, mode=mode, dynamic=False)
        self.compiled = {"backend": backend, "mode": mode, "blocks": len(self.blocks)}
        logger.info("torch.compile (%s, mode=%s) of %d blocks' query-side parts", backend, mode, len(self.blocks))
        return len(self.blocks)

    def encode_context(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """What the rollout passes to every call: the per-layer cross-attention (k, v) of the prompt embeddings."""
        return self.encode_text(context)

    def encode_text(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Prompt embeddings [B, text_len, text_dim] -> per-layer cross-attention (k, v), computed once per prompt."""
        if context.shape[1] != self.config.text_len:
            raise ValueError(f"prompt embeddings have {context.shape[1]} tokens; the model expects "
                             f"text_len={self.config.text_len} (pad with zeros)")
        ctx = self.text_embedding(context.to(self.dtype))
        return [blk.cross_attn.project_text(ctx) for blk in self.blocks]

    def _geometry(self, num_frames: int, grid_h: int, grid_w: int, start_frame: int,
                  frame_positions: torch.Tensor | None, base: int) -> CallGeometry:
        key = (grid_h, grid_w, str(self.device))
        if key not in self._spatial_angles:
            self._spatial_angles[key] = self.rope.spatial_angles(grid_h, grid_w, self.device)
        F = grid_h * grid_w
        if frame_positions is None:
            frame_positions = torch.arange(start_frame, start_frame + num_frames, device=self.device)
        pos = frame_positions.to(self.device, torch.long).repeat_interleave(F)
        spatial = self.rope.spatial_rotation(self._spatial_angles[key], num_frames, self.dtype)
        query_time = self.rope.time_rotation(pos - base, self.dtype)
        if self.compiled is not None:  # compiled blocks rotate in real arithmetic (no complex kernels there)
            spatial.prepare_real()
            query_time.prepare_real()
        return CallGeometry(num_frames, F, pos, spatial, query_time)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text_kv: list[tuple[torch.Tensor, torch.Tensor]],
                cache: SelfAttentionCache | None = None, start_frame: int = 0,
                frame_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Flow prediction for one chunk.

        x [B, T, C, H, W] (latent frames of the chunk), t [B, T] per-frame float timesteps,
        text_kv from ``encode_text``; ``start_frame`` is the absolute index of the chunk's first frame
        (``frame_positions`` [T] overrides it with an explicit time index per frame).
        Returns flow [B, T, C, H, W].
        """
        B, T, _, H, W = x.shape
        pt, ph, pw = self.config.patch_size
        if pt != 1:
            raise NotImplementedError("the causal model needs temporal patch size 1")
        h = self.patch_embedding(x.permute(0, 2, 1, 3, 4).to(self.dtype))  # [B, dim, T, H/ph, W/pw]
        gh, gw = h.shape[-2:]
        h = h.flatten(2).transpose(1, 2)  # [B, T*F, dim]
        geo = self._geometry(T, gh, gw, start_frame, frame_positions, cache.base if cache is not None else 0)

        e = self.time_embedding(sinusoidal_embedding(self.config.freq_dim, t.flatten()).to(h.dtype))  # [B*T, dim]
        e6 = self.time_projection(e).unflatten(1, (6, self.config.dim)).unflatten(0, (B, T))  # [B, T, 6, dim]
        for i, block in enumerate(self.blocks):
            h = block(h, e6, geo, i, text_kv[i], cache)
        out = self.head(h, e.unflatten(0, (B, T)), geo.tokens_per_frame)  # [B, T*F, C*pt*ph*pw]
        return self._unpatchify(out, T, gh, gw)

    def _unpatchify(self, x: torch.Tensor, T: int, gh: int, gw: int) -> torch.Tensor:
        """[B, T*gh*gw, C*ph*pw] -> [B, T, C, gh*ph, gw*pw]."""
        _, ph, pw = self.config.patch_size
        C = self.config.out_dim
        x = x.view(x.shape[0], T, gh, gw, 1, ph, pw, C)
        x = torch.einsum("bthwpqrc->btcphqwr", x)
        return x.reshape(x.shape[0], T, C, gh * ph, gw * pw)

    def load_state_dict_strict(self, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load with every key and shape checked; errors name the first missing/unexpected/mismatched keys."""
        diff = compare_state_dicts(self.state_dict(), state_dict)
        missing, unexpected, bad = diff.missing, diff.unexpected, diff.wrong_shape
        if missing or unexpected:
            raise KeyError(f"{source}: {len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected "
                           f"key(s) {unexpected[:5]} for CausalWanModel(dim={self.config.dim}, "
                           f"layers={self.config.num_layers}); the checkpoint does not match the model config")
        if bad:
            shown = ", ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in bad[:3])
            raise ValueError(f"{source}: {len(bad)} tensor(s) have the wrong shape ({shown}); the checkpoint was made "
                             f"for a different model size than config dim={self.config.dim}, "
                             f"layers={self.config.num_layers}")
        self.load_state_dict(state_dict, strict=True, assign=any(p.is_meta for p in self.parameters()))
