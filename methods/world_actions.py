"""Matrix-Game 2.0 actions: the variants' keys, the benchmark draw, per-chunk actions and action files.

The model reads actions **per pixel frame**. A video of T latent frames has N = 4(T-1)+1 pixel frames, and its actions
are two float32 tensors (``ActionTensors``):

- ``keyboard`` [N, K]: universal K = 4 (forward, back, left, right), gta_drive K = 2 (forward, back), templerun K = 7
  one-hot (no move, jump, slide, turn left, turn right, left side, right side; "no move" is column 0, not all-zero);
- ``mouse`` [N, 2] as (pitch, yaw), +pitch = up, +yaw = right, camera steps of 0.1 (universal and gta_drive; templerun
  has no mouse, so ``mouse`` is None).

Where the tensors come from:

- ``bench_actions``: upstream's random benchmark draw, bit for bit. Python's Mersenne Twister seeded with the seed,
  two ``randint`` calls per segment; pixel frame 0 takes the first segment's row, then 12-frame segments follow (the
  last one is cut to what is left: 8 frames whenever T is a multiple of 3).
- Per-chunk actions (``ChunkAction``), held for one chunk of 3 latent frames, as upstream's interactive loop does.
  Chunk g (first latent frame f0 = 3g) overwrites pixel frames [final - count, final), with final = 1 + 4(f0+2) and
  count = 9 for chunk 0, 12 after: chunk 0 covers frames 0..8, chunk g >= 1 covers 12g-3 .. 12g+8. The chunks tile
  the N frames without gaps, and every action window the model reads for latent frames f0..f0+2 lies inside the
  frames written so far. ``parse_keys`` turns one typed line into a ``ChunkAction``: universal = a camera key
  (i k j l u) and/or a move key (w s a d q), gta_drive = e.g. ``w a`` (w/s drive, a/d steer, q none), templerun = one
  of w s a d z c q.
- ``load_action_file``: a JSON or YAML file (read with ``yaml.safe_load``; nothing in it is ever executed), either
  (a) per pixel frame, a mapping with upstream's names ``keyboard_condition`` [N', K] and, for the variants with a
  mouse, ``mouse_condition`` [N', 2] (N' >= N; extra frames are cut), or (b) per chunk, a mapping ``{chunks: [...]}``
  or a plain list, each entry a key line as typed (``"w i"``) or a mapping ``{keyboard: [...], mouse: [...]}`` of raw
  vectors. A per-chunk file and the same keys typed interactively give identical tensors, so a session replays.

Bad user input raises ``ActionInputError`` (a ``ValueError`` and the application's ``CLIError``) with one sentence
naming the input (and file), the variant and what is valid.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import yaml

from utils.errors import CLIError

logger = logging.getLogger(__name__)

CAM_VALUE = 0.1
"""One camera step (pitch or yaw) per pixel frame, as upstream."""
LATENT_FRAMES_PER_CHUNK = 3
"""Latent frames per chunk (upstream's ``num_frame_per_block``)."""
BENCH_SEGMENT_FRAMES = 12
"""Pixel frames per benchmark segment after the first frame."""


class ActionInputError(CLIError, ValueError):
    """A user-facing action error: one sentence naming the input (and file), the variant and the valid keys."""


# ---------------------------------------------------------------------------------------------------------------------
# Variants


@dataclass(frozen=True)
class BenchSegment:
    """One benchmark candidate: its upstream name and the row it repeats (keyboard [K], mouse [2] or None)."""

    name: str
    keyboard: tuple[float, ...]
    mouse: tuple[float, float] | None


@dataclass(frozen=True)
class VariantActions:
    """A variant's action layout: keyboard width, mouse or not, its interactive keys and its benchmark candidates."""

    name: str
    keyboard_dim: int
    has_mouse: bool
    camera_keys: Mapping[str, tuple[float, float]]
    """Interactive key -> mouse vector (pitch, yaw); empty for templerun."""
    move_keys: Mapping[str, tuple[float, ...]]
    """Interactive key -> keyboard vector [K]."""
    bench_segments: tuple[BenchSegment, ...]
    """Upstream's candidate table for the benchmark draw, in upstream's order."""
    key_help: str
    """The valid input of ``parse_keys``, as a phrase for error messages."""


def _one_hot(width: int, column: int | None) -> tuple[float, ...]:
    return tuple(1.0 if i == column else 0.0 for i in range(width))


_BENCH_CAMERAS = {"camera_l": (0.0, -CAM_VALUE), "camera_r": (0.0, CAM_VALUE)}


def _segments(names: Sequence[str], columns: Mapping[str, int], width: int,
              with_mouse: bool = True) -> tuple[BenchSegment, ...]:
    """Upstream's candidates: a 1 in the column of each key word of the name, the mouse of its camera word (if any)."""
    def segment(name: str) -> BenchSegment:
        keyboard = [0.0] * width
        for word in name.split("_"):
            if word in columns:
                keyboard[columns[word]] = 1.0
        mouse = next((v for w, v in _BENCH_CAMERAS.items() if w in name), (0.0, 0.0)) if with_mouse else None
        return BenchSegment(name, tuple(keyboard), mouse)
    return tuple(segment(name) for name in names)


_MOVES = ("forward", "left", "right", "forward_left", "forward_right")
_UNIVERSAL_NAMES = (["forward_left", "forward_right"] * 5 + ["camera_l", "camera_r"] * 5
                    + ["forward", "left", "right"] * 5 + [f"{m}_{c}" for m in _MOVES for c in _BENCH_CAMERAS])
_GTA_NAMES = (["camera_l", "camera_r"] * 2 + ["forward", "back"] * 2
              + [f"{m}_{c}" for m in ("forward", "back") for c in _BENCH_CAMERAS])
_TEMPLERUN_COLUMNS = {"nomove": 0, "jump": 1, "slide": 2, "turnleft": 3, "turnright": 4, "leftside": 5,
                      "rightside": 6}

VARIANT_ACTIONS: Mapping[str, VariantActions] = MappingProxyType({spec.name: spec for spec in (
    VariantActions(
        "universal", 4, True,
        camera_keys={"i": (CAM_VALUE, 0.0), "k": (-CAM_VALUE, 0.0), "j": (0.0, -CAM_VALUE), "l": (0.0, CAM_VALUE),
                     "u": (0.0, 0.0)},
        move_keys={"w": _one_hot(4, 0), "s": _one_hot(4, 1), "a": _one_hot(4, 2), "d": _one_hot(4, 3),
                   "q": _one_hot(4, None)},
        bench_segments=_segments(_UNIVERSAL_NAMES, {"forward": 0, "left": 2, "right": 3}, 4),  # never "back"
        key_help=("one camera key of i k j l u (up, down, left, right, none) and/or one move key of w s a d q "
                  "(forward, back, left, right, none) separated by a space, e.g. 'w i'")),
    VariantActions(
        "gta_drive", 2, True,
        camera_keys={"a": (0.0, -CAM_VALUE), "d": (0.0, CAM_VALUE), "q": (0.0, 0.0)},
        move_keys={"w": _one_hot(2, 0), "s": _one_hot(2, 1), "q": _one_hot(2, None)},
        bench_segments=_segments(_GTA_NAMES, {"forward": 0, "back": 1}, 2),
        key_help=("at most one drive key of w s (forward, back) and at most one steer key of a d (left, right), "
                  "or q (none), separated by spaces, e.g. 'w a' (an empty line means 'q')")),
    VariantActions(
        "templerun", 7, False, camera_keys={},
        move_keys={"w": _one_hot(7, 1), "s": _one_hot(7, 2), "a": _one_hot(7, 5), "d": _one_hot(7, 6),
                   "z": _one_hot(7, 3), "c": _one_hot(7, 4), "q": _one_hot(7, 0)},
        bench_segments=_segments(("jump", "slide", "leftside", "rightside", "turnleft", "turnright", "nomove"),
                                 _TEMPLERUN_COLUMNS, 7, with_mouse=False),
        key_help=("exactly one key of w s a d z c q (jump, slide, left side, right side, turn left, turn right, "
                  "no move)")),
)})


def get_variant(variant: str) -> VariantActions:
    """The action layout of a variant name (universal, gta_drive, templerun); ActionInputError if unknown."""
    if variant not in VARIANT_ACTIONS:
        raise ActionInputError(f"unknown Matrix-Game 2.0 variant {variant!r}; use one of "
                               f"{', '.join(VARIANT_ACTIONS)}")
    return VARIANT_ACTIONS[variant]


# ---------------------------------------------------------------------------------------------------------------------
# Frame arithmetic


def pixel_frames(num_latent_frames: int) -> int:
    """Pixel frames of a video of T latent frames: N = 4(T-1)+1."""
    return 4 * (num_latent_frames - 1) + 1


def num_chunks(num_latent_frames: int) -> int:
    """Chunks of 3 latent frames in a video of T latent frames; ActionInputError unless T is a multiple of 3."""
    t = num_latent_frames
    if t % LATENT_FRAMES_PER_CHUNK:
        raise ActionInputError(f"per-chunk actions need a latent frame count that is a multiple of "
                               f"{LATENT_FRAMES_PER_CHUNK}, got {t}; choose a frame count such as {t - t % 3 or 3}")
    return t // LATENT_FRAMES_PER_CHUNK


def chunk_pixel_range(chunk_index: int) -> tuple[int, int]:
    """The pixel frames [start, stop) a chunk's action is written over: chunk 0 -> [0, 9), chunk g -> [12g-3, 12g+9)."""
    stop = pixel_frames(LATENT_FRAMES_PER_CHUNK * (chunk_index + 1))  # one past the chunk's last pixel frame
    return max(0, stop - 4 * LATENT_FRAMES_PER_CHUNK), stop


# ---------------------------------------------------------------------------------------------------------------------
# Tensors


@dataclass(eq=False)
class ActionTensors:
    """Per-pixel-frame actions of one video: keyboard float32 [N, K] and mouse float32 [N, 2] (None for templerun)."""

    keyboard: torch.Tensor
    mouse: torch.Tensor | None

    @classmethod
    def zeros(cls, variant: str, num_latent_frames: int) -> "ActionTensors":
        """All-zero tensors of a variant's layout for T latent frames."""
        spec = get_variant(variant)
        n = pixel_frames(num_latent_frames)
        mouse = torch.zeros(n, 2, dtype=torch.float32) if spec.has_mouse else None
        return cls(torch.zeros(n, spec.keyboard_dim, dtype=torch.float32), mouse)

    @property
    def num_pixel_frames(self) -> int:
        """N, the pixel frames covered."""
        return int(self.keyboard.shape[0])

    def clone(self) -> "ActionTensors":
        """A deep copy (the tensors are written in place by write_chunk)."""
        return ActionTensors(self.keyboard.clone(), None if self.mouse is None else self.mouse.clone())

    def sha256(self) -> str:
        """Hex SHA-256 of the little-endian float32 bytes, keyboard then mouse (if any), for resume identity."""
        digest = hashlib.sha256()
        for tensor in (self.keyboard, self.mouse):
            if tensor is not None:
                digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype="<f4").tobytes())
        return digest.hexdigest()


def _fill(tensors: ActionTensors, start: int, stop: int, keyboard: Sequence[float], mouse: Sequence[float] | None):
    tensors.keyboard[start:stop] = torch.tensor(keyboard, dtype=torch.float32)
    if tensors.mouse is not None:
        tensors.mouse[start:stop] = torch.tensor(mouse, dtype=torch.float32)


def bench_actions(variant: str, num_latent_frames: int, seed: int) -> ActionTensors:
    """Upstream's random benchmark actions for T latent frames and a seed, bit for bit (float32)."""
    segments = get_variant(variant).bench_segments
    tensors = ActionTensors.zeros(variant, num_latent_frames)
    rng = random.Random(seed)  # the same stream as upstream's global random.seed(seed)
    n, frame = tensors.num_pixel_frames, 0
    while frame < n:
        rng.randint(0, 0)  # upstream draws a length index from the one-element list [12]; it still consumes MT words
        segment = segments[rng.randint(0, len(segments) - 1)]
        count = 1 if frame == 0 else min(BENCH_SEGMENT_FRAMES, n - frame)
        _fill(tensors, frame, frame + count, segment.keyboard, segment.mouse)
        frame += count
    return tensors


# ---------------------------------------------------------------------------------------------------------------------
# Per-chunk actions


def _vector(value: Any, width: int, what: str) -> tuple[float, ...]:
    """A finite numeric vector of the given width as floats; ValueError (one phrase) otherwise."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{what} must be a list of {width} numbers, got {type(value).__name__} {value!r}")
    if len(value) != width:
        raise ValueError(f"{what} must have {width} values, got {len(value)}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise ValueError(f"{what} must hold numbers, got {item!r}")
        if not math.isfinite(item):
            raise ValueError(f"{what} must hold finite numbers, got {item!r}")
    return tuple(float(item) for item in value)


@dataclass(frozen=True)
class ChunkAction:
    """One chunk's action, held over its pixel frames: keyboard [K], mouse [2] or None, and the keys typed (or None)."""

    keyboard: tuple[float, ...]
    mouse: tuple[float, float] | None = None
    keys: str | None = None
    """The normalised key line it was parsed from (lower case, single spaces); None for raw vectors."""

    @classmethod
    def from_vectors(cls, variant: str, keyboard: Any, mouse: Any = None) -> "ChunkAction":
        """A raw-vector action checked against a variant (K values; 2 mouse values exactly when it has a mouse)."""
        spec = get_variant(variant)
        try:
            kb = _vector(keyboard, spec.keyboard_dim, f"the {variant} keyboard vector")
            if spec.has_mouse and mouse is None:
                raise ValueError(f"{variant} needs a mouse vector [pitch, yaw] as well")
            if not spec.has_mouse and mouse is not None:
                raise ValueError(f"{variant} has no mouse, so give no mouse vector")
            ms = None if mouse is None else _vector(mouse, 2, f"the {variant} mouse vector")
        except ValueError as exc:
            raise ActionInputError(f"invalid raw action: {exc}") from None
        return cls(kb, ms)  # type: ignore[arg-type]


def parse_keys(variant: str, text: str) -> ChunkAction:
    """Parse one typed key line (case-insensitive) into a ChunkAction; ActionInputError if it is not valid."""
    spec = get_variant(variant)
    tokens = text.strip().lower().split()
    unknown = [t for t in tokens if t not in spec.camera_keys and t not in spec.move_keys]

    def bad(reason: str) -> ActionInputError:
        return ActionInputError(f"{text!r} is not a valid {variant} action ({reason}); type {spec.key_help}")

    if variant == "templerun":
        if len(tokens) != 1 or unknown:
            raise bad("no key given" if not tokens else "more than one key" if len(tokens) > 1
                      else f"unknown key {tokens[0]!r}")
        return ChunkAction(spec.move_keys[tokens[0]], None, tokens[0])
    # As upstream: a camera key (gta_drive: a steer key of a d q) goes to the mouse, any other key to the keyboard, so
    # gta_drive's "q" always counts as steering; each side defaults to none and holds at most one key.
    cameras = [t for t in tokens if t in spec.camera_keys]
    moves = [t for t in tokens if t not in spec.camera_keys]
    gta = variant == "gta_drive"
    if unknown:
        raise bad(f"unknown key {unknown[0]!r}")
    if not tokens and not gta:
        raise bad("no key given")
    if len(cameras) > 1:
        raise bad("more than one steer key among a d q, q counting as steering" if gta else "more than one camera key")
    if len(moves) > 1:
        raise bad("more than one drive key among w s" if gta else "more than one move key")
    return ChunkAction(spec.move_keys[moves[0] if moves else "q"], spec.camera_keys[cameras[0]] if cameras
                       else (0.0, 0.0), " ".join(tokens) or "q")


def write_chunk(tensors: ActionTensors, chunk_index: int, action: ChunkAction) -> None:
    """Write a chunk's action in place over its pixel frames, as upstream's interactive loop (see chunk_pixel_range)."""
    _fill(tensors, *chunk_pixel_range(chunk_index), action.keyboard, action.mouse)


def actions_from_chunks(variant: str, chunk_actions: Sequence[ChunkAction | str],
                        num_latent_frames: int) -> ActionTensors:
    """Per-pixel-frame tensors for T latent frames from one action per chunk (key lines are parsed with parse_keys)."""
    spec = get_variant(variant)
    needed = num_chunks(num_latent_frames)
    if len(chunk_actions) < needed:
        raise ActionInputError(f"{num_latent_frames} latent frames need {needed} chunk actions (one per "
                               f"{LATENT_FRAMES_PER_CHUNK} latent frames), got {len(chunk_actions)}; give "
                               f"{needed - len(chunk_actions)} more")
    if len(chunk_actions) > needed:
        logger.warning("%d chunk actions given, %d latent frames use the first %d; the rest are ignored",
                       len(chunk_actions), num_latent_frames, needed)
    tensors = ActionTensors.zeros(variant, num_latent_frames)
    for index, action in enumerate(chunk_actions[:needed]):
        if isinstance(action, str):
            action = parse_keys(variant, action)
        if len(action.keyboard) != spec.keyboard_dim or (action.mouse is None) == spec.has_mouse:
            raise ActionInputError(f"chunk action {index} ({describe_chunk(action)!r}) does not fit the {variant} "
                                   f"layout ({spec.keyboard_dim} keyboard values"
                                   f"{' and 2 mouse values' if spec.has_mouse else ', no mouse'})")
        write_chunk(tensors, index, action)
    return tensors


def describe_chunk(action: ChunkAction) -> str | dict[str, list[float]]:
    """JSON-ready form of a chunk action for sidecars: its key line, or {keyboard, mouse} raw vectors (a file entry)."""
    if action.keys is not None:
        return action.keys
    out: dict[str, list[float]] = {"keyboard": list(action.keyboard)}
    if action.mouse is not None:
        out["mouse"] = list(action.mouse)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Action files

_FRAME_KEYS = ("keyboard_condition", "mouse_condition")
_KNOWN_KEYS = _FRAME_KEYS + ("chunks",)


def _read_document(path: Path) -> Any:
    """The file parsed as JSON, else as YAML (safe_load); ActionInputError if unreadable, empty or neither."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ActionInputError(f"action file {path} does not exist; give the path of a JSON or YAML action "
                               f"file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ActionInputError(f"action file {path} cannot be read as UTF-8 text ({exc}); give a readable JSON "
                               f"or YAML action file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        if isinstance(exc, yaml.constructor.ConstructorError):
            raise ActionInputError(f"action file {path} uses a YAML tag{at} that safe loading refuses (only plain "
                                   f"data is read, nothing is executed); remove the tag") from None
        raise ActionInputError(f"action file {path} is neither valid JSON nor valid YAML{at}; fix its "
                               f"syntax") from None
    if data is None:
        raise ActionInputError(f"action file {path} is empty; give per-chunk keys (a list such as ['w i', 'w']) "
                               f"or per-frame keyboard_condition rows")
    return data


def _frame_matrix(path: Path, key: str, value: Any, width: int, variant: str) -> list[tuple[float, ...]]:
    if not isinstance(value, list):
        raise ActionInputError(f"action file {path}: {key} must be a list of rows of {width} numbers (one row per "
                               f"pixel frame) for {variant}, got {type(value).__name__}; fix the file")
    try:
        return [_vector(row, width, f"row {i}") for i, row in enumerate(value)]
    except ValueError as exc:
        raise ActionInputError(f"action file {path}: {key} {exc} (each row has {width} finite numbers for "
                               f"{variant}); fix the file") from None


def _load_frames(path: Path, data: Mapping[str, Any], spec: VariantActions, num_latent_frames: int) -> ActionTensors:
    variant, n = spec.name, pixel_frames(num_latent_frames)
    if "keyboard_condition" not in data:
        raise ActionInputError(f"action file {path} has mouse_condition but no keyboard_condition; per-frame files "
                               f"need keyboard_condition [N, {spec.keyboard_dim}] rows")
    keyboard = _frame_matrix(path, "keyboard_condition", data["keyboard_condition"], spec.keyboard_dim, variant)
    mouse = None
    if spec.has_mouse:
        if "mouse_condition" not in data:
            raise ActionInputError(f"action file {path} has no mouse_condition, which {variant} needs; add "
                                   f"mouse_condition rows [pitch, yaw], one per pixel frame")
        mouse = _frame_matrix(path, "mouse_condition", data["mouse_condition"], 2, variant)
        if len(mouse) != len(keyboard):
            raise ActionInputError(f"action file {path} has {len(keyboard)} keyboard_condition rows but "
                                   f"{len(mouse)} mouse_condition rows; give both one row per pixel frame")
    elif "mouse_condition" in data:
        raise ActionInputError(f"action file {path} has mouse_condition, but {variant} has no mouse; remove it")
    if len(keyboard) < n:
        raise ActionInputError(f"action file {path} has N' = {len(keyboard)} pixel frames of actions, but "
                               f"{num_latent_frames} latent frames need N = 4(T-1)+1 = {n}; add rows or generate "
                               f"fewer frames")
    if len(keyboard) > n:
        logger.warning("action file %s has %d pixel frames of actions; %d latent frames use the first %d",
                       path, len(keyboard), num_latent_frames, n)
    return ActionTensors(torch.tensor(keyboard[:n], dtype=torch.float32),
                         None if mouse is None else torch.tensor(mouse[:n], dtype=torch.float32))


def chunk_entry(path: Path, index: int, entry: Any, spec: VariantActions) -> ChunkAction:
    """One per-chunk entry of an action file or sidecar (a key line or raw vectors); errors name the file."""
    where = f"action file {path}, chunk {index}"
    if not isinstance(entry, (str, dict)):
        raise ActionInputError(f"{where}: {entry!r} is neither a key line (a string) nor a mapping of keyboard/mouse "
                               f"vectors; for {spec.name} type {spec.key_help}")
    if isinstance(entry, dict):
        unknown = [k for k in entry if k not in ("keyboard", "mouse")]
        if unknown:
            raise ActionInputError(f"{where}: unknown key {unknown[0]!r}; a raw entry holds only "
                                   f"keyboard{' and mouse' if spec.has_mouse else ''}")
        if "keyboard" not in entry:
            raise ActionInputError(f"{where}: a raw entry needs keyboard [{spec.keyboard_dim} values]")
    try:
        if isinstance(entry, str):
            return parse_keys(spec.name, entry)
        return ChunkAction.from_vectors(spec.name, entry["keyboard"], entry.get("mouse"))
    except ActionInputError as exc:
        raise ActionInputError(f"{where}: {exc}") from None


def _load_chunks(path: Path, entries: Any, spec: VariantActions,
                 num_latent_frames: int) -> tuple[ActionTensors, list[ChunkAction]]:
    if not isinstance(entries, list):
        raise ActionInputError(f"action file {path}: chunks must be a list with one entry per chunk, got "
                               f"{type(entries).__name__}; fix the file")
    needed = num_chunks(num_latent_frames)
    if len(entries) < needed:
        raise ActionInputError(f"action file {path} has {len(entries)} chunk actions, but {num_latent_frames} "
                               f"latent frames need {needed} (one per {LATENT_FRAMES_PER_CHUNK} latent frames); add "
                               f"{needed - len(entries)} or generate fewer frames")
    if len(entries) > needed:
        logger.warning("action file %s has %d chunk actions; %d latent frames use the first %d",
                       path, len(entries), num_latent_frames, needed)
    actions = [chunk_entry(path, i, entry, spec) for i, entry in enumerate(entries[:needed])]
    return actions_from_chunks(spec.name, actions, num_latent_frames), actions


def load_action_file(path: str | Path, variant: str,
                     num_latent_frames: int) -> tuple[ActionTensors, list[ChunkAction] | None]:
    """Read a JSON/YAML action file (per pixel frame or per chunk): tensors for T latent frames, chunk actions."""
    spec, path = get_variant(variant), Path(path)
    data = _read_document(path)
    if isinstance(data, list):
        return _load_chunks(path, data, spec, num_latent_frames)
    if not isinstance(data, dict):
        raise ActionInputError(f"action file {path} holds a {type(data).__name__}; give a list of per-chunk keys, "
                               f"a mapping with chunks, or a mapping with keyboard_condition")
    unknown = [k for k in data if k not in _KNOWN_KEYS]
    if unknown:
        raise ActionInputError(f"action file {path} has unknown top-level key(s) "
                               f"{', '.join(repr(k) for k in unknown)}; the known keys are {', '.join(_KNOWN_KEYS)}")
    has_frames = any(k in data for k in _FRAME_KEYS)
    if "chunks" in data:
        if has_frames:
            raise ActionInputError(f"action file {path} mixes chunks with keyboard_condition/mouse_condition; give "
                                   f"either per-chunk or per-frame actions")
        return _load_chunks(path, data["chunks"], spec, num_latent_frames)
    if not has_frames:
        raise ActionInputError(f"action file {path} is an empty mapping; give chunks or keyboard_condition")
    return _load_frames(path, data, spec, num_latent_frames), None
