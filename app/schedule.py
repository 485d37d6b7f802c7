"""Prompt schedules (``--prompt_schedule FILE``): which prompt is active from which second of the video.

A schedule is JSONL (``.jsonl`` / ``.ndjson``: one ``{"start": seconds, "prompt": "..."}`` object per line) or YAML
(``.yaml`` / ``.yml`` / ``.json``: a list of ``{start, prompt}`` mappings). The first entry starts at 0 and is the
opening prompt; starts strictly increase. Prompts switch only at chunk boundaries: a switch requested at ``s``
seconds applies from the first chunk whose first video frame is at or after ``s`` (see ``ChunkClock``). Every check
happens here, before any model is loaded, and fails with a ``CLIError`` naming the file and line.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from utils.frames import video_frames

from .cli_config import CLIError
from .text import first_unencodable

JSONL_SUFFIXES = (".jsonl", ".ndjson")
YAML_SUFFIXES = (".yaml", ".yml", ".json")
KEYS = ("start", "prompt")
EXAMPLE = '{"start": 0, "prompt": "a red fox trots through snow"}'
TIME_EPS = 1e-9   # seconds; absorbs float noise when comparing a requested time with a frame time


@dataclass(frozen=True)
class ChunkClock:
    """Where chunks start in the video: chunk 0 at frame 0, chunk i >= 1 at frame ``temporal * (i * B - 1) + 1``.

    The causal VAE turns latent frame 0 into 1 video frame and every later latent frame into ``temporal`` (4), so a
    chunk of B latent frames is ``temporal * B - (temporal - 1)`` frames first (9 for B = 3), then ``temporal * B``
    (12): chunk i >= 1 starts at video frame ``4iB - 3`` (9, 21, 33, ...).
    """

    chunk_latents: int   # B, latent frames per chunk
    temporal: int        # video frames per latent frame after the first (4)
    fps: float

    def video_frame(self, chunk: int) -> int:
        """First video frame of ``chunk``."""
        return 0 if chunk == 0 else video_frames(chunk * self.chunk_latents, self.temporal)

    def seconds(self, chunk: int) -> float:
        """Time of the first video frame of ``chunk``."""
        return self.video_frame(chunk) / self.fps

    def chunk_at(self, seconds: float) -> int:
        """The first chunk whose first video frame is at or after ``seconds`` (0 for ``seconds <= 0``)."""
        if seconds <= TIME_EPS:
            return 0
        need = seconds * self.fps - TIME_EPS * self.fps  # frame index the chunk must start at or after
        i = max(1, math.ceil(((need - 1) / self.temporal + 1) / self.chunk_latents))
        while self.video_frame(i) < need:  # guard the float formula (never loops more than once)
            i += 1
        while i > 1 and self.video_frame(i - 1) >= need:
            i -= 1
        return i


def latent_frames_for_seconds(seconds: float, clock: ChunkClock) -> int:
    """Smallest multiple T of the chunk size whose video (``temporal * (T - 1) + 1`` frames) lasts >= ``seconds``."""
    frames = max(1, math.ceil(seconds * clock.fps - TIME_EPS * clock.fps))
    latents = math.ceil((frames - 1) / clock.temporal) + 1
    B = clock.chunk_latents
    return max(B, math.ceil(latents / B) * B)


@dataclass(frozen=True)
class ScheduleEntry:
    """One line of a schedule: from ``start`` seconds on, ``prompt`` (``line``: where it is in the file)."""

    start: float
    prompt: str
    line: int

    def to_dict(self) -> dict:
        """The entry as the sidecar and the resume check record it."""
        return {"start": self.start, "prompt": self.prompt}


@dataclass(frozen=True)
class PromptSchedule:
    """A checked schedule: its entries and the chunk at which each takes effect."""

    path: Path
    entries: tuple[ScheduleEntry, ...]
    chunks: dict             # chunk index -> ScheduleEntry (the entry starting at 0 sits at chunk 0)

    @property
    def opening(self) -> ScheduleEntry:
        """The entry the video starts with."""
        return self.entries[0]

    def to_list(self) -> list[dict]:
        """Entries as plain dicts, in order."""
        return [e.to_dict() for e in self.entries]


def _where(path: Path, line: int | None) -> str:
    """'file, line N' (or just the file)."""
    return f"The prompt schedule {path}" + (f", line {line}," if line else "")


def _read_text(path: Path) -> str:
    """The schedule file's text; CLIError when it is missing, unreadable or not UTF-8."""
    try:
        return path.read_text(encoding="utf-8").removeprefix("\ufeff")
    except FileNotFoundError:
        raise CLIError(f"The prompt schedule {path} does not exist; pass --prompt_schedule with a .jsonl or .yaml "
                       f"file of {{start, prompt}} entries, e.g. one line per entry: {EXAMPLE}.") from None
    except IsADirectoryError:
        raise CLIError(f"The prompt schedule {path} is a directory; pass a .jsonl or .yaml file.") from None
    except UnicodeDecodeError as exc:
        raise CLIError(f"The prompt schedule {path} is not valid UTF-8 (byte offset {exc.start}); save it as UTF-8 "
                       f"text.") from None
    except OSError as exc:
        raise CLIError(f"The prompt schedule {path} cannot be read ({exc.strerror or exc}); check the path and its "
                       f"permissions.") from None


def _parse_jsonl(path: Path, text: str) -> list[tuple[object, int]]:
    """(value, line) of every non-blank line of a JSONL file."""
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            out.append((json.loads(raw), n))
        except json.JSONDecodeError as exc:
            raise CLIError(f"{_where(path, n)} is not valid JSON ({exc.msg} at column {exc.colno}). Each line of a "
                           f"JSONL schedule is one object, e.g. {EXAMPLE}.") from None
    return out


def _parse_yaml(path: Path, text: str) -> list[tuple[object, int]]:
    """(value, line) of every item of a YAML list."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = " ".join(str(getattr(exc, "problem", None) or exc).split())
        hint = (" A .json schedule is one JSON list of objects; for one object per line name the file .jsonl."
                if path.suffix.lower() == ".json" else "")
        raise CLIError(f"{_where(path, line)} is not valid YAML ({what}). A YAML schedule is a list of mappings, "
                       f"e.g. '- {{start: 0, prompt: a red fox trots through snow}}'.{hint}") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise CLIError(f"The prompt schedule {path} must be a list of {{start, prompt}} entries, got a "
                       f"{type(data).__name__}; write one '- {{start: SECONDS, prompt: TEXT}}' item per entry.")
    lines = [item.start_mark.line + 1 for item in node.value]
    return list(zip(data, lines))


def _entry(path: Path, value: object, line: int) -> ScheduleEntry:
    """Check one parsed entry: an object with a number ``start`` >= 0 and a non-blank string ``prompt``."""
    where = _where(path, line)
    if not isinstance(value, dict):
        raise CLIError(f"{where} holds {value!r}, not an entry; every entry is an object with \"start\" "
                       f"(seconds) and \"prompt\", e.g. {EXAMPLE}.")
    missing = [k for k in KEYS if k not in value]
    if missing:
        raise CLIError(f"{where} has no \"{missing[0]}\"; every entry needs \"start\" (seconds from the beginning "
                       f"of the video) and \"prompt\", e.g. {EXAMPLE}.")
    unknown = sorted(str(k) for k in value if k not in KEYS)
    if unknown:
        raise CLIError(f"{where} has the unknown key \"{unknown[0]}\"; an entry has only \"start\" and \"prompt\".")
    start, prompt = value["start"], value["prompt"]
    if isinstance(start, bool) or not isinstance(start, (int, float)) or not math.isfinite(start):
        raise CLIError(f"{where} has \"start\": {start!r}; it must be a number of seconds, e.g. 12.5.")
    if start < 0:
        raise CLIError(f"{where} has a negative start {start} s; starts are seconds from the beginning of the video "
                       f"(0 or more).")
    if not isinstance(prompt, str) or not prompt.strip():
        raise CLIError(f"{where} has an empty prompt ({prompt!r}); give every entry the text to switch to.")
    bad = first_unencodable(prompt)
    if bad is not None:
        raise CLIError(f"{where} has a prompt with the lone surrogate U+{ord(prompt[bad]):04X} at character {bad + 1} "
                       f"(an escape such as \\u{ord(prompt[bad]):04x} that is half of a pair), which is not text and "
                       f"cannot be written to the sidecar. Write the character itself, or both halves of the "
                       f"surrogate pair.")
    return ScheduleEntry(float(start), " ".join(prompt.split()), line)


def read_schedule(path: str | Path) -> list[ScheduleEntry]:
    """Parse a schedule file and check every entry on its own (order and timing: ``check_schedule``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in JSONL_SUFFIXES + YAML_SUFFIXES:
        raise CLIError(f"The prompt schedule {path} has the extension '{suffix}'; use .jsonl (one JSON object per "
                       f"line) or .yaml / .yml (a list of {{start, prompt}} mappings).")
    text = _read_text(path)
    items = _parse_jsonl(path, text) if suffix in JSONL_SUFFIXES else _parse_yaml(path, text)
    if not items:
        raise CLIError(f"The prompt schedule {path} is empty; it needs at least the opening entry, e.g. {EXAMPLE}.")
    return [_entry(path, value, line) for value, line in items]


def check_schedule(path: Path, entries: list[ScheduleEntry], clock: ChunkClock,
                   num_latent_frames: int) -> dict[int, ScheduleEntry]:
    """Check order and timing against the video; returns {chunk index: entry}."""
    first = entries[0]
    if first.start != 0:
        raise CLIError(f"{_where(path, first.line)} starts at {first.start:g} s, but the first entry is the opening "
                       f"prompt and must start at 0. Add an entry with \"start\": 0 before it.")
    for prev, cur in zip(entries, entries[1:]):
        if cur.start <= prev.start:
            raise CLIError(f"{_where(path, cur.line)} starts at {cur.start:g} s, not after the entry on line "
                           f"{prev.line} ({prev.start:g} s); entries must be sorted by strictly increasing start.")
    num_chunks = num_latent_frames // clock.chunk_latents
    last = num_chunks - 1
    frames = video_frames(num_latent_frames, clock.temporal)
    chunks: dict[int, ScheduleEntry] = {}
    for entry in entries:
        i = clock.chunk_at(entry.start)
        if i > last:
            raise CLIError(f"{_where(path, entry.line)} starts at {entry.start:g} s, beyond the video: it is "
                           f"{frames / clock.fps:.2f} s long ({num_latent_frames} latent frames, {frames} frames at "
                           f"{clock.fps:g} fps) and prompts switch at chunk starts, the last at "
                           f"{clock.seconds(last):.4g} s. Make the video longer (--seconds, --num_output_frames) or "
                           f"move the entry earlier.")
        if i in chunks:
            other = chunks[i]
            raise CLIError(f"The prompt schedule {path}: the entries on line {other.line} ({other.start:g} s) and "
                           f"line {entry.line} ({entry.start:g} s) both take effect at chunk {i} "
                           f"({clock.seconds(i):.4g} s), so the earlier prompt would never be seen. Prompts "
                           f"switch only where a chunk starts, every "
                           f"{clock.temporal * clock.chunk_latents / clock.fps:g} s; move the entries further apart.")
        chunks[i] = entry
    return chunks


def load_schedule(path: str | Path, clock: ChunkClock, num_latent_frames: int) -> PromptSchedule:
    """Read and check a schedule for a video of ``num_latent_frames`` latent frames."""
    entries = read_schedule(path)
    chunks = check_schedule(Path(path), entries, clock, num_latent_frames)
    return PromptSchedule(Path(path), tuple(entries), chunks)
