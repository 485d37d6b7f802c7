"""Video frames from latent frames: the causal VAE decodes latent 0 to one frame and every later latent to
``temporal`` frames (4 for Wan), so T latent frames are ``4T - 3`` video frames."""
from __future__ import annotations


def video_frames(latent_frames: int, temporal: int = 4) -> int:
    """Video frames decoded from ``latent_frames`` latents (``temporal * (T - 1) + 1``; 4T-3 for Wan's VAE)."""
    return temporal * (latent_frames - 1) + 1
