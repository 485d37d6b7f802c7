"""The image of an image-to-video run (``--i2v --image PATH``): checked and hashed up front, encoded per video."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from media.image import ImageInputError, image_sha256, load_image

from .cli_config import CLIError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageInput:
    """An image file and the SHA-256 of its bytes (part of every video's request, so resume notices a new image)."""

    path: Path
    sha256: str

    @classmethod
    def open(cls, path: str | Path, height: int, width: int) -> "ImageInput":
        """Check that ``path`` is a readable image (CLIError otherwise) and hash it."""
        path = Path(path)
        try:
            load_image(path, height, width)
            return cls(path, image_sha256(path))
        except ImageInputError as exc:
            raise CLIError(str(exc)) from None

    def request(self) -> dict:
        """The image's part of a video's request (what makes two runs the same video)."""
        return {"image": str(self.path), "image_sha256": self.sha256}

    @torch.no_grad()
    def latent(self, vae, height: int, width: int, batch: int) -> torch.Tensor:
        """The image encoded by ``vae`` at (height, width): normalised posterior mean [batch, C, h, w]."""
        try:
            video = load_image(self.path, height, width)  # [1, 1, 3, H, W]
        except ImageInputError as exc:
            raise CLIError(str(exc)) from None
        if image_sha256(self.path) != self.sha256:
            raise CLIError(f"image {self.path} changed while the run was going on (its SHA-256 differs from the "
                           f"one checked at start); restore it or start the run again.")
        z = vae.encode(video)[:, 0]  # [1, C, h, w]
        logger.info("image %s encoded to a latent of %s", self.path, tuple(z.shape[1:]))
        return z.expand(batch, *z.shape[1:])
