"""Where a rollout's random numbers come from: the initial noise of every latent frame and the re-noise draws.

``TensorNoise`` serves noise drawn up front (upstream's order: the whole video's initial noise first, then every
re-noise draw from the same generator); ``LazyNoise`` draws each chunk's noise right before it (memory independent of
length, endless videos). ``seeded_noise`` builds either from one seed.
"""
from __future__ import annotations

from typing import Callable

import torch

# (shape, dtype, device) -> a standard normal tensor; called once per re-noising, in upstream's order.
NoiseSource = Callable[[tuple, torch.dtype, torch.device], torch.Tensor]
NOISE_ORDERS = ("upstream", "chunked")


def generator_noise(generator: torch.Generator) -> NoiseSource:
    """A noise source drawing from ``generator`` (one ``torch.randn`` per request)."""
    def draw(shape, dtype, device):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    return draw


class TensorNoise:
    """Initial noise drawn up front (upstream order): a tensor [B, T, C, H, W] served chunk by chunk."""

    def __init__(self, noise: torch.Tensor):
        self.noise = noise
        self.batch, self.num_frames = noise.shape[:2]
        self.latent_shape = tuple(noise.shape[2:])

    def frames(self, start: int, count: int) -> torch.Tensor:
        """Noise of frames [start, start + count) -> [B, count, C, H, W]."""
        return self.noise[:, start:start + count]


class LazyNoise:
    """Initial noise drawn chunk by chunk from ``source`` right before each chunk: memory does not grow with
    length and ``num_frames`` may be None (endless). Differs from upstream's order, which draws all noise first."""

    def __init__(self, batch: int, latent_shape: tuple, source: NoiseSource, dtype: torch.dtype,
                 device: torch.device, num_frames: int | None = None):
        self.batch, self.num_frames, self.latent_shape = batch, num_frames, tuple(latent_shape)
        self.source, self.dtype, self.device = source, dtype, device

    def frames(self, start: int, count: int) -> torch.Tensor:
        """A fresh draw [B, count, C, H, W] (``start`` is ignored: draws happen in call order)."""
        return self.source((self.batch, count, *self.latent_shape), self.dtype, self.device)



def as_noise(noise: "torch.Tensor | TensorNoise | LazyNoise") -> "TensorNoise | LazyNoise":
    """A tensor [B, T, C, H, W] as ``TensorNoise``; noise objects as they are."""
    return TensorNoise(noise) if isinstance(noise, torch.Tensor) else noise


def as_source(renoise: "NoiseSource | torch.Generator") -> NoiseSource:
    """A generator as a noise source; sources as they are."""
    return generator_noise(renoise) if isinstance(renoise, torch.Generator) else renoise


def seeded_noise(batch: int, num_frames: int | None, latent_shape: tuple, seed: int, dtype: torch.dtype,
                 device: torch.device, noise_order: str = "upstream", channels_first: bool = False
                 ) -> tuple["TensorNoise | LazyNoise", NoiseSource]:
    """Initial noise and re-noise source from one generator seeded once.

    ``upstream``: the whole initial noise [batch, T, C, H, W] first, then every re-noise draw (same seed, same
    noise as the released code). ``chunked``: each chunk's initial noise is drawn right before the chunk
    (memory independent of length, endless videos possible; different random numbers). ``channels_first``: the
    upstream draw is [batch, C, T, H, W] (Matrix-Game 2.0's layout), served as [batch, T, C, H, W].
    """
    g = torch.Generator(device=device).manual_seed(int(seed))
    source = generator_noise(g)
    if noise_order == "upstream":
        if num_frames is None:
            raise ValueError("noise_order='upstream' needs a finite number of frames; use 'chunked'")
        if channels_first:
            C, *hw = latent_shape
            return TensorNoise(source((batch, C, num_frames, *hw), dtype, device).transpose(1, 2)), source
        return TensorNoise(source((batch, num_frames, *latent_shape), dtype, device)), source
    if noise_order == "chunked":
        return LazyNoise(batch, latent_shape, source, dtype, device, num_frames), source
    raise ValueError(f"noise_order={noise_order!r}: use one of {', '.join(NOISE_ORDERS)}")
