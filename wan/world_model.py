"""The image-conditioned causal world model (Matrix-Game 2.0): a Wan DiT with an action module, no text.

Differences from the text model (docs/matrix_game2.md): the input is noise (16 channels) + mask (4) + the VAE latent
of the conditioning image (16), concatenated per frame; the cross-attention attends the CLIP tokens of the image,
projected by ``img_emb``; blocks listed in ``action_config.blocks`` run an ``ActionModule`` after the
cross-attention. The geometry comes from ``config.json`` and the latent size (880 tokens per frame at 44x80).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .action_module import ActionConfig, ActionModule, action_windows
from .causal_model import CallGeometry, CausalWanBlock, CausalWanModel
from .config import WanConfig


@dataclass(frozen=True)
class WorldModelConfig:
    """A world model's ``config.json``: the Wan architecture, ``action_config`` and the trained window."""

    wan: WanConfig
    action: ActionConfig
    local_attn_size: int = -1            # the trained attention window in latent frames (-1: global)
    sink_size: int = 0
    clip_dim: int = 1280                 # width of the image tokens (CLIP ViT-H/14); our key, absent as released

    @classmethod
    def from_dict(cls, d: dict) -> "WorldModelConfig":
        """Split a released ``config.json`` dict into its parts (``model_type`` must be ``i2v``)."""
        d = dict(d)
        if d.get("model_type") != "i2v":
            raise ValueError(f"config: model_type={d.get('model_type')!r}; a world model has model_type 'i2v'")
        action = ActionConfig.from_dict(d.pop("action_config", None) or {})
        d.pop("inject_sample_info", None)  # released, unused
        extra = {k: d.pop(k) for k in ("local_attn_size", "sink_size", "clip_dim") if k in d}
        return cls(WanConfig.from_dict(d), action, **extra)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "WorldModelConfig":
        """Read a world model's ``config.json``; ValueError naming the file."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            if not isinstance(data, dict):
                raise ValueError("it does not hold a JSON object")
            return cls.from_dict(data)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: {exc}") from None


class ImageProjection(nn.Module):
    """``img_emb``: LayerNorm, Linear, GELU, Linear, LayerNorm from CLIP width to the model width."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, dim),
                                  nn.LayerNorm(dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, n, in_dim] -> [B, n, dim]."""
        return self.proj(tokens)


@dataclass
class WorldConditioning:
    """One video's conditioning: CLIP tokens, per-frame mask + image latent, and the actions (``ActionTrack``)."""

    image_tokens: torch.Tensor           # [B, 257, clip_dim]
    frames: torch.Tensor                 # [B, T_c, 20, h, w]: mask (4 channels) then the image latent (16)
    actions: "object"                    # .upto(frames) -> (mouse [B, N, 2] | None, keyboard [B, N, K])

    def __len__(self) -> int:
        """The batch size."""
        return self.image_tokens.shape[0]

    def to(self, device) -> "WorldConditioning":
        """The tensors on ``device``."""
        return WorldConditioning(self.image_tokens.to(device), self.frames.to(device), self.actions)

    def frame_inputs(self, start: int, num: int) -> torch.Tensor:
        """Mask + latent of frames [start, start + num) -> [B, num, 20, h, w]; past the encoded length the last
        encoded frame is repeated (the grey frames' encodings converge to one frame, docs/matrix_game2.md)."""
        idx = torch.arange(start, start + num, device=self.frames.device).clamp(max=self.frames.shape[1] - 1)
        return self.frames[:, idx]


@dataclass
class WorldContext:
    """What every DiT call of a world-model rollout reads: per-layer cross-attention k/v and the conditioning."""

    cross_kv: list
    conditioning: WorldConditioning


class WorldBlock(CausalWanBlock):
    """A Wan block with the image cross-attention and, in the listed blocks, the action module after it."""

    def __init__(self, cfg: WanConfig, rope, action: ActionConfig | None):
        super().__init__(cfg, rope)
        self.action_model = ActionModule(action, cfg.dim) if action is not None else None

    def condition(self, x: torch.Tensor, geo: CallGeometry, inputs: tuple) -> torch.Tensor:
        """Cross-attention over the image tokens, then the action branches (in the listed blocks).

        ``inputs`` = (cross-attention (k, v), action inputs: (mouse, keyboard, pos, caches), None without the module).
        """
        cross_kv, action = inputs
        x = x + self.cross_attn(self.norm3(x), cross_kv)
        return x if action is None else self.action_model(x, geo.num_frames, *action)


class CausalWorldModel(CausalWanModel):
    """The world model run chunk by chunk; parameter names match the released safetensors (without ``model.``)."""

    def __init__(self, cfg: WorldModelConfig):
        self.world = cfg
        super().__init__(cfg.wan)
        if cfg.action.enable_mouse and cfg.action.mouse_dim_in != 2:
            raise ValueError("action_config: mouse_dim_in must be 2 (pitch, yaw)")

    def build_context_embedding(self, cfg: WanConfig) -> None:
        """``img_emb``: the projection of the CLIP image tokens (no text embedding)."""
        self.img_emb = ImageProjection(self.world.clip_dim, cfg.dim)

    def build_block(self, cfg: WanConfig, index: int) -> nn.Module:
        """A world block; the action module only in ``action_config.blocks``."""
        action = self.world.action if index in self.world.action.blocks else None
        return WorldBlock(cfg, self.rope, action)

    def compile_blocks(self, backend: str = "inductor", mode: str | None = None) -> int:
        """Not available: the action module's caches sit inside the blocks' query-side parts."""
        raise NotImplementedError("--compile is not available for the world model (its action branches update "
                                  "their caches inside the blocks); run without --compile")

    def encode_context(self, conditioning: WorldConditioning) -> WorldContext:
        """The image tokens projected once and turned into per-layer cross-attention (k, v)."""
        ctx = self.img_emb(conditioning.image_tokens.to(self.dtype))
        return WorldContext([blk.cross_attn.project_text(ctx) for blk in self.blocks], conditioning)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: WorldContext, cache=None, start_frame: int = 0,
                frame_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Flow for one chunk x [B, T, 16, h, w] at per-frame timesteps t [B, T]; ``context`` from
        ``encode_context``. Frame inputs and action windows are taken for frames start_frame .. start_frame+T-1."""
        T, a, cond = x.shape[1], self.world.action, context.conditioning
        x = torch.cat([x, cond.frame_inputs(start_frame, T).to(x.dtype)], dim=2)  # [B, T, 36, h, w]
        frames = torch.arange(start_frame, start_frame + T, device=self.device) if frame_positions is None else \
            frame_positions.to(self.device)
        pos = frames - (cache.base if cache is not None else 0)  # [T] frame positions relative to the cache base
        # [B, T, window, 2] | None, [B, T, window, K], from [B, N, 2] | None, [B, N, K] on the model device
        mouse, keyboard = (None if acts is None else action_windows(acts, start_frame, T, a.vae_time_compression_ratio,
                                                                    a.window)
                           for acts in cond.actions.upto(start_frame + T))
        layers = []
        for i, (blk, kv) in enumerate(zip(self.blocks, context.cross_kv)):
            if blk.action_model is None:
                layers.append((kv, None))
                continue
            caches = (None, None) if cache is None else (cache.frame_cache(i, "mouse"), cache.frame_cache(i, "keyboard"))
            layers.append((kv, (mouse, keyboard, pos, caches)))
        return super().forward(x, t, layers, cache, start_frame, frame_positions)

    def load_state_dict_strict(self, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Strict load; the released files prefix every key with ``model.``, which is removed first."""
        if state_dict and all(k.startswith("model.") for k in state_dict):
            state_dict = {k[len("model."):]: v for k, v in state_dict.items()}
        super().load_state_dict_strict(state_dict, source)


def load_world_model(config_path: str | os.PathLike, weights: str | os.PathLike, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu") -> CausalWorldModel:
    """The world model from its ``config.json`` and released ``.safetensors`` (strict, memory-mapped, in ``dtype``)."""
    from .loading import ModelFilesError, first_line, load_safetensors
    try:
        cfg = WorldModelConfig.from_json(config_path)
    except ValueError as exc:
        raise ModelFilesError(f"{first_line(exc, None)}. Use the config.json of the checkpoint's variant "
                              f"(configs/matrix_game2/).") from None
    weights = Path(weights)
    if not weights.is_file():
        raise ModelFilesError(f"the world-model checkpoint {weights} does not exist; download it (README 'Matrix-Game "
                              f"2.0') or pass --checkpoint_path with the variant's .safetensors file.")
    with torch.device("meta"):
        model = CausalWorldModel(cfg)
    state = load_safetensors(weights, dtype, device)
    try:
        model.load_state_dict_strict(state, source=str(weights))
    except (KeyError, ValueError) as exc:
        raise ModelFilesError(f"{first_line(exc, None)}. {weights} and {config_path} must be the same variant "
                              f"(--variant universal, gta_drive or templerun).") from None
    return model.eval().requires_grad_(False)
