"""Image input for image-to-video: read an image file, resize it to the video resolution, scale to [-1, 1].

As released (Causal Forcing): PIL, RGB, a plain bilinear resize to (height, width) that neither keeps the aspect
ratio nor crops (what torchvision's ``Resize`` does to a PIL image), then ``x / 255`` normalised with mean 0.5 and
std 0.5, i.e. ``x / 127.5 - 1``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch


class ImageInputError(Exception):
    """An image that cannot be used: one paragraph naming the file and what to do."""


def read_rgb(path: str | os.PathLike, prepare) -> torch.Tensor:
    """The image at ``path`` as RGB, shaped by ``prepare(PIL image) -> PIL image`` -> uint8 [3, H, W]."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ImageInputError(f"image {path} {what}; pass the path of an image file (PNG, JPEG, WebP, ...) with "
                              f"--image.")
    try:
        with Image.open(path) as img:
            img = prepare(img)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageInputError(f"image {path} could not be read as an image ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())}); pass a readable PNG, JPEG or WebP file.") from None
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3)
    return data.permute(2, 0, 1)


def load_image(path: str | os.PathLike, height: int, width: int) -> torch.Tensor:
    """The image at ``path`` as a one-frame video float32 ``[1, 1, 3, height, width]`` in [-1, 1]."""
    from PIL import Image
    data = read_rgb(path, lambda img: img.convert("RGB").resize((width, height), Image.Resampling.BILINEAR))
    return (data.float() / 127.5 - 1.0)[None, None]  # [1, 1, 3, H, W] in [-1, 1]


def image_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the image file's bytes (identifies the input of a video for resume)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ImageInputError(f"image {path} could not be read ({exc.strerror or exc}); check the path and its "
                              f"permissions.") from None
    return digest.hexdigest()


def load_world_image(path: str | os.PathLike, height: int, width: int) -> torch.Tensor:
    """A world model's input image [1, 3, height, width] in [-1, 1], prepared as Matrix-Game 2.0 releases it.

    EXIF orientation applied, RGB; centre-cropped to the height:width aspect (the crop box in float, rounded by PIL);
    a bilinear (antialiased) resize unless the crop already has the size; ``x * (1/255)`` in float32, then
    ``(x - 0.5) / 0.5``.
    """
    from PIL import Image, ImageOps

    def prepare(img):
        img = ImageOps.exif_transpose(img).convert("RGB")
        w, h = img.size
        new_w, new_h = (w, int(w * height / width)) if h / w > height / width else (int(h * width / height), h)
        img = img.crop(((w - new_w) / 2, (h - new_h) / 2, (w + new_w) / 2, (h + new_h) / 2))
        return img if img.size == (width, height) else img.resize((width, height), Image.Resampling.BILINEAR)

    x = read_rgb(path, prepare).float() * torch.tensor(1.0 / 255.0, dtype=torch.float32)  # [3, H, W] in [0, 1]
    return ((x - 0.5) / 0.5)[None]
