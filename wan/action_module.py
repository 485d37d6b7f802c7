"""The action module of an interactive world model (Matrix-Game 2.0): keyboard and mouse conditioning per block.

It sits after the cross-attention of its blocks and adds two residual branches (docs/matrix_game2.md):

- mouse: every token is concatenated with its frame's window of mouse values, mapped to 16 heads and attends *over
  time* to its own position's history of frames (one row per spatial position);
- keyboard: the frame's window of key vectors is embedded into one key/value token per latent frame (independent of
  the video), which every token of the call attends to.

Latent frame ``f`` reads the ``ratio * windows_size`` pixel-frame actions ``ratio*f - ratio*windows_size`` ..
``ratio*f - 1`` (indices below 0 read pixel frame 0). Both branches use a time-only rotary embedding on the first
``mouse_qk_dim_list[0]`` dims of each head (base ``rope_theta``, adjacent pairs). Keys are cached without that
rotation, with a time position per frame; the rotation is applied when the cache is read, relative to the call's
base, exactly as the self-attention's time rotation (``pipeline.kv_cache.FrameKVCache``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn as nn

from .attention import attention


@dataclass(frozen=True)
class ActionConfig:
    """``action_config`` of a world model's ``config.json`` (released key names and defaults)."""

    blocks: tuple[int, ...] = ()
    enable_keyboard: bool = True
    enable_mouse: bool = True
    heads_num: int = 16
    hidden_size: int = 128               # keyboard embedding width
    img_hidden_size: int = 1536          # the model width
    keyboard_dim_in: int = 6
    keyboard_hidden_dim: int = 1024
    mouse_dim_in: int = 2
    mouse_hidden_dim: int = 1024
    mouse_qk_dim_list: tuple[int, ...] = (8, 28, 28)  # head dims of (time, height, width); only time rotates
    patch_size: tuple[int, ...] = (1, 2, 2)
    qk_norm: bool = True
    qkv_bias: bool = False
    rope_dim_list: tuple[int, ...] = (8, 28, 28)
    rope_theta: float = 256.0
    vae_time_compression_ratio: int = 4
    windows_size: int = 3

    def __post_init__(self):
        for name in ("blocks", "mouse_qk_dim_list", "patch_size", "rope_dim_list"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        widths = [("keyboard_hidden_dim", self.keyboard_hidden_dim)]
        widths += [("mouse_hidden_dim", self.mouse_hidden_dim)] if self.enable_mouse else []
        for name, width in widths:
            if width % self.heads_num or width // self.heads_num != self.head_dim:
                raise ValueError(f"action_config: {name}={width} must be heads_num={self.heads_num} heads of the "
                                 f"keyboard head width {self.head_dim}")
        time_dim = self.mouse_qk_dim_list[0]
        if time_dim % 2 or time_dim > self.head_dim or (self.enable_mouse and sum(self.mouse_qk_dim_list) != self.head_dim):
            raise ValueError(f"action_config: mouse_qk_dim_list={list(self.mouse_qk_dim_list)} must sum to the head "
                             f"dim {self.head_dim} with an even time part")

    @property
    def head_dim(self) -> int:
        """Channels per action-attention head (64 as released)."""
        return self.keyboard_hidden_dim // self.heads_num

    @property
    def window(self) -> int:
        """Pixel frames of actions one latent frame reads (12 as released)."""
        return self.vae_time_compression_ratio * self.windows_size

    @classmethod
    def from_dict(cls, d: dict) -> "ActionConfig":
        """Build from the ``action_config`` mapping; unknown keys are an error naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"action_config: unknown keys {unknown}; known keys are {sorted(names)}")
        return cls(**d)


class ActionRope:
    """Time-only rotary embedding of the action heads: pairs (2j, 2j+1), j < time_dim/2, angle pos * theta^(-2j/d)."""

    def __init__(self, time_dim: int, theta: float):
        self.time_dim = time_dim
        steps = torch.arange(0, time_dim, 2, dtype=torch.float32, device="cpu") / time_dim  # (CPU under a meta build)
        self.inv_freq = 1.0 / torch.pow(torch.tensor(float(theta), device="cpu"), steps)  # float32 [d/2]

    def apply(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Rotate x [rows, n, H, D] at integer positions pos [n] (float32 arithmetic, as released)."""
        d = self.time_dim
        angles = pos.to(torch.float32)[:, None] * self.inv_freq.to(pos.device)  # [n, d/2]
        cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]  # [1, n, 1, d/2]
        pairs = x[..., :d].float().unflatten(-1, (-1, 2))
        a, b = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
        return torch.cat([rotated.to(x.dtype), x[..., d:]], dim=-1)


class UnusedNorm(nn.Module):
    """RMS norm (eps 1e-6, in x's dtype); its stored ``weight`` is never applied, as released (kept: strict loading)."""

    def __init__(self, dim: int, enabled: bool):
        super().__init__()
        self.enabled = enabled
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise over the last dim (identity when qk_norm is off)."""
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-6) if self.enabled else x


def action_windows(actions: torch.Tensor, start_frame: int, num_frames: int, ratio: int, window: int) -> torch.Tensor:
    """The per-latent-frame windows of pixel-frame actions [B, N, A] -> [B, num_frames, window, A].

    Latent frame f reads pixel frames ``ratio*f - window`` .. ``ratio*f - 1``, clamped to 0 from below.
    """
    first = ratio * start_frame - window
    needed = max(0, ratio * (start_frame + num_frames - 1) - 1) + 1  # pixel frames read, from host integers
    if needed > actions.shape[1]:
        raise ValueError(f"actions cover {actions.shape[1]} pixel frames; latent frames {start_frame}.."
                         f"{start_frame + num_frames - 1} need {needed}")
    idx = torch.arange(num_frames, device=actions.device)[:, None] * ratio + torch.arange(window, device=actions.device)
    return actions[:, (idx + first).clamp(min=0)]  # [B, num_frames, window, A]


class ActionModule(nn.Module):
    """Keyboard and mouse branches of one block (released parameter names)."""

    def __init__(self, cfg: ActionConfig, dim: int):
        super().__init__()
        if cfg.img_hidden_size != dim:
            raise ValueError(f"action_config: img_hidden_size={cfg.img_hidden_size} differs from the model dim {dim}")
        self.cfg = cfg
        H, D, W, bias = cfg.heads_num, cfg.head_dim, cfg.window, cfg.qkv_bias
        self.heads = (H, D)
        self.rope = ActionRope(cfg.mouse_qk_dim_list[0], cfg.rope_theta)
        self.keyboard_embed = nn.Sequential(nn.Linear(cfg.keyboard_dim_in, cfg.hidden_size), nn.SiLU(),
                                            nn.Linear(cfg.hidden_size, cfg.hidden_size))
        if cfg.enable_mouse:
            Cm = cfg.mouse_hidden_dim
            self.mouse_mlp = nn.Sequential(nn.Linear(dim + cfg.mouse_dim_in * W, Cm), nn.GELU(approximate="tanh"),
                                           nn.Linear(Cm, Cm), nn.LayerNorm(Cm))
            self.t_qkv = nn.Linear(Cm, 3 * Cm, bias=bias)
            self.img_attn_q_norm = UnusedNorm(D, cfg.qk_norm)
            self.img_attn_k_norm = UnusedNorm(D, cfg.qk_norm)
            self.proj_mouse = nn.Linear(Cm, dim, bias=bias)
        self.key_attn_q_norm = UnusedNorm(D, cfg.qk_norm)
        self.key_attn_k_norm = UnusedNorm(D, cfg.qk_norm)
        self.mouse_attn_q = nn.Linear(dim, cfg.keyboard_hidden_dim, bias=bias)
        self.keyboard_attn_kv = nn.Linear(cfg.hidden_size * W, 2 * cfg.keyboard_hidden_dim, bias=bias)
        self.proj_keyboard = nn.Linear(cfg.keyboard_hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, num_frames: int, mouse: torch.Tensor | None, keyboard: torch.Tensor,
                pos: torch.Tensor, caches: tuple) -> torch.Tensor:
        """x [B, T*S, dim] (T frames of S tokens) -> x plus the mouse and keyboard branches.

        ``mouse`` [B, T, window, 2] and ``keyboard`` [B, T, window, K] are the frames' action windows, ``pos`` [T] the
        frames' time positions relative to the caches' base; ``caches`` = (mouse, keyboard) frame caches
        (``pipeline.kv_cache.FrameKVCache``: ``update(k, v, pos [F])`` of k/v [rows, F, H, D] -> (keys, values
        [rows, n, H, D], positions [n])), or None for a call without context.
        """
        B, S = x.shape[0], x.shape[1] // num_frames
        if self.cfg.enable_mouse:
            rows = x.unflatten(1, (num_frames, S)).transpose(1, 2)  # [B, S, T, dim]
            win = mouse.flatten(2).to(x.dtype)[:, None].expand(-1, S, -1, -1)  # [B, S, T, window*2]
            h = self.mouse_mlp(torch.cat([rows, win], dim=-1).flatten(0, 1))  # [B*S, T, Cm]
            q, k, v = self.t_qkv(h).unflatten(-1, (3, *self.heads)).unbind(-3)  # [B*S, T, H, D] each
            q = self.rope.apply(self.img_attn_q_norm(q), pos)
            k = self.img_attn_k_norm(k)
            out = self._attend(q, k, v, pos, caches[0])  # [B*S, T, H, D]
            out = out.flatten(2).unflatten(0, (B, S)).transpose(1, 2).flatten(1, 2)  # [B, T*S, Cm]
            x = x + self.proj_mouse(out)
        emb = self.keyboard_embed(keyboard.to(x.dtype))  # [B, T, window, hidden]
        k, v = self.keyboard_attn_kv(emb.flatten(2)).unflatten(-1, (2, *self.heads)).unbind(-3)  # [B, T, H, D]
        q = self.key_attn_q_norm(self.mouse_attn_q(x).unflatten(-1, self.heads))  # [B, T*S, H, D]
        q = self.rope.apply(q, pos.repeat_interleave(S))  # every token of a frame at its frame's position
        out = self._attend(q, self.key_attn_k_norm(k), v, pos, caches[1])
        return x + self.proj_keyboard(out.flatten(2))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, cache) -> torch.Tensor:
        """Attention of q over (cached frames + this call's k/v); k is rotated here (cached keys on read)."""
        if cache is None:
            return attention(q, self.rope.apply(k, pos), v)
        keys, values, key_pos = cache.update(k, v, pos)
        return attention(q, self.rope.apply(keys, key_pos), values)
