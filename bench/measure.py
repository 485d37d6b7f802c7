"""Measure one rollout: per-chunk DiT and VAE time, cache events, memory; then summarise it."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from .clock import Clock, GpuMemory, RssSampler
from .geometry import chunk_flops
from pipeline.rollout import RolloutInputs

from .modes import label_chunk


@dataclass
class RunSettings:
    """How a rollout is measured."""

    warmup_chunks: int = 1
    decode: bool = True           # stream-decode every chunk with the VAE
    frames_to_host: bool = True   # convert decoded frames to uint8 and copy them to the host (what a writer needs)
    low_memory: bool = False      # initial noise drawn per chunk (LazyNoise); VAE fed one latent frame per call
    seed: int = 0


def noise_source(device: torch.device, seed: int):
    """A re-noise source (shape, dtype, device) -> randn; seeded generator except on the meta device."""
    if device.type == "meta":
        return lambda shape, dtype, dev: torch.randn(shape, dtype=dtype, device=dev)
    g = torch.Generator(device=device).manual_seed(seed)
    return lambda shape, dtype, dev: torch.randn(shape, generator=g, dtype=dtype, device=dev)


def random_inputs(pipe, latent_shape, latent_frames: int, settings: RunSettings):
    """Prompt embeddings [1, text_len, text_dim] and the initial noise of ``latent_frames`` frames.

    The noise is one tensor [1, T, C, h, w] on the device (upstream's order, grows with T), or in low-memory mode a
    ``LazyNoise`` drawn chunk by chunk (memory independent of the length).
    """
    from pipeline.noise import LazyNoise
    model = pipe.model
    cfg, device = model.config, model.device
    g = None if device.type == "meta" else torch.Generator(device=device).manual_seed(settings.seed)
    text = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g, dtype=model.dtype, device=device)
    if settings.low_memory:
        source = noise_source(device, settings.seed + 1)
        return text, LazyNoise(1, latent_shape, source, model.dtype, device, latent_frames)
    gn = None if device.type == "meta" else torch.Generator(device=device).manual_seed(settings.seed + 1)
    noise = torch.randn(1, latent_frames, *latent_shape, generator=gn, dtype=model.dtype, device=device)
    return text, noise


def _decode(decoder, x0: torch.Tensor, settings: RunSettings, device: torch.device):
    """Stream-decode a chunk's latents [1, B, C, h, w]; frames to host uint8 when asked (not on meta)."""
    parts = [x0[:, j:j + 1] for j in range(x0.shape[1])] if settings.low_memory else [x0]
    for part in parts:
        frames = decoder.decode_chunk(part)  # [1, n, 3, H, W] in [-1, 1]
        if settings.frames_to_host and device.type != "meta":
            frames = ((frames.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8).cpu()
    return frames


def run_video(pipe, vae, latent_shape, latent_frames: int, settings: RunSettings) -> float:
    """Generate (and decode) one video of ``latent_frames`` frames untimed per chunk; returns its wall seconds."""
    device = pipe.model.device
    clock = Clock(device)
    text, noise = random_inputs(pipe, latent_shape, latent_frames, settings)
    decoder = vae.stream_decoder() if (vae is not None and settings.decode) else None
    clock.sync()
    t0 = time.perf_counter()
    for _, _, x0 in pipe.frames(RolloutInputs(text, noise, noise_source(device, settings.seed))):
        if decoder is not None:
            _decode(decoder, x0, settings, device)
    clock.sync()
    return time.perf_counter() - t0


def warm_up(pipe, vae, latent_shape, settings: RunSettings) -> dict:
    """Run ``warmup_chunks`` chunks (with decode) outside the timed region; returns their wall time."""
    n = settings.warmup_chunks
    if n <= 0:
        return {"chunks": 0, "seconds": 0.0}
    seconds = run_video(pipe, vae, latent_shape, n * pipe.config.num_frame_per_block, settings)
    return {"chunks": n, "seconds": seconds}


def measure_rollout(pipe, vae, latent_shape, latent_frames: int, settings: RunSettings,
                    mode: str) -> tuple[list[dict], dict]:
    """(per-chunk records, {wall_s, rss_peak_bytes}) of one timed rollout of ``latent_frames`` frames.

    One host sync at the end, plus the per-chunk frame copy to the host when ``frames_to_host``.
    """
    device = pipe.model.device
    clock, gpu = Clock(device), GpuMemory(device)
    text, noise = random_inputs(pipe, latent_shape, latent_frames, settings)
    decoder = vae.stream_decoder() if (vae is not None and settings.decode) else None
    raw = []
    with RssSampler() as rss:
        clock.sync()
        gpu.reset_peak()
        wall0 = time.perf_counter()
        it = pipe.frames(RolloutInputs(text, noise, noise_source(device, settings.seed)))
        start = clock.mark()
        while True:
            before = pipe.kv.layers[0].n if raw else 0
            gpu.reset_peak()
            m0 = clock.mark()
            try:
                i, f, x0 = next(it)
            except StopIteration:
                break
            m1 = clock.mark()
            if decoder is not None:
                _decode(decoder, x0, settings, device)
            m2 = clock.mark()
            raw.append((i, f, x0.shape[1], m0, m1, m2, before, pipe.kv.layers[0].n, gpu.allocated(), gpu.peak(),
                        gpu.reserved_peak(), rss.current()))
        clock.sync()
        wall = time.perf_counter() - wall0
    F = pipe.kv.tokens_per_frame
    chunks = []
    for i, f, B, m0, m1, m2, before, after, alloc, peak, reserved, rss_now in raw:
        chunks.append({
            "index": i, "start_frame": f, "kind": label_chunk(before, after, B * F, mode),
            "context_frames": (after - B * F) // F,
            "dit_s": clock.seconds(m0, m1), "vae_s": clock.seconds(m1, m2),
            "gpu_allocated_bytes": alloc, "gpu_peak_bytes": peak, "gpu_reserved_peak_bytes": reserved,
            "rss_bytes": rss_now,
        })
    first_event = next((c["index"] for c in chunks if c["kind"] != "normal"), len(chunks))
    for c in chunks[:first_event]:
        c["kind"] = "fill"  # the window is still filling: smaller context than in the steady state
    chunks[0]["since_start_s"] = clock.seconds(start, raw[0][4])
    chunks[0]["since_start_with_vae_s"] = clock.seconds(start, raw[0][5])
    return chunks, {"wall_s": wall, "rss_peak_bytes": rss.peak}


def _stats(values: list[float]) -> dict | None:
    """count/mean/median/p90/max of seconds, or None when empty."""
    if not values:
        return None
    s = sorted(values)
    return {"count": len(s), "mean_s": statistics.fmean(s), "median_s": statistics.median(s),
            "p90_s": s[min(len(s) - 1, int(0.9 * len(s)))], "max_s": s[-1]}


def summarise(chunks: list[dict], extra: dict, preset, latent_frames: int, calls_per_chunk: int) -> dict:
    """Headline figures of one rollout (first-chunk latency, per-kind chunk latency, FPS, peaks, FLOP rate)."""
    frames = preset.pixel_frames(latent_frames)
    dit = sum(c["dit_s"] for c in chunks)
    vae = sum(c["vae_s"] for c in chunks)
    later = chunks[1:]
    kinds = sorted({c["kind"] for c in later})
    by_kind = {k: {"dit": _stats([c["dit_s"] for c in later if c["kind"] == k]),
                   "dit_plus_vae": _stats([c["dit_s"] + c["vae_s"] for c in later if c["kind"] == k])}
               for k in kinds}
    flops = sum(chunk_flops(preset.model, preset.tokens_per_frame, preset.chunk_frames, c["context_frames"],
                            calls_per_chunk)["total"] for c in chunks)
    return {
        "latent_frames": latent_frames, "output_frames": frames, "chunks": len(chunks),
        "first_chunk_latency_s": chunks[0]["since_start_s"],
        "first_chunk_latency_with_vae_s": chunks[0]["since_start_with_vae_s"],
        "chunk_latency_by_kind": by_kind,
        "dit_total_s": dit, "vae_total_s": vae, "wall_s": extra["wall_s"],
        "fps_dit_only": frames / dit if dit > 0 else None,
        "fps_with_vae": frames / (dit + vae) if dit + vae > 0 else None,
        "fps_wall": frames / extra["wall_s"] if extra["wall_s"] > 0 else None,
        "gpu_peak_bytes": max(c["gpu_peak_bytes"] for c in chunks),
        "gpu_reserved_peak_bytes": max(c["gpu_reserved_peak_bytes"] for c in chunks),
        "rss_peak_bytes": extra["rss_peak_bytes"],
        "dit_tflops_per_s": flops / dit / 1e12 if dit > 0 else None,
        "dit_flops_total": flops,
    }
