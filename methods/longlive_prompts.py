"""LongLive's interactive input: a JSONL file of videos, each a list of prompt segments, switched at latent frames.

Every non-blank line of the file is one video, ``{"prompts": ["segment 0", ..., "segment N-1"]}``, with the same N on
every line; ``switch_frame_indices`` (a YAML int, a comma-separated string or a list; N-1 latent-frame indices,
sorted) says where segment k+1 takes over from segment k, the same for every video. Prompts can only change where a
chunk starts: before each chunk at latent frame f, the next pending index fires when f >= it, at most one per chunk
(a second index falling in the same chunk waits for the next one, with a warning), and an index whose chunk lies
beyond the video never fires (with a warning). With chunks of 3 frames, 40, 80, 120, 160, 200 fire at f = 42, 81,
120, 162, 201.

``load_longlive_prompts`` checks all of it before any model is loaded; ``LongLivePrompts.jobs()`` gives one
``PromptJob`` per video (its first segment) and ``schedule(video, clock)`` the ``PromptSchedule`` (chunk -> segment)
that the prompt switcher (``app.switching``) follows while that video renders.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from utils.errors import CLIError
from app.prompts import PromptJob
from app.schedule import ChunkClock, PromptSchedule, ScheduleEntry

logger = logging.getLogger(__name__)

EXAMPLE = '{"prompts": ["a red fox trots through snow", "the fox starts to run"]}'
KEY = "switch_frame_indices"


def parse_switch_frame_indices(value: object, source: str = KEY) -> tuple[int, ...]:
    """``switch_frame_indices`` as LongLive writes it (int, "40, 80" or a list) -> sorted latent frames >= 0."""
    if value is None:
        return ()
    if isinstance(value, bool):
        items: list = [value]
    elif isinstance(value, int):
        items = [value]
    elif isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
        if items == [""]:
            return ()
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    out = []
    for item in items:
        number = None
        if isinstance(item, int) and not isinstance(item, bool):
            number = item
        elif isinstance(item, str) and item.lstrip("+").isdigit():
            number = int(item)
        elif isinstance(item, float) and item.is_integer():
            number = int(item)
        if number is None or number < 0:
            raise CLIError(f"{source}: {KEY} = {value!r} holds {item!r}, which is not a latent frame index (an integer "
                           f">= 0); write one int, a comma-separated string like \"40, 80, 120\" or a list [40, 80, "
                           f"120].")
        out.append(number)
    for prev, cur in zip(out, out[1:]):
        if cur < prev:
            raise CLIError(f"{source}: {KEY} = {value!r} is not sorted ({cur} comes after {prev}); segment k+1 takes "
                           f"over at the k-th index, so the indices must be in increasing order. Sort them (and the "
                           f"prompt segments of every line to match).")
    return tuple(out)


def switch_chunks(indices: tuple[int, ...], chunk_frames: int, num_latent_frames: int | None,
                  source: str = KEY) -> tuple[int | None, ...]:
    """The chunk at which each index fires (None: never), with LongLive's timing (module docstring); warns."""
    out: list[int | None] = []
    prev = -1
    num_chunks = None if num_latent_frames is None else num_latent_frames // chunk_frames
    for k, index in enumerate(indices):
        natural = -(-index // chunk_frames)  # first chunk starting at or after the index
        chunk = max(natural, prev + 1)
        if num_chunks is not None and chunk >= num_chunks:
            logger.warning("%s: switch %d at latent frame %d never fires: the video has %d latent frames and its last "
                           "chunk starts at %d; segment %d and later are not shown", source, k + 1, index,
                           num_latent_frames, (num_chunks - 1) * chunk_frames, k + 1)
            out.extend([None] * (len(indices) - k))
            break
        if chunk > natural:
            logger.warning("%s: switch %d at latent frame %d falls in the chunk of the previous switch; it waits one "
                           "chunk and fires at frame %d (one switch per chunk, as LongLive does)", source, k + 1,
                           index, chunk * chunk_frames)
        if chunk == 0:
            logger.warning("%s: switch 1 at latent frame %d fires before the first chunk; segment 0 is never shown",
                           source, index)
        out.append(chunk)
        prev = chunk
    return tuple(out)


def read_longlive_jsonl(path: str | Path) -> tuple[list[tuple[str, ...]], list[int]]:
    """(segments of every video, 0-based line of each) of a LongLive JSONL file; CLIError naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8").removeprefix("\ufeff")
    except FileNotFoundError:
        raise CLIError(f"The prompt file {path} does not exist; LongLive's interactive input is a .jsonl file with "
                       f"one video per line, e.g. {EXAMPLE}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"The prompt file {path} cannot be read as UTF-8 text ({exc}); check the path and save it as "
                       f"UTF-8.") from None
    videos, lines = [], []
    for n, raw in enumerate(text.splitlines()):
        if not raw.strip():
            continue
        where = f"The prompt file {path}, line {n + 1},"
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CLIError(f"{where} is not valid JSON ({exc.msg} at column {exc.colno}); each line is one video, "
                           f"e.g. {EXAMPLE}.") from None
        segments = value.get("prompts") if isinstance(value, dict) else None
        if not isinstance(segments, list) or not segments:
            raise CLIError(f"{where} has no \"prompts\" list; each line is one object whose \"prompts\" lists the "
                           f"video's prompt segments in order, e.g. {EXAMPLE}.")
        clean = []
        for j, seg in enumerate(segments):
            if not isinstance(seg, str) or not seg.strip():
                raise CLIError(f"{where} segment {j} is {seg!r}, not a prompt; every entry of \"prompts\" is a "
                               f"non-empty string.")
            clean.append(" ".join(seg.split()))
        if videos and len(clean) != len(videos[0]):
            raise CLIError(f"{where} has {len(clean)} prompt segments but line {lines[0] + 1} has "
                           f"{len(videos[0])}; every video switches at the same {KEY}, so every line needs the same "
                           f"number of segments.")
        videos.append(tuple(clean))
        lines.append(n)
    if not videos:
        raise CLIError(f"The prompt file {path} holds no video; write one line per video, e.g. {EXAMPLE}.")
    return videos, lines


@dataclass(frozen=True)
class LongLivePrompts:
    """A checked LongLive input: the videos' segments, the switch indices and the chunk each one fires at."""

    path: Path
    videos: tuple[tuple[str, ...], ...]
    lines: tuple[int, ...]
    indices: tuple[int, ...]
    chunks: tuple[int | None, ...]  # firing chunk of each index (None: never, the video is too short)

    def jobs(self) -> list[PromptJob]:
        """One job per video; its text is the segment shown in chunk 0."""
        first = 1 if self.chunks and self.chunks[0] == 0 else 0
        return [PromptJob(i, line, segs[first], None, self.path, "")
                for i, (segs, line) in enumerate(zip(self.videos, self.lines))]

    def segment_chunks(self) -> dict[int, int]:
        """{chunk index: segment that takes over there} (segment 0 at chunk 0 unless an index fires there)."""
        out = {0: 0}
        for k, chunk in enumerate(self.chunks):
            if chunk is not None:
                out[chunk] = k + 1
        return out

    def schedule(self, video: int, clock: ChunkClock) -> PromptSchedule:
        """The ``PromptSchedule`` of one video (entries start at their chunk's first video frame)."""
        segs = self.videos[video]
        chunks = {chunk: ScheduleEntry(clock.seconds(chunk), segs[seg], self.lines[video] + 1)
                  for chunk, seg in sorted(self.segment_chunks().items())}
        return PromptSchedule(self.path, tuple(chunks.values()), chunks)


def load_longlive_prompts(path: str | Path, switch_frame_indices: object, chunk_frames: int,
                          num_latent_frames: int | None, source: str = KEY) -> LongLivePrompts:
    """Read and check a LongLive JSONL file against ``switch_frame_indices`` and the video length."""
    path = Path(path)
    indices = parse_switch_frame_indices(switch_frame_indices, source)
    videos, lines = read_longlive_jsonl(path)
    n = len(videos[0])
    if len(indices) != n - 1:
        raise CLIError(f"{source}: {KEY} has {len(indices)} entries ({list(indices)}) but the videos of {path} have "
                       f"{n} prompt segments; N segments need N-1 switch indices (latent frames where segment k+1 "
                       f"takes over).")
    chunks = switch_chunks(indices, chunk_frames, num_latent_frames, source)
    return LongLivePrompts(path, tuple(videos), tuple(lines), indices, chunks)
