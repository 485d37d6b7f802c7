"""Prompt switches while a video is generated: from a schedule, or typed on stdin (``--interactive``).

``PromptSwitcher`` is the pipeline's ``prompt_switch`` callback for one video. Before chunk i >= 1 the runner calls
``prepare(i)``: it takes the schedule entry of chunk i, or the newest line typed since the last chunk, and says
whether the video goes on (a ``/stop`` line ends it). The pipeline then calls ``switcher(i, f)``, which encodes the
new prompt (with the run's text encoder) and records the switch for the sidecar.
"""
from __future__ import annotations

import logging
import queue
import sys
import threading
from typing import Callable, TextIO

import torch

from .schedule import ChunkClock, PromptSchedule
from .text import first_unencodable, safe_text

logger = logging.getLogger(__name__)

STOP_LINE = "/stop"


class LivePrompts:
    """Lines of a text stream (stdin), read by a background thread; the newest unread line is taken per chunk.

    Blank lines are ignored; ``/stop`` asks to end the video after the chunk in progress; the end of the stream
    means no more switches (``eof``). Bytes that are not UTF-8 become U+FFFD (with a warning): on stdin they are
    read with ``surrogateescape``, then replaced, so a stray byte neither stops the reader nor reaches a sidecar.
    """

    def __init__(self, stream: TextIO | None = None):
        if stream is None:
            stream = sys.stdin
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(errors="surrogateescape")
        self.stream = stream
        self._lines: queue.Queue = queue.Queue()
        self._eof = threading.Event()
        self._thread = threading.Thread(target=self._read, name="prompt-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        """Queue every non-blank line until the stream ends."""
        try:
            for raw in iter(self.stream.readline, ""):
                line = " ".join(raw.split())
                if first_unencodable(line) is not None:
                    line = safe_text(line)
                    logger.warning("a typed line is not valid UTF-8; undecodable bytes replaced by U+FFFD: %r", line)
                if line:
                    self._lines.put(line)
        except (OSError, ValueError) as exc:
            logger.warning("stopped reading prompts from stdin (%s)", exc)
        finally:
            self._eof.set()

    @property
    def eof(self) -> bool:
        """Whether the stream has ended and every line has been taken."""
        return self._eof.is_set() and self._lines.empty()

    def pending(self) -> int:
        """Lines read but not taken yet."""
        return self._lines.qsize()

    def take(self) -> tuple[str | None, bool]:
        """(newest unread prompt or None, stop requested); older unread lines are dropped (logged)."""
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                break
        stop = STOP_LINE in lines
        prompts = [ln for ln in lines if ln != STOP_LINE]
        if len(prompts) > 1:
            logger.info("%d prompts arrived during one chunk; using the newest, %r", len(prompts), prompts[-1])
        return (prompts[-1] if prompts else None), stop


class PromptSwitcher:
    """Decides the prompt of every chunk of one video and records each switch (``switches``, for the sidecar)."""

    def __init__(self, clock: ChunkClock, encode: Callable[[str], torch.Tensor], opening: str,
                 schedule: PromptSchedule | None = None, live: LivePrompts | None = None, endless: bool = False):
        self.clock, self.encode, self.schedule, self.live, self.endless = clock, encode, schedule, live, endless
        self.current = opening           # the prompt in use
        self.switches: list[dict] = []
        self.stopped = False             # a /stop line (or, in an endless run, the end of stdin) ended the video
        self._pending: dict[int, tuple[str, dict]] = {}
        self._prepared = 0               # last chunk ``prepare`` was called for

    def prepare(self, chunk: int) -> bool:
        """Take the switch (if any) for ``chunk``; False when the video should end before it."""
        self._prepared = chunk
        if self.schedule is not None and chunk in self.schedule.chunks:
            entry = self.schedule.chunks[chunk]
            self._pending[chunk] = (entry.prompt, {"source": "schedule", "requested_start_s": entry.start,
                                                   "schedule_line": entry.line})
        if self.live is not None:
            text, stop = self.live.take()
            if stop or (self.endless and text is None and self.live.eof):
                self.stopped = True
                logger.info("ending the video before chunk %d (%s)", chunk, "/stop" if stop else "end of stdin")
                return False
            if text is not None:
                self._pending[chunk] = (text, {"source": "stdin"})
        return True

    def __call__(self, chunk: int, latent_frame: int) -> torch.Tensor | None:
        """The pipeline's ``prompt_switch``: embeddings [k, text_len, text_dim] of the new prompt, or None."""
        if chunk > self._prepared:
            self.prepare(chunk)  # used without a runner; a stop seen here shows in ``stopped`` after the chunk
        if chunk not in self._pending:
            return None
        text, extra = self._pending.pop(chunk)
        if text == self.current:
            logger.info("chunk %d: %r is already the prompt; nothing to switch", chunk, text)
            return None
        self.current = text
        record = {"chunk": chunk, "latent_frame": latent_frame, "video_frame": self.clock.video_frame(chunk),
                  "time_s": round(self.clock.seconds(chunk), 4), **extra, "prompt": text}
        self.switches.append(record)
        logger.info("chunk %d (%.2f s): switching to %r", chunk, record["time_s"], text)
        return self.encode(text)
