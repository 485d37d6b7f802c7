"""Turn the parsed command line into a fully checked ``RunSettings``, before any model is loaded.

Order: flag combinations, the merged config (``app.cli_config``: method defaults <- YAML <- flags <- overrides), the
rollout, the cache policy (built once, here), the loop strategy, the video length and the memory it needs up front,
resolution, device, the method's own inputs (``Method.resolve``), prompt files or schedule, output folder, encoder;
then (``--demo``: after writing its tiny model) the model files and the checkpoint. Every check is in
``app.checks`` and raises ``CLIError`` with one paragraph naming the flag / file / key / value and the fix.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from methods import Method, MethodContext, MethodRun, get_method
from pipeline.loops import LoopStrategy
from pipeline.policies import CachePolicy
from pipeline.recache import Recache
from pipeline.rollout import RolloutConfig
from utils.frames import video_frames
from utils.paths import PROMPTS_DIR
from wan.vae import load_vae_config

from . import checks
from .cli_config import Layer, LoadedConfig
from .image_input import ImageInput
from .prompts import PromptJob, load_prompt_jobs
from .runtime import DistEnv, dtype_name, resolve_device, resolve_dtype
from .schedule import ChunkClock, PromptSchedule, load_schedule

DEFAULT_PROMPTS = PROMPTS_DIR / "examples.txt"
DEMO_PROMPTS = PROMPTS_DIR / "demo.txt"
# --demo: small frames and enough chunks to overflow the 21-frame window once, so the tiny model runs in seconds
DEMO = Layer("--demo", {"height": 64, "width": 112, "num_output_frames": 24, "output_folder": "output/demo"})


@dataclass
class RunSettings:
    """What a run needs, resolved and checked: the config, method, cache, files, device, jobs and run options."""

    cfg: Any                        # the merged config (schema defaults <- method <- YAML <- flags <- overrides)
    config_path: str | None
    method: Method
    method_run: MethodRun           # the method's resolved inputs (LoRA, its prompt format, sidecar keys)
    policy: CachePolicy             # built and validated once; the runner's rollout uses this object
    rollout: RolloutConfig
    loop: LoopStrategy
    recache: Recache                # at prompt switches
    num_output_frames: int | None   # latent frames T (None: --endless, until stopped)
    model_dir: Path
    checkpoint: Path
    download: bool                  # fetch missing default model files from the hub before loading
    device: torch.device
    dtype: torch.dtype
    jobs: list[PromptJob]           # every prompt of the run (all ranks)
    dist: DistEnv
    seed: int
    vae_spatial: int = 8            # image pixels per latent pixel (from the VAE config)
    vae_temporal: int = 4           # video frames per latent frame after the first
    options: dict = dataclasses.field(default_factory=dict)  # run flags: overwrite, demo, noise_order, ...
    schedule: PromptSchedule | None = None   # --prompt_schedule: the run's only job follows it
    image: ImageInput | None = None  # --i2v --image: the first frame of every video (image-to-video)

    def __getattr__(self, name: str):
        """Config values (``height``, ``fps``, ...) and run options (``overwrite``, ...) by name."""
        if name in ("cfg", "options"):
            raise AttributeError(name)
        if name in self.options:
            return self.options[name]
        try:
            return getattr(self.cfg, name)
        except AttributeError:
            raise AttributeError(name) from None

    @property
    def mode(self) -> str:
        """The cache mode."""
        return self.cfg.cache.mode

    @property
    def cache(self) -> dict:
        """What the sidecar records of the cache: the mode and its parameters."""
        return self.policy.describe()

    @property
    def config(self) -> dict:
        """The merged config as plain data (for sidecars)."""
        return dataclasses.asdict(self.cfg)

    @property
    def output_folder(self) -> Path:
        """Where videos go."""
        return Path(self.cfg.output_folder)

    @property
    def endless(self) -> bool:
        """Whether videos run until stopped (--endless) instead of a fixed length."""
        return self.num_output_frames is None

    @property
    def num_video_frames(self) -> int | None:
        """Frames of the mp4 (4T-3 for T latent frames)."""
        return None if self.endless else video_frames(self.num_output_frames, self.vae_temporal)

    @property
    def clock(self) -> ChunkClock:
        """Video frame and time at which each chunk starts."""
        return ChunkClock(self.rollout.num_frame_per_block, self.vae_temporal, self.cfg.fps)

    @property
    def switches_possible(self) -> bool:
        """Whether prompts can change during a video (a schedule, --interactive or the method's prompts)."""
        return self.schedule is not None or self.interactive or self.method_run.jobs() is not None

    def request(self, job: PromptJob, sample: int) -> dict:
        """What makes a video what it is; a finished video is skipped only if its sidecar has the same request.

        Keys added after the first release appear only when their feature is used, so videos finished by earlier
        versions (same content) stay finished.
        """
        rollout = dataclasses.asdict(self.rollout)
        if rollout.get("denoising_step_list_first_chunk") is None:  # added by Causal Forcing++; absent when unused
            rollout.pop("denoising_step_list_first_chunk", None)
        cfg = self.cfg
        out = {"prompt": job.prompt, "extended_prompt": job.extended_prompt, "seed": self.seed, "sample": sample,
               "num_samples": cfg.num_samples, "num_output_frames": self.num_output_frames, "height": cfg.height,
               "width": cfg.width, "fps": cfg.fps, "mode": cfg.cache.mode, "cache": self.cache, "rollout": rollout,
               "checkpoint": self.checkpoint.name, "use_ema": cfg.use_ema, "dtype": dtype_name(self.dtype),
               "device_type": self.device.type}
        if self.loop.name != "chunk":
            out["loop"] = self.loop.name
            out.update({"loop_params": self.loop.describe()} if self.loop.describe() else {})
        if self.noise_order != "upstream":
            out["noise_order"] = self.noise_order
        if self.schedule is not None:
            out["prompt_schedule"] = self.schedule.to_list()
        if self.interactive:
            out["interactive"] = True
        if self.switches_possible:
            out["recache_on_switch"] = self.recache.name != "off"
            if self.recache.name not in ("off", "ours"):  # the first two variants keep the earlier request keys
                out["recache"] = self.recache.name
        if self.image is not None:
            out.update(self.image.request())  # the image's SHA-256: a changed image renders the video again
        out.update(self.method_run.request(job))
        return out


def config_from_args(args) -> LoadedConfig:
    """The merged, checked config of this command line."""
    from .cli import flag_layers
    return checks.load(args, flag_layers(args), DEMO if args.demo else None)


def resolve_settings(args, dist: DistEnv, stack: contextlib.ExitStack | None = None) -> RunSettings:
    """Check the whole request (no model is loaded; --demo writes its tiny model last, into ``stack``'s temporary
    folder); raise CLIError on the first problem."""
    checks.check_flags(args, dist)
    loaded = config_from_args(args)
    cfg, method = loaded.cfg, get_method(loaded.cfg.method)
    section, rollout = getattr(cfg, method.name, None), cfg.rollout
    policy = checks.build_cache_policy(loaded, rollout.num_frame_per_block)
    loop = checks.build_strategy(loaded, method, section, rollout, policy)
    recache = checks.check_recache(loaded, loop, method.build_recache(cfg.recache, section))
    spatial, temporal = (int(load_vae_config()[k]) for k in ("scale_factor_spatial", "scale_factor_temporal"))
    clock = ChunkClock(rollout.num_frame_per_block, temporal, cfg.fps)
    num_frames = checks.video_length(loaded, clock, loop, args.endless)
    device = resolve_device(args.device, args.demo, dist)
    dtype = resolve_dtype(args.dtype, device)
    options = checks.run_options(args, cfg, num_frames)
    checks.check_geometry(loaded, checks.model_folder(args), spatial, num_frames, dtype, device,
                          options["noise_order"], args.save_latents)
    data_path = args.data_path or method.prompt_source(section) or str(DEMO_PROMPTS if args.demo else DEFAULT_PROMPTS)
    method_run = method.resolve(MethodContext(cfg, loaded.origin, data_path, clock, num_frames, section, args.demo,
                                              args.image, args.interactive, args.seed))
    schedule = load_schedule(args.prompt_schedule, clock, num_frames) if args.prompt_schedule else None
    jobs = checks.prompt_jobs(args, loaded, method_run, schedule, data_path, num_frames, load_prompt_jobs)
    image = checks.image_input(loaded, args, rollout, num_frames) if method.conditioning == "text" else None
    checks.check_output_folder(Path(cfg.output_folder))
    model_dir, checkpoint, download = checks.resolve_model_files(args, loaded, method, section, method_run, stack)
    return RunSettings(cfg, args.config_path, method, method_run, policy, rollout, loop, recache, num_frames,
                       model_dir, checkpoint, download, device, dtype, jobs, dist, args.seed, spatial, temporal,
                       options, schedule, image)
