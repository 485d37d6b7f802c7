"""Reading mp4 files back in tests, with PyAV: decoded frames and the fragment layout."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def probe(path: Path) -> dict:
    """{"frames", "key_frames" (indices), "pts", "fps", "size", "codec"} of an mp4 (any name, e.g. a .part file)."""
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return {"frames": len(frames), "key_frames": [i for i, f in enumerate(frames) if f.key_frame],
                "pts": [f.pts for f in frames], "fps": float(stream.average_rate or 0),
                "size": (stream.codec_context.width, stream.codec_context.height), "codec": stream.codec_context.name}


def frame_count(path: Path) -> int:
    """Frames PyAV decodes from an mp4."""
    return probe(path)["frames"]


def decoded(path: Path) -> np.ndarray:
    """All frames of an mp4 as uint8 RGB [n, H, W, 3]."""
    import av
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def fragments(path: Path) -> list[tuple[int, int]]:
    """(sample count, first sample's flags) of every moof fragment of a fragmented mp4."""
    data, out, pos = Path(path).read_bytes(), [], 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"moof":
            trun = data.index(b"trun", pos, pos + size)
            flags = int.from_bytes(data[trun + 5:trun + 8], "big")
            count = struct.unpack(">I", data[trun + 8:trun + 12])[0]
            off = trun + 12 + (4 if flags & 0x1 else 0)       # after the data offset
            if flags & 0x4:                                    # first_sample_flags
                first = struct.unpack(">I", data[off:off + 4])[0]
            elif flags & 0x400:                                # per-sample flags: the first entry's
                off += 4 * bool(flags & 0x100) + 4 * bool(flags & 0x200)
                first = struct.unpack(">I", data[off:off + 4])[0]
            else:
                first = None
            out.append((count, first))
        pos += size
    return out


def top_level_boxes(path: Path) -> list[bytes]:
    """Types of the top-level boxes of an mp4, in order."""
    data, out, pos = Path(path).read_bytes(), [], 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        out.append(kind)
        pos += size
    return out
