"""The checks of a run that need no model: flag combinations, rollout, cache policy, length, resolution, memory,
output folder, image input and the model files. Each raises ``CLIError`` with one paragraph naming the flag / file /
key / value and the fix (``where`` names the layer that set a value mentioned in a message).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import tempfile
from pathlib import Path

import psutil
import torch

from methods.base import mode_variants
from pipeline.policies import CachePolicy, CachePolicyError, build_policy, policy_class, policy_parameters
from pipeline.rollout import RolloutConfig
from utils.frames import video_frames
from wan.config import WanConfig
from wan.loading import (CONFIG_FILE, DEFAULT_CHECKPOINT, DEFAULT_WAN_MODEL_DIR, ModelFilesError, check_model_files,
                         generator_state_dict, load_torch_file, read_wan_config, resolve_path)
from media.video import MACRO_BLOCK

from .cli_config import CLIError, LoadedConfig
from .image_input import ImageInput
from .runtime import DistEnv
from .schedule import ChunkClock, latent_frames_for_seconds

logger = logging.getLogger(__name__)

OFFLINE_VALUES = {"1", "true", "yes", "on"}
MEMORY_SHARE = 0.5  # of the free memory, for the allocations that grow with the video length


def check_flags(args, dist: DistEnv) -> None:
    """Flag combinations that cannot work, checked on the command line as given."""
    if args.seconds is not None and args.num_output_frames is not None:
        raise CLIError(f"--seconds {args.seconds:g} and --num_output_frames {args.num_output_frames} both set the "
                       f"video length; pass only one of them.")
    owner = mode_variants().get(args.mode)
    if args.is_ds_only == 1 and args.mode not in (None, "deep_sink") and owner is None:
        raise CLIError(f"--is_ds_only 1 asks for Deep Sink alone but --mode is {args.mode}; drop one of the two "
                       f"flags.")
    if owner is not None and (args.method not in (None, owner) or args.variant not in (None, args.mode)):
        given = f"--method {args.method}" if args.method not in (None, owner) else f"--variant {args.variant}"
        raise CLIError(f"--mode {args.mode} names the {owner} variant {args.mode}, but {given} asks for another; "
                       f"pass only one of them.")
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


def where(loaded: LoadedConfig, keys, message: str) -> str:
    """' Set by: key=value (from X), ...' for the keys a message mentions that some layer set ('' if none)."""
    named = [k for k in keys if k in loaded.origins and k.rsplit(".", 1)[-1].lower() in message.lower()]
    return f" Set by: {loaded.blame(*named)}." if named else ""


def build_cache_policy(loaded: LoadedConfig, chunk_frames: int) -> CachePolicy:
    """The run's cache policy: ``build_policy(cache.mode, **cache.params)``, built once and validated by the policy
    against the chunk size (a parameter set to null takes the policy class's default)."""
    mode = loaded.cfg.cache.mode
    params = {k: v for k, v in loaded.cfg.cache.params.items() if v is not None}
    keys = ["cache.mode", *(f"cache.params.{k}" for k in params), "rollout.num_frame_per_block"]
    try:
        check_param_types(mode, params, loaded)
        policy = build_policy(mode, **params)
        policy.validate(chunk_frames)
    except CachePolicyError as exc:
        raise CLIError(f"Cache mode {mode}: {exc}.{where(loaded, keys, str(exc))}") from None
    unused = [loaded.origin(f"cache.params.{k}") for k in params
              if f"cache.params.{k}" in loaded.origins and k not in policy_parameters(mode)]
    if unused:
        logger.warning("%s only matter(s) for other cache modes; ignored in mode %s", ", ".join(unused), mode)
    return policy


def check_param_types(mode: str, params: dict, loaded: LoadedConfig) -> None:
    """Each parameter of the mode's policy must have the type of its default (``cache.params`` is free-form)."""
    fields = {f.name: f.default for f in dataclasses.fields(policy_class(mode))}
    for name, value in params.items():
        default = fields.get(name)
        want = bool if isinstance(default, bool) else int if isinstance(default, int) else None
        if want is not None and (type(value) is not want):
            raise CLIError(f"{loaded.origin(f'cache.params.{name}')}: cache parameter {name}={value!r} must be "
                           f"{'true or false' if want is bool else 'a whole number'} (mode {mode}).")


def check_recache(loaded: LoadedConfig, loop, recache):
    """The re-cache variant, checked against the loop strategy; returns it."""
    try:
        loop.check_recache(recache)
    except ValueError as exc:
        raise CLIError(f"{loaded.origin('recache')}: {exc}.") from None
    return recache


def run_options(args, cfg, num_frames: int | None) -> dict:
    """The run's flags that are not config keys (``RunSettings.options``)."""
    return dict(overwrite=args.overwrite, demo=args.demo, seconds=cfg.seconds,
                noise_order=args.noise_order or ("chunked" if num_frames is None else "upstream"),
                save_latents=bool(args.save_latents), interactive=bool(args.interactive),
                trust_checkpoint=bool(args.trust_checkpoint), compile=bool(args.compile),
                report_timing=bool(args.report_timing))


def model_folder(args) -> Path | None:
    """The Wan folder the run reads its architecture from (None: --demo's tiny model)."""
    return None if args.demo and not args.wan_model_dir else resolve_path(args.wan_model_dir or DEFAULT_WAN_MODEL_DIR)


def video_length(loaded: LoadedConfig, clock: ChunkClock, loop, endless: bool) -> int | None:
    """Latent frames T from num_output_frames or seconds (None: endless), checked against the loop strategy."""
    cfg = loaded.cfg
    if cfg.seconds is not None:
        T = latent_frames_for_seconds(cfg.seconds, clock)
        frames = video_frames(T, clock.temporal)
        logger.info("%s -> %d latent frames = %d video frames (%.2f s at %g fps)", loaded.origin("seconds"), T,
                    frames, frames / clock.fps, clock.fps)
        return T
    T, B = cfg.num_output_frames, clock.chunk_latents
    if T is None:
        if not endless:
            raise CLIError(f"{loaded.origin('num_output_frames')}: num_output_frames is null; a fixed-length video "
                           f"needs a number of latent frames (or --seconds); only --interactive --endless runs "
                           f"without one.")
        return None
    if T < B or T % B:
        options = [B] if T < B else [T - T % B, T - T % B + B]
        frames = " or ".join(str(video_frames(t, clock.temporal)) for t in options)
        raise CLIError(f"{loaded.origin('num_output_frames')}: {T} latent frames is not a positive multiple of the "
                       f"chunk size num_frame_per_block={B}; latent frames are generated {B} at a time. Use "
                       f"{' or '.join(map(str, options))} ({frames} video frames).")
    try:
        loop.check_length(cfg.rollout, T)
    except ValueError as exc:
        raise CLIError(f"{loaded.origin('num_output_frames')}: {exc}") from None
    return T


def architecture(model_dir: Path | None) -> WanConfig:
    """The DiT architecture the run will load (--demo without --wan_model_dir: the tiny model's)."""
    if model_dir is None:
        from app.demo_model import tiny_dit_config
        return tiny_dit_config()
    return read_wan_config(model_dir) if (model_dir / CONFIG_FILE).is_file() else WanConfig()


def check_resolution(loaded: LoadedConfig, arch: WanConfig, spatial: int) -> None:
    """height and width must be positive and give whole latent patches (and whole H.264 macro blocks)."""
    patch = arch.patch_size
    step = max(spatial * max(patch[1], patch[2]), MACRO_BLOCK)
    for key in ("height", "width"):
        v = getattr(loaded.cfg, key)
        if v < step or v % step:
            options = [step] if v < step else [v - v % step, v - v % step + step]
            raise CLIError(f"{loaded.origin(key)}: {key}={v} is not a positive multiple of {step} (VAE factor "
                           f"{spatial} x patch {patch[1]}x{patch[2]}); use {' or '.join(map(str, options))}.")


def free_bytes(device: torch.device) -> int:
    """Memory free on ``device`` now (GPU: cudaMemGetInfo; CPU: available RAM)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def check_memory(loaded: LoadedConfig, T: int | None, latent_shape: tuple, dtype: torch.dtype,
                  device: torch.device, noise_order: str, save_latents: bool) -> None:
    """Allocations that grow with the video length must fit in ``MEMORY_SHARE`` of the free memory (the models,
    the cache and decoding need the rest): upstream's initial noise, --save_latents' copies."""
    if T is None:
        return
    length = loaded.origin("seconds" if loaded.cfg.seconds is not None else "num_output_frames")
    per_frame = loaded.cfg.num_samples * math.prod(latent_shape) * dtype.itemsize   # bytes of one latent frame
    gb, need = 2 ** 30, T * per_frame
    if noise_order == "upstream" and need > MEMORY_SHARE * free_bytes(device):
        raise CLIError(f"{length}: {T} latent frames need {need / gb:.1f} GiB of initial noise drawn before the "
                       f"first chunk (--noise_order upstream, the released order), more than half of the "
                       f"{free_bytes(device) / gb:.1f} GiB free on {device}. Use --noise_order chunked (each chunk's "
                       f"noise is drawn just before it: memory independent of length, other random numbers) or a "
                       f"shorter video.")
    if save_latents and need > MEMORY_SHARE * free_bytes(torch.device("cpu")):
        raise CLIError(f"{length}: --save_latents keeps {T} latent frames ({need / gb:.1f} GiB) in memory until the "
                       f"video ends, more than half of the {free_bytes(torch.device('cpu')) / gb:.1f} GiB available; "
                       f"drop --save_latents or render a shorter video.")


def check_output_folder(folder: Path) -> None:
    """The output folder (or its nearest existing parent) must be a writable folder (nothing is created here), and
    the H.264 encoder must be there."""
    from media.video import check_encoder
    check_encoder()
    probe = folder.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        why = "is not a folder" if not probe.is_dir() else "is not writable"
        raise CLIError(f"The output folder {folder} is not writable ({probe} {why}). Pass --output_folder with a "
                       f"folder you can write to.")


def check_checkpoint_entry(checkpoint: Path, use_ema: bool, trust: bool = False) -> None:
    """Open the checkpoint memory-mapped (cheap) and check it holds the weights asked for (--use_ema or not)."""
    state = generator_state_dict(load_torch_file(checkpoint, "Self Forcing checkpoint", trust=trust), checkpoint,
                                 use_ema)
    del state


def model_files(wan_model_dir: str, checkpoint_path: str, download_allowed: bool,
                checkpoint_ready: bool = False) -> tuple[Path, Path, bool]:
    """(model folder, checkpoint, download needed); CLIError when files are missing and will not be downloaded.

    ``checkpoint_ready``: the checkpoint was fetched already (a method's own), so the default Wan folder may be too."""
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


def demo_model(args, stack: contextlib.ExitStack) -> tuple[str, str]:
    """--demo: write the tiny random model into a temporary folder (removed by ``stack``); returns its paths."""
    if args.wan_model_dir and args.checkpoint_path:
        return args.wan_model_dir, args.checkpoint_path
    from app.demo_model import write_tiny_model
    tiny = write_tiny_model(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="deep_forcing_demo_"))))
    return args.wan_model_dir or str(tiny.model_dir), args.checkpoint_path or str(tiny.checkpoint)


def env_offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for no network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in OFFLINE_VALUES


def image_input(loaded: LoadedConfig, args, rollout: RolloutConfig, num_frames: int | None) -> ImageInput | None:
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
                       f"{rollout.num_frame_per_block} (from {loaded.origin('rollout.num_frame_per_block')}); one image latent "
                       f"cannot fill a {rollout.num_frame_per_block}-frame chunk. Pass num_frame_per_block=1 with a "
                       f"frame-wise checkpoint (README 'Methods': image-to-video).")
    if num_frames is not None and num_frames < 2:
        raise CLIError(f"image-to-video with num_output_frames={num_frames} would only return the image; ask for "
                       f"at least 2 latent frames (the image counts as the first).")
    return ImageInput.open(path, cfg.height, cfg.width)


def load(args, flags: list, demo) -> LoadedConfig:
    """The merged, checked config of a command line (its flags as layers, ``demo``: the --demo layer)."""
    from .cli_config import load_config
    return load_config(args.config_path, args.overrides, flags, demo, checkpoint=args.checkpoint_path)


def warn_other_sections(loaded: LoadedConfig, method) -> None:
    """Keys of another method's section set on the command line are ignored: say so."""
    from methods.base import METHODS
    for name in METHODS:
        keys = [k for k, label in loaded.origins.items() if k.startswith(name + ".") and name != method.name
                and label.startswith(("override", "--"))]
        if keys:
            logger.warning("%s belong to method %s, not to %s; ignored", ", ".join(keys), name, method.name)


def build_strategy(loaded: LoadedConfig, method, section, rollout: RolloutConfig, policy: CachePolicy):
    """The method's loop strategy, validated against the rollout and the policy."""
    warn_other_sections(loaded, method)
    loop = method.build_loop(section, loaded.cfg.variant)
    name = loop.name
    try:
        loop.validate(rollout, policy)
    except (ValueError, CachePolicyError) as exc:
        keys = ["cache.mode", *(f"cache.params.{k}" for k in loaded.cfg.cache.params), "rollout.num_frame_per_block",
                "rollout.denoising_step_list"]
        raise CLIError(f"Method {loaded.cfg.method} ({name} loop): {exc}.{where(loaded, keys, str(exc))}") from None
    return loop


def check_geometry(loaded: LoadedConfig, model_dir: Path | None, spatial: int, num_frames: int | None,
                   dtype: torch.dtype, device: torch.device, noise_order: str, save_latents: bool) -> None:
    """Resolution against the model's patch and the VAE, then the memory the video needs up front."""
    cfg = loaded.cfg
    arch = architecture(model_dir)
    check_resolution(loaded, arch, spatial)
    check_memory(loaded, num_frames, (arch.out_dim, cfg.height // spatial, cfg.width // spatial), dtype, device,
                 noise_order, bool(save_latents))


def prompt_jobs(args, loaded: LoadedConfig, method_run, schedule, data_path: str, num_frames: int | None,
                load_prompt_jobs) -> list:
    """The run's jobs: the method's own prompts, the schedule's one video, or the prompt files."""
    from .prompts import PromptJob
    jobs = method_run.jobs()
    if jobs is not None:
        if schedule and method_run.interactive_input:
            raise CLIError(f"--prompt_schedule switches text prompts, but method {loaded.cfg.method} has no prompt "
                           f"(its --interactive input is its own, per chunk); drop --prompt_schedule.")
        if schedule or (args.interactive and not method_run.interactive_input):
            raise CLIError(f"{loaded.origin('method')}: method {loaded.cfg.method} switches prompts from its own "
                           f"input ({data_path}); it cannot be combined with --prompt_schedule or --interactive; use "
                           f"one way of switching prompts per run.")
    elif schedule is not None:
        jobs = [PromptJob(0, 0, schedule.opening.prompt, None, schedule.path, "")]
    else:
        jobs = load_prompt_jobs(data_path, args.extended_prompt_path)
    if num_frames is None and len(jobs) != 1:
        raise CLIError(f"--endless renders one video, but {data_path} holds {len(jobs)} prompts; pass a prompt "
                       f"file with the one opening prompt.")
    if args.recache_on_switch and not (schedule or args.interactive or method_run.jobs() is not None):
        logger.warning("--recache_on_switch only matters with --prompt_schedule or --interactive; ignored")
    return jobs


def resolve_model_files(args, loaded: LoadedConfig, method, section, method_run,
                        stack: contextlib.ExitStack | None) -> tuple[Path, Path, bool]:
    """(model folder, checkpoint, download needed): --demo's tiny model, or the method's files, fetched if allowed."""
    cfg = loaded.cfg
    download_allowed = not (args.demo or args.no_download or env_offline())
    own = method_run.model_files(args, download_allowed, stack or contextlib.ExitStack())
    if own is not None:
        return own
    if args.demo:
        wan_model_dir, checkpoint_path = demo_model(args, stack or contextlib.ExitStack())
    else:
        wan_model_dir = args.wan_model_dir or DEFAULT_WAN_MODEL_DIR
        checkpoint_path = args.checkpoint_path or method.checkpoint_path(section, cfg.variant) or DEFAULT_CHECKPOINT
    fetched = False
    if not args.demo and not args.checkpoint_path and checkpoint_path != DEFAULT_CHECKPOINT:
        method_run.fetch(download_allowed)
        fetched = method.fetch_checkpoint(checkpoint_path, cfg.variant, download_allowed)
        command = method.download_command(checkpoint_path, cfg.variant)
        if not fetched and command is not None:
            raise CLIError(f"The {method.name} checkpoint {resolve_path(checkpoint_path)} is missing and no download "
                           f"was tried (downloads are off: HF_HUB_OFFLINE=1, --no_download or --demo). Fetch it "
                           f"with `{command}`, or pass --checkpoint_path.")
    model_dir, checkpoint, download = model_files(wan_model_dir, checkpoint_path, download_allowed, fetched)
    if not download:
        check_checkpoint_entry(checkpoint, cfg.use_ema, bool(args.trust_checkpoint))
    return model_dir, checkpoint, download
