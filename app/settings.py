"""Turn the parsed command line into a fully checked ``RunSettings``, before any model is loaded.

Every check raises ``CLIError`` with one paragraph naming the file / key / value and the fix: flag combinations,
config keys and values, cache-mode parameters, frame count or seconds, resolution, prompt files or prompt schedule,
output folder, ffmpeg, device, model files, checkpoint.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.causal_inference import RolloutConfig
from pipeline.policies import CachePolicy, CachePolicyError, build_policy, select_mode
from wan.config import WanConfig
from wan.loading import (CONFIG_FILE, DEFAULT_CHECKPOINT, DEFAULT_WAN_MODEL_DIR, ModelFilesError, check_model_files,
                         generator_state_dict, load_torch_file, read_wan_config, resolve_path)
from wan.vae import load_vae_config

from .cli_config import CLIError, load_config, rollout_dict
from .outputs import check_writable
from .prompts import PromptJob, load_prompt_jobs
from .runtime import DistEnv, dtype_name, resolve_device, resolve_dtype
from .schedule import ChunkClock, PromptSchedule, latent_frames_for_seconds, load_schedule
from media.video import MACRO_BLOCK, check_encoder

logger = logging.getLogger(__name__)

OFFLINE_VALUES = {"1", "true", "yes", "on"}
DEFAULT_BUDGET, DEFAULT_RECENT = 16, 4   # upstream --Budget / --Recent defaults (frames)


@dataclass
class RunSettings:
    """Everything a run needs, checked: what to render, with which model and cache, and where to write it."""

    config: dict                    # merged YAML config (defaults <- --config_path <- overrides)
    config_path: str | None
    mode: str                       # self_forcing | deep_sink | deep_sink_pc
    policy_kwargs: dict             # build_policy(**policy_kwargs)
    cache: dict                     # policy.describe(): what the sidecar records
    rollout: RolloutConfig
    num_output_frames: int | None   # latent frames T (None: --endless, until stopped)
    height: int
    width: int
    fps: float
    seed: int
    num_samples: int
    use_ema: bool
    save_with_index: bool
    overwrite: bool
    model_dir: Path
    checkpoint: Path
    download: bool                  # fetch missing default model files from the hub before loading
    device: torch.device
    dtype: torch.dtype
    output_folder: Path
    jobs: list[PromptJob]           # every prompt of the run (all ranks)
    dist: DistEnv
    vae_spatial: int = 8            # image pixels per latent pixel (from the VAE config)
    vae_temporal: int = 4           # video frames per latent frame after the first
    demo: bool = False
    seconds: float | None = None    # --seconds as asked (num_output_frames is derived from it)
    noise_order: str = "upstream"   # upstream | chunked (pipeline.seeded_noise)
    save_latents: bool = False      # also write each video's latents (name.pt)
    schedule: PromptSchedule | None = None   # --prompt_schedule: the run's only job follows it
    interactive: bool = False       # --interactive: prompts typed on stdin switch the video between chunks
    recache_on_switch: bool = False  # at a switch, recompute the cached k/v of retained frames (else keep them)
    compile: bool = False           # --compile: CausalWanModel.compile_blocks() after loading

    @property
    def endless(self) -> bool:
        """Whether videos run until stopped (--endless) instead of a fixed length."""
        return self.num_output_frames is None

    @property
    def num_video_frames(self) -> int | None:
        """Frames of the mp4: the causal VAE gives 1 frame for latent 0 and 4 for every later latent (4T-3)."""
        return None if self.endless else self.vae_temporal * (self.num_output_frames - 1) + 1

    @property
    def clock(self) -> ChunkClock:
        """Video frame and time at which each chunk starts."""
        return ChunkClock(self.rollout.num_frame_per_block, self.vae_temporal, self.fps)

    @property
    def switches_possible(self) -> bool:
        """Whether prompts can change during a video (a schedule or --interactive)."""
        return self.schedule is not None or self.interactive

    def request(self, job: PromptJob, sample: int) -> dict:
        """What makes a video what it is; a finished video is skipped only if its sidecar has the same request.

        Keys added after the first release appear only when their feature is used, so videos finished by earlier
        versions (same content) stay finished.
        """
        out = {"prompt": job.prompt, "extended_prompt": job.extended_prompt, "seed": self.seed, "sample": sample,
               "num_samples": self.num_samples, "num_output_frames": self.num_output_frames,
               "height": self.height, "width": self.width, "fps": self.fps, "mode": self.mode, "cache": self.cache,
               "rollout": dataclasses.asdict(self.rollout), "checkpoint": self.checkpoint.name,
               "use_ema": self.use_ema, "dtype": dtype_name(self.dtype), "device_type": self.device.type}
        if self.noise_order != "upstream":
            out["noise_order"] = self.noise_order
        if self.schedule is not None:
            out["prompt_schedule"] = self.schedule.to_list()
        if self.interactive:
            out["interactive"] = True
        if self.switches_possible:
            out["recache_on_switch"] = self.recache_on_switch
        return out


def _env_offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for no network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in OFFLINE_VALUES


def _policy(cfg: dict, mode: str, budget: int | None, recent: int | None, source: str) -> tuple[dict, dict]:
    """Build the cache policy once to check its parameters; returns (build_policy kwargs, describe())."""
    mk = cfg["model_kwargs"]
    kwargs = dict(mode=mode, local_attn_size=mk["local_attn_size"], sink_size=mk["sink_size"])
    if mode != "deep_sink_pc" and (budget is not None or recent is not None):
        logger.warning("--Budget/--Recent only matter for deep_sink_pc; ignored in mode %s", mode)
    budget = DEFAULT_BUDGET if budget is None else budget
    recent = DEFAULT_RECENT if recent is None else recent
    if mode == "deep_sink_pc":
        kwargs.update(budget=budget, recent=recent, reuse_cap=cfg["reuse_cap"], realign_topc=cfg["realign_topc"])
    try:
        L = CachePolicy(local_attn_size=mk["local_attn_size"]).window_frames
    except CachePolicyError as exc:
        raise CLIError(f"{source}: {exc}.") from None
    S = mk["sink_size"]
    if mode != "self_forcing" and S >= L:
        raise CLIError(f"{source}: model_kwargs.sink_size={S} is not smaller than the attention window "
                       f"local_attn_size={L}; the sink would fill the whole cache. Use a smaller sink (the paper "
                       f"uses 10 to 14: self_forcing_dmd_sink10.yaml ... sink14.yaml, or model_kwargs.sink_size=N).")
    if mode == "deep_sink_pc" and budget < S + recent:
        raise CLIError(f"{source}: --Budget {budget} is smaller than sink_size {S} + --Recent {recent}; "
                       f"Participative Compression keeps the sink and the recent frames inside the budget. Use "
                       f"--Budget >= {S + recent}, a smaller sink (e.g. self_forcing_dmd_sink10.yaml) or "
                       f"--is_ds_only 1.")
    try:
        policy = build_policy(**kwargs)
        policy.validate(cfg["num_frame_per_block"])
    except CachePolicyError as exc:
        raise CLIError(f"{source}: {exc}.") from None
    return kwargs, policy.describe()


def _check_frames(T: int, B: int, temporal: int, source: str) -> None:
    """The latent frame count must be a positive multiple of the chunk size."""
    if T < 1 or T % B:
        lo, hi = max(B, T - T % B), T - T % B + B
        raise CLIError(f"--num_output_frames {T} is not a positive multiple of the chunk size num_frame_per_block="
                       f"{B} ({source}); latent frames are generated {B} at a time. Use {lo} or {hi} "
                       f"({temporal * (lo - 1) + 1} or {temporal * (hi - 1) + 1} video frames).")


def _check_resolution(cfg: dict, model_dir: Path, spatial: int, source: str) -> None:
    """height and width must give whole latent patches (and whole H.264 macro blocks)."""
    patch = read_wan_config(model_dir).patch_size if (model_dir / CONFIG_FILE).is_file() else WanConfig().patch_size
    step = max(spatial * max(patch[1], patch[2]), MACRO_BLOCK)
    for key in ("height", "width"):
        v = cfg[key]
        if v % step:
            raise CLIError(f"{source}: {key}={v} is not a multiple of {step} (VAE factor {spatial} x patch "
                           f"{patch[1]}x{patch[2]}); use {max(step, v - v % step)} or {v - v % step + step}.")


def _check_checkpoint_entry(checkpoint: Path, use_ema: bool) -> None:
    """Open the checkpoint memory-mapped (cheap) and check it holds the weights asked for (--use_ema or not)."""
    state = generator_state_dict(load_torch_file(checkpoint, "Self Forcing checkpoint"), checkpoint, use_ema)
    del state


def _model_files(args, download_allowed: bool) -> tuple[Path, Path, bool]:
    """(model folder, checkpoint, download needed); CLIError when files are missing and will not be downloaded."""
    model_dir, checkpoint = resolve_path(args.wan_model_dir), resolve_path(args.checkpoint_path)
    try:
        check_model_files(model_dir, checkpoint)
        return model_dir, checkpoint, False
    except ModelFilesError as exc:
        defaults = (str(args.wan_model_dir) == DEFAULT_WAN_MODEL_DIR
                    and str(args.checkpoint_path) == DEFAULT_CHECKPOINT)
        if defaults and download_allowed:
            logger.info("model files missing (%s); they will be downloaded from the Hugging Face hub", exc)
            return model_dir, checkpoint, True
        why = ("it is switched off (HF_HUB_OFFLINE=1 or --no_download)" if defaults else
               "only the default paths are downloaded automatically")
        raise CLIError(f"{exc} No download was tried: {why}. See README 'Offline use' for the manual commands, or "
                       f"run 'python inference.py --demo' to try the pipeline without weights.") from None


def check_flags(args, dist: DistEnv) -> None:
    """Flag combinations that cannot work, checked on the command line as given (before defaults are filled in)."""
    if args.seconds is not None and args.num_output_frames is not None:
        raise CLIError(f"--seconds {args.seconds:g} and --num_output_frames {args.num_output_frames} both set the "
                       f"video length; pass only one of them.")
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        raise CLIError(f"--seconds {args.seconds} must be a positive number of seconds, e.g. --seconds 60.")
    if args.prompt_schedule is not None:
        for flag, value in (("--data_path", args.data_path), ("--extended_prompt_path", args.extended_prompt_path),
                            ("--interactive", args.interactive)):
            if value:
                raise CLIError(f"--prompt_schedule {args.prompt_schedule} renders one video from the schedule's own "
                               f"prompts; it cannot be combined with {flag}. Render prompt files and schedules in "
                               f"separate runs.")
    if args.endless:
        if not args.interactive:
            raise CLIError("--endless renders until a '/stop' line (or the end of input) arrives on stdin; it needs "
                           "--interactive.")
        if args.seconds is not None or args.num_output_frames is not None:
            raise CLIError("--endless has no fixed length; drop --seconds / --num_output_frames (or drop --endless).")
        if args.noise_order == "upstream":
            raise CLIError("--endless cannot use --noise_order upstream, which draws the noise of the whole video "
                           "before the first chunk; use --noise_order chunked (the default with --endless).")
    if args.interactive and dist.world_size > 1:
        raise CLIError(f"--interactive reads prompts from this process's stdin, but this is a torchrun launch with "
                       f"WORLD_SIZE={dist.world_size}; run interactive videos in a single process (python "
                       f"inference.py --interactive ...).")


def _video_length(args, clock: ChunkClock, source: str) -> int | None:
    """Latent frames T from --num_output_frames or --seconds (None: --endless)."""
    if args.endless:
        return None
    if args.seconds is not None:
        T = latent_frames_for_seconds(args.seconds, clock)
        frames = clock.temporal * (T - 1) + 1
        logger.info("--seconds %g -> %d latent frames = %d video frames (%.2f s at %g fps)", args.seconds, T, frames,
                    frames / clock.fps, clock.fps)
        return T
    _check_frames(args.num_output_frames, clock.chunk_latents, clock.temporal, source)
    return args.num_output_frames


def _schedule_job(schedule: PromptSchedule) -> PromptJob:
    """The run's only job: the schedule's opening prompt (later prompts switch in while it renders)."""
    return PromptJob(0, 0, schedule.opening.prompt, None, schedule.path, "")


def resolve_settings(args, dist: DistEnv) -> RunSettings:
    """Check the whole request (no model is loaded); raise CLIError on the first problem."""
    source = args.config_path or "configs/default.yaml"
    cfg = load_config(args.config_path, args.overrides)
    try:
        mode = select_mode(args.is_ds_only, args.mode or cfg["mode"])
    except CachePolicyError as exc:
        raise CLIError(f"{exc}.") from None
    policy_kwargs, cache = _policy(cfg, mode, args.Budget, args.Recent, source)
    try:
        rollout = RolloutConfig.from_dict(rollout_dict(cfg))
    except ValueError as exc:
        raise CLIError(f"{source}: {exc}.") from None
    vae_cfg = load_vae_config()
    spatial, temporal = int(vae_cfg["scale_factor_spatial"]), int(vae_cfg["scale_factor_temporal"])
    clock = ChunkClock(rollout.num_frame_per_block, temporal, cfg["fps"])
    num_frames = _video_length(args, clock, source)
    if args.num_samples < 1:
        raise CLIError(f"--num_samples {args.num_samples} must be at least 1.")
    if not 0 <= args.seed < 2 ** 63:
        raise CLIError(f"--seed {args.seed} must be between 0 and 2**63 - 1.")
    _check_resolution(cfg, resolve_path(args.wan_model_dir), spatial, source)
    device = resolve_device(args.device, args.demo, dist)
    dtype = resolve_dtype(args.dtype, device)
    schedule = load_schedule(args.prompt_schedule, clock, num_frames) if args.prompt_schedule else None
    jobs = [_schedule_job(schedule)] if schedule else load_prompt_jobs(args.data_path, args.extended_prompt_path)
    if num_frames is None and len(jobs) != 1:
        raise CLIError(f"--endless renders one video, but {args.data_path} holds {len(jobs)} prompts; pass a prompt "
                       f"file with the one opening prompt.")
    if args.recache_on_switch and not (schedule or args.interactive):
        logger.warning("--recache_on_switch only matters with --prompt_schedule or --interactive; ignored")
    output_folder = Path(args.output_folder)
    check_writable(output_folder)
    check_encoder()
    model_dir, checkpoint, download = _model_files(args, download_allowed=not (args.no_download or _env_offline()))
    if not download:
        _check_checkpoint_entry(checkpoint, args.use_ema)
    return RunSettings(config=cfg, config_path=args.config_path, mode=mode, policy_kwargs=policy_kwargs,
                       cache=cache, rollout=rollout, num_output_frames=num_frames, height=cfg["height"],
                       width=cfg["width"], fps=cfg["fps"], seed=args.seed, num_samples=args.num_samples,
                       use_ema=bool(args.use_ema), save_with_index=bool(args.save_with_index),
                       overwrite=args.overwrite, model_dir=model_dir, checkpoint=checkpoint, download=download,
                       device=device, dtype=dtype, output_folder=output_folder, jobs=jobs, dist=dist,
                       vae_spatial=spatial, vae_temporal=temporal, demo=args.demo, seconds=args.seconds,
                       noise_order=args.noise_order or ("chunked" if num_frames is None else "upstream"),
                       save_latents=bool(args.save_latents), schedule=schedule, interactive=bool(args.interactive),
                       recache_on_switch=bool(args.recache_on_switch), compile=bool(getattr(args, "compile", False)))
