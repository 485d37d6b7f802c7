"""Synthetic video frames for writer tests: smooth drifting gradients, moving discs and mild noise (more like a
video than pure noise, so x264 behaves as on real frames)."""
from __future__ import annotations

import numpy as np


def scene(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A moving scene: uint8 [T, H, W, 3]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)                  # [H, W] each
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        base = np.stack([128 + 100 * np.sin((x + 3 * t) / 90), 128 + 100 * np.sin((y - 2 * t) / 70),
                         128 + 100 * np.sin((x + y + 5 * t) / 130)], axis=-1)  # [H, W, 3]
        for k in range(3):
            cy, cx = height * (0.3 + 0.2 * k), (width * (0.2 + 0.3 * k) + 7 * t * (k + 1)) % width
            disc = ((y - cy) ** 2 + (x - cx) ** 2) < (40 + 10 * k) ** 2    # [H, W]
            base[disc] = (60 * k, 220 - 60 * k, 120)
        base += rng.normal(0, 4, base.shape)
        frames[t] = np.clip(base, 0, 255).astype(np.uint8)
    return frames
