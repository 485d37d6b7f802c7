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
    keyboard_labels: tuple[str, ...]
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


def _combine(width: int, columns: Mapping[str, int], cameras: Mapping[str, tuple[float, float]], name: str,
             with_mouse: bool) -> BenchSegment:
    """The row of a benchmark entry: a column set to 1 per key word in its name, the mouse of its camera word."""
    keyboard = [0.0] * width
    for word, column in columns.items():
        if word in name:
            keyboard[column] = 1.0
    mouse: tuple[float, float] | None = None
    if with_mouse:
        mouse = (0.0, 0.0)
        for word, vector in cameras.items():
            if word in name:
                mouse = vector
    return BenchSegment(name, tuple(keyboard), mouse)


def _universal_segments() -> tuple[BenchSegment, ...]:
    columns = {"forward": 0, "left": 2, "right": 3}  # "back" is not a benchmark word upstream
    cameras = {"camera_l": (0.0, -CAM_VALUE), "camera_r": (0.0, CAM_VALUE)}
    names = (["forward_left", "forward_right"] * 5 + ["camera_l", "camera_r"] * 5
             + ["forward", "left", "right"] * 5
             + [f"{move}_{camera}" for move in ("forward", "left", "right", "forward_left", "forward_right")
                for camera in ("camera_l", "camera_r")])
    # No accidental substring hits: "camera_l"/"camera_r" do not contain "left"/"right".
    return tuple(_combine(4, columns, cameras, name, with_mouse=True) for name in names)


def _gta_segments() -> tuple[BenchSegment, ...]:
    columns = {"forward": 0, "back": 1}
    cameras = {"camera_l": (0.0, -CAM_VALUE), "camera_r": (0.0, CAM_VALUE)}
    names = (["camera_l", "camera_r"] * 2 + ["forward", "back"] * 2
             + [f"{move}_{camera}" for move in ("forward", "back") for camera in ("camera_l", "camera_r")])
    return tuple(_combine(2, columns, cameras, name, with_mouse=True) for name in names)


_TEMPLERUN_COLUMNS = {"nomove": 0, "jump": 1, "slide": 2, "turnleft": 3, "turnright": 4, "leftside": 5,
                      "rightside": 6}


def _templerun_segments() -> tuple[BenchSegment, ...]:
    names = ("jump", "slide", "leftside", "rightside", "turnleft", "turnright", "nomove")
    return tuple(BenchSegment(name, _one_hot(7, _TEMPLERUN_COLUMNS[name]), None) for name in names)


VARIANT_ACTIONS: Mapping[str, VariantActions] = MappingProxyType({
    "universal": VariantActions(
        name="universal", keyboard_dim=4, has_mouse=True,
        keyboard_labels=("forward", "back", "left", "right"),
        camera_keys=MappingProxyType({"i": (CAM_VALUE, 0.0), "k": (-CAM_VALUE, 0.0), "j": (0.0, -CAM_VALUE),
                                      "l": (0.0, CAM_VALUE), "u": (0.0, 0.0)}),
        move_keys=MappingProxyType({"w": _one_hot(4, 0), "s": _one_hot(4, 1), "a": _one_hot(4, 2),
                                    "d": _one_hot(4, 3), "q": _one_hot(4, None)}),
        bench_segments=_universal_segments(),
        key_help=("one camera key of i k j l u (up, down, left, right, none) and/or one move key of w s a d q "
                  "(forward, back, left, right, none) separated by a space, e.g. 'w i'"),
    ),
    "gta_drive": VariantActions(
        name="gta_drive", keyboard_dim=2, has_mouse=True,
        keyboard_labels=("forward", "back"),
        camera_keys=MappingProxyType({"a": (0.0, -CAM_VALUE), "d": (0.0, CAM_VALUE), "q": (0.0, 0.0)}),
        move_keys=MappingProxyType({"w": _one_hot(2, 0), "s": _one_hot(2, 1), "q": _one_hot(2, None)}),
        bench_segments=_gta_segments(),
        key_help=("at most one drive key of w s (forward, back) and at most one steer key of a d (left, right), "
                  "or q (none), separated by spaces, e.g. 'w a' (an empty line means 'q')"),
    ),
    "templerun": VariantActions(
        name="templerun", keyboard_dim=7, has_mouse=False,
        keyboard_labels=("nomove", "jump", "slide", "turnleft", "turnright", "leftside", "rightside"),
        camera_keys=MappingProxyType({}),
        move_keys=MappingProxyType({"w": _one_hot(7, 1), "s": _one_hot(7, 2), "a": _one_hot(7, 5),
                                    "d": _one_hot(7, 6), "z": _one_hot(7, 3), "c": _one_hot(7, 4),
                                    "q": _one_hot(7, 0)}),
        bench_segments=_templerun_segments(),
        key_help=("exactly one key of w s a d z c q (jump, slide, left side, right side, turn left, turn right, "
                  "no move)"),
    ),
})


def get_variant(variant: str) -> VariantActions:
    """The action layout of a variant name (universal, gta_drive, templerun); ActionInputError if unknown."""
    spec = VARIANT_ACTIONS.get(variant) if isinstance(variant, str) else None
    if spec is None:
        raise ActionInputError(f"unknown Matrix-Game 2.0 variant {variant!r}; use one of "
                               f"{', '.join(VARIANT_ACTIONS)}")
    return spec


# ---------------------------------------------------------------------------------------------------------------------
# Frame arithmetic


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def pixel_frames(num_latent_frames: int) -> int:
    """Pixel frames of a video of T latent frames: N = 4(T-1)+1."""
    t = _check_int("num_latent_frames", num_latent_frames, 1)
    return 4 * (t - 1) + 1


def latent_frames(num_pixel_frames: int) -> int:
    """Latent frames of a video of N pixel frames: (N-1)//4+1 (N must be 1 modulo 4)."""
    n = _check_int("num_pixel_frames", num_pixel_frames, 1)
    if n % 4 != 1:
        raise ValueError(f"a pixel frame count must be 4(T-1)+1, got {n}")
    return (n - 1) // 4 + 1


def num_chunks(num_latent_frames: int) -> int:
    """Chunks of 3 latent frames in a video of T latent frames; ActionInputError unless T is a multiple of 3."""
    t = _check_int("num_latent_frames", num_latent_frames, 1)
    if t % LATENT_FRAMES_PER_CHUNK:
        raise ActionInputError(f"per-chunk actions need a latent frame count that is a multiple of "
                               f"{LATENT_FRAMES_PER_CHUNK}, got {t}; choose a frame count such as {t - t % 3 or 3}")
    return t // LATENT_FRAMES_PER_CHUNK


def chunk_pixel_range(chunk_index: int) -> tuple[int, int]:
    """The pixel frames [start, stop) a chunk's action is written over: chunk 0 -> [0, 9), chunk g -> [12g-3, 12g+9)."""
    g = _check_int("chunk_index", chunk_index, 0)
    f0 = LATENT_FRAMES_PER_CHUNK * g
    final = 1 + 4 * (f0 + LATENT_FRAMES_PER_CHUNK - 1)
    count = 1 + 4 * (LATENT_FRAMES_PER_CHUNK - 1) if f0 == 0 else 4 * LATENT_FRAMES_PER_CHUNK
    return final - count, final


# ---------------------------------------------------------------------------------------------------------------------
# Tensors


@dataclass(eq=False)
class ActionTensors:
    """Per-pixel-frame actions of one video: keyboard float32 [N, K] and mouse float32 [N, 2] (None for templerun)."""

    keyboard: torch.Tensor
    mouse: torch.Tensor | None

    def __post_init__(self) -> None:
        """Check the shapes and dtypes: 2-d float32, N = 4(T-1)+1 rows, mouse [N, 2] when present."""
        kb = self.keyboard
        if not isinstance(kb, torch.Tensor) or kb.dim() != 2 or kb.dtype != torch.float32:
            raise ValueError(f"ActionTensors.keyboard must be a float32 [N, K] tensor, got "
                             f"{getattr(kb, 'dtype', type(kb).__name__)} {tuple(getattr(kb, 'shape', ()))}")
        if kb.shape[0] < 1 or kb.shape[0] % 4 != 1:
            raise ValueError(f"ActionTensors need N = 4(T-1)+1 pixel frames, got {kb.shape[0]}")
        if self.mouse is not None:
            m = self.mouse
            if (not isinstance(m, torch.Tensor) or m.dtype != torch.float32
                    or tuple(m.shape) != (kb.shape[0], 2)):
                raise ValueError(f"ActionTensors.mouse must be a float32 [{kb.shape[0]}, 2] tensor, got "
                                 f"{getattr(m, 'dtype', type(m).__name__)} {tuple(getattr(m, 'shape', ()))}")

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

    @property
    def num_latent_frames(self) -> int:
        """T = (N-1)//4+1, the latent frames covered."""
        return (self.num_pixel_frames - 1) // 4 + 1

    @property
    def keyboard_dim(self) -> int:
        """K, the keyboard width."""
        return int(self.keyboard.shape[1])

    def truncate(self, num_latent_frames: int) -> "ActionTensors":
        """A copy holding only the first 4(T-1)+1 pixel frames, for a run of T <= num_latent_frames latent frames."""
        n = pixel_frames(num_latent_frames)
        if n > self.num_pixel_frames:
            raise ValueError(f"cannot truncate actions of {self.num_latent_frames} latent frames to "
                             f"{num_latent_frames}: that needs {n} pixel frames, there are {self.num_pixel_frames}")
        mouse = None if self.mouse is None else self.mouse[:n].clone()
        return ActionTensors(self.keyboard[:n].clone(), mouse)

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


# ---------------------------------------------------------------------------------------------------------------------
# Benchmark draw


def bench_segment_indices(variant: str, num_latent_frames: int, seed: int) -> list[int]:
    """The candidate index drawn per iteration of upstream's benchmark draw (1 + ceil((T-1)/3) iterations)."""
    return [index for index, _, _ in _bench_draw(variant, num_latent_frames, seed)]


def _bench_draw(variant: str, num_latent_frames: int, seed: int) -> list[tuple[int, int, int]]:
    """(candidate index, first pixel frame, frame count) per iteration, from random.Random(seed)."""
    spec = get_variant(variant)
    n = pixel_frames(num_latent_frames)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    rng = random.Random(seed)  # the same stream as upstream's global random.seed(seed)
    table_size = len(spec.bench_segments)
    draws = []
    frame = 0
    while frame < n:
        rng.randint(0, 0)  # upstream draws a length index from the one-element list [12]; it still consumes MT words
        index = rng.randint(0, table_size - 1)
        count = 1 if frame == 0 else min(BENCH_SEGMENT_FRAMES, n - frame)
        draws.append((index, frame, count))
        frame += count
    return draws


def bench_actions(variant: str, num_latent_frames: int, seed: int) -> ActionTensors:
    """Upstream's random benchmark actions for T latent frames and a seed, bit for bit (float32)."""
    tensors = ActionTensors.zeros(variant, num_latent_frames)
    segments = get_variant(variant).bench_segments
    for index, start, count in _bench_draw(variant, num_latent_frames, seed):
        segment = segments[index]
        tensors.keyboard[start:start + count] = torch.tensor(segment.keyboard, dtype=torch.float32)
        if tensors.mouse is not None:
            tensors.mouse[start:start + count] = torch.tensor(segment.mouse, dtype=torch.float32)
    return tensors


# ---------------------------------------------------------------------------------------------------------------------
# Per-chunk actions


def _vector(value: Any, width: int, what: str) -> tuple[float, ...]:
    """A finite numeric vector of the given width as floats; ValueError (one phrase) otherwise."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().reshape(-1).tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{what} must be a list of {width} numbers, got {type(value).__name__} {value!r}")
    if len(value) != width:
        raise ValueError(f"{what} must have {width} values, got {len(value)}")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise ValueError(f"{what} must hold numbers, got {item!r}")
        if not math.isfinite(item):
            raise ValueError(f"{what} must hold finite numbers, got {item!r}")
        out.append(float(item))
    return tuple(out)


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
            if spec.has_mouse:
                if mouse is None:
                    raise ValueError(f"{variant} needs a mouse vector [pitch, yaw] as well")
                ms: tuple[float, float] | None = _vector(mouse, 2, f"the {variant} mouse vector")  # type: ignore
            else:
                if mouse is not None:
                    raise ValueError(f"{variant} has no mouse, so give no mouse vector")
                ms = None
        except ValueError as exc:
            raise ActionInputError(f"invalid raw action: {exc}") from None
        return cls(kb, ms, None)


def _bad_keys(text: str, variant: str, reason: str) -> ActionInputError:
    return ActionInputError(f"{text!r} is not a valid {variant} action ({reason}); type "
                            f"{get_variant(variant).key_help}")


def parse_keys(variant: str, text: str) -> ChunkAction:
    """Parse one typed key line (case-insensitive) into a ChunkAction; ActionInputError if it is not valid."""
    spec = get_variant(variant)
    if not isinstance(text, str):
        raise ActionInputError(f"a {variant} action must be a key line such as 'w', got {type(text).__name__} "
                               f"{text!r}; type {spec.key_help}")
    tokens = text.strip().lower().split()
    if variant == "universal":
        unknown = [t for t in tokens if t not in spec.camera_keys and t not in spec.move_keys]
        cameras = [t for t in tokens if t in spec.camera_keys]
        moves = [t for t in tokens if t in spec.move_keys]
        if unknown:
            raise _bad_keys(text, variant, f"unknown key {unknown[0]!r}")
        if not tokens:
            raise _bad_keys(text, variant, "no key given")
        if len(cameras) > 1 or len(moves) > 1:
            raise _bad_keys(text, variant, "more than one camera key" if len(cameras) > 1
                            else "more than one move key")
        camera = cameras[0] if cameras else "u"
        move = moves[0] if moves else "q"
        return ChunkAction(spec.move_keys[move], spec.camera_keys[camera], " ".join(tokens))
    if variant == "gta_drive":
        # As upstream: a token that is a steer key (a d q) goes to the mouse, else a drive key (w s) to the keyboard,
        # so "q" always counts as the steer key; each side defaults to "q" and holds at most one key.
        unknown = [t for t in tokens if t not in spec.camera_keys and t not in spec.move_keys]
        if unknown:
            raise _bad_keys(text, variant, f"unknown key {unknown[0]!r}")
        steer = [t for t in tokens if t in spec.camera_keys]
        drive = [t for t in tokens if t not in spec.camera_keys]
        if len(steer) > 1:
            raise _bad_keys(text, variant, "more than one steer key among a d q, q counting as steering")
        if len(drive) > 1:
            raise _bad_keys(text, variant, "more than one drive key among w s")
        camera = steer[0] if steer else "q"
        move = drive[0] if drive else "q"
        return ChunkAction(spec.move_keys[move], spec.camera_keys[camera], " ".join(tokens) or "q")
    # templerun
    if len(tokens) != 1 or tokens[0] not in spec.move_keys:
        reason = "no key given" if not tokens else ("more than one key" if len(tokens) > 1
                                                    else f"unknown key {tokens[0]!r}")
        raise _bad_keys(text, variant, reason)
    return ChunkAction(spec.move_keys[tokens[0]], None, tokens[0])


def _check_action_fits(tensors: ActionTensors, action: ChunkAction) -> None:
    if len(action.keyboard) != tensors.keyboard_dim:
        raise ValueError(f"the chunk action has {len(action.keyboard)} keyboard values, the tensors "
                         f"{tensors.keyboard_dim}: it is for another variant")
    if (action.mouse is None) != (tensors.mouse is None):
        raise ValueError("the chunk action and the tensors disagree on having a mouse: it is for another variant")


def write_chunk(tensors: ActionTensors, chunk_index: int, action: ChunkAction) -> None:
    """Write a chunk's action in place over its pixel frames, as upstream's interactive loop (see chunk_pixel_range)."""
    if not isinstance(action, ChunkAction):
        raise TypeError(f"write_chunk needs a ChunkAction, got {type(action).__name__}")
    _check_action_fits(tensors, action)
    start, stop = chunk_pixel_range(chunk_index)
    if stop > tensors.num_pixel_frames:
        have = (tensors.num_pixel_frames + 3) // 12
        raise ValueError(f"chunk {chunk_index} covers pixel frames {start}..{stop - 1}, beyond the "
                         f"{tensors.num_pixel_frames} frames of these actions (chunks 0..{have - 1} fit)")
    tensors.keyboard[start:stop] = torch.tensor(action.keyboard, dtype=torch.float32)
    if tensors.mouse is not None:
        tensors.mouse[start:stop] = torch.tensor(action.mouse, dtype=torch.float32)


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
        elif not isinstance(action, ChunkAction):
            raise TypeError(f"chunk action {index} must be a ChunkAction or a key line, got {type(action).__name__}")
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
_CHUNK_KEYS = ("chunks",)
_KNOWN_KEYS = _FRAME_KEYS + _CHUNK_KEYS
_ENTRY_KEYS = ("keyboard", "mouse")


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
    except yaml.constructor.ConstructorError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ActionInputError(f"action file {path} uses a YAML tag{at} that safe loading refuses (only plain "
                               f"data is read, nothing is executed); remove the tag") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ActionInputError(f"action file {path} is neither valid JSON nor valid YAML{at}; fix its "
                               f"syntax") from None
    if data is None:
        raise ActionInputError(f"action file {path} is empty; give per-chunk keys (a list such as ['w i', 'w']) "
                               f"or per-frame keyboard_condition rows")
    return data


def _frame_matrix(path: Path, key: str, value: Any, width: int, variant: str) -> list[tuple[float, ...]]:
    if isinstance(value, (str, bytes)) or not isinstance(value, list):
        raise ActionInputError(f"action file {path}: {key} must be a list of rows of {width} numbers (one row per "
                               f"pixel frame) for {variant}, got {type(value).__name__}; fix the file")
    rows = []
    for i, row in enumerate(value):
        try:
            rows.append(_vector(row, width, f"row {i}"))
        except ValueError as exc:
            raise ActionInputError(f"action file {path}: {key} {exc} (each row has {width} finite numbers for "
                                   f"{variant}); fix the file") from None
    return rows


def _load_frames(path: Path, data: Mapping[str, Any], variant: str, num_latent_frames: int) -> ActionTensors:
    spec = get_variant(variant)
    n = pixel_frames(num_latent_frames)
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
    kb = torch.tensor(keyboard[:n], dtype=torch.float32).reshape(n, spec.keyboard_dim)
    ms = None if mouse is None else torch.tensor(mouse[:n], dtype=torch.float32).reshape(n, 2)
    return ActionTensors(kb, ms)


def _chunk_entry(path: Path, index: int, entry: Any, variant: str) -> ChunkAction:
    spec = get_variant(variant)
    if isinstance(entry, str):
        try:
            return parse_keys(variant, entry)
        except ActionInputError as exc:
            raise ActionInputError(f"action file {path}, chunk {index}: {exc}") from None
    if isinstance(entry, dict):
        unknown = [k for k in entry if k not in _ENTRY_KEYS]
        if unknown:
            raise ActionInputError(f"action file {path}, chunk {index}: unknown key {unknown[0]!r}; a raw entry "
                                   f"holds only keyboard{' and mouse' if spec.has_mouse else ''}")
        if "keyboard" not in entry:
            raise ActionInputError(f"action file {path}, chunk {index}: a raw entry needs keyboard "
                                   f"[{spec.keyboard_dim} values]")
        try:
            return ChunkAction.from_vectors(variant, entry["keyboard"], entry.get("mouse"))
        except ActionInputError as exc:
            raise ActionInputError(f"action file {path}, chunk {index}: {exc}") from None
    raise ActionInputError(f"action file {path}, chunk {index}: {entry!r} is neither a key line (a string) nor a "
                           f"mapping of keyboard/mouse vectors; for {variant} type {spec.key_help}")


def _load_chunks(path: Path, entries: Any, variant: str,
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
    actions = [_chunk_entry(path, i, entry, variant) for i, entry in enumerate(entries[:needed])]
    return actions_from_chunks(variant, actions, num_latent_frames), actions


def load_action_file(path: str | Path, variant: str,
                     num_latent_frames: int) -> tuple[ActionTensors, list[ChunkAction] | None]:
    """Read a JSON/YAML action file (per pixel frame or per chunk): tensors for T latent frames, chunk actions."""
    get_variant(variant)
    pixel_frames(num_latent_frames)
    path = Path(path)
    data = _read_document(path)
    if isinstance(data, list):
        return _load_chunks(path, data, variant, num_latent_frames)
    if not isinstance(data, dict):
        raise ActionInputError(f"action file {path} holds a {type(data).__name__}; give a list of per-chunk keys, "
                               f"a mapping with chunks, or a mapping with keyboard_condition")
    unknown = [k for k in data if k not in _KNOWN_KEYS]
    if unknown:
        raise ActionInputError(f"action file {path} has unknown top-level key(s) "
                               f"{', '.join(repr(k) for k in unknown)}; the known keys are "
                               f"{', '.join(_KNOWN_KEYS)}")
    has_frames = any(k in data for k in _FRAME_KEYS)
    if "chunks" in data:
        if has_frames:
            raise ActionInputError(f"action file {path} mixes chunks with keyboard_condition/mouse_condition; give "
                                   f"either per-chunk or per-frame actions")
        return _load_chunks(path, data["chunks"], variant, num_latent_frames)
    if not has_frames:
        raise ActionInputError(f"action file {path} is an empty mapping; give chunks or keyboard_condition")
    return _load_frames(path, data, variant, num_latent_frames), None
