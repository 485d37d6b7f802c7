"""A random-weight Wan2.1 VAE (``wan.vae.WanVAE`` around a fresh diffusers ``AutoencoderKLWan``) for the benchmark.

Decoding goes through the project's streaming decoder (``WanVAE.stream_decoder().decode_chunk``), so the benchmark
times exactly the code the CLI runs; only the weights are random.
"""
from __future__ import annotations

import torch


class BenchVAE:
    """Random-weight Wan VAE built directly on the device: ``stream_decoder()``, ``weight_bytes``, ``autoencoder``."""

    impl = "wan.vae.WanVAE.stream_decoder (diffusers AutoencoderKLWan, random weights)"

    def __init__(self, config: dict, dtype: torch.dtype, device: str | torch.device, channels_last: bool = False):
        from diffusers import AutoencoderKLWan  # the one import of the benchmark that needs diffusers

        from wan.vae import WanVAE
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = AutoencoderKLWan(**config)
        finally:
            torch.set_default_dtype(prev)
        self.autoencoder = model.eval().requires_grad_(False)
        self.vae = WanVAE(self.autoencoder, list(config["latents_mean"]), list(config["latents_std"]),
                          channels_last=channels_last)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the VAE parameters."""
        return sum(p.numel() * p.element_size() for p in self.autoencoder.parameters())

    def stream_decoder(self):
        """A fresh streaming decoder for one video: ``decode_chunk(latents [B, t, 16, h, w]) -> [B, n, 3, H, W]``."""
        return self.vae.stream_decoder()
