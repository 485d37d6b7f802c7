"""Fragmented MP4 (ISO/IEC 14496-12) for one H.264 video track: an init segment, then one fragment per flush.

Layout: ``ftyp``, ``moov`` (empty sample tables, ``mvex`` with a ``mehd`` holding the total duration, patched in
place by ``finish``), then ``moof`` + ``mdat`` pairs. Every fragment is complete on disk when ``write_fragment``
returns, so any player or ``ffmpeg`` can read the file while it grows. Samples are H.264 access units in the
length-prefixed (AVCC) form described by the ``avcC`` record, as in any mp4.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

MIN_TIMESCALE = 10000                     # ticks per second at least (ffmpeg uses similar fine timescales)
TRACK_ID = 1
UNIT_MATRIX = struct.pack(">9i", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
LANGUAGE_UND = ((ord("u") - 0x60) << 10) | ((ord("n") - 0x60) << 5) | (ord("d") - 0x60)
SYNC_SAMPLE_FLAGS = 0x02000000            # sample_depends_on = 2 (an IDR frame)
NON_SYNC_SAMPLE_FLAGS = 0x01010000        # sample_depends_on = 1, sample_is_non_sync_sample = 1
TFHD_DEFAULT_BASE_IS_MOOF, TFHD_DEFAULT_DURATION = 0x020000, 0x000008
TRUN_DATA_OFFSET, TRUN_SIZE, TRUN_FLAGS = 0x000001, 0x000200, 0x000400


def box(kind: bytes, *payload: bytes) -> bytes:
    """An ISO BMFF box: 32-bit size, 4-character type, payload."""
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    """A box with the version byte and 24-bit flags of a 'full box'."""
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def timescale_for(fps: float) -> tuple[int, int]:
    """(ticks per second, ticks per frame) representing ``fps`` exactly for common rates (16, 24, 30000/1001)."""
    rate = Fraction(fps).limit_denominator(1001)
    scale = max(1, math.ceil(MIN_TIMESCALE / rate.numerator))
    return rate.numerator * scale, rate.denominator * scale


@dataclass(frozen=True)
class Sample:
    """One encoded frame: AVCC access unit bytes and whether it is a key frame."""

    data: bytes
    key: bool


class FragmentedMp4:
    """Writes a fragmented mp4 with one H.264 track to an open, seekable binary file."""

    def __init__(self, fh: BinaryIO, width: int, height: int, fps: float):
        self.fh, self.width, self.height = fh, width, height
        self.timescale, self.frame_ticks = timescale_for(fps)
        self.frames = 0
        self.fragments = 0
        self._mehd_offset: int | None = None  # file offset of mehd's 64-bit duration field

    @property
    def started(self) -> bool:
        """Whether the init segment has been written."""
        return self._mehd_offset is not None

    def write_init(self, avcc: bytes) -> None:
        """Write ``ftyp`` + ``moov`` for a track described by the AVCDecoderConfigurationRecord ``avcc``."""
        ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isom", b"iso6", b"avc1", b"mp41")
        trex = full_box(b"trex", 0, 0, struct.pack(">5I", TRACK_ID, 1, 0, 0, 0))
        mvex = box(b"mvex", full_box(b"mehd", 1, 0, struct.pack(">Q", 0)), trex)
        moov = box(b"moov", self._mvhd(), self._trak(avcc), mvex)
        # mehd's 64-bit duration: after the mvex header (8), the mehd header (8) and its version/flags (4).
        self._mehd_offset = self.fh.tell() + len(ftyp) + len(moov) - len(mvex) + 8 + 8 + 4
        self.fh.write(ftyp + moov)
        self.fh.flush()

    def _mvhd(self) -> bytes:
        """Movie header: timescale, zero duration (the fragments carry the samples), one track."""
        return full_box(b"mvhd", 0, 0, struct.pack(">4I", 0, 0, self.timescale, 0),
                        struct.pack(">iH", 0x10000, 0x100), bytes(10), UNIT_MATRIX, bytes(24),
                        struct.pack(">I", TRACK_ID + 1))

    def _trak(self, avcc: bytes) -> bytes:
        """Track box: header, media header, handler, and an ``avc1`` sample description holding ``avcc``."""
        tkhd = full_box(b"tkhd", 0, 3, struct.pack(">5I", 0, 0, TRACK_ID, 0, 0), bytes(8),
                        struct.pack(">hhhH", 0, 0, 0, 0), UNIT_MATRIX,
                        struct.pack(">II", self.width << 16, self.height << 16))
        mdhd = full_box(b"mdhd", 0, 0, struct.pack(">4I", 0, 0, self.timescale, 0),
                        struct.pack(">HH", LANGUAGE_UND, 0))
        hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I4s", 0, b"vide"), bytes(12), b"VideoHandler\x00")
        avc1 = box(b"avc1", bytes(6), struct.pack(">H", 1), bytes(16), struct.pack(">HH", self.width, self.height),
                   struct.pack(">II", 0x00480000, 0x00480000), bytes(4), struct.pack(">H", 1), bytes(32),
                   struct.pack(">Hh", 0x0018, -1), box(b"avcC", avcc))
        stbl = box(b"stbl", full_box(b"stsd", 0, 0, struct.pack(">I", 1), avc1),
                   full_box(b"stts", 0, 0, struct.pack(">I", 0)), full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
                   full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)), full_box(b"stco", 0, 0, struct.pack(">I", 0)))
        dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
        minf = box(b"minf", full_box(b"vmhd", 0, 1, bytes(8)), dinf, stbl)
        return box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, minf))

    def write_fragment(self, samples: list[Sample]) -> None:
        """Append one ``moof`` + ``mdat`` holding ``samples`` (frames in decode order, constant frame duration)."""
        if not samples:
            return
        if not self.started:
            raise RuntimeError("write_init must come before the first fragment")
        self.fragments += 1
        mfhd = full_box(b"mfhd", 0, 0, struct.pack(">I", self.fragments))
        tfhd = full_box(b"tfhd", 0, TFHD_DEFAULT_BASE_IS_MOOF | TFHD_DEFAULT_DURATION,
                        struct.pack(">II", TRACK_ID, self.frame_ticks))
        tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", self.frames * self.frame_ticks))
        entries = b"".join(struct.pack(">II", len(s.data), SYNC_SAMPLE_FLAGS if s.key else NON_SYNC_SAMPLE_FLAGS)
                           for s in samples)

        def moof_with(offset: int) -> bytes:
            """The moof box with ``offset`` (bytes from moof to the first sample) in its trun."""
            trun = full_box(b"trun", 0, TRUN_DATA_OFFSET | TRUN_SIZE | TRUN_FLAGS,
                            struct.pack(">Ii", len(samples), offset), entries)
            return box(b"moof", mfhd, box(b"traf", tfhd, tfdt, trun))

        size = len(moof_with(0))
        payload = b"".join(s.data for s in samples)
        self.fh.write(moof_with(size + 8) + struct.pack(">I4s", 8 + len(payload), b"mdat") + payload)
        self.fh.flush()
        self.frames += len(samples)

    def finish(self) -> None:
        """Record the total duration in ``mehd`` (players show the length and can seek before scanning)."""
        if not self.started:
            return
        end = self.fh.tell()
        self.fh.seek(self._mehd_offset)
        self.fh.write(struct.pack(">Q", self.frames * self.frame_ticks))
        self.fh.seek(end)
        self.fh.flush()
