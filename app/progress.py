"""Progress reporting: a tqdm bar on a terminal, plain log lines when stderr goes to a file or a pipe.

A redrawn bar writes carriage returns and escape codes, which make a log file (``inference.py ... 2> run.log``,
a cluster job's output) unreadable. So when stderr is not a terminal, :func:`progress_bar` returns a
:class:`LogProgress` with the same ``update()`` API that logs one line every few updates, e.g.
``frames 120/501 (24%) 3.1 fps, 2 min left``.
"""
from __future__ import annotations

import logging
import sys
import time

logger = logging.getLogger(__name__)

LOG_EVERY = 5   # updates (chunks) between two progress lines when stderr is not a terminal


def is_terminal(stream=None) -> bool:
    """Whether ``stream`` (default: the current ``sys.stderr``) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _duration(seconds: float) -> str:
    """Seconds as a short human duration: '45 s', '12 min', '3.5 h'."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class LogProgress:
    """tqdm-like progress that logs ``desc n/total (p%) rate, time left`` every ``every`` updates and at the end."""

    def __init__(self, total: int | None, desc: str, unit: str, every: int = LOG_EVERY, rate_unit: str | None = None,
                 enabled: bool = True, log: logging.Logger = logger):
        self.total, self.desc, self.unit = total, desc, unit
        self.every = max(1, int(every))
        self.rate_unit = rate_unit or f"{unit}/s"
        self.enabled = enabled
        self.log = log
        self.n = 0
        self.updates = 0
        self._logged_at = 0
        self._start = time.perf_counter()

    def line(self) -> str:
        """The progress line for the current count."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rate = self.n / elapsed
        text = f"{self.desc} {self.n}" if self.total is None else (
            f"{self.desc} {self.n}/{self.total} ({100 * self.n // max(self.total, 1)}%)")
        if self.n:
            text += f" {rate:.1f} {self.rate_unit}" if rate >= 1 else f" {1 / rate:.1f} s/{self.unit}"
            if self.total is not None and self.n < self.total:
                text += f", {_duration((self.total - self.n) / rate)} left"
        return text

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; log a line every ``every`` updates and when the total is reached."""
        self.n += n
        self.updates += 1
        done = self.total is not None and self.n >= self.total
        if self.enabled and (self.updates % self.every == 0 or done):
            self._emit()

    def _emit(self) -> None:
        """Log the current line once per count."""
        if self.n != self._logged_at:
            self._logged_at = self.n
            self.log.info("%s", self.line())

    def close(self) -> None:
        """Log the final count if it was not logged yet (an early stop or an endless run)."""
        if self.enabled:
            self._emit()

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int | None, desc: str, unit: str, enabled: bool = True, every: int = LOG_EVERY,
                 rate_unit: str | None = None, stream=None):
    """A context-managed progress object with ``update(n)``: tqdm on a terminal, :class:`LogProgress` otherwise."""
    if is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not enabled, file=stream)
    return LogProgress(total, desc, unit, every=every, rate_unit=rate_unit, enabled=enabled)
