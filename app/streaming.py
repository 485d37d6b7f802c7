"""One sample's output files while its video is generated: streaming VAE decode into a growing fragmented mp4.

``SampleOutput`` is a context manager around one ``OutputSlot``: the mp4 is written under its temporary ``.part``
name, one fragment per chunk (``write``; the fragment is encoded and written by a background thread of
``media.video.shared_pool`` while the next chunk is generated), and renamed when the block ends without an error
(deleted otherwise).
The VAE's streaming decoder carries its causal cache from chunk to chunk, so the frames equal decoding all latents
at the end. Latents of finished chunks are dropped unless ``keep_latents``; then ``write_latents`` saves them.

``ChunkDecoder`` takes every finished block of the rollout to the host for all outputs of a batch. On CUDA, in this
order: an event is recorded on the rollout's stream after the block (``submit``); a side stream waits for it, decodes
each sample, converts to uint8 and copies frames (and kept latents) into pinned host memory with ``non_blocking``;
an event closes the side stream's work. The rollout stream goes straight on with the next block, so decode and copy
overlap its denoising; ``ready()`` hands a block over only once its copy event has completed (waiting on that event,
never on the device), which the runner asks for one block later. Elsewhere (CPU, meta) every step runs at once in
the caller's thread and a block is ready as soon as it is submitted, so frames and their order are the same.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from media.video import Mp4Writer, shared_pool

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

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """This sample's chunk latents x0 [1, n, C, h, w] -> uint8 frames [m, H, W, 3] on the decoder's device.

        m = 4n-3 for the first chunk, else 4n; the decoder's causal cache moves on by the chunk.
        """
        return device_uint8(self.decoder.decode_chunk(x0)[0])

    def write(self, frames: np.ndarray, latents: torch.Tensor | None = None) -> float:
        """Append host uint8 frames [m, H, W, 3] as one fragment (and keep ``latents`` [n, C, h, w]); -> seconds.

        The previous chunk's fragment is on disk before this chunk's frames are handed to the encoder (so at most one
        chunk is in flight); this chunk's fragment is encoded and written in the background (``flush`` waits for it).
        """
        t0 = time.perf_counter()
        self.writer.flush(wait=True)
        self.writer.append(frames)
        self.writer.flush(wait=False)
        self.frames += len(frames)
        if self.keep_latents and latents is not None:
            self.latents.append(latents)
        return time.perf_counter() - t0

    def add_chunk(self, x0: torch.Tensor) -> tuple[float, float, np.ndarray]:
        """Decode x0 [1, n, C, h, w] and append it at once (no overlap) -> (decode s, write s, uint8 frames)."""
        t0 = time.perf_counter()
        frames = host_copy(self.decode(x0)).numpy()
        t1 = time.perf_counter()
        latents = host_copy(x0[0], copy=True) if self.keep_latents else None
        return t1 - t0, self.write(frames, latents), frames

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


def device_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Frames [T, 3, H, W] float in [-1, 1] -> uint8 [T, H, W, 3] on their device (``media.video.to_uint8``'s math)."""
    x = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [T, 3, H, W]
    return x.permute(0, 2, 3, 1).contiguous()


def host_copy(x: torch.Tensor, copy: bool = False, pinned: bool = False) -> torch.Tensor:
    """``x`` on the host: itself on the CPU (a clone with ``copy``); else one copy into new host memory (``pinned``:
    page-locked and ``non_blocking``, so the caller must wait for the copy's stream before reading it)."""
    if x.device.type == "cpu":
        return x.clone() if copy else x
    host = torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=pinned)
    host.copy_(x, non_blocking=pinned)
    return host


@dataclass
class DecodedChunk:
    """One block on its way to the host: per output its frames (and latents), the events of its work on CUDA."""

    index: int
    start_frame: int
    num_latents: int
    frames: list = field(default_factory=list)     # host uint8 [m, H, W, 3] per output
    latents: list = field(default_factory=list)    # host [n, C, h, w] per output (None unless keep_latents)
    decode_s: float = 0.0                          # CPU: seconds of decode + host copy, all outputs
    decode_events: list = field(default_factory=list)  # CUDA: (start, end) per output, on the side stream
    copied: "torch.cuda.Event | None" = None       # CUDA: after the last host copy


class ChunkDecoder:
    """Decode and host copy of each finished block for ``outputs``, overlapped with the next block on CUDA.

    ``submit(i, f, x0)`` after the rollout yields a block, ``ready(keep)`` for the blocks whose frames can be
    written (all but the newest ``keep`` still in flight), ``drain()`` for the rest (module docstring).
    """

    def __init__(self, outputs: list[SampleOutput], device: torch.device):
        self.outputs = outputs
        self.cuda = torch.device(device).type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.pending: deque[DecodedChunk] = deque()
        self.in_flight = 1 if self.cuda else 0  # blocks to leave in flight between two rollout blocks

    def submit(self, i: int, f: int, x0: torch.Tensor, block_done: "torch.cuda.Event | None" = None) -> None:
        """Start decoding block ``i`` (x0 [num_samples, n, C, h, w] at frame ``f``); ``block_done``: an event recorded
        after the block on the rollout's stream (CUDA; recorded here when None)."""
        chunk = DecodedChunk(i, f, x0.shape[1])
        if not self.cuda:
            t0 = time.perf_counter()
            self._decode(chunk, x0, pinned=False)
            chunk.decode_s = time.perf_counter() - t0
        else:
            if block_done is None:
                block_done = torch.cuda.Event()
                block_done.record()
            self.stream.wait_event(block_done)
            x0.record_stream(self.stream)  # the rollout stream may free x0 while the side stream still reads it
            with torch.cuda.stream(self.stream):
                self._decode(chunk, x0, pinned=True)
                chunk.copied = torch.cuda.Event()
                chunk.copied.record()
        self.pending.append(chunk)

    def _decode(self, chunk: DecodedChunk, x0: torch.Tensor, pinned: bool) -> None:
        """Decode every output's sample of x0 and copy frames (and latents) to the host, on the current stream."""
        for out in self.outputs:
            start = torch.cuda.Event(enable_timing=True) if pinned else None
            if start is not None:
                start.record()
            chunk.frames.append(host_copy(out.decode(x0[out.sample:out.sample + 1]), pinned=pinned))
            chunk.latents.append(host_copy(x0[out.sample], copy=True, pinned=pinned) if out.keep_latents else None)
            if start is not None:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                chunk.decode_events.append((start, end))

    def ready(self, keep: int = 0) -> Iterator[DecodedChunk]:
        """Blocks in order, all but the newest ``keep``, each once its host copy has completed (an event wait)."""
        while len(self.pending) > keep:
            chunk = self.pending.popleft()
            if chunk.copied is not None:
                chunk.copied.synchronize()
                chunk.decode_s = sum(a.elapsed_time(b) for a, b in chunk.decode_events) / 1000
            yield chunk

    def drain(self) -> Iterator[DecodedChunk]:
        """Every block still in flight, in order."""
        return self.ready(0)

    def write(self, chunk: DecodedChunk) -> tuple[float, list[np.ndarray]]:
        """Hand a ready block to every output's mp4 -> (write seconds, uint8 frames [m, H, W, 3] per output)."""
        seconds, written = 0.0, []
        for out, frames, latents in zip(self.outputs, chunk.frames, chunk.latents):
            array = frames.numpy()
            if chunk.copied is not None and latents is not None:
                latents = latents.clone()  # off the pinned buffer, which goes back to the allocator
            seconds += out.write(array, latents)
            written.append(array)
        return seconds, written


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
