"""Models loaded once, then one prompt at a time: encode -> chunk by chunk (generate, decode, append) -> sidecar.

``VideoRunner.render(job, slots)`` is the per-prompt step. Every chunk's latents are decoded with the VAE's streaming
decoder and appended to each sample's mp4 right away (``app.streaming``), so memory does not grow with the length
of the video and the file can be watched while it grows; prompt switches (a schedule or stdin) happen between
chunks (``app.switching``).

Order of one block i on CUDA, with no device-wide synchronise (only at a prompt switch, whose text encoder is timed
apart): the rollout enqueues block i on the current stream and yields it; an event is recorded there (the block's
end, and its rollout timing); the ``ChunkDecoder`` queues decode, uint8 conversion and the copy into pinned host
memory on its side stream behind that event; then block i-1, whose copy was queued one block earlier, is handed to
the mp4 writers once its copy event has completed (an event wait; the writers encode on their thread pool);
``on_chunk`` and the progress bar follow; the prompt of block i+1 is prepared and the rollout enqueues it, so block
i's decode and copy run on the GPU while block i+1 is denoised. Block 0 is handed over at once (its frames are the
first on disk; ``first_chunk`` is the time to them: the one wait for a copy before the next block is queued), and
the last block when the video ends. On the CPU everything runs in order and each block is handed over before the
next is generated, as before.
Timings: ``rollout`` and ``decode`` come from CUDA events (rollout: per block, on the rollout's stream, from before
the rollout is asked for the block to after it yields it; decode: per output on the side stream), each pair read once
its block's copy has completed, so reading them waits for nothing; on the CPU they are ``perf_counter`` intervals.
``write`` (handing frames to the writer, waiting for the previous fragment) and ``first_chunk`` / ``total`` are
host wall-clock seconds.
"""
from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from pipeline.rollout import Rollout, RolloutInputs
from wan.hub import ensure_model_files
from wan.loading import load_generator, resolve_path
from wan.lora import merge_lora
from wan.memory import should_offload_text_encoder
from wan.attention import attention_backend
from wan.text_encoder import WanTextEncoder
from wan.vae import WanVAE

from utils.paths import REPO_ROOT

from .cli_config import CLIError
from .outputs import VIDEO_RECORD, OutputSlot, json_bytes, write_bytes_atomic
from .progress import progress_bar
from .prompts import PromptJob
from .runtime import dtype_name
from .settings import RunSettings
from app.streaming import ChunkDecoder, SampleOutput
from .switching import LivePrompts, PromptSwitcher
from media.video import CODEC, CONTAINER, DEFAULT_CRF, PIXEL_FORMAT, TUNE, encoder_threads, encoder_version
from utils.frames import video_frames

logger = logging.getLogger(__name__)

DEBUG_FRAME_DELAY_ENV = "DEEP_FORCING_DEBUG_FRAME_DELAY"  # tests: seconds to sleep after each written frame
# (chunk index, first latent frame, the outputs, uint8 frames [m, H, W, 3] just written to each) -> None
ChunkHook = Callable[[int, int, list, list], None]
PACKAGES = ("deep-forcing", "torch", "diffusers", "transformers", "huggingface_hub", "safetensors", "numpy",
            "av", "flash-attn")


def package_versions() -> dict:
    """Versions of Python, the packages that shape results, ffmpeg, CUDA and the git commit (when known)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        out.update(encoder_version())
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


class BlockClock:
    """Rollout seconds per block: CUDA events on the current stream (read only when known complete), else perf_counter.

    ``start(i)`` before the rollout is asked for block i, ``stop(i)`` once it yields it (returns the end event on
    CUDA, for the decode to wait on); ``seconds(i)`` after block i's host copy has completed (then both events have).
    """

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.marks: dict[int, list] = {}

    def _mark(self):
        """A CUDA event recorded now on the current stream, or the host time."""
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self, i: int) -> None:
        """Block ``i`` is asked for now."""
        self.marks[i] = [self._mark()]

    def stop(self, i: int):
        """Block ``i`` was yielded; -> its end event (CUDA) or None."""
        mark = self._mark()
        self.marks[i].append(mark)
        return mark if self.cuda else None

    def seconds(self, i: int) -> float:
        """Seconds of block ``i`` (forgotten afterwards)."""
        begin, end = self.marks.pop(i)
        return begin.elapsed_time(end) / 1000 if self.cuda else end - begin


@dataclass
class RenderResult:
    """What one ``render`` call did."""

    job: PromptJob
    written: list[Path] = field(default_factory=list)
    timings: dict = field(default_factory=dict)   # seconds per stage


class VideoRunner:
    """Text encoder, causal DiT, VAE and rollout pipeline, built once and reused for every prompt."""

    def __init__(self, settings: RunSettings, text_encoder, model, vae, pipeline: Rollout,
                 progress: bool = True, conditioner=None):
        self.settings, self.text_encoder, self.model, self.vae, self.pipeline = (settings, text_encoder, model,
                                                                                 vae, pipeline)
        self.conditioner = conditioner  # a method's own conditioning encoder (None: the text encoder)
        self.progress = progress
        self.versions = package_versions()
        self.versions["attention_backend"] = attention_backend(model.device, model.dtype)  # fa3 | fa2 | sdpa
        sf = vae.spatial_factor
        if settings.height % sf or settings.width % sf:
            raise CLIError(f"height={settings.height} x width={settings.width} is not divisible by the VAE's "
                           f"spatial factor {sf}.")
        self.latent_shape = (model.config.out_dim, settings.height // sf, settings.width // sf)  # (C, h, w)
        delay = float(os.environ.get(DEBUG_FRAME_DELAY_ENV, "0") or 0)
        self._on_frame = (lambda n: time.sleep(delay)) if delay > 0 else None

    @classmethod
    def load(cls, settings: RunSettings, progress: bool = True) -> "VideoRunner":
        """Download missing default files if allowed, then load the three models and build the pipeline."""
        t0 = time.perf_counter()
        model_dir, checkpoint = settings.model_dir, settings.checkpoint
        if settings.download:
            model_dir, checkpoint = ensure_model_files(model_dir, checkpoint, download=True)
        own = settings.method_run.load_models(settings)  # a method with its own conditioning (image + actions)
        if own is None:
            conditioner, (text_encoder, model, vae) = None, cls.load_text_models(settings, model_dir, checkpoint)
        else:
            (conditioner, model, vae), text_encoder = own, None
        pipeline = Rollout(model, settings.rollout, settings.policy, loop=settings.loop, recache=settings.recache)
        logger.info("models ready in %.1f s; cache %s", time.perf_counter() - t0, settings.cache)
        return cls(settings, text_encoder, model, vae, pipeline, progress=progress, conditioner=conditioner)

    @staticmethod
    def load_text_models(settings: RunSettings, model_dir: Path, checkpoint: Path) -> tuple:
        """(text encoder, generator with the method's LoRA merged, VAE) of a text-conditioned method."""
        device, dtype = settings.device, settings.dtype
        offload = should_offload_text_encoder(device)
        logger.info("loading models from %s and %s on %s (%s)%s", model_dir, checkpoint, device, dtype_name(dtype),
                    ", text encoder offloaded to the CPU" if offload else "")
        text_encoder = WanTextEncoder.from_model_dir(model_dir, dtype=dtype, device=device, offload=offload)
        lora = settings.method_run.lora
        model = load_generator(model_dir, checkpoint, use_ema=settings.use_ema, dtype=dtype, device=device,
                               trust_checkpoint=settings.trust_checkpoint)
        if lora is not None:  # the method's LoRA, merged over the checkpoint
            merge_lora(model, resolve_path(lora.path), lora.alpha, lora.rank)
        if settings.compile:
            model.compile_blocks()
        return text_encoder, model, WanVAE.from_model_dir(model_dir, dtype=dtype, device=device)

    def _sync(self) -> None:
        """Wait for queued GPU work so timings are real (once per video and at a prompt switch, never per block)."""
        if self.settings.device.type == "cuda":
            torch.cuda.synchronize(self.settings.device)

    def encode_text(self, text: str) -> torch.Tensor:
        """Prompt embeddings [num_samples, text_len, text_dim] of ``text`` (encoded once, repeated)."""
        embeds = self.text_encoder.encode([text])  # [1, text_len, text_dim]
        return embeds.to(self.settings.device).expand(self.settings.num_samples, *embeds.shape[1:])

    def encode(self, job: PromptJob) -> torch.Tensor:
        """Prompt embeddings [num_samples, text_len, text_dim] of the job's text (or the method's conditioning)."""
        if self.conditioner is not None:
            return self.conditioner.encode(job)
        return self.encode_text(job.text)

    def switcher(self, job: PromptJob, live: LivePrompts | None, timings: dict) -> PromptSwitcher | None:
        """The prompt-switch callback of one video (None when prompts cannot change)."""
        s = self.settings
        if self.conditioner is not None:
            return self.conditioner.switcher(job, live)
        schedule = s.method_run.schedule(job, s.clock) or s.schedule
        if schedule is None and live is None:
            return None

        def encode(text: str) -> torch.Tensor:
            """Encode a prompt switched to (timed apart from the rollout)."""
            t0 = time.perf_counter()
            embeds = self.encode_text(text)
            self._sync()
            timings["switch_text_encoder"] = timings.get("switch_text_encoder", 0.0) + time.perf_counter() - t0
            return embeds

        return PromptSwitcher(s.clock, encode, job.text, schedule=schedule, live=live, endless=s.endless)

    def outputs(self, slots: list[OutputSlot]) -> list[SampleOutput]:
        """One streaming output per slot; every chunk is a fragment starting with a key frame."""
        s = self.settings
        threads = encoder_threads(len(slots))
        return [SampleOutput(slot, self.vae, s.width, s.height, s.fps, keep_latents=s.save_latents,
                             on_frame=self._on_frame, threads=threads) for slot in slots]

    def sidecar(self, job: PromptJob, slot: OutputSlot, timings: dict, latent_frames: int,
                switcher: PromptSwitcher | None, latents: Path | None, video: dict | None = None) -> dict:
        """The JSON record stored next to a video."""
        s = self.settings
        rollout_s = timings.get("rollout", 0.0)
        frames = video_frames(latent_frames, s.vae_temporal)
        schedule = None if s.schedule is None else {"file": str(s.schedule.path), "entries": s.schedule.to_list()}
        return {
            "video": slot.video.name,
            "prompt": job.prompt,
            "extended_prompt": job.extended_prompt,
            "source": {"file": str(job.source), "line": job.line + 1, "index": job.index},
            "seed": s.seed, "sample": slot.sample, "num_samples": s.num_samples, "noise_order": s.noise_order,
            "mode": s.mode, "cache": s.cache, "rollout": s.request(job, slot.sample)["rollout"],
            "num_latent_frames": latent_frames, "num_frames": frames, "fps": s.fps,
            "duration_s": round(frames / s.fps, 3), "seconds_requested": s.seconds, "endless": s.endless,
            "height": s.height, "width": s.width,
            "codec": CODEC, "pixel_format": PIXEL_FORMAT, "crf": DEFAULT_CRF, "container": CONTAINER,
            "x264_tune": TUNE, VIDEO_RECORD: video,
            "prompt_schedule": schedule, "interactive": s.interactive,
            "recache_on_switch": s.recache.name != "off" if s.switches_possible else None,
            "method": {**s.method.describe(s.cfg.variant), **s.method_run.request(job)},
            "prompt_switches": switcher.switches if switcher is not None else [],
            "stopped_early": bool(switcher is not None and switcher.stopped),
            "latents": latents.name if latents is not None else None,
            "checkpoint": str(s.checkpoint), "use_ema": s.use_ema, "wan_model_dir": str(s.model_dir),
            "config_path": s.config_path, "config": s.config,
            "device": str(s.device), "dtype": dtype_name(s.dtype), "rank": s.dist.rank, "world_size": s.dist.world_size,
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
            "generation_fps": round(s.num_samples * frames / rollout_s, 3) if rollout_s else None,
            "versions": self.versions,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "request": s.request(job, slot.sample),
        }

    def render(self, job: PromptJob, slots: list[OutputSlot], live: LivePrompts | None = None,
               on_chunk: ChunkHook | None = None) -> RenderResult:
        """Generate all samples of ``job`` as one batch, streaming those in ``slots`` (the unfinished ones) to disk.

        After every chunk each slot's new frames are decoded and appended to its mp4 as one fragment; ``on_chunk(i,
        f, outputs, frames)`` is then called (``frames``: the uint8 frames of each output). ``live`` supplies prompts
        typed during the video. At the end each mp4 is finished and its sidecar (recording the mp4's size and
        SHA-256) encoded; then the videos are renamed into place, and latents (``--save_latents``) and sidecars are
        written, the sidecar last.
        """
        s = self.settings
        result = RenderResult(job)
        t = result.timings
        t0 = time.perf_counter()
        embeds = self.encode(job)
        self._sync()
        t["text_encoder" if self.conditioner is None else "conditioning"] = time.perf_counter() - t0
        t.update(rollout=0.0, decode=0.0, write=0.0)
        switcher = self.switcher(job, live, t)
        image = None if s.image is None else s.image.latent(self.vae, s.height, s.width, s.num_samples)
        generated = s.num_output_frames if image is None or s.endless else s.num_output_frames - 1  # image: frame 0
        noise, source = self.pipeline.seeded_noise(s.num_samples, generated, self.latent_shape, s.seed,
                                                   s.noise_order, channels_first=s.method.noise_channels_first)
        B = s.rollout.num_frame_per_block
        num_chunks = None if s.endless else s.num_output_frames // B
        latent_frames = 0
        outputs = self.outputs(slots)
        clock = BlockClock(s.device)
        with contextlib.ExitStack() as stack:
            bar = stack.enter_context(progress_bar(s.num_video_frames, "frames", "frame", enabled=self.progress,
                                                   rate_unit="fps"))
            for out in outputs:
                stack.enter_context(out)
            decoder = ChunkDecoder(outputs, s.device)

            def hand_over(keep: int) -> None:
                """Write every block whose host copy is done (all but the newest ``keep``), then the hooks."""
                nonlocal latent_frames
                for chunk in decoder.ready(keep):
                    t["rollout"] += clock.seconds(chunk.index)
                    t["decode"] += chunk.decode_s
                    dt_write, written = decoder.write(chunk)
                    t["write"] += dt_write
                    latent_frames = chunk.start_frame + chunk.num_latents
                    if chunk.index == 0:
                        t["first_chunk"] = time.perf_counter() - t0
                    bar.update(s.clock.video_frame(chunk.index + 1) - s.clock.video_frame(chunk.index))
                    if on_chunk is not None:
                        on_chunk(chunk.index, chunk.start_frame, outputs, written)

            chunks = self.pipeline.frames(RolloutInputs(embeds, noise, source, prompt_switch=switcher,
                                                         image_latent=image))
            stack.callback(chunks.close)
            clock.start(0)
            for i, f, x0 in chunks:  # x0 [num_samples, B, C, h, w]
                decoder.submit(i, f, x0, clock.stop(i))
                hand_over(0 if i == 0 else decoder.in_flight)  # CUDA: one block late, while the next denoises
                more = num_chunks is None or i + 1 < num_chunks
                if not more or (switcher is not None and not switcher.prepare(i + 1)):
                    break
                clock.start(i + 1)
            hand_over(0)
            # finish every mp4 and encode its sidecar before any video gets its final name
            sidecars = []
            for out in outputs:
                out.writer.close()
                t["total"] = time.perf_counter() - t0
                latents = out.slot.latents if s.save_latents else None
                sidecars.append(json_bytes(self.sidecar(job, out.slot, t, latent_frames, switcher, latents,
                                                        out.video_record())))
        # every video of the batch is now complete under its final name
        for out, sidecar in zip(outputs, sidecars):
            if s.save_latents:
                out.write_latents({"video": out.slot.video.name, "seed": s.seed, "sample": out.sample,
                                   "num_frame_per_block": B, "fps": s.fps, "vae_temporal": s.vae_temporal})
            write_bytes_atomic(out.slot.sidecar, sidecar)
            result.written.append(out.slot.video)
        t["total"] = time.perf_counter() - t0
        return result
