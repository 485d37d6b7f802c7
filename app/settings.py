"""Turn the parsed command line into a fully checked ``RunSettings``, before any model is loaded.

Every check raises ``CLIError`` with one paragraph naming the flag / file / key / value and the fix, in this order:
flag combinations, the merged config (app.cli_config), the rollout, the cache policy (built once, here), the video
length and the memory it needs up front, resolution, device, prompt files or prompt schedule, output folder, ffmpeg;
then (``--demo``: after writing its tiny model) the model files and the checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from pipeline.rollout import RolloutConfig
from pipeline.policies import CachePolicy, CachePolicyError, build_policy, policy_parameters
from wan.config import WanConfig
from wan.loading import (CONFIG_FILE, DEFAULT_CHECKPOINT, DEFAULT_WAN_MODEL_DIR, ModelFilesError, check_model_files,
                         generator_state_dict, load_torch_file, read_wan_config, resolve_path)
from wan.vae import load_vae_config
from utils.frames import video_frames
from utils.paths import PROMPTS_DIR

from .image_input import ImageInput
from .cli_config import CACHE_KEYS, CLIError, Layer, LoadedConfig, get, load_config, rollout_params
from .longlive_settings import LongLiveRun, default_longlive_mode, longlive_paths, resolve_longlive
from .prompts import PromptJob, load_prompt_jobs
from .runtime import DistEnv, dtype_name, resolve_device, resolve_dtype
from .schedule import ChunkClock, PromptSchedule, latent_frames_for_seconds, load_schedule
from media.video import MACRO_BLOCK, check_encoder

logger = logging.getLogger(__name__)

OFFLINE_VALUES = {"1", "true", "yes", "on"}
DEFAULT_PROMPTS = PROMPTS_DIR / "examples.txt"
DEMO_PROMPTS = PROMPTS_DIR / "demo.txt"
# --demo: small frames and enough chunks to overflow the 21-frame window once, so the tiny model runs in seconds
DEMO = Layer("--demo", {"height": 64, "width": 112, "num_output_frames": 24, "output_folder": "output/demo"})


@dataclass
class RunSettings:
    """Everything a run needs, checked: what to render, with which model and cache, and where to write it."""

    config: dict                    # merged config (schema defaults <- --config_path <- flags <- overrides)
    config_path: str | None
    mode: str                       # a registered cache mode (pipeline.policies.registered_modes())
    policy: CachePolicy             # built and validated once; the runner's pipeline uses this object
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
    trust_checkpoint: bool = False  # --trust_checkpoint: the checkpoint may hold pickled Python objects
    compile: bool = False           # --compile: CausalWanModel.compile_blocks() after loading
    image: ImageInput | None = None  # --i2v --image: the first frame of every video (image-to-video)
    longlive: LongLiveRun | None = None  # LongLive's LoRA / interactive prompts / re-cache variant (None: unused)

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
        return ChunkClock(self.rollout.num_frame_per_block, self.vae_temporal, self.fps)

    @property
    def switches_possible(self) -> bool:
        """Whether prompts can change during a video (a schedule or --interactive)."""
        return self.schedule is not None or self.interactive or (self.longlive is not None
                                                                  and self.longlive.prompts is not None)

    @property
    def recache(self) -> "bool | str":
        """``iter_chunks``' re-cache variant: False, "ours" or "longlive"."""
        return self.longlive.recache if self.longlive is not None else self.recache_on_switch

    def request(self, job: PromptJob, sample: int) -> dict:
        """What makes a video what it is; a finished video is skipped only if its sidecar has the same request.

        Keys added after the first release appear only when their feature is used, so videos finished by earlier
        versions (same content) stay finished.
        """
        rollout = dataclasses.asdict(self.rollout)
        if rollout.get("denoising_step_list_first_chunk") is None:  # added by Causal Forcing++; absent when unused
            rollout.pop("denoising_step_list_first_chunk", None)
        out = {"prompt": job.prompt, "extended_prompt": job.extended_prompt, "seed": self.seed, "sample": sample,
               "num_samples": self.num_samples, "num_output_frames": self.num_output_frames,
               "height": self.height, "width": self.width, "fps": self.fps, "mode": self.mode, "cache": self.cache,
               "rollout": rollout, "checkpoint": self.checkpoint.name,
               "use_ema": self.use_ema, "dtype": dtype_name(self.dtype), "device_type": self.device.type}
        if self.noise_order != "upstream":
            out["noise_order"] = self.noise_order
        if self.schedule is not None:
            out["prompt_schedule"] = self.schedule.to_list()
        if self.interactive:
            out["interactive"] = True
        if self.switches_possible:
            out["recache_on_switch"] = bool(self.recache)
        if self.image is not None:
            out.update(self.image.request())  # the image's SHA-256: a changed image renders the video again
        if self.longlive is not None:
            out.update(self.longlive.request(job))
        return out


def _env_offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for no network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in OFFLINE_VALUES


def flag_layers(args) -> list[Layer]:
    """The flags that set config keys, one layer each (so messages name the flag); flags left out set nothing."""
    out = []

    def put(label: str, **values) -> None:
        out.append(Layer(label, values))

    if args.is_ds_only == 1:
        put("--is_ds_only 1", mode="deep_sink")
    if args.mode is not None:
        put(f"--mode {args.mode}", mode=args.mode)
    if args.Budget is not None:
        put(f"--Budget {args.Budget}", budget=args.Budget)
    if args.Recent is not None:
        put(f"--Recent {args.Recent}", recent=args.Recent)
    if args.num_output_frames is not None:
        put(f"--num_output_frames {args.num_output_frames}", num_output_frames=args.num_output_frames, seconds=None)
    if args.seconds is not None:
        put(f"--seconds {args.seconds}", seconds=args.seconds, num_output_frames=None)
    if args.endless:
        put("--endless", num_output_frames=None, seconds=None)
    if args.num_samples is not None:
        put(f"--num_samples {args.num_samples}", num_samples=args.num_samples)
    if getattr(args, "i2v", None):
        put("--i2v", i2v=True)
    for flag in ("use_ema", "save_with_index"):
        if getattr(args, flag):
            put(f"--{flag}", **{flag: True})
    if args.output_folder is not None:
        put(f"--output_folder {args.output_folder}", output_folder=str(args.output_folder))
    return out


def config_from_args(args) -> LoadedConfig:
    """The merged, checked config of this command line."""
    return load_config(args.config_path, args.overrides, flag_layers(args), DEMO if args.demo else None)


def check_flags(args, dist: DistEnv) -> None:
    """Flag combinations that cannot work, checked on the command line as given."""
    if args.seconds is not None and args.num_output_frames is not None:
        raise CLIError(f"--seconds {args.seconds:g} and --num_output_frames {args.num_output_frames} both set the "
                       f"video length; pass only one of them.")
    if args.is_ds_only == 1 and args.mode not in (None, "deep_sink"):
        raise CLIError(f"--is_ds_only 1 asks for Deep Sink alone but --mode is {args.mode}; drop one of the two "
                       f"flags.")
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
    if not 0 <= args.seed < 2 ** 63:
        raise CLIError(f"--seed {args.seed} must be between 0 and 2**63 - 1.")


def _where(loaded: LoadedConfig, keys, message: str) -> str:
    """' Set by: key=value (from X), ...' for the keys a message mentions that some layer set ('' if none)."""
    named = [k for k in keys if k in loaded.origins and k.rsplit(".", 1)[-1].lower() in message.lower()]
    return f" Set by: {loaded.blame(*named)}." if named else ""


def build_rollout(loaded: LoadedConfig) -> RolloutConfig:
    """The rollout settings (checked by RolloutConfig itself)."""
    try:
        return RolloutConfig(**rollout_params(loaded.cfg))
    except ValueError as exc:
        keys = ("denoising_step_list", "num_frame_per_block", "model_kwargs.timestep_shift",
                "independent_first_frame", "num_train_timesteps", "context_noise", "denoising_step_list_first_chunk")
        raise CLIError(f"{exc}.{_where(loaded, keys, str(exc))}") from None


def build_cache_policy(loaded: LoadedConfig, chunk_frames: int) -> CachePolicy:
    """The run's cache policy, built once from the config and validated by the policy against the chunk size."""
    mode = loaded.cfg.mode
    # cache keys left at None take the policy class's own default
    params = {p: get(loaded.cfg, k) for k, p in CACHE_KEYS.items() if get(loaded.cfg, k) is not None}
    try:
        policy = build_policy(mode, **params)
        policy.validate(chunk_frames)
    except CachePolicyError as exc:
        keys = ["mode", *CACHE_KEYS, "num_frame_per_block"]
        raise CLIError(f"Cache mode {mode}: {exc}.{_where(loaded, keys, str(exc))}") from None
    unused = [f"{loaded.origin(k)}" for k, p in CACHE_KEYS.items()
              if k in loaded.origins and p not in policy_parameters(mode)]
    if unused:
        logger.warning("%s only matter(s) for other cache modes; ignored in mode %s", ", ".join(unused), mode)
    return policy


def _video_length(loaded: LoadedConfig, clock: ChunkClock) -> int | None:
    """Latent frames T from num_output_frames or seconds (None: endless)."""
    cfg = loaded.cfg
    if cfg.seconds is not None:
        T = latent_frames_for_seconds(cfg.seconds, clock)
        frames = video_frames(T, clock.temporal)
        logger.info("%s -> %d latent frames = %d video frames (%.2f s at %g fps)", loaded.origin("seconds"), T,
                    frames, frames / clock.fps, clock.fps)
        return T
    T, B = cfg.num_output_frames, clock.chunk_latents
    if T is None:
        return None
    if T < B or T % B:
        options = [B] if T < B else [T - T % B, T - T % B + B]
        frames = " or ".join(str(video_frames(t, clock.temporal)) for t in options)
        raise CLIError(f"{loaded.origin('num_output_frames')}: {T} latent frames is not a positive multiple of the "
                       f"chunk size num_frame_per_block={B}; latent frames are generated {B} at a time. Use "
                       f"{' or '.join(map(str, options))} ({frames} video frames).")
    return T


def _architecture(model_dir: Path | None) -> WanConfig:
    """The DiT architecture the run will load (--demo without --wan_model_dir: the tiny model's)."""
    if model_dir is None:
        from wan.fixtures import tiny_dit_config
        return tiny_dit_config()
    return read_wan_config(model_dir) if (model_dir / CONFIG_FILE).is_file() else WanConfig()


def _check_resolution(loaded: LoadedConfig, arch: WanConfig, spatial: int) -> None:
    """height and width must be positive and give whole latent patches (and whole H.264 macro blocks)."""
    patch = arch.patch_size
    step = max(spatial * max(patch[1], patch[2]), MACRO_BLOCK)
    for key in ("height", "width"):
        v = getattr(loaded.cfg, key)
        if v < step or v % step:
            options = [step] if v < step else [v - v % step, v - v % step + step]
            raise CLIError(f"{loaded.origin(key)}: {key}={v} is not a positive multiple of {step} (VAE factor "
                           f"{spatial} x patch {patch[1]}x{patch[2]}); use {' or '.join(map(str, options))}.")


def _free_bytes(device: torch.device) -> int:
    """Memory free on ``device`` now (GPU: cudaMemGetInfo; CPU: available RAM)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def _check_memory(loaded: LoadedConfig, T: int | None, latent_shape: tuple, dtype: torch.dtype,
                  device: torch.device, noise_order: str, save_latents: bool) -> None:
    """Allocations that grow with the video length must fit: upstream's initial noise, --save_latents' copies."""
    if T is None:
        return
    length = loaded.origin("seconds" if loaded.cfg.seconds is not None else "num_output_frames")
    per_frame = loaded.cfg.num_samples * math.prod(latent_shape) * dtype.itemsize   # bytes of one latent frame
    gb = 2 ** 30
    if noise_order == "upstream" and T * per_frame > _free_bytes(device):
        raise CLIError(f"{length}: {T} latent frames need {T * per_frame / gb:.1f} GiB of initial noise drawn before "
                       f"the first chunk (--noise_order upstream, the released order), but {device} has "
                       f"{_free_bytes(device) / gb:.1f} GiB free. Use --noise_order chunked (each chunk's noise is "
                       f"drawn just before it: memory independent of length, other random numbers) or a shorter "
                       f"video.")
    if save_latents and T * per_frame > psutil.virtual_memory().available:
        raise CLIError(f"{length}: --save_latents keeps {T} latent frames ({T * per_frame / gb:.1f} GiB) in memory "
                       f"until the video ends, more than the {psutil.virtual_memory().available / gb:.1f} GiB "
                       f"available; drop --save_latents or render a shorter video.")


def _check_output_folder(folder: Path) -> None:
    """The output folder (or its nearest existing parent) must be a writable folder; nothing is created here."""
    probe = folder.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        why = "is not a folder" if not probe.is_dir() else "is not writable"
        raise CLIError(f"The output folder {folder} is not writable ({probe} {why}). Pass --output_folder with a "
                       f"folder you can write to.")


def _check_checkpoint_entry(checkpoint: Path, use_ema: bool, trust: bool = False) -> None:
    """Open the checkpoint memory-mapped (cheap) and check it holds the weights asked for (--use_ema or not)."""
    state = generator_state_dict(load_torch_file(checkpoint, "Self Forcing checkpoint", trust=trust), checkpoint,
                                 use_ema)
    del state


def _model_files(wan_model_dir: str, checkpoint_path: str, download_allowed: bool,
                 checkpoint_ready: bool = False) -> tuple[Path, Path, bool]:
    """(model folder, checkpoint, download needed); CLIError when files are missing and will not be downloaded.

    ``checkpoint_ready``: the checkpoint was fetched already (LongLive's), so the default Wan folder may be too."""
    model_dir, checkpoint = resolve_path(wan_model_dir), resolve_path(checkpoint_path)
    try:
        check_model_files(model_dir, checkpoint)
        return model_dir, checkpoint, False
    except ModelFilesError as exc:
        defaults = str(wan_model_dir) == DEFAULT_WAN_MODEL_DIR and (checkpoint_ready
                                                                     or str(checkpoint_path) == DEFAULT_CHECKPOINT)
        if defaults and download_allowed:
            logger.info("model files missing (%s); they will be downloaded from the Hugging Face hub", exc)
            return model_dir, checkpoint, True
        why = ("it is switched off (HF_HUB_OFFLINE=1 or --no_download)" if defaults else
               "only the default paths are downloaded automatically")
        raise CLIError(f"{exc} No download was tried: {why}. See README 'Offline use' for the manual commands, or "
                       f"run 'python inference.py --demo' to try the pipeline without weights.") from None


def _demo_model(args, stack: contextlib.ExitStack) -> tuple[str, str]:
    """--demo: write the tiny random model into a temporary folder (removed by ``stack``); returns its paths."""
    if args.wan_model_dir and args.checkpoint_path:
        return args.wan_model_dir, args.checkpoint_path
    from wan.fixtures import write_tiny_model
    tiny = write_tiny_model(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="deep_forcing_demo_"))))
    return args.wan_model_dir or str(tiny.model_dir), args.checkpoint_path or str(tiny.checkpoint)


def _schedule_job(schedule: PromptSchedule) -> PromptJob:
    """The run's only job: the schedule's opening prompt (later prompts switch in while it renders)."""
    return PromptJob(0, 0, schedule.opening.prompt, None, schedule.path, "")


def _image_input(loaded: LoadedConfig, args, rollout: RolloutConfig, num_frames: int | None) -> ImageInput | None:
    """The image of an image-to-video run (``i2v`` with ``--image``), checked and hashed; None for text-to-video."""
    cfg, path = loaded.cfg, getattr(args, "image", None)
    if not cfg.i2v:
        if path is not None:
            raise CLIError(f"--image {path} is the first frame of an image-to-video run; add --i2v (with a "
                           f"frame-wise Causal Forcing checkpoint and num_frame_per_block=1).")
        return None
    if path is None:
        raise CLIError(f"i2v is on (from {loaded.origin('i2v')}) but no image was given; pass --image PATH (the first "
                       f"frame of the video, resized to {cfg.height}x{cfg.width}).")
    if rollout.num_frame_per_block != 1:
        raise CLIError(f"image-to-video needs frame-wise chunks but num_frame_per_block is "
                       f"{rollout.num_frame_per_block} (from {loaded.origin('num_frame_per_block')}); one image latent "
                       f"cannot fill a {rollout.num_frame_per_block}-frame chunk. Pass num_frame_per_block=1 with a "
                       f"frame-wise Causal Forcing checkpoint (framewise/causal_forcing.pt).")
    if num_frames is not None and num_frames < 2:
        raise CLIError(f"image-to-video with num_output_frames={num_frames} would only return the image; ask for "
                       f"at least 2 latent frames (the image counts as the first).")
    return ImageInput.open(path, cfg.height, cfg.width)


def resolve_settings(args, dist: DistEnv, stack: contextlib.ExitStack | None = None) -> RunSettings:
    """Check the whole request (no model is loaded; --demo writes its tiny model last, into ``stack``'s temporary
    folder); raise CLIError on the first problem."""
    check_flags(args, dist)
    loaded = config_from_args(args)
    default_longlive_mode(loaded)
    cfg = loaded.cfg
    rollout = build_rollout(loaded)
    policy = build_cache_policy(loaded, rollout.num_frame_per_block)
    vae_cfg = load_vae_config()
    spatial, temporal = int(vae_cfg["scale_factor_spatial"]), int(vae_cfg["scale_factor_temporal"])
    clock = ChunkClock(rollout.num_frame_per_block, temporal, cfg.fps)
    num_frames = _video_length(loaded, clock)
    if num_frames is None and not args.endless:
        raise CLIError(f"{loaded.origin('num_output_frames')}: num_output_frames is null; a fixed-length video needs "
                       f"a number of latent frames (or --seconds); only --interactive --endless runs without one.")
    model_dir = None if args.demo and not args.wan_model_dir else resolve_path(args.wan_model_dir
                                                                                or DEFAULT_WAN_MODEL_DIR)
    arch = _architecture(model_dir)
    _check_resolution(loaded, arch, spatial)
    device = resolve_device(args.device, args.demo, dist)
    dtype = resolve_dtype(args.dtype, device)
    noise_order = args.noise_order or ("chunked" if num_frames is None else "upstream")
    _check_memory(loaded, num_frames, (arch.in_dim, cfg.height // spatial, cfg.width // spatial), dtype, device,
                  noise_order, bool(args.save_latents))
    schedule = load_schedule(args.prompt_schedule, clock, num_frames) if args.prompt_schedule else None
    longlive_checkpoint, longlive_data = longlive_paths(cfg, args.checkpoint_path, args.data_path)
    data_path = args.data_path or longlive_data or str(DEMO_PROMPTS if args.demo else DEFAULT_PROMPTS)
    longlive = resolve_longlive(cfg, loaded.origin, data_path, args.recache_variant, bool(args.recache_on_switch),
                                clock, num_frames)
    if longlive is not None and longlive.prompts is not None:
        if schedule or args.interactive:
            raise CLIError(f"{loaded.origin('switch_frame_indices')}: switch_frame_indices (LongLive's prompt "
                           f"switches) cannot be combined with --prompt_schedule or --interactive; use one way of "
                           f"switching prompts per run.")
        jobs = longlive.prompts.jobs()
    else:
        jobs = [_schedule_job(schedule)] if schedule else load_prompt_jobs(data_path, args.extended_prompt_path)
    if num_frames is None and len(jobs) != 1:
        raise CLIError(f"--endless renders one video, but {data_path} holds {len(jobs)} prompts; pass a prompt "
                       f"file with the one opening prompt.")
    image = _image_input(loaded, args, rollout, num_frames)
    if args.recache_on_switch and not (schedule or args.interactive or (longlive and longlive.prompts)):
        logger.warning("--recache_on_switch only matters with --prompt_schedule or --interactive; ignored")
    output_folder = Path(cfg.output_folder)
    _check_output_folder(output_folder)
    check_encoder()
    # inputs are fine: now the model files (--demo writes its tiny model first)
    wan_model_dir, checkpoint_path = (_demo_model(args, stack or contextlib.ExitStack()) if args.demo else
                                      (args.wan_model_dir or DEFAULT_WAN_MODEL_DIR,
                                       args.checkpoint_path or longlive_checkpoint or DEFAULT_CHECKPOINT))
    download_allowed = not (args.demo or args.no_download or _env_offline())
    longlive_ckpt = longlive is not None and longlive.lora is not None
    if longlive_ckpt:  # LongLive's checkpoint and LoRA: fetched now when missing and allowed
        from wan.longlive_hub import ensure_longlive_files
        ensure_longlive_files(checkpoint_path, longlive.lora.path, download=download_allowed)
    model_dir, checkpoint, download = _model_files(wan_model_dir, checkpoint_path, download_allowed, longlive_ckpt)
    if not download:
        _check_checkpoint_entry(checkpoint, cfg.use_ema, bool(getattr(args, "trust_checkpoint", False)))
    return RunSettings(config=loaded.to_dict(), config_path=args.config_path, mode=cfg.mode, policy=policy,
                       cache=policy.describe(), rollout=rollout, num_output_frames=num_frames, height=cfg.height,
                       width=cfg.width, fps=cfg.fps, seed=args.seed, num_samples=cfg.num_samples,
                       use_ema=cfg.use_ema, save_with_index=cfg.save_with_index, overwrite=args.overwrite,
                       model_dir=model_dir, checkpoint=checkpoint, download=download, device=device, dtype=dtype,
                       output_folder=output_folder, jobs=jobs, dist=dist, vae_spatial=spatial,
                       vae_temporal=temporal, demo=args.demo, seconds=cfg.seconds, noise_order=noise_order,
                       save_latents=bool(args.save_latents), schedule=schedule, interactive=bool(args.interactive),
                       recache_on_switch=bool(args.recache_on_switch),
                       trust_checkpoint=bool(getattr(args, "trust_checkpoint", False)), image=image,
                       compile=bool(getattr(args, "compile", False)), longlive=longlive)
