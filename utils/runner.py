"""Models loaded once, then one prompt at a time: encode -> rollout -> decode -> write mp4 + sidecar.

``VideoRunner.render(job, slots)`` is the per-prompt step; its parts (``encode``, ``rollout``, ``decode``,
``write``) are separate methods so that streaming output or prompt schedules can replace one of them.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.causal_inference import CausalInferencePipeline
from pipeline.policies import build_policy
from wan.loading import ensure_model_files, load_generator
from wan.memory import should_offload_text_encoder
from wan.text_encoder import WanTextEncoder
from wan.vae import WanVAE

from .cli_config import REPO_ROOT, CLIError
from .outputs import OutputSlot, atomic_path, write_json_atomic
from .prompts import PromptJob
from .runtime import dtype_name
from .settings import RunSettings
from .video import CODEC, DEFAULT_CRF, PIXEL_FORMAT, Mp4Writer, to_uint8

logger = logging.getLogger(__name__)

DEBUG_FRAME_DELAY_ENV = "DEEP_FORCING_DEBUG_FRAME_DELAY"  # tests: seconds to sleep after each written frame
PACKAGES = ("deep-forcing", "torch", "diffusers", "transformers", "huggingface_hub", "safetensors", "numpy",
            "imageio", "imageio-ffmpeg", "flash-attn")


def package_versions() -> dict:
    """Versions of Python, the packages that shape results, ffmpeg, CUDA and the git commit (when known)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        import imageio_ffmpeg
        out["ffmpeg"] = imageio_ffmpeg.get_ffmpeg_version()
    except Exception:  # noqa: BLE001 - informational only
        pass
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


@dataclass
class RenderResult:
    """What one ``render`` call did."""

    job: PromptJob
    written: list[Path] = field(default_factory=list)
    timings: dict = field(default_factory=dict)   # seconds per stage


class VideoRunner:
    """Text encoder, causal DiT, VAE and rollout pipeline, built once and reused for every prompt."""

    def __init__(self, settings: RunSettings, text_encoder, model, vae, pipeline: CausalInferencePipeline,
                 progress: bool = True):
        self.settings, self.text_encoder, self.model, self.vae, self.pipeline = (settings, text_encoder, model,
                                                                                 vae, pipeline)
        self.progress = progress
        self.versions = package_versions()
        sf = vae.spatial_factor
        if settings.height % sf or settings.width % sf:
            raise CLIError(f"height={settings.height} x width={settings.width} is not divisible by the VAE's "
                           f"spatial factor {sf}.")
        self.latent_shape = (model.config.in_dim, settings.height // sf, settings.width // sf)  # (C, h, w)
        delay = float(os.environ.get(DEBUG_FRAME_DELAY_ENV, "0") or 0)
        self._on_frame = (lambda n: time.sleep(delay)) if delay > 0 else None

    @classmethod
    def load(cls, settings: RunSettings, progress: bool = True) -> "VideoRunner":
        """Download missing default files if allowed, then load the three models and build the pipeline."""
        t0 = time.perf_counter()
        model_dir, checkpoint = settings.model_dir, settings.checkpoint
        if settings.download:
            model_dir, checkpoint = ensure_model_files(model_dir, checkpoint, download=True)
        device, dtype = settings.device, settings.dtype
        offload = should_offload_text_encoder(device)
        logger.info("loading models from %s and %s on %s (%s)%s", model_dir, checkpoint, device, dtype_name(dtype),
                    ", text encoder offloaded to the CPU" if offload else "")
        text_encoder = WanTextEncoder.from_model_dir(model_dir, dtype=dtype, device=device, offload=offload)
        model = load_generator(model_dir, checkpoint, use_ema=settings.use_ema, dtype=dtype, device=device)
        vae = WanVAE.from_model_dir(model_dir, dtype=dtype, device=device)
        policy = build_policy(**settings.policy_kwargs)
        pipeline = CausalInferencePipeline(model, settings.rollout, policy)
        logger.info("models ready in %.1f s; cache %s", time.perf_counter() - t0, policy.describe())
        return cls(settings, text_encoder, model, vae, pipeline, progress=progress)

    def _sync(self) -> None:
        """Wait for queued GPU work so timings are real."""
        if self.settings.device.type == "cuda":
            torch.cuda.synchronize(self.settings.device)

    def encode(self, job: PromptJob) -> torch.Tensor:
        """Prompt embeddings [num_samples, text_len, text_dim] of the job's text (encoded once, repeated)."""
        embeds = self.text_encoder.encode([job.text])  # [1, text_len, text_dim]
        return embeds.to(self.settings.device).expand(self.settings.num_samples, *embeds.shape[1:])

    def rollout(self, embeds: torch.Tensor) -> torch.Tensor:
        """Latents [num_samples, T, C, h, w], seeded as upstream (every prompt starts from --seed)."""
        s = self.settings
        B = s.rollout.num_frame_per_block
        bar = tqdm(total=s.num_video_frames, desc="frames", unit="frame", leave=False, disable=not self.progress)

        def on_chunk(i: int, f: int, x0: torch.Tensor) -> None:
            """Advance the frame bar by the video frames chunk i decodes to."""
            if self.progress:
                self._sync()
            tf = s.vae_temporal
            bar.update(tf * (B - 1) + 1 if f == 0 else tf * B)

        try:
            latents = self.pipeline.generate_seeded(embeds, s.num_output_frames, self.latent_shape, s.seed,
                                                    callback=on_chunk)
            self._sync()
        finally:
            bar.close()
        return latents

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """One sample's latents [1, T, C, h, w] -> uint8 frames [4T-3, H, W, 3]."""
        frames = self.vae.decode(latents)  # [1, 4T-3, 3, H, W] in [-1, 1]
        return to_uint8(frames[0])

    def write_video(self, slot: OutputSlot, frames: np.ndarray) -> None:
        """Write the mp4 under a temporary name, renamed when complete (the sidecar follows, see ``render``)."""
        s = self.settings
        with atomic_path(slot.video) as part:
            with Mp4Writer(part, s.width, s.height, s.fps, on_frame=self._on_frame) as writer:
                writer.append(frames)

    def sidecar(self, job: PromptJob, slot: OutputSlot, timings: dict) -> dict:
        """The JSON record stored next to a video."""
        s = self.settings
        rollout_s = timings.get("rollout", 0.0)
        return {
            "video": slot.video.name,
            "prompt": job.prompt,
            "extended_prompt": job.extended_prompt,
            "source": {"file": str(job.source), "line": job.line + 1, "index": job.index},
            "seed": s.seed, "sample": slot.sample, "num_samples": s.num_samples,
            "mode": s.mode, "cache": s.cache, "rollout": s.request(job, slot.sample)["rollout"],
            "num_latent_frames": s.num_output_frames, "num_frames": s.num_video_frames, "fps": s.fps,
            "duration_s": round(s.num_video_frames / s.fps, 3), "height": s.height, "width": s.width,
            "codec": CODEC, "pixel_format": PIXEL_FORMAT, "crf": DEFAULT_CRF,
            "checkpoint": str(s.checkpoint), "use_ema": s.use_ema, "wan_model_dir": str(s.model_dir),
            "config_path": s.config_path, "config": s.config,
            "device": str(s.device), "dtype": dtype_name(s.dtype), "rank": s.dist.rank, "world_size": s.dist.world_size,
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
            "generation_fps": round(s.num_samples * s.num_video_frames / rollout_s, 3) if rollout_s else None,
            "versions": self.versions,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "request": s.request(job, slot.sample),
        }

    def render(self, job: PromptJob, slots: list[OutputSlot]) -> RenderResult:
        """Generate all samples of ``job`` as one batch and write those in ``slots`` (the unfinished ones)."""
        result = RenderResult(job)
        t = result.timings
        t0 = time.perf_counter()
        embeds = self.encode(job)
        self._sync()
        t["text_encoder"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        latents = self.rollout(embeds)
        t["rollout"] = time.perf_counter() - t1
        for slot in slots:
            t2 = time.perf_counter()
            frames = self.decode(latents[slot.sample:slot.sample + 1])
            self._sync()
            t["decode"] = time.perf_counter() - t2
            t3 = time.perf_counter()
            self.write_video(slot, frames)
            t["write"] = time.perf_counter() - t3
            t["total"] = time.perf_counter() - t0
            write_json_atomic(slot.sidecar, self.sidecar(job, slot, t))  # last: the video now counts as finished
            result.written.append(slot.video)
        t["total"] = time.perf_counter() - t0
        return result
