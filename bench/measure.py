"""Inputs of a benchmark rollout and ``bench.run``'s per-rollout figures, read through ``bench.timing.timed_blocks``."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .geometry import chunk_flops
from .timing import decode_step, stats, timed_blocks


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


def random_inputs(model, latent_shape, latent_frames: int, seed: int = 0, low_memory: bool = False,
                  text: torch.Tensor | None = None, prompt_switch=None):
    """``RolloutInputs`` of one video: prompt embeddings [1, text_len, text_dim], initial noise, re-noise source.

    The noise is one tensor [1, T, C, h, w] on the device (upstream's order, grows with T), or with ``low_memory`` a
    ``LazyNoise`` drawn chunk by chunk (memory independent of the length). Same seed, same inputs.
    """
    from pipeline.noise import LazyNoise
    from pipeline.rollout import RolloutInputs
    cfg, device = model.config, model.device
    meta = device.type == "meta"
    g = None if meta else torch.Generator(device=device).manual_seed(seed)
    if text is None:
        text = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g, dtype=model.dtype, device=device)
    if low_memory:
        noise = LazyNoise(1, latent_shape, noise_source(device, seed + 1), model.dtype, device, latent_frames)
    else:
        gn = None if meta else torch.Generator(device=device).manual_seed(seed + 1)
        noise = torch.randn(1, latent_frames, *latent_shape, generator=gn, dtype=model.dtype, device=device)
    return RolloutInputs(text, noise, noise_source(device, seed + 2), prompt_switch=prompt_switch)


def _decoder_post(vae, settings: RunSettings):
    """The decode step of ``settings`` (None without a VAE or with ``decode`` off)."""
    if vae is None or not settings.decode:
        return None
    return decode_step(vae.stream_decoder(), per_frame=settings.low_memory, to_host=settings.frames_to_host)


def run_video(pipe, vae, latent_shape, latent_frames: int, settings: RunSettings) -> float:
    """Generate (and decode) one video of ``latent_frames`` frames; returns its wall seconds."""
    inputs = random_inputs(pipe.model, latent_shape, latent_frames, settings.seed, settings.low_memory)
    return timed_blocks(pipe, inputs, post=_decoder_post(vae, settings)).wall_s


def warm_up(pipe, vae, latent_shape, settings: RunSettings) -> dict:
    """Run ``warmup_chunks`` chunks (with decode) outside the timed region; returns their wall time."""
    n = settings.warmup_chunks
    if n <= 0:
        return {"chunks": 0, "seconds": 0.0}
    seconds = run_video(pipe, vae, latent_shape, n * pipe.config.num_frame_per_block, settings)
    return {"chunks": n, "seconds": seconds}


def measure_rollout(pipe, vae, latent_shape, latent_frames: int, settings: RunSettings,
                    mode: str) -> tuple[list[dict], dict]:
    """(per-chunk records, {wall_s, rss_peak_bytes}) of one timed rollout of ``latent_frames`` frames in ``mode``.

    One host sync at the end, plus the per-chunk frame copy to the host when ``frames_to_host``.
    """
    inputs = random_inputs(pipe.model, latent_shape, latent_frames, settings.seed, settings.low_memory)
    run = timed_blocks(pipe, inputs, post=_decoder_post(vae, settings), rss=True)
    chunks = [{"index": b["index"], "start_frame": b["start_frame"], "kind": b["kind"],
               "context_frames": b["context_frames"], "dit_s": b["dit_s"], "vae_s": b["post_s"],
               "gpu_allocated_bytes": b["allocated_bytes"], "gpu_peak_bytes": b["peak_allocated_bytes"],
               "gpu_reserved_peak_bytes": b["peak_reserved_bytes"], "rss_bytes": b["rss_bytes"]}
              for b in run.blocks]
    chunks[0]["since_start_s"] = run.first_block_s
    chunks[0]["since_start_with_vae_s"] = run.first_block_with_post_s
    return chunks, {"wall_s": run.wall_s, "rss_peak_bytes": run.rss_peak_bytes}


def _stats(values: list[float]) -> dict | None:
    """count/mean/median/p90/max of seconds, or None when empty."""
    s = stats(values)
    if s is None:
        return None
    return {"count": s["count"], "mean_s": s["mean_s"], "median_s": s["p50_s"], "p90_s": s["p90_s"],
            "max_s": s["max_s"]}


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
    steady = [c for c in chunks if c["kind"] != "fill"]
    steady_frames = len(steady) * preset.chunk_frames * preset.temporal_factor
    steady_dit = sum(c["dit_s"] for c in steady)
    steady_full = steady_dit + sum(c["vae_s"] for c in steady)
    return {
        "latent_frames": latent_frames, "output_frames": frames, "chunks": len(chunks),
        "first_chunk_latency_s": chunks[0]["since_start_s"],
        "first_chunk_latency_with_vae_s": chunks[0]["since_start_with_vae_s"],
        "chunk_latency_by_kind": by_kind,
        "dit_total_s": dit, "vae_total_s": vae, "wall_s": extra["wall_s"],
        "fps_dit_only": frames / dit if dit > 0 else None,
        "fps_with_vae": frames / (dit + vae) if dit + vae > 0 else None,
        "fps_steady_dit_only": steady_frames / steady_dit if steady_dit > 0 else None,
        "fps_steady_with_vae": steady_frames / steady_full if steady_full > 0 else None,
        "fps_wall": frames / extra["wall_s"] if extra["wall_s"] > 0 else None,
        "gpu_peak_bytes": max(c["gpu_peak_bytes"] for c in chunks),
        "gpu_reserved_peak_bytes": max(c["gpu_reserved_peak_bytes"] for c in chunks),
        "rss_peak_bytes": extra["rss_peak_bytes"],
        "dit_tflops_per_s": flops / dit / 1e12 if dit > 0 else None,
        "dit_flops_total": flops,
    }
