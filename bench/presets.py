"""Benchmark presets (model size, resolution, dtype, device) and the video-length -> latent-frame mapping."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from utils.frames import video_frames
from wan.config import WanConfig

# Shipped-config cache settings per mode (configs/self_forcing_dmd/*.yaml, DS_inference.sh, DS_PC_inference.sh);
# any other registered mode (bench.modes.available_modes) runs with its class defaults.
MODE_SETTINGS = {
    "self_forcing": dict(local_attn_size=21, sink_size=0),
    "deep_sink": dict(local_attn_size=21, sink_size=14),
    "deep_sink_pc": dict(local_attn_size=21, sink_size=10, budget=16, recent=4, reuse_cap=7),
}
MODES = tuple(MODE_SETTINGS)  # what a benchmark runs by default

TINY_VAE_BASE_DIM = 4  # the Wan2.1 VAE layout with 4 instead of 96 base channels
TINY_DIT = dict(dim=64, ffn_dim=128, freq_dim=32, text_dim=64, num_heads=4, num_layers=2, text_len=32)

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


@dataclass(frozen=True)
class Preset:
    """What one benchmark run builds: DiT config, output resolution, VAE config, dtype and device."""

    name: str
    model: WanConfig
    height: int                  # output pixels
    width: int
    vae: dict = field(default_factory=dict)  # AutoencoderKLWan kwargs (configs/wan_vae_config.json)
    dtype: str = "bf16"
    device: str = "cuda"
    fps: int = 16
    chunk_frames: int = 3        # num_frame_per_block

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent row/column (the VAE config's ``scale_factor_spatial``)."""
        return int(self.vae["scale_factor_spatial"])

    @property
    def temporal_factor(self) -> int:
        """Output frames per latent frame after the first (the VAE config's ``scale_factor_temporal``)."""
        return int(self.vae["scale_factor_temporal"])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one latent frame."""
        return (self.model.in_dim, self.height // self.spatial_factor, self.width // self.spatial_factor)

    @property
    def tokens_per_frame(self) -> int:
        """F, derived from the config and the resolution."""
        _, h, w = self.latent_shape
        return self.model.tokens_per_frame(h, w)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of ``dtype``."""
        return DTYPES[self.dtype]

    def pixel_frames(self, latent_frames: int) -> int:
        """Output frames of ``latent_frames`` latent frames: ``4T - 3``."""
        return video_frames(latent_frames, self.temporal_factor)

    def latent_frames_for(self, seconds: float) -> int:
        """Latent frames for a video of ``seconds``: ``fps/4`` latent frames per second, rounded up to whole chunks.

        The project's convention (60 s -> 240 latent frames -> 957 frames): 30 s -> 120 (477 frames,
        29.8 s), 60 s -> 240 (957), 300 s -> 1200 (4797 frames, 299.8 s).
        """
        per_second = self.fps / self.temporal_factor
        T = max(1, math.ceil(round(seconds * per_second, 6)))
        return math.ceil(T / self.chunk_frames) * self.chunk_frames

    def with_overrides(self, layers: int | None = None, dtype: str | None = None, device: str | None = None,
                       height: int | None = None, width: int | None = None) -> "Preset":
        """A copy with a reduced layer count / other dtype, device or resolution."""
        model = self.model if layers is None else replace(self.model, num_layers=layers)
        return replace(self, model=model, dtype=dtype or self.dtype, device=device or self.device,
                       height=height or self.height, width=width or self.width)


def vae_config(base_dim: int | None = None) -> dict:
    """The Wan2.1 VAE architecture of configs/wan_vae_config.json, optionally with fewer channels (``base_dim``)."""
    from wan.vae import load_vae_config
    config = load_vae_config()
    return config if base_dim is None else {**config, "base_dim": base_dim}


def get_preset(name: str) -> Preset:
    """``real`` (Wan2.1-T2V-1.3B at 480x832, bf16, CUDA) or ``cpu`` (tiny dims, 16x32 pixels, fp32, CPU)."""
    if name == "real":
        return Preset("real", WanConfig(), 480, 832, vae=vae_config(), dtype="bf16", device="cuda")
    if name == "cpu":
        return Preset("cpu", WanConfig(**TINY_DIT), 16, 32, vae=vae_config(base_dim=TINY_VAE_BASE_DIM),
                      dtype="fp32", device="cpu")
    raise ValueError(f"--preset {name!r} is unknown; use 'real' (1.3B, 480x832, CUDA) or 'cpu' (tiny, CPU)")


def build_random_model(preset: Preset, seed: int = 0):
    """CausalWanModel with random weights created directly on ``preset.device`` in ``preset.dtype`` (no download)."""
    from wan.causal_model import CausalWanModel
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(preset.torch_dtype)
    try:
        with torch.device(preset.device):
            model = CausalWanModel(preset.model)
    finally:
        torch.set_default_dtype(prev)
    return model.eval().requires_grad_(False)
