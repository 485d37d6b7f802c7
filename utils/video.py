"""Video frames to H.264 mp4 through imageio-ffmpeg (its wheel ships an ffmpeg binary)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .cli_config import CLIError

logger = logging.getLogger(__name__)

CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"
DEFAULT_CRF = 18   # visually lossless H.264
MACRO_BLOCK = 16   # frame sizes must be multiples of this, or ffmpeg would rescale


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Frames [T, 3, H, W] float in [-1, 1] -> uint8 [T, H, W, 3] on the host (rounded, clamped)."""
    x = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [T, 3, H, W]
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary imageio-ffmpeg uses; raises CLIError when there is none."""
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # noqa: BLE001 - ImportError or "no ffmpeg found" RuntimeError
        raise CLIError(f"No ffmpeg for writing mp4 files ({exc}). Install it with: pip install imageio-ffmpeg "
                       f"(the wheel ships ffmpeg) or set IMAGEIO_FFMPEG_EXE to an ffmpeg binary with libx264."
                       ) from None


def check_encoder() -> None:
    """Fail early (CLIError) when ffmpeg is missing or lacks the H.264 encoder."""
    exe = ffmpeg_exe()
    import imageio_ffmpeg
    try:
        found = imageio_ffmpeg._io.get_first_available_h264_encoder()
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"The ffmpeg binary {exe} cannot encode H.264 ({exc}). Use the ffmpeg that ships with "
                       f"imageio-ffmpeg (unset IMAGEIO_FFMPEG_EXE) or one built with libx264.") from None
    if found != CODEC:
        raise CLIError(f"The ffmpeg binary {exe} has no {CODEC} encoder (found {found}). Use the ffmpeg that ships "
                       f"with imageio-ffmpeg (unset IMAGEIO_FFMPEG_EXE) or one built with libx264.")


class Mp4Writer:
    """Incremental H.264/yuv420p mp4 writer: ``append`` uint8 frames [n, H, W, 3], then ``close``.

    ``movflags`` is passed to ffmpeg (e.g. ``frag_keyframe+empty_moov`` for a file playable while it grows).
    ``on_frame`` is called after every frame is handed to ffmpeg (progress or tests).
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float, crf: int = DEFAULT_CRF,
                 movflags: str | None = None, on_frame: Callable[[int], None] | None = None):
        import imageio_ffmpeg
        if width % MACRO_BLOCK or height % MACRO_BLOCK:
            raise ValueError(f"frame size {width}x{height} must be a multiple of {MACRO_BLOCK} for H.264")
        params = ["-crf", str(crf), "-f", "mp4"]  # container named explicitly: the temporary name ends in .part
        if movflags:
            params += ["-movflags", movflags]
        self.path, self.size, self.on_frame = Path(path), (width, height), on_frame
        self.frames_written = 0
        self._gen = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec=CODEC, quality=None,
                                                pix_fmt_out=PIXEL_FORMAT, macro_block_size=MACRO_BLOCK,
                                                output_params=params)
        self._gen.send(None)

    def append(self, frames: np.ndarray) -> None:
        """Write uint8 frames [n, H, W, 3]."""
        w, h = self.size
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (h, w, 3):
            raise ValueError(f"expected uint8 frames [n, {h}, {w}, 3], got {frames.dtype} {tuple(frames.shape)}")
        for frame in frames:
            self._gen.send(np.ascontiguousarray(frame))
            self.frames_written += 1
            if self.on_frame is not None:
                self.on_frame(self.frames_written)

    def close(self) -> None:
        """Finish the file (waits for ffmpeg; raises if ffmpeg failed)."""
        if self._gen is not None:
            gen, self._gen = self._gen, None
            gen.close()

    def __enter__(self) -> "Mp4Writer":
        """Use as a context manager; the file is finished on exit."""
        return self

    def __exit__(self, *exc) -> None:
        """Close ffmpeg (also on errors, so the caller can delete the partial file)."""
        self.close()


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, **kwargs) -> None:
    """Write uint8 frames [T, H, W, 3] to ``path`` as an mp4."""
    _, h, w, _ = frames.shape
    with Mp4Writer(path, w, h, fps, **kwargs) as writer:
        writer.append(frames)
