"""Wan2.1 VAE with ``diffusers.AutoencoderKLWan``: latent (un-)normalisation, encode, full and streaming decode.

The network is built from ``configs/wan_vae_config.json`` (committed, so nothing is fetched) and filled from
``Wan2.1_VAE.pth`` through diffusers' own key converter, strictly. Our latents are ``[B, T, 16, h, w]`` (time
second); diffusers works on ``[B, C, T, H, W]``.

Streaming decode drives diffusers' decoder one latent frame at a time with its causal-convolution cache kept
between calls, exactly as ``AutoencoderKLWan._decode`` does inside one call; it relies on decoder internals of the
pinned diffusers version (``WanDecoder3d.forward(x, feat_cache, feat_idx, first_chunk)``).

Two opt-in decode speed-ups, each equal to the default within float rounding: ``channels_last=True`` stores the
decoder's convolution weights and feeds its input channels-last (``torch.channels_last_3d``: the layout cuDNN's
3D convolutions prefer), and ``compile_decoder()`` wraps the decoder in ``torch.compile``.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path

import torch

from utils.frames import video_frames
from utils.paths import CONFIGS_DIR

from .loading import (VAE_WEIGHTS_FILE, ModelFilesError, load_folder_state_dict, resolve_path)
from .state_dict import compare_state_dicts

logger = logging.getLogger(__name__)

DEFAULT_VAE_CONFIG = CONFIGS_DIR / "wan_vae_config.json"
TESTED_DIFFUSERS_VERSION = "0.42.1"


def load_vae_config(path: str | os.PathLike | None = None) -> dict:
    """The ``AutoencoderKLWan`` keyword arguments stored in a config JSON (keys starting with ``_`` dropped)."""
    path = Path(path) if path is not None else DEFAULT_VAE_CONFIG
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFilesError(f"VAE config {path} could not be read ({type(exc).__name__}: {exc}); it ships with "
                              f"this repository as configs/wan_vae_config.json, restore it from git.") from None
    return {k: v for k, v in data.items() if not k.startswith("_")}


def convert_wan_vae_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan ``Wan2.1_VAE.pth`` keys -> ``AutoencoderKLWan`` keys, with diffusers' own converter."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    return convert_wan_vae_to_diffusers(dict(state))


def _check_diffusers_internals(model) -> None:
    """Fail clearly if the installed diffusers lacks the decoder cache interface streaming relies on."""
    import diffusers

    params = inspect.signature(model.decoder.forward).parameters
    if not {"feat_cache", "feat_idx", "first_chunk"} <= set(params) or not hasattr(model, "post_quant_conv"):
        raise RuntimeError(f"diffusers {diffusers.__version__}: AutoencoderKLWan's decoder has no "
                           f"(feat_cache, feat_idx, first_chunk) interface; "
                           f"install diffusers=={TESTED_DIFFUSERS_VERSION}")
    if model.config.patch_size is not None:
        raise NotImplementedError("patchified VAEs (Wan2.2) are not supported; use the Wan2.1 VAE config")
    if diffusers.__version__ != TESTED_DIFFUSERS_VERSION:
        logger.warning("diffusers %s is installed; streaming VAE decode was verified with %s",
                       diffusers.__version__, TESTED_DIFFUSERS_VERSION)


def build_vae(state: dict[str, torch.Tensor], config: dict, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu", source: str = "state dict"):
    """``AutoencoderKLWan`` holding a Wan-format VAE state dict; every key must map (no missing or unexpected)."""
    from diffusers import AutoencoderKLWan

    config = dict(config)
    try:
        # Size of the network from the file itself (so reduced test models load with the same config).
        config["base_dim"] = int(state["encoder.conv1.weight"].shape[0])   # [base_dim, 3, 3, 3, 3]
        config["z_dim"] = int(state["conv2.weight"].shape[0])              # post-quant conv [z_dim, z_dim, 1, 1, 1]
    except KeyError as exc:
        raise ModelFilesError(f"{source} has no tensor {exc.args[0]!r}; it is not a Wan2.1 VAE file "
                              f"({VAE_WEIGHTS_FILE}). Re-download it.") from None
    if len(config.get("latents_mean", [])) != config["z_dim"] or len(config.get("latents_std", [])) != config["z_dim"]:
        raise ModelFilesError(f"{source} has z_dim={config['z_dim']} latent channels but the VAE config has "
                              f"{len(config.get('latents_mean', []))} latents_mean values; use a Wan2.1 VAE.")
    mapped = convert_wan_vae_state_dict(state)
    with torch.device("meta"):
        model = AutoencoderKLWan(**config)
    diff = compare_state_dicts(model.state_dict(), mapped)
    if diff:
        raise ModelFilesError(
            f"{source} does not match the Wan2.1 VAE architecture: {len(diff.missing)} missing key(s) "
            f"{diff.missing[:5]}, {len(diff.unexpected)} unexpected key(s) {diff.unexpected[:5]}, "
            f"{len(diff.wrong_shape)} wrong shape(s) {diff.wrong_shape[:3]}. "
            f"Use the {VAE_WEIGHTS_FILE} of Wan-AI/Wan2.1-T2V-1.3B (re-download it if it is damaged).")
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in mapped.items()}, strict=True, assign=True)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise RuntimeError(f"VAE tensor {name} was not loaded")
    _check_diffusers_internals(model)
    return model.eval().requires_grad_(False)


def to_channels_last(module: torch.nn.Module) -> int:
    """Store every 4D / 5D weight of ``module`` channels-last (``channels_last`` / ``channels_last_3d``) in place;
    returns how many were converted (biases and norm scales keep their layout)."""
    converted = 0
    for sub in module.modules():
        for p in list(sub.parameters(recurse=False)):
            if p.dim() in (4, 5):
                fmt = torch.channels_last_3d if p.dim() == 5 else torch.channels_last
                p.data = p.data.contiguous(memory_format=fmt)
                converted += 1
    return converted


class WanVAE:
    """Decode Wan latents ``[B, T, z_dim, h, w]`` to video ``[B, 4(T-1)+1, 3, 8h, 8w]`` in [-1, 1], and encode back.

    ``channels_last``: the decoder runs channels-last (see the module docstring); ``compile_decoder()``: compiled.
    """

    def __init__(self, model, latents_mean: list[float], latents_std: list[float], channels_last: bool = False):
        self.model = model
        self.latents_mean = torch.tensor(latents_mean, dtype=torch.float32)  # [z_dim]
        self.latents_std = torch.tensor(latents_std, dtype=torch.float32)    # [z_dim]
        self.z_dim = int(model.config.z_dim)
        self.spatial_factor = int(model.config.scale_factor_spatial)
        self.temporal_factor = int(model.config.scale_factor_temporal)
        self.decoder = model.decoder  # what StreamDecoder calls: the module, or its compiled wrapper
        self.compiled: dict | None = None
        self.channels_last = False
        if channels_last:
            self.use_channels_last()

    def use_channels_last(self) -> int:
        """Switch the decoder (and the 1x1x1 post-quant conv before it) to channels-last; returns weights converted."""
        converted = to_channels_last(self.model.decoder) + to_channels_last(self.model.post_quant_conv)
        self.channels_last = True
        return converted

    def compile_decoder(self, backend: str = "inductor", mode: str | None = None) -> None:
        """Decode through ``torch.compile(decoder)`` (static shapes). The first chunks of the first video compile
        (one graph per state of the decoder's causal cache: the first frame, the second, then steady); later calls
        reuse the graphs. Frames equal the eager decoder's within float rounding."""
        self.decoder = torch.compile(self.model.decoder, backend=backend, mode=mode, dynamic=False)
        self.compiled = {"backend": backend, "mode": mode}
        logger.info("torch.compile (%s, mode=%s) of the VAE decoder", backend, mode)

    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu", config_path: str | os.PathLike | None = None,
                       channels_last: bool = False) -> "WanVAE":
        """Load ``Wan2.1_VAE.pth`` of a Wan model folder into ``AutoencoderKLWan`` (config from the repository)."""
        folder = resolve_path(model_dir)
        weights = folder / VAE_WEIGHTS_FILE
        state = load_folder_state_dict(folder, VAE_WEIGHTS_FILE, "Wan VAE weights")
        config = load_vae_config(config_path)
        model = build_vae(state, config, dtype, device, source=str(weights))
        logger.info("loaded %s (AutoencoderKLWan base_dim=%d, %s on %s)", weights, model.config.base_dim, dtype, device)
        return cls(model, config["latents_mean"], config["latents_std"], channels_last=channels_last)

    @property
    def dtype(self) -> torch.dtype:
        """Weight dtype of the VAE."""
        return self.model.post_quant_conv.weight.dtype

    @property
    def device(self) -> torch.device:
        """Device of the VAE weights."""
        return self.model.post_quant_conv.weight.device

    def num_frames(self, latent_frames: int) -> int:
        """Video frames produced by ``latent_frames`` latent frames: ``4(T-1)+1``."""
        return video_frames(latent_frames, self.temporal_factor) if latent_frames > 0 else 0

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Our normalised latents ``[B, T, C, h, w]`` -> VAE latents ``[B, C, T, h, w]`` in the VAE dtype.

        Exactly Wan's arithmetic ``z / (1 / std) + mean`` per channel, computed in the latents' dtype.
        """
        if latents.dim() != 5 or latents.shape[2] != self.z_dim:
            raise ValueError(f"latents must be [B, T, {self.z_dim}, h, w], got {tuple(latents.shape)}")
        z = latents.permute(0, 2, 1, 3, 4).to(self.device)  # [B, C, T, h, w]
        shape = (1, self.z_dim, 1, 1, 1)
        if self.latents_mean.device != z.device:  # moved once, not copied to the device on every decode
            self.latents_mean, self.latents_std = self.latents_mean.to(z.device), self.latents_std.to(z.device)
        mean = self.latents_mean.to(device=z.device, dtype=z.dtype).view(shape)
        inv_std = 1.0 / self.latents_std.to(device=z.device, dtype=z.dtype).view(shape)
        return (z / inv_std + mean).to(self.dtype)

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        """VAE posterior means ``[B, C, T, h, w]`` -> our normalised latents ``[B, T, C, h, w]`` (VAE dtype).

        Wan's arithmetic ``(mu - mean) * (1 / std)`` per channel, the inverse of :meth:`denormalize`.
        """
        shape = (1, self.z_dim, 1, 1, 1)
        mean = self.latents_mean.to(device=mu.device, dtype=mu.dtype).view(shape)
        inv_std = 1.0 / self.latents_std.to(device=mu.device, dtype=mu.dtype).view(shape)
        return ((mu - mean) * inv_std).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Encode video ``[B, T, 3, H, W]`` in [-1, 1] (T = 1 for an image) -> latents ``[B, 1 + (T-1)/4, C, h, w]``.

        The posterior mean (no sampling), normalised as the rollout's latents; the layout is the one
        :meth:`decode` returns, so ``encode`` of a one-frame video gives the one latent frame image-to-video uses.
        """
        if video.dim() != 5 or video.shape[2] != 3 or (video.shape[1] - 1) % self.temporal_factor:
            raise ValueError(f"video must be [B, 1 + {self.temporal_factor}k, 3, H, W], got {tuple(video.shape)}")
        x = video.permute(0, 2, 1, 3, 4).to(device=self.device, dtype=self.dtype)  # [B, 3, T, H, W]
        mu = self.model.encode(x).latent_dist.mean  # [B, z_dim, t, h, w]
        return self.normalize(mu)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode a whole video: latents ``[B, T, C, h, w]`` -> float32 ``[B, 4T-3, 3, H, W]`` in [-1, 1].

        Same computation as diffusers' ``AutoencoderKLWan.decode`` (one latent frame at a time through the
        cached decoder), run through :class:`StreamDecoder` so that streaming and full decode share every kernel.
        """
        return self.stream_decoder().decode_chunk(latents)

    def stream_decoder(self) -> "StreamDecoder":
        """A decoder for latents arriving chunk by chunk, equal bit for bit to decoding them all at once."""
        return StreamDecoder(self)


class StreamDecoder:
    """Chunk-by-chunk VAE decode carrying diffusers' decoder-level causal conv cache between chunks."""

    def __init__(self, vae: WanVAE):
        self.vae = vae
        decoder = vae.model.decoder
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        self._num_convs = sum(isinstance(m, WanCausalConv3d) for m in decoder.modules())
        self.reset()

    def reset(self) -> None:
        """Forget all previous latents (start a new video)."""
        self._feat_cache: list = [None] * self._num_convs
        self.latent_frames = 0

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Next latents ``[B, t, C, h, w]`` -> float32 frames ``[B, n, 3, H, W]`` in [-1, 1].

        The first call of a video yields ``4t-3`` frames, later calls ``4t``.
        """
        vae = self.vae
        z = vae.denormalize(latents)  # [B, C, t, h, w]
        frames = []
        for i in range(z.shape[2]):
            # post_quant_conv is 1x1x1: per frame it equals diffusers' whole-video call, and keeps every kernel
            # shape independent of how the latents are chunked.
            x = z[:, :, i:i + 1]
            if vae.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            x = vae.model.post_quant_conv(x)  # [B, C, 1, h, w]
            first = self.latent_frames == 0
            frames.append(vae.decoder(x, feat_cache=self._feat_cache, feat_idx=[0],
                                      first_chunk=first))  # [B, 3, 1 or 4, H, W]
            self.latent_frames += 1
        video = torch.clamp(torch.cat(frames, dim=2), min=-1.0, max=1.0)  # [B, 3, n, H, W]
        return video.float().permute(0, 2, 1, 3, 4)
