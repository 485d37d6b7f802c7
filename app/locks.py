"""Per-video locks: ``fcntl.flock`` on a hidden ``.name.mp4.lock`` file next to the video.

A run holds a video's lock from the moment it decides to make the video until its sidecar is written; another run
(on this machine or, on a shared file system with working ``flock``, on another node) sees the lock taken and leaves
the video alone. The operating system releases the lock when the holding process exits in any way, SIGKILL
included, so a lock never outlives its run: a leftover lock file is simply taken over. The holder deletes the lock
file while still holding the lock; a run that opened the old file before the deletion notices (the path no longer
names the file it locked) and tries again, so two runs never both hold one video.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_PREFIX, LOCK_SUFFIX = ".", ".lock"


def lock_path(video: Path) -> Path:
    """The lock file of ``video``: ``.name.mp4.lock`` in the same folder."""
    return video.with_name(LOCK_PREFIX + video.name + LOCK_SUFFIX)


class VideoLock:
    """An exclusive, non-blocking lock on one video; ``acquire()`` -> bool, ``release()``."""

    def __init__(self, video: Path):
        self.path = lock_path(video)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock if no live process holds it; False when another one does."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)                   # the holder deleted this file as we opened it: lock the new one
        with contextlib.suppress(OSError):  # for people looking at the folder; never read back
            os.ftruncate(fd, 0)
            os.write(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode())
        self._fd = fd
        return True

    def owner(self) -> str:
        """Who holds the lock, as its holder wrote it ("host pid N"), or "" when unknown."""
        try:
            return self.path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""

    def release(self) -> None:
        """Delete the lock file and release the lock (no-op when not held)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "VideoLock":
        """Use as a context manager around a lock already acquired (released on exit)."""
        return self

    def __exit__(self, *exc) -> None:
        """Release."""
        self.release()
