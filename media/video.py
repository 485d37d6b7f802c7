"""Video frames to H.264 fragmented mp4: x264 in the ffmpeg binary of imageio-ffmpeg, the mp4 written here.

ffmpeg's own mp4 muxer only closes a fragment when the next frame arrives, so the newest frames of a growing file
would always be missing. Instead ffmpeg sends its encoded packets back as FLV (``media.flv``: one tag per frame,
written at once), and ``media.fmp4`` puts them into fragments: once a fragment's frames are encoded it is in the
file, complete.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import queue
import subprocess
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from app.cli_config import CLIError
from .flv import FlvError, iter_h264
from .fmp4 import FragmentedMp4, Sample

logger = logging.getLogger(__name__)

CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"
DEFAULT_CRF = 18   # visually lossless H.264
MACRO_BLOCK = 16   # frame sizes must be multiples of this, or ffmpeg would rescale
PRESET = "medium"  # x264's default
TUNE = "zerolatency"  # no frame delay in the encoder: a chunk's frames can be written as soon as they exist
CONTAINER = "fragmented mp4 (one fragment per chunk, each starting with a key frame)"
STDERR_LINES = 20
POLL_S = 0.5       # seconds between liveness checks while waiting for the encoder
MESSAGE_WAIT_S = 5  # seconds to wait for ffmpeg's last words when it failed


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


def chunk_keyframes(first: int, every: int) -> str:
    """ffmpeg ``-force_key_frames`` expression: key frames at frame 0 and at ``first + k * every`` (chunk starts)."""
    return f"expr:eq(n,0)+gte(n,{first})*eq(mod(n-{first},{every}),0)"


def ffmpeg_command(width: int, height: int, fps: float, crf: int, keyframes: str | None) -> list[str]:
    """ffmpeg reading raw RGB frames on stdin and writing H.264 packets as FLV on stdout, one per frame, at once.

    ``-tune zerolatency`` (no B-frames, no look-ahead, sliced threads) makes x264 emit every frame's packet as soon
    as the frame arrives, so a flush never waits for frames that do not exist yet.
    """
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-video_size", f"{width}x{height}", "-framerate", f"{fps:g}",
           "-i", "pipe:0", "-an", "-c:v", CODEC, "-preset", PRESET, "-tune", TUNE, "-crf", str(crf),
           "-pix_fmt", PIXEL_FORMAT]
    if keyframes:
        cmd += ["-force_key_frames", keyframes]
    return cmd + ["-flush_packets", "1", "-f", "flv", "-flvflags", "no_metadata+no_duration_filesize", "pipe:1"]


class Mp4Writer:
    """Incremental H.264/yuv420p fragmented-mp4 writer: ``append`` uint8 frames [n, H, W, 3], ``flush``, ``close``.

    Frames go to an ffmpeg process (x264, zero latency) through a feeder thread, and its packets come back on a
    pipe to a reader thread, so the caller never waits for the encoder. ``flush`` ends a fragment after the frames
    appended so far: the reader writes it to the file, complete, as soon as all of them are encoded
    (``flush(wait=True)`` also waits for that). The file is a valid video at every moment. ``keyframes`` is an
    ffmpeg ``-force_key_frames`` expression (``chunk_keyframes``: each fragment then starts with a key frame).
    At most one batch of frames waits for the feeder, so memory stays bounded. ``on_frame`` is called after every
    frame is handed over (progress or tests).
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float, crf: int = DEFAULT_CRF,
                 keyframes: str | None = None, on_frame: Callable[[int], None] | None = None):
        if width % MACRO_BLOCK or height % MACRO_BLOCK:
            raise ValueError(f"frame size {width}x{height} must be a multiple of {MACRO_BLOCK} for H.264")
        self.path, self.size, self.on_frame = Path(path), (width, height), on_frame
        self.frames_written = 0     # frames handed over by the caller
        self.frames_in_file = 0     # frames in complete fragments on disk
        self._cond = threading.Condition()          # guards everything below and every write to the file
        self._pending: list[Sample] = []            # encoded frames waiting for their fragment to end
        self._ends: collections.deque = collections.deque()  # frame counts at which fragments end
        self._avcc: bytes | None = None
        self._error: BaseException | None = None
        self._encoder_done = False
        self._closed = False
        self._inbox: queue.Queue = queue.Queue(maxsize=1)   # frame batches for the feeder; None: no more frames
        self._stderr: collections.deque = collections.deque(maxlen=STDERR_LINES)
        self._file = open(self.path, "wb")
        try:
            self._mp4 = FragmentedMp4(self._file, width, height, fps)
            self._proc = subprocess.Popen(ffmpeg_command(width, height, fps, crf, keyframes), stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except BaseException:
            self._file.close()
            raise
        self._threads = [threading.Thread(target=target, name=name, daemon=True) for target, name in (
            (self._feed, "mp4-feeder"), (self._read, "mp4-reader"), (self._drain_stderr, "ffmpeg-stderr"))]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ background threads

    def _feed(self) -> None:
        """Feeder thread: hand queued frames to ffmpeg's stdin; close it at the end marker."""
        while (batch := self._inbox.get()) is not None:
            if self._error is not None:
                continue                   # keep draining so the caller never blocks
            try:
                for frame in batch:        # [H, W, 3] uint8
                    self._proc.stdin.write(frame.tobytes())
                self._proc.stdin.flush()
            except (OSError, ValueError) as exc:
                self._fail(RuntimeError(f"ffmpeg stopped reading frames ({exc})"))
        with contextlib.suppress(OSError, ValueError):
            self._proc.stdin.close()

    def _read(self) -> None:
        """Reader thread: collect encoded frames and write every fragment whose frames are all encoded."""
        try:
            for kind, data, key in iter_h264(self._proc.stdout):
                with self._cond:
                    if kind == "config":
                        self._avcc = data
                    else:
                        self._pending.append(Sample(data, key))
                        self._write_ready()
                    self._cond.notify_all()
        except FlvError as exc:
            self._fail(RuntimeError(str(exc)))
        except OSError as exc:             # reading the pipe, or writing the file (disk full)
            self._fail(exc)
        finally:
            with self._cond:
                self._encoder_done = True
                self._cond.notify_all()

    def _drain_stderr(self) -> None:
        """Keep the last lines ffmpeg prints (for error messages) so its stderr pipe never fills."""
        for line in self._proc.stderr:
            self._stderr.append(line.decode("utf-8", "replace").rstrip())

    def _fail(self, exc: BaseException) -> None:
        """Record the first error (raised in the caller's thread at its next call)."""
        with self._cond:
            if self._error is None:
                self._error = exc
            self._cond.notify_all()

    def _write_ready(self) -> None:
        """Write every fragment whose frames are all encoded (call with ``_cond`` held)."""
        while self._ends and self.frames_in_file + len(self._pending) >= self._ends[0]:
            n = self._ends.popleft() - self.frames_in_file
            if n <= 0:
                continue
            if not self._mp4.started:
                if self._avcc is None:
                    raise FlvError("ffmpeg sent a frame before the H.264 decoder configuration")
                self._mp4.write_init(self._avcc)
            self._mp4.write_fragment(self._pending[:n])
            del self._pending[:n]
            self.frames_in_file += n
            self._cond.notify_all()

    # ------------------------------------------------------------------ caller's thread

    def _check(self, what: str = "writing") -> None:
        """Raise the error a background thread met: OSError as it is (disk full...), else with ffmpeg's words."""
        exc = self._error
        if exc is None:
            return
        if isinstance(exc, OSError):
            raise exc
        raise RuntimeError(f"ffmpeg failed while {what} {self.path}: {exc} ({self._ffmpeg_messages()})")

    def _ffmpeg_messages(self) -> str:
        """ffmpeg's last stderr lines, after waiting briefly for it to exit so that they are complete."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=MESSAGE_WAIT_S)
        self._threads[2].join(timeout=MESSAGE_WAIT_S)
        return " | ".join(self._stderr) or f"exit status {self._proc.poll()}"

    def _put(self, item) -> None:
        """Queue a batch (or the end marker) for the feeder, waiting while the previous one is being fed."""
        while True:
            self._check()
            try:
                self._inbox.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def append(self, frames: np.ndarray) -> None:
        """Hand uint8 frames [n, H, W, 3] to the encoder; they reach the file with the next fragment (``flush``)."""
        w, h = self.size
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (h, w, 3):
            raise ValueError(f"expected uint8 frames [n, {h}, {w}, 3], got {frames.dtype} {tuple(frames.shape)}")
        self._put(np.array(frames, order="C", copy=True))  # the caller may reuse its array
        for _ in range(len(frames)):
            self.frames_written += 1
            if self.on_frame is not None:
                self.on_frame(self.frames_written)

    def flush(self, wait: bool = True) -> int:
        """End a fragment after the frames appended so far; ``wait``: until they are all in the file.

        Returns the number of frames in complete fragments on disk.
        """
        self._check()
        with self._cond:
            last_end = self._ends[-1] if self._ends else self.frames_in_file
            if self.frames_written > last_end:
                self._ends.append(self.frames_written)
                self._write_ready()
            while wait and self.frames_in_file < self.frames_written:
                if self._error is not None or self._encoder_done:
                    break
                self._cond.wait(timeout=POLL_S)
        self._check("encoding")
        if wait and self.frames_in_file < self.frames_written:
            raise RuntimeError(f"ffmpeg ended before encoding every frame of {self.path} "
                               f"({self.frames_in_file} of {self.frames_written}; {self._ffmpeg_messages()})")
        return self.frames_in_file

    def close(self) -> None:
        """Write the remaining frames, stop ffmpeg and finish the file (raises if anything failed)."""
        if self._closed:
            return
        try:
            self.flush(wait=False)
            self._put(None)
            self._threads[0].join()        # the feeder has closed ffmpeg's stdin
            code = self._proc.wait()
            self._threads[1].join()        # the reader has written the last fragment
            self._check("finishing")
            if code != 0 or self.frames_in_file != self.frames_written:
                raise RuntimeError(f"ffmpeg failed while finishing {self.path} (exit status {code}, "
                                   f"{self.frames_in_file} of {self.frames_written} frames; "
                                   f"{self._ffmpeg_messages()})")
            self._mp4.finish()
        except BaseException:
            self.abort()
            raise
        self._shutdown()

    def abort(self) -> None:
        """Stop ffmpeg at once and close the file as it is (the caller deletes it)."""
        if self._closed:
            return
        self._fail(RuntimeError("aborted"))
        self._proc.kill()
        with contextlib.suppress(queue.Empty):
            while True:
                self._inbox.get_nowait()
        self._inbox.put(None)
        self._shutdown()

    def _shutdown(self) -> None:
        """Join the threads and release the process's pipes and the file."""
        self._closed = True
        self._proc.wait()
        for thread in self._threads:
            thread.join()
        self._proc.stdout.close()
        self._proc.stderr.close()
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
    """Write uint8 frames [T, H, W, 3] to ``path`` as an mp4."""
    _, h, w, _ = frames.shape
    with Mp4Writer(path, w, h, fps, **kwargs) as writer:
        writer.append(frames)
