"""Reading the FLV stream ffmpeg writes on a pipe: the H.264 decoder configuration, then one access unit per frame.

FLV (Adobe Flash Video File Format, version 10) frames every packet as a tag with its size, and ffmpeg's FLV muxer
writes each packet as soon as the encoder emits it, so a reader sees every encoded frame at once. For H.264 the
first video tag holds the ``AVCDecoderConfigurationRecord`` (the body of an mp4 ``avcC`` box) and every later tag one
frame in the length-prefixed form mp4 samples use.
"""
from __future__ import annotations

from typing import BinaryIO, Iterator

HEADER_BYTES = 9
TAG_HEADER_BYTES = 11
PREVIOUS_TAG_SIZE_BYTES = 4
VIDEO_TAG = 9
CODEC_AVC = 7
KEY_FRAME = 1
AVC_SEQUENCE_HEADER, AVC_NALU = 0, 1
EXTENDED_HEADER_BIT = 0x80     # "enhanced RTMP" video tags (HEVC, AV1, ...): not what x264 produces


class FlvError(Exception):
    """The stream is not the H.264-in-FLV ffmpeg was asked for."""


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    """``n`` bytes, or None at a clean end of the stream (FlvError if it ends inside a record)."""
    data = stream.read(n)
    if not data:
        return None
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            raise FlvError(f"the FLV stream ended inside a record ({len(data)} of {n} bytes)")
        data += more
    return data


def iter_h264(stream: BinaryIO) -> Iterator[tuple[str, bytes, bool]]:
    """Yield ("config", avcC record, False) once, then ("frame", access unit, is key frame) per frame, in order."""
    header = _read_exactly(stream, HEADER_BYTES)
    if header is None:
        return
    if header[:3] != b"FLV":
        raise FlvError(f"expected an FLV header, got {header[:3]!r}")
    # the rest of a longer header, then PreviousTagSize0
    _read_exactly(stream, int.from_bytes(header[5:9], "big") - HEADER_BYTES + PREVIOUS_TAG_SIZE_BYTES)
    while (tag := _read_exactly(stream, TAG_HEADER_BYTES)) is not None:
        size = int.from_bytes(tag[1:4], "big")
        body = _read_exactly(stream, size + PREVIOUS_TAG_SIZE_BYTES)
        if body is None:
            raise FlvError("the FLV stream ended after a tag header")
        if tag[0] != VIDEO_TAG:
            continue                      # script data (metadata) or anything else
        flags, kind = body[0], body[1]    # frame type << 4 | codec id, AVCPacketType
        if flags & EXTENDED_HEADER_BIT or (flags & 0x0F) != CODEC_AVC:
            raise FlvError(f"unexpected FLV video tag (flags 0x{flags:02x}); expected H.264 in a legacy tag")
        if kind == AVC_SEQUENCE_HEADER:
            yield "config", body[5:size], False
        elif kind == AVC_NALU:
            if int.from_bytes(body[2:5], "big", signed=True):
                raise FlvError("the encoder reordered frames (non-zero composition time); expected no B-frames")
            yield "frame", body[5:size], (flags >> 4) == KEY_FRAME
