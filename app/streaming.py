"""One sample's output files while its video is generated: streaming VAE decode into a growing fragmented mp4.

``SampleOutput`` is a context manager around one ``OutputSlot``: the mp4 is written under its temporary ``.part``
name, one fragment per chunk (``add_chunk``; the fragment is encoded and written by a background thread of
``media.video.shared_pool`` while the next chunk is generated), and renamed when the block ends without an error
(deleted otherwise).
The VAE's streaming decoder carries its causal cache from chunk to chunk, so the frames equal decoding all latents
at the end. Latents of finished chunks are dropped unless ``keep_latents``; then ``write_latents`` saves them.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from media.video import Mp4Writer, shared_pool, to_uint8

from .locks import VideoLock
from .outputs import OutputSlot, atomic_path, part_path

logger = logging.getLogger(__name__)

LATENTS_FORMAT = "deep_forcing.latents.v1"


def latents_path(slot: OutputSlot) -> Path:
    """Where ``--save_latents`` puts the latents of ``slot``'s video (``name.pt`` next to ``name.mp4``)."""
    return slot.latents


class SampleOutput:
    """Streaming decode + mp4 (+ latents) for one sample of a batch; use as a context manager."""

    def __init__(self, slot: OutputSlot, vae, width: int, height: int, fps: float, keep_latents: bool = False,
                 on_frame: Callable[[int], None] | None = None, threads: int = 0):
        self.slot, self.vae, self.keep_latents = slot, vae, keep_latents
        self._writer_args = dict(width=width, height=height, fps=fps, on_frame=on_frame, threads=threads,
                                 pool=shared_pool())
        self._stack = contextlib.ExitStack()
        self.part: Path | None = None
        self.writer: Mp4Writer | None = None
        self.decoder = None
        self.latents: list[torch.Tensor] = []   # host copies [n, C, h, w] per chunk, only with keep_latents
        self.frames = 0

    @property
    def sample(self) -> int:
        """Index of this sample in the batch."""
        return self.slot.sample

    def __enter__(self) -> "SampleOutput":
        """Open the temporary mp4 and a fresh streaming decoder."""
        with self._stack as stack:
            self.part = stack.enter_context(atomic_path(self.slot.video))
            self.writer = stack.enter_context(Mp4Writer(self.part, **self._writer_args))
            self.decoder = self.vae.stream_decoder()
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        """Finish the mp4 and rename it (or abandon and delete it when the block raised)."""
        self._stack.__exit__(*exc)

    def add_chunk(self, x0: torch.Tensor) -> tuple[float, float, np.ndarray]:
        """Decode this sample's chunk latents x0 [1, n, C, h, w] and append them to the file as one fragment.

        Returns (decode seconds, write seconds, uint8 frames [m, H, W, 3]). The previous chunk's fragment is on disk
        before this chunk's frames are handed to the encoder (so at most one chunk is in flight); this chunk's
        fragment is encoded and written in the background while the next chunk is generated (``flush`` waits for it).
        """
        t0 = time.perf_counter()
        frames = to_uint8(self.decoder.decode_chunk(x0)[0])  # [m, H, W, 3]; m = 4n-3 for the first chunk, else 4n
        t1 = time.perf_counter()
        self.writer.flush(wait=True)
        self.writer.append(frames)
        self.writer.flush(wait=False)
        t2 = time.perf_counter()
        self.frames += len(frames)
        if self.keep_latents:
            self.latents.append(x0[0].to("cpu", copy=True))
        return t1 - t0, t2 - t1, frames

    def flush(self) -> int:
        """Wait until every frame added so far is in the file; returns the number of frames on disk."""
        return self.writer.flush(wait=True)

    def video_record(self) -> dict:
        """What identifies the finished mp4 (for the sidecar and the resume check): its size and SHA-256."""
        return {"size": self.writer.size_bytes, "sha256": self.writer.sha256()}

    def write_latents(self, meta: dict) -> Path:
        """Save the kept latents atomically as ``name.pt``: {"latents": [T, C, h, w], "format", **meta}."""
        path = latents_path(self.slot)
        data = {"format": LATENTS_FORMAT, "latents": torch.cat(self.latents, dim=0), **meta}
        with atomic_path(path) as part:
            torch.save(data, part)
        return path


def remove_stale_latents_part(slot: OutputSlot) -> bool:
    """Delete a temporary latents file a killed run left behind (not one a live run is writing); True if removed."""
    part = part_path(latents_path(slot))
    if not part.exists():
        return False
    lock = VideoLock(slot.video)
    if not lock.acquire():
        return False
    with lock:
        try:
            part.unlink()
            return True
        except FileNotFoundError:
            return False
