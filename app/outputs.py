"""Output files: upstream-compatible names made safe for any file system, atomic writes, and resume checks.

A video counts as finished only when ``name.mp4`` and its sidecar ``name.json`` exist, the sidecar is one this
program wrote, its ``request`` equals what this run would make, and the mp4 on disk has the size and SHA-256 the
sidecar records (a truncated, damaged or replaced mp4 is made again). Files are first written to
``.name.mp4.part`` / ``.name.json.part`` in the same folder, flushed to disk, then renamed; the video is renamed
before the sidecar is written. While a run makes a video it holds the video's lock (``app.locks``): other runs skip
it, and only a run holding the lock deletes leftover ``.part`` files.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .locks import VideoLock
from .prompts import PromptJob
from .text import safe_text

logger = logging.getLogger(__name__)

MAX_NAME_BYTES = 255                      # file-name limit of ext4, xfs, btrfs, APFS, NTFS (UTF-16 units >= bytes/3)
UNSAFE_CHARS = set('/\\<>:"|?*')          # path separators and characters Windows/SMB/exFAT reject
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
PART_PREFIX, PART_SUFFIX = ".", ".part"
LONGEST_EXTENSION = ".json"
PROMPT_NAME_CHARS = 100                   # upstream: {prompt[:100]}-{sample}.mp4
LATENTS_SUFFIX = ".pt"                    # shorter than ".json", so the name limits hold for it too
VIDEO_RECORD = "mp4"                      # sidecar key: {"size": bytes, "sha256": hex} of the finished video
HASH_BLOCK = 1 << 20


def sanitize(text: str) -> str:
    """Make ``text`` usable as (part of) a file name: no separators, control or format characters, no edge dots."""
    out = []
    for ch in safe_text(text):
        cat = unicodedata.category(ch)
        if ch in UNSAFE_CHARS:
            out.append("_")
        elif cat in ("Cc", "Zl", "Zp"):
            out.append(" ")               # newlines, tabs, other controls
        elif cat == "Cf":
            continue                      # zero-width and bidi-override characters
        else:
            out.append(ch)
    name = "".join(out).strip().rstrip(". ")
    if name.startswith("."):
        name = "_" + name[1:]
    return name or "_"


def truncate_utf8(text: str, max_bytes: int) -> str:
    """Longest prefix of ``text`` whose UTF-8 encoding fits ``max_bytes`` (never splits a character)."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", errors="ignore").rstrip(". ")


def _fit(stem: str, tail: str) -> str:
    """``stem + tail`` with the stem shortened so that every derived name (sidecar, .part) fits MAX_NAME_BYTES."""
    overhead = len((PART_PREFIX + tail + LONGEST_EXTENSION + PART_SUFFIX).encode("utf-8"))
    name = truncate_utf8(stem, MAX_NAME_BYTES - overhead) + tail
    if name.split(".")[0].rstrip(" ").upper() in WINDOWS_RESERVED:
        name = "_" + name
    return name


def base_name(job: PromptJob, sample: int, save_with_index: bool, use_ema: bool, tag: str = "") -> str:
    """File name without extension: ``{prompt[:100]}-{sample}`` or ``{idx}-{sample}_{ema|regular}`` (made safe)."""
    if save_with_index:
        return f"{job.line}{tag}-{sample}_{'ema' if use_ema else 'regular'}"
    return _fit(sanitize(job.prompt[:PROMPT_NAME_CHARS]), f"{tag}-{sample}")


@dataclass(frozen=True)
class OutputSlot:
    """Where one sample of one prompt goes."""

    video: Path
    sample: int

    @property
    def sidecar(self) -> Path:
        """The JSON sidecar next to the video."""
        return self.video.with_suffix(".json")

    @property
    def latents(self) -> Path:
        """Where ``--save_latents`` puts the latents of the video (``name.pt`` next to ``name.mp4``)."""
        return self.video.with_suffix(LATENTS_SUFFIX)

    def parts(self) -> tuple[Path, Path]:
        """Temporary names of the video and the sidecar while they are written."""
        return part_path(self.video), part_path(self.sidecar)

    def all_parts(self) -> tuple[Path, Path, Path]:
        """Temporary names of the video, the sidecar and the latents (``--save_latents``)."""
        return (*self.parts(), part_path(self.latents))


def part_path(path: Path) -> Path:
    """The temporary name ``.name.part`` of ``path`` in the same folder."""
    return path.with_name(PART_PREFIX + path.name + PART_SUFFIX)


def plan_outputs(jobs: list[PromptJob], output_folder: Path, num_samples: int, save_with_index: bool,
                 use_ema: bool) -> dict[int, list[OutputSlot]]:
    """Output slots of every job (keyed by job.index). Plan over ALL jobs so every rank derives the same names.

    Prompts whose names collide in one folder (same first 100 characters, compared case-insensitively) get
    ``~{idx}`` after the prompt part, the first one keeping the upstream name.
    """
    taken: set[tuple[str, str]] = set()
    plan: dict[int, list[OutputSlot]] = {}
    for job in jobs:
        folder = output_folder / safe_text(job.group) if job.group else output_folder
        tag = ""
        while True:
            names = [base_name(job, s, save_with_index, use_ema, tag) for s in range(num_samples)]
            keys = [(job.group, n.casefold()) for n in names]
            if not any(k in taken for k in keys):
                break
            tag = f"~{job.line}" if not tag else tag + "~"
        if tag:
            logger.info("prompt %d (%s line %d) shares its name with an earlier prompt; writing %s.mp4", job.index,
                        job.source, job.line + 1, names[0])
        taken.update(keys)
        plan[job.index] = [OutputSlot(folder / f"{n}.mp4", s) for s, n in enumerate(names)]
    return plan


def read_sidecar(path: Path) -> tuple[dict | None, str]:
    """(the sidecar's content, "") or (None, what is wrong with it): missing, unreadable, or not what we write."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "video without sidecar (an interrupted write)"
    except (OSError, ValueError) as exc:
        return None, f"its sidecar {path.name} cannot be read ({exc})"
    if not isinstance(data, dict):
        return None, f"its sidecar {path.name} holds a JSON {type(data).__name__}, not the object this program writes"
    if not isinstance(data.get("request"), dict):
        return None, f"its sidecar {path.name} has no valid \"request\" object"
    return data, ""


def normalize(data: dict) -> dict:
    """JSON round trip (tuples -> lists, keys -> str) so requests compare like their stored form."""
    return json.loads(json.dumps(data))


def file_record(path: Path) -> dict:
    """{"size": bytes, "sha256": hex} of a file (what a sidecar records about its video)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def _video_problem(slot: OutputSlot, recorded: object) -> str:
    """Why the mp4 on disk is not the one the sidecar describes ("" when it is)."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("size"), int) \
            or not isinstance(recorded.get("sha256"), str):
        return f"its sidecar records no size and SHA-256 of the video (\"{VIDEO_RECORD}\"), so it cannot be verified"
    size = slot.video.stat().st_size
    if size != recorded["size"]:
        return f"the mp4 has {size} bytes, its sidecar says {recorded['size']} (truncated or replaced)"
    if file_record(slot.video)["sha256"] != recorded["sha256"]:
        return "the mp4's SHA-256 differs from its sidecar's (damaged or replaced)"
    return ""


def check_finished(slot: OutputSlot, request: dict) -> tuple[bool, str]:
    """(finished, why not): video and sidecar exist, the request matches and the mp4 is the one recorded."""
    if not slot.video.is_file() or slot.video.stat().st_size == 0:
        return False, "no video yet"
    side, why = read_sidecar(slot.sidecar)
    if side is None:
        return False, why
    stored, wanted = side["request"], normalize(request)
    if stored != wanted:
        diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        return False, f"made with different settings ({', '.join(diff)})"
    why = _video_problem(slot, side.get(VIDEO_RECORD))
    return not why, why


def _log_redo(slot: OutputSlot, why: str) -> None:
    """Say why an existing video is made again (a warning when its files are not what this program wrote)."""
    damaged = "sidecar" in why or "mp4" in why
    (logger.warning if damaged else logger.info)("redoing %s: %s", slot.video, why)


def remove_stale_parts(slot: OutputSlot) -> list[Path]:
    """Delete leftover temporary files of ``slot`` unless a live run holds its lock; returns what was removed."""
    if not any(p.exists() for p in slot.all_parts()):
        return []
    lock = VideoLock(slot.video)
    if not lock.acquire():
        return []
    with lock:
        removed = remove_parts(slot)
    for p in removed:
        logger.info("removed the partial file %s left by an interrupted run", p)
    return removed


def pending_slots(jobs: list[PromptJob], plan: dict[int, list[OutputSlot]],
                  request: Callable[[PromptJob, int], dict], overwrite: bool = False
                  ) -> tuple[list[tuple[PromptJob, list[OutputSlot]]], int]:
    """(job, unfinished slots) pairs of ``jobs`` and the number of finished videos skipped.

    Leftover ``.part`` files of these slots (a killed run) are deleted first, unless another run holds the video's
    lock; ``request(job, sample)`` is what each finished sidecar must match; ``overwrite`` makes every slot pending.
    Which run makes a pending video is decided later, when a run takes its lock (``claim_slots``).
    """
    todo, finished = [], 0
    for job in jobs:
        pending = []
        for slot in plan[job.index]:
            remove_stale_parts(slot)
            done, why = check_finished(slot, request(job, slot.sample))
            if done and not overwrite:
                finished += 1
                continue
            if slot.video.exists() and not done:
                _log_redo(slot, why)
            pending.append(slot)
        if pending:
            todo.append((job, pending))
    return todo, finished


@contextlib.contextmanager
def claim_slots(job: PromptJob, slots: list[OutputSlot], request: Callable[[PromptJob, int], dict],
                overwrite: bool = False) -> Iterator[list[OutputSlot]]:
    """Lock the slots of ``job`` this run should make now; yields them (possibly none), releases them on exit.

    A slot locked by another live run is skipped (it is being made there); a slot another run finished in the
    meantime is skipped unless ``overwrite``. Leftover temporary files of a claimed slot are deleted.
    """
    locks, claimed = [], []
    try:
        for slot in slots:
            lock = VideoLock(slot.video)
            if not lock.acquire():
                owner = lock.owner()
                logger.info("skipping %s: another run is making it%s", slot.video, f" ({owner})" if owner else "")
                continue
            locks.append(lock)
            for p in remove_parts(slot):
                logger.info("removed the partial file %s left by an interrupted run", p)
            if not overwrite and check_finished(slot, request(job, slot.sample))[0]:
                logger.info("skipping %s: another run has finished it", slot.video)
                locks.pop().release()
                continue
            claimed.append(slot)
        yield claimed
    finally:
        for lock in locks:
            lock.release()


def remove_parts(slot: OutputSlot) -> list[Path]:
    """Delete temporary files of ``slot`` (call only while holding its lock); returns what was removed."""
    removed = []
    for p in slot.all_parts():
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk where the OS allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success flush and rename it to ``final``, else delete it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(final)
    try:
        yield part
        with open(part, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(part, final)
        fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        raise


def json_bytes(data: dict) -> bytes:
    """``data`` as indented UTF-8 JSON; text UTF-8 cannot hold (lone surrogates) is written as \\u escapes."""
    try:
        return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError as exc:
        logger.warning("a text in this record is not valid Unicode (%s); writing it with \\u escapes", exc.reason)
        return (json.dumps(data, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as part:
        part.write_bytes(data)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as indented UTF-8 JSON to ``path`` atomically (``json_bytes``)."""
    write_bytes_atomic(path, json_bytes(data))
