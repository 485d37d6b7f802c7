"""The one loop through a rollout that every figure of ``bench/`` is read from: ``timed_blocks``.

``timed_blocks(source, inputs, ...)`` consumes ``source.frames(inputs)`` (a ``pipeline.rollout.Rollout``, or
``bench.release_style.ReleaseStyleRollout``) block by block. Per block it marks the device's work stream before and
after the DiT work and after the block's post-processing (``post``: a streaming decode, the encode and write of the
frames, a copy of the latents ...), labels the block by what the cache did (``fill`` while the window fills, then
``normal`` / ``evict`` / ``compress``: host integers only, no sync) and reads the allocator's peaks. Marks are CUDA
events on CUDA (no host sync inside the loop, one at the end) and ``perf_counter`` values elsewhere (synchronous
kernels). ``summary(run)`` turns a run into the figures: FPS over all blocks and over the steady blocks apart from
the fill blocks, p50/p90 block times, first-block and first-frame latency, memory peaks.

Hooks: ``around(n)`` gives a context manager entered around the n-th block's DiT work and post-processing (a
profiler, a transfer counter, category timers; it is also entered for the last attempt, which finds the video
finished, so keep the first ``len(run.blocks)`` of what it collects); ``stop()`` is asked before every block and returns why to stop
early (a time budget) or None; ``finish()`` runs after the last block inside the timed region (closing a writer).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import torch

from utils.frames import video_frames

from .clock import Clock, GpuMemory, RssSampler
from .modes import event_kind_of

FILL = "fill"

# (block index, first latent frame, x0 [B, n, C, h, w]) -> optional dict of host-measured figures for the record
Post = Callable[[int, int, torch.Tensor], "dict | None"]


@dataclass
class TimedRun:
    """The blocks of one rollout, timed: per-block records and the run's wall-clock figures."""

    blocks: list[dict]
    wall_s: float
    first_block_s: float | None = None             # start -> the first block's latents
    first_block_with_post_s: float | None = None   # start -> the first block post-processed (e.g. first frames)
    finish_s: float = 0.0                          # ``finish()`` after the last block (e.g. closing the writer)
    stopped: str | None = None                     # why the run ended before the video did (None: it did not)
    rss_peak_bytes: int | None = None
    has_post: bool = False
    extra: dict = field(default_factory=dict)


def committed_tokens(source) -> int:
    """Committed tokens of layer 0 of ``source``'s cache (a host integer: no sync); 0 before the first block."""
    count = getattr(source, "committed_tokens", None)
    if count is not None:
        return int(count)
    kv = getattr(source, "kv", None)
    return 0 if kv is None else kv.layers[0].n


def output_frames(start_frame: int, latent_frames: int, temporal: int = 4) -> int:
    """Video frames decoded from latents [start_frame, start_frame + latent_frames): 4n - 3 for the first block."""
    before = video_frames(start_frame, temporal) if start_frame > 0 else 0
    return video_frames(start_frame + latent_frames, temporal) - before


def timed_blocks(source, inputs, *, post: Post | None = None, around: Callable[[int], ContextManager] | None = None,
                 stop: Callable[[], "str | None"] | None = None, finish: Callable[[], None] | None = None,
                 max_blocks: int | None = None, rss: bool = False, temporal: int = 4) -> TimedRun:
    """Run ``source.frames(inputs)`` to its end (or until ``stop``/``max_blocks``) and time every block.

    Each record: index, start_frame, latent_frames, output_frames, kind, tokens_before/after, context_frames (cached
    frames the block's last call saw besides itself), dit_s, post_s, allocated / peak_allocated / peak_reserved bytes
    (peaks per block), rss_bytes (with ``rss``), and whatever ``post`` returned.
    """
    model = source.model
    device = model.device
    clock, gpu = Clock(device), GpuMemory(device)
    _, _, h, w = (inputs.noise.shape[1:] if isinstance(inputs.noise, torch.Tensor) else
                  (None, *inputs.noise.latent_shape))
    tokens_per_frame = model.config.tokens_per_frame(h, w)
    event = event_kind_of(source.policy)
    raw, stopped = [], None
    sampler = RssSampler() if rss else contextlib.nullcontext()
    with sampler:
        clock.sync()
        gpu.reset_peak()
        wall0 = time.perf_counter()
        start = clock.mark()
        it = source.frames(inputs)
        try:
            while True:
                if max_blocks is not None and len(raw) >= max_blocks:
                    stopped = "max_blocks"
                    break
                reason = stop() if stop is not None else None
                if reason:
                    stopped = reason
                    break
                before = committed_tokens(source) if raw else 0
                gpu.reset_peak()
                with (around(len(raw)) if around is not None else contextlib.nullcontext()):
                    m0 = clock.mark()
                    try:
                        i, f, x0 = next(it)
                    except StopIteration:
                        break
                    m1 = clock.mark()
                    extra = post(i, f, x0) if post is not None else None
                    m2 = clock.mark()
                raw.append((i, f, x0.shape[1], before, committed_tokens(source), m0, m1, m2, gpu.allocated(),
                            gpu.peak(), gpu.reserved_peak(), sampler.current() if rss else None, extra or {}))
        finally:
            it.close()
        f0 = time.perf_counter()
        if finish is not None:
            finish()
        clock.sync()
        end = time.perf_counter()
    blocks = []
    for i, f, n, before, after, m0, m1, m2, alloc, peak, reserved, rss_now, extra in raw:
        chunk_tokens = n * tokens_per_frame
        kind = "normal" if after == before + chunk_tokens else event
        blocks.append({"index": i, "start_frame": f, "latent_frames": n,
                       "output_frames": output_frames(f, n, temporal), "kind": kind,
                       "tokens_before": before, "tokens_after": after,
                       "context_frames": max(0, (after - chunk_tokens) // tokens_per_frame),
                       "dit_s": clock.seconds(m0, m1), "post_s": clock.seconds(m1, m2),
                       "allocated_bytes": alloc, "peak_allocated_bytes": peak, "peak_reserved_bytes": reserved,
                       **({"rss_bytes": rss_now} if rss else {}), **extra})
    first_event = next((k for k, b in enumerate(blocks) if b["kind"] != "normal"), len(blocks))
    for b in blocks[:first_event]:
        b["kind"] = FILL  # the window is still filling: less context than in the steady state
    run = TimedRun(blocks, end - wall0, finish_s=end - f0, stopped=stopped,
                   rss_peak_bytes=sampler.peak if rss else None, has_post=post is not None)
    if raw:
        run.first_block_s = clock.seconds(start, raw[0][6])
        run.first_block_with_post_s = clock.seconds(start, raw[0][7])
    return run


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of ``values``, None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def stats(values: list[float]) -> dict | None:
    """count / mean / p50 / p90 / max of seconds, or None when empty."""
    if not values:
        return None
    return {"count": len(values), "mean_s": statistics.fmean(values), "p50_s": statistics.median(values),
            "p90_s": percentile(values, 0.9), "max_s": max(values)}


def _rate(frames: int, seconds: float) -> float | None:
    return frames / seconds if seconds > 0 else None


def _group(blocks: list[dict], with_post: bool, finish_s: float = 0.0) -> dict | None:
    """FPS and block-time percentiles of a group of blocks."""
    if not blocks:
        return None
    frames = sum(b["output_frames"] for b in blocks)
    dit = [b["dit_s"] for b in blocks]
    out = {"blocks": len(blocks), "output_frames": frames, "fps_dit": _rate(frames, sum(dit)),
           "dit_p50_s": statistics.median(dit), "dit_p90_s": percentile(dit, 0.9)}
    if with_post:
        full = [b["dit_s"] + b["post_s"] for b in blocks]
        out.update(fps_with_post=_rate(frames, sum(full) + finish_s), with_post_p50_s=statistics.median(full),
                   with_post_p90_s=percentile(full, 0.9))
    return out


def summary(run: TimedRun, fps: float = 16.0) -> dict:
    """Headline figures of a run: all blocks, steady blocks (after the fill) and fill blocks apart, latencies, peaks.

    ``fps_with_post`` counts the DiT, the post-processing of every block and ``finish`` (e.g. the writer's close).
    """
    blocks = run.blocks
    if not blocks:
        return {"blocks": 0, "stopped": run.stopped}
    steady = [b for b in blocks if b["kind"] != FILL]
    fill = [b for b in blocks if b["kind"] == FILL]
    frames = sum(b["output_frames"] for b in blocks)
    out = {
        "blocks": len(blocks), "output_frames": frames, "video_seconds": frames / fps,
        "all": _group(blocks, run.has_post, run.finish_s),
        "steady": _group(steady, run.has_post), "fill": _group(fill, run.has_post),
        "first_block_latency_s": run.first_block_s,
        "first_frame_latency_s": run.first_block_with_post_s if run.has_post else None,
        "later_blocks_dit": stats([b["dit_s"] for b in blocks[1:]]),
        "kinds": sorted({b["kind"] for b in blocks}),
        "peak_allocated_bytes": max(b["peak_allocated_bytes"] for b in blocks),
        "peak_reserved_bytes": max(b["peak_reserved_bytes"] for b in blocks),
        "wall_s": run.wall_s, "fps_wall": _rate(frames, run.wall_s), "finish_s": run.finish_s,
        "stopped": run.stopped,
    }
    if run.rss_peak_bytes is not None:
        out["rss_peak_bytes"] = run.rss_peak_bytes
    return out


# ---------------------------------------------------------------------------------------------------- post steps

def to_host_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Decoded frames [..., 3, H, W] in [-1, 1] -> uint8 on the host (what a viewer or writer needs)."""
    return ((frames.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8).cpu()


def decode_step(decoder, per_frame: bool = False, to_host: bool = True) -> Post:
    """A ``post`` that stream-decodes each block (one latent frame per call with ``per_frame``), frames to host."""
    def post(i, f, x0):
        parts = [x0[:, j:j + 1] for j in range(x0.shape[1])] if per_frame else [x0]
        for part in parts:
            frames = decoder.decode_chunk(part)  # [1, n, 3, H, W] in [-1, 1]
            if to_host and frames.device.type != "meta":
                to_host_uint8(frames)
        return None
    return post


def write_step(decoder, writer, convert) -> Post:
    """A ``post`` that decodes each block and writes its frames as one fragment, as the application does
    (``app.streaming.SampleOutput.add_chunk``): the previous fragment must be on disk (``flush(wait=True)``), this
    block's frames are handed over and their fragment is encoded in the background (``flush(wait=False)``).

    ``convert(frames [n, 3, H, W]) -> uint8 [n, H, W, 3]`` on the host. Returns write_s (host seconds of the
    writer calls, waiting for the previous fragment included) per block.
    """
    def post(i, f, x0):
        frames = convert(decoder.decode_chunk(x0)[0])  # host copy: waits for the decode
        t0 = time.perf_counter()
        writer.flush(wait=True)
        writer.append(frames)
        writer.flush(wait=False)
        return {"write_s": time.perf_counter() - t0}
    return post
