"""Video frames to a growing H.264 fragmented mp4, in-process with PyAV (FFmpeg's libraries, x264 included).

One persistent x264 encoder per file (``tune=zerolatency``: every frame's packet comes out as the frame goes in) and,
for every fragment, a fresh in-memory mp4 muxer that is given exactly that fragment's packets and closed. The first
muxer's ``ftyp`` + ``moov`` open the file; of every muxer only the ``moof`` + ``mdat`` of its fragment are appended
(``fragment_index`` numbers them, ``frag_discont`` keeps their timestamps running on). So a fragment is complete on
disk as soon as its frames are encoded, and the file is a playable video at every moment. The first frame of every
fragment is forced to be an IDR frame, so every fragment can be decoded on its own.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import logging
import os
import threading
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
import torch

from utils.errors import CLIError

logger = logging.getLogger(__name__)

CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"
DEFAULT_CRF = 18   # visually lossless H.264
MACRO_BLOCK = 16   # frame sizes must be multiples of this, or the encoder would pad
PRESET = "medium"  # x264's default
TUNE = "zerolatency"  # no frame delay in the encoder: a chunk's frames can be written as soon as they exist
CONTAINER = "fragmented mp4 (one fragment per chunk, each starting with a key frame)"
MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof+frag_discont+skip_trailer"
# A key frame x264 places itself (a scene cut) must not split a chunk: the muxer may start a new fragment only after
# this many microseconds (the option's maximum, 35 minutes, far more than a chunk lasts), so it writes the one
# fragment of its chunk when it is closed.
MIN_FRAGMENT_US = str(2 ** 31 - 1)
HEAD_BOXES = (b"ftyp", b"moov")      # written once, from the first fragment's muxer
FRAGMENT_BOXES = (b"moof", b"mdat")  # appended for every fragment
FPS_DENOMINATOR = 1001               # frame rates are represented exactly up to this denominator (30000/1001)
MAX_DENOMINATOR = 2 ** 31 - 1        # for rates below 1/1001 fps
MAX_ENCODER_THREADS = 8              # x264 threads per file at most (bounds threads on many-core machines)
WRITER_THREADS = 4                   # background threads shared by all files of a process


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Frames [T, 3, H, W] float in [-1, 1] -> uint8 [T, H, W, 3] on the host (rounded, clamped)."""
    x = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [T, 3, H, W]
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def check_encoder() -> None:
    """Fail early (CLIError) when PyAV is missing or its FFmpeg has no libx264."""
    try:
        import av
    except ImportError as exc:
        raise CLIError(f"PyAV is needed to write mp4 files ({exc}). Install it with: pip install av "
                       f"(the wheel bundles FFmpeg with libx264).") from None
    if CODEC not in av.codecs_available:
        raise CLIError(f"The FFmpeg inside PyAV {av.__version__} has no {CODEC} encoder. Install the PyAV wheel "
                       f"from PyPI (pip install --force-reinstall av), which bundles libx264.")


def encoder_version() -> dict:
    """PyAV's version and the FFmpeg library versions it runs (for sidecars)."""
    import av
    libs = {name: ".".join(map(str, v)) for name, v in av.library_versions.items()
            if name in ("libavcodec", "libavformat")}
    return {"av": av.__version__, **libs}


def frame_rate(fps: float) -> Fraction:
    """``fps`` as an exact fraction (16 -> 16, 29.97 -> 2997/100, 30000/1001 stays so)."""
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    rate = Fraction(fps).limit_denominator(FPS_DENOMINATOR)
    return rate if rate > 0 else Fraction(fps).limit_denominator(MAX_DENOMINATOR)


def encoder_threads(num_files: int) -> int:
    """x264 threads per file when ``num_files`` files are written at once: the CPU cores shared, at least 1."""
    return max(1, min(MAX_ENCODER_THREADS, (os.cpu_count() or 1) // max(1, num_files)))


_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def shared_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process-wide pool of WRITER_THREADS threads that encodes and writes fragments in the background."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="mp4")
        return _POOL


def iter_boxes(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, whole box) of every top-level ISO BMFF box in ``data`` (32-bit sizes, as FFmpeg writes them here)."""
    pos = 0
    while pos < len(data):
        size, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if size < 8 or pos + size > len(data):
            raise RuntimeError(f"the mp4 muxer wrote an unexpected box layout ({kind!r}, {size} bytes at {pos})")
        yield kind, data[pos:pos + size]
        pos += size


class Mp4Writer:
    """Incremental H.264/yuv420p fragmented-mp4 writer: ``append`` uint8 frames [n, H, W, 3], ``flush``, ``close``.

    ``flush`` makes the frames appended since the last flush one fragment, opening with a key frame. With a
    ``pool`` the fragment is encoded and written in a background thread (``flush(wait=True)`` waits for it),
    without one in the caller's thread. At most one fragment per file is in flight, so memory stays bounded.
    ``threads``: threads of x264 and of the RGB -> yuv420p scaler each (0: one per core).
    ``size_bytes`` and ``sha256()`` identify the bytes written. ``on_frame`` is called after every frame is handed
    over (progress or tests).
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float, crf: int = DEFAULT_CRF,
                 on_frame: Callable[[int], None] | None = None, threads: int = 0,
                 pool: concurrent.futures.Executor | None = None):
        if width % MACRO_BLOCK or height % MACRO_BLOCK:
            raise ValueError(f"frame size {width}x{height} must be a multiple of {MACRO_BLOCK} for H.264")
        self.path, self.size, self.on_frame, self.pool = Path(path), (width, height), on_frame, pool
        self.rate = frame_rate(fps)
        self.frames_written = 0     # frames handed over by the caller
        self.frames_in_file = 0     # frames in complete fragments on disk
        self.fragments = 0
        self.size_bytes = 0
        self._hash = hashlib.sha256()
        self._pending: list[np.ndarray] = []          # frames [n, H, W, 3] appended since the last flush
        self._job: concurrent.futures.Future | None = None
        self._closed = False
        self._encoder = self._open_encoder(width, height, crf, threads)
        self._to_yuv = None                           # the RGB -> yuv420p converter, made with the first frame
        self._scaler_threads: dict = {"threads": threads}  # {} where PyAV has no such option (older versions)
        self._file: BinaryIO = open(self.path, "wb")

    def _open_encoder(self, width: int, height: int, crf: int, threads: int):
        """An opened x264 encoder for this file's frames."""
        import av
        enc = av.CodecContext.create(CODEC, "w")
        enc.width, enc.height, enc.pix_fmt = width, height, PIXEL_FORMAT
        enc.time_base, enc.framerate = 1 / self.rate, self.rate
        enc.thread_count = threads
        enc.options = {"crf": str(crf), "preset": PRESET, "tune": TUNE, "forced-idr": "1"}
        enc.open()
        return enc

    # ------------------------------------------------------------------ one fragment

    def _encode(self, frames: list[np.ndarray]) -> list:
        """Packets of ``frames`` (uint8 [H, W, 3] each), the first one an IDR frame."""
        import av
        if self._to_yuv is None:
            self._to_yuv = av.video.reformatter.VideoReformatter()   # keeps its scaler from frame to frame
        packets = []
        for i, rgb in enumerate(frames):
            frame = self._yuv(av.VideoFrame.from_ndarray(rgb, format="rgb24"))
            frame.pts, frame.time_base = self.frames_in_file + i, self._encoder.time_base
            frame.pict_type = av.video.frame.PictureType.I if i == 0 else av.video.frame.PictureType.NONE
            packets += self._encoder.encode(frame)
        if len(packets) != len(frames) or not packets[0].is_keyframe:
            raise RuntimeError(f"x264 returned {len(packets)} packets for {len(frames)} frames (first key frame: "
                               f"{bool(packets and packets[0].is_keyframe)}); expected one per frame at once")
        return packets

    def _yuv(self, frame):
        """``frame`` converted to the encoder's pixel format (with as many threads as the encoder)."""
        try:
            return self._to_yuv.reformat(frame, format=PIXEL_FORMAT, **self._scaler_threads)
        except TypeError:                  # an older PyAV: its scaler runs in the calling thread anyway
            self._scaler_threads = {}
            return self._to_yuv.reformat(frame, format=PIXEL_FORMAT)

    def _mux(self, packets: list) -> bytes:
        """The mp4 bytes of one muxer holding exactly ``packets``: ftyp, moov, then one moof + mdat."""
        import av
        buf = io.BytesIO()
        options = {"movflags": MOVFLAGS, "min_frag_duration": MIN_FRAGMENT_US, "avoid_negative_ts": "disabled",
                   "fragment_index": str(self.fragments + 1)}
        with av.open(buf, "w", format="mp4", options=options) as mux:
            stream = mux.add_stream("h264", rate=self.rate)
            stream.width, stream.height = self.size
            stream.pix_fmt = PIXEL_FORMAT
            stream.codec_context.extradata = self._encoder.extradata
            stream.time_base = self._encoder.time_base
            for packet in packets:
                packet.stream = stream
                mux.mux(packet)
        return buf.getvalue()

    def _write_fragment(self, frames: list[np.ndarray]) -> None:
        """Encode ``frames`` and append them to the file as one complete fragment (ftyp + moov first)."""
        data = self._mux(self._encode(frames))
        keep = FRAGMENT_BOXES if self.fragments else HEAD_BOXES + FRAGMENT_BOXES
        boxes = list(iter_boxes(data))
        kinds = [kind for kind, _ in boxes]
        if b"moof" not in kinds or (not self.fragments and kinds[:2] != list(HEAD_BOXES)):
            raise RuntimeError(f"the mp4 muxer wrote an unexpected box layout ({kinds})")
        out = b"".join(body for kind, body in boxes if kind in keep)
        self._file.write(out)
        self._file.flush()
        self._hash.update(out)
        self.size_bytes += len(out)
        self.fragments += 1
        self.frames_in_file += len(frames)

    # ------------------------------------------------------------------ caller's thread

    def _wait_job(self) -> None:
        """Wait for the fragment in flight (re-raising its error)."""
        job, self._job = self._job, None
        if job is not None:
            job.result()

    def append(self, frames: np.ndarray) -> None:
        """Hand uint8 frames [n, H, W, 3] over; they reach the file with the next fragment (``flush``)."""
        w, h = self.size
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (h, w, 3):
            raise ValueError(f"expected uint8 frames [n, {h}, {w}, 3], got {frames.dtype} {tuple(frames.shape)}")
        if self._closed:
            raise RuntimeError(f"{self.path} is closed")
        self._pending.extend(np.array(frames, order="C", copy=True))  # the caller may reuse its array
        for _ in range(len(frames)):
            self.frames_written += 1
            if self.on_frame is not None:
                self.on_frame(self.frames_written)

    def flush(self, wait: bool = True) -> int:
        """End a fragment after the frames appended so far; ``wait``: until they are all in the file.

        Returns the number of frames in complete fragments on disk.
        """
        if self._pending:
            self._wait_job()               # fragments are written in order, one at a time
            frames, self._pending = self._pending, []
            if self.pool is None:
                self._write_fragment(frames)
            else:
                self._job = self.pool.submit(self._write_fragment, frames)
        if wait:
            self._wait_job()
        return self.frames_in_file

    def sha256(self) -> str:
        """Hex SHA-256 of the bytes written so far (the whole file once closed)."""
        return self._hash.hexdigest()

    def close(self) -> None:
        """Write the remaining frames and close the file (raises if anything failed)."""
        if self._closed:
            return
        try:
            self.flush(wait=True)
            leftover = self._encoder.encode(None)   # zerolatency holds no frames back; this just ends the stream
            if leftover:
                raise RuntimeError(f"x264 held {len(leftover)} frames back while writing {self.path}")
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._file.close()

    def abort(self) -> None:
        """Stop at once and close the file as it is (the caller deletes it)."""
        if self._closed:
            return
        self._closed = True
        self._pending = []
        job, self._job = self._job, None
        if job is not None and not job.cancel():
            concurrent.futures.wait([job])     # an encode in progress cannot be interrupted; it is short
        self._file.close()

    def __enter__(self) -> "Mp4Writer":
        """Use as a context manager: the file is finished on exit, or abandoned on an error."""
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Close normally, or abort when the block raised (so the caller can delete the partial file)."""
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, **kwargs) -> None:
    """Write uint8 frames [T, H, W, 3] to ``path`` as an mp4 (one fragment)."""
    _, h, w, _ = frames.shape
    with Mp4Writer(path, w, h, fps, **kwargs) as writer:
        writer.append(frames)
