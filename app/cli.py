"""The command line of Deep Forcing inference (upstream-compatible flags); ``inference.py`` and ``deep-forcing`` run it.

parse -> check everything (no model loaded yet) -> skip finished videos -> load the models once -> for each prompt of
this rank: generate chunk by chunk, decoding each chunk and appending it to the mp4 at once (a prompt schedule or
stdin may switch the prompt between chunks), then the JSON sidecar. See README.md for modes, outputs, multi-GPU,
resuming and long videos.

    python inference.py --demo                                  # tiny random model on CPU, no downloads
    python inference.py --config_path configs/self_forcing_dmd/self_forcing_dmd_sink10.yaml \
        --data_path prompts/examples.txt --output_folder output/DS_PC
    torchrun --nproc_per_node=8 inference.py ... model_kwargs.sink_size=12
    python inference.py --prompt_schedule story.jsonl --seconds 60   # one video, prompt changing over time
    python inference.py --interactive --endless --data_path opening.txt   # type prompts while it renders
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import signal
import sys

from omegaconf import OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

import methods
from app.cli_config import BaseRunConfig as RunConfig, CacheConfig, CLIError, Layer, policy_default
from app.runtime import DTYPES
from pipeline.noise import NOISE_ORDERS
from app.outputs import claim_slots, pending_slots, plan_outputs
from app.progress import progress_bar
from app.prompts import shard
from app.runtime import DistEnv, progress_enabled, setup_logging
from utils.frames import video_frames

logger = logging.getLogger("inference")

DEFAULT_SEED = 1356145
EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_FAILED = 2, 130, 143, 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (cluster pre-emption, torchrun shutdown), handled like Ctrl-C."""


def build_parser() -> argparse.ArgumentParser:
    """The command line: upstream flags (same meaning and defaults) plus this project's.

    Flags that set config keys default to None (= not given): their defaults live in app.cli_config.RunConfig.
    """
    from pipeline.policies import registered_modes
    from pipeline.recache import recache_choices
    frames = RunConfig.num_output_frames
    p = argparse.ArgumentParser(description="Deep Forcing: training-free long video generation (Wan2.1-T2V-1.3B, "
                                "Self Forcing). Extra arguments key=value override config keys, e.g. "
                                "model_kwargs.sink_size=12. Merge order: defaults, --config_path, --demo, flags, "
                                "key=value (see README 'Configs'; --print_config shows the result).")
    up = p.add_argument_group("upstream flags")
    up.add_argument("--config_path", default=None, help="YAML config merged over the defaults (sink 10, window 21); "
                    "the shipped ones are configs/self_forcing_dmd/self_forcing_dmd_sink{0..21}.yaml")
    up.add_argument("--checkpoint_path", default=None, help="the checkpoint (default: the method's released file, "
                    "e.g. checkpoints/self_forcing_dmd.pt, downloaded on first use)")
    up.add_argument("--data_path", default=None, help="prompt file (one per line), folder of line_XXXX.txt files, "
                    "or a quoted glob (default prompts/examples.txt)")
    up.add_argument("--extended_prompt_path", default=None, help="file with one extended prompt per line; encoded "
                    "instead of the prompt, which still names the file")
    up.add_argument("--output_folder", default=None, help="where videos go (key output_folder; default output/, "
                    "--demo: output/demo)")
    up.add_argument("--num_output_frames", "--max_num_output_frames", type=int, default=None,
                    help=f"latent frames T, a multiple of the chunk "
                    f"size (default {frames} = {video_frames(frames)} video frames); the video has 4T-3")
    up.add_argument("--use_ema", action="store_true", default=None, help="use the checkpoint's generator_ema "
                    "weights (key use_ema)")
    up.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed; every prompt starts from it")
    up.add_argument("--num_samples", type=int, default=None, help=f"videos per prompt, drawn as one batch (default "
                    f"{RunConfig.num_samples})")
    up.add_argument("--save_with_index", action="store_true", default=None, help="name files "
                    "{idx}-{sample}_{ema|regular}.mp4 (key save_with_index)")
    up.add_argument("--is_ds_only", type=int, default=0, choices=(0, 1), help="1: Deep Sink only (mode deep_sink); "
                    "0: the config's mode (default deep_sink_pc: Deep Sink + Participative Compression)")
    up.add_argument("--Budget", type=int, default=None, help=f"PC budget N in frames (key budget; default "
                    f"{policy_default('budget')})")
    up.add_argument("--Recent", type=int, default=None, help=f"PC recent frames R (key recent; default "
                    f"{policy_default('recent')})")
    ours = p.add_argument_group("this project")
    ours.add_argument("--method", default=None, choices=methods.method_names(), help="the checkpoint family and its "
                      "recipe (key method; default: what the YAML or checkpoint is, else deep_forcing; README "
                      "'Methods')")
    ours.add_argument("--variant", default=None, help="the method's variant, e.g. the frame-wise file of a method with several "
                      "(key variant; README 'Methods' lists them)")
    ours.add_argument("--wan_model_dir", "--pretrained_model_path", default=None, help="Wan2.1-T2V-1.3B folder "
                      "(default wan_models/Wan2.1-T2V-1.3B, downloaded on first use); matrix_game2: the "
                      "Matrix-Game-2.0 folder (VAE, CLIP, generators; default Matrix-Game-2.0)")
    ours.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda; cuda:LOCAL_RANK under "
                      "torchrun; cpu with --demo)")
    ours.add_argument("--dtype", default=None, choices=tuple(DTYPES), help="default bf16 on CUDA, "
                      "fp32 on CPU")
    ours.add_argument("--mode", default=None, choices=(*registered_modes(), *methods.mode_variants()),
                      help=f"cache mode (key mode; default: the method's, {CacheConfig.mode} for deep_forcing, or "
                      "deep_sink with --is_ds_only 1); a Matrix-Game 2.0 variant name (universal, gta_drive, "
                      "templerun) selects that variant instead, as the mode key of its released YAMLs")
    ours.add_argument("--print_config", action="store_true", help="print the merged config as YAML and exit")
    ours.add_argument("--demo", action="store_true", help="no weights needed: build a tiny random model and render "
                      "the demo prompts on CPU in seconds (noise videos, real pipeline)")
    ours.add_argument("--overwrite", action="store_true", help="redo videos that are already finished")
    ours.add_argument("--no_download", action="store_true", help="never download model files (as HF_HUB_OFFLINE=1)")
    ours.add_argument("--trust_checkpoint", action="store_true", help="load a checkpoint that holds pickled Python "
                      "objects (weights_only=False: this runs code from the file); only for files you trust")
    ours.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks (slow first chunk)")
    ours.add_argument("--log_level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    ours.add_argument("--report_timing", action="store_true", help="log each video's seconds per stage (text "
                      "encoder or conditioning, rollout, decode, write, total) when it is written; the sidecar "
                      "records them always (Causal Forcing's flag)")
    long = p.add_argument_group("long videos and prompt switches")
    long.add_argument("--seconds", type=float, default=None, help="video length in seconds instead of "
                      "--num_output_frames: the smallest multiple T of the chunk size with 4T-3 >= seconds * fps")
    long.add_argument("--noise_order", default=None, choices=NOISE_ORDERS, help="upstream (default): draw the whole "
                      "initial noise first, as the released code (same seed, same video); chunked: draw each "
                      "chunk's noise just before it (memory fully independent of length, needed by --endless; "
                      "different random numbers)")
    long.add_argument("--save_latents", action="store_true", help="also save each video's latents as name.pt "
                      "next to name.mp4")
    long.add_argument("--prompt_schedule", default=None, metavar="FILE", help="one video whose prompt changes over "
                      "time: .jsonl ({\"start\": seconds, \"prompt\": ...} per line) or .yaml (a list of {start, "
                      "prompt}); the first entry starts at 0. Not with --data_path")
    long.add_argument("--interactive", action="store_true", help="read new prompts from stdin while rendering: "
                      "before each chunk the newest line typed becomes the prompt; a line '/stop' ends the video")
    long.add_argument("--endless", action="store_true", help="with --interactive: no fixed length, render until "
                      "'/stop' or the end of stdin (uses --noise_order chunked)")
    long.add_argument("--recache", "--recache_variant", dest="recache", default=None, choices=recache_choices(),
                      help="the re-cache at a prompt switch (key recache): off keeps the cache (training-free), ours "
                      "recomputes every cached frame at its position; a method may register its own (README 'Prompt "
                      "switches'); default: the method's own (off for most)")
    long.add_argument("--recache_on_switch", action="store_true", help="the same as --recache ours")
    cf = p.add_argument_group("image inputs (Causal Forcing frame-wise image-to-video; Matrix-Game 2.0)")
    cf.add_argument("--i2v", action="store_true", default=None, help="image-to-video (key i2v): --image is the first "
                    "frame of every video, the prompts describe the motion; needs num_frame_per_block=1")
    cf.add_argument("--image", "--img_path", default=None, metavar="PATH", help="the first frame (PNG, JPEG, ...), "
                    "resized to the video's height x width without keeping its aspect ratio; matrix_game2: the "
                    "conditioning image (or a folder of images), centre-cropped to the aspect")
    cf.add_argument("--actions", default=None, metavar="bench|FILE", help="matrix_game2: the released random "
                    "benchmark actions (bench, seeded by --seed; default), an actions file (per pixel frame: "
                    "keyboard_condition / mouse_condition; per chunk: key lines), or a sidecar to replay (key "
                    "matrix_game2.actions)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (YAML values)")
    return p


# Flags that set one config key each, spelled once: flag (argparse dest) -> key. Flags left out set nothing.
FLAG_KEYS = {"method": "method", "variant": "variant", "mode": "cache.mode", "Budget": "cache.params.budget",
             "Recent": "cache.params.recent", "actions": "matrix_game2.actions",
             "num_samples": "num_samples", "output_folder": "output_folder", "recache": "recache", "i2v": "i2v",
             "use_ema": "use_ema", "save_with_index": "save_with_index"}


def nested(key: str, value) -> dict:
    """``"cache.params.budget", 6`` -> ``{"cache": {"params": {"budget": 6}}}``."""
    head, _, leaf = key.partition(".")
    return {head: nested(leaf, value)} if leaf else {key: value}


def flag_layers(args) -> list[Layer]:
    """The flags that set config keys, one layer each (so messages name the flag)."""
    out = [Layer("--is_ds_only 1", {"cache": {"mode": "deep_sink"}})] if args.is_ds_only == 1 else []
    owner = methods.mode_variants().get(args.mode)
    if owner is not None:  # --mode universal: a variant, as Matrix-Game 2.0's YAML key mode
        out.append(Layer(f"--mode {args.mode}", {"method": owner, "variant": args.mode}))
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if flag == "mode" and owner is not None:
            continue
        if value is not None and value is not False:
            out.append(Layer(f"--{flag}" + ("" if value is True else f" {value}"), nested(key, value)))
    if args.recache_on_switch and args.recache is None:
        out.append(Layer("--recache_on_switch", {"recache": "ours"}))
    if args.num_output_frames is not None:
        out.append(Layer(f"--num_output_frames {args.num_output_frames}",
                         {"num_output_frames": args.num_output_frames, "seconds": None}))
    if args.seconds is not None:
        out.append(Layer(f"--seconds {args.seconds}", {"seconds": args.seconds, "num_output_frames": None}))
    if args.endless:
        out.append(Layer("--endless", {"num_output_frames": None, "seconds": None}))
    return out


def output_plan(settings) -> dict:
    """Output slots per job index: named by prompt, or for a schedule by the schedule file's name."""
    if settings.schedule is not None:
        naming = dataclasses.replace(settings.jobs[0], prompt=settings.schedule.path.stem)
        return {0: plan_outputs([naming], settings.output_folder, settings.num_samples, settings.save_with_index,
                                settings.use_ema)[0]}
    return plan_outputs(settings.jobs, settings.output_folder, settings.num_samples, settings.save_with_index,
                        settings.use_ema)


def add_missing_latents(mine, plan, todo, settings) -> tuple[list, int]:
    """With --save_latents, finished videos without their latents file are rendered again; returns (todo, redone)."""
    from app.streaming import latents_path, remove_stale_latents_part
    pending = {job.index: slots for job, slots in todo}
    redo = 0
    for job in mine:
        for slot in plan[job.index]:
            if remove_stale_latents_part(slot):
                logger.info("removed the partial latents file of %s left by an interrupted run", slot.video)
            if settings.save_latents and slot not in pending.get(job.index, []) and not latents_path(slot).exists():
                logger.info("redoing %s: --save_latents asks for %s", slot.video, latents_path(slot).name)
                pending.setdefault(job.index, []).append(slot)
                redo += 1
    order = {job.index: job for job in mine}
    return [(order[i], sorted(pending[i], key=lambda sl: sl.sample)) for i in sorted(pending)], redo


def run(settings, runner=None, stdin=None) -> int:
    """Render this rank's unfinished videos; returns the exit status (``runner``/``stdin``: for tests)."""
    from app.runner import VideoRunner
    from app.switching import LivePrompts
    dist = settings.dist
    plan = output_plan(settings)
    mine = shard(settings.jobs, dist.rank, dist.world_size)
    # An interactive video depends on what is typed: it is never "already finished", it is made again.
    redo_all = settings.overwrite or settings.interactive
    todo, finished = pending_slots(mine, plan, settings.request, redo_all)
    todo, redo = add_missing_latents(mine, plan, todo, settings)
    finished -= redo
    logger.info("%d prompt(s) in total; this rank: %d video(s) already finished, %d prompt(s) to render -> %s",
                len(settings.jobs), finished, len(todo), settings.output_folder)
    if not todo:
        return 0
    progress = progress_enabled(dist)
    runner = runner or VideoRunner.load(settings, progress=progress)
    live = None
    if settings.interactive and settings.method_run.interactive_input:
        live = settings.method_run.live_input(stdin)
    elif settings.interactive:
        live = LivePrompts(stdin)
        logger.info("interactive: type a prompt and press Enter to switch before the next chunk; '/stop' ends the "
                    "video%s", " (end of input too)" if settings.endless else "")
    written = []
    try:
        with logging_redirect_tqdm(), progress_bar(len(todo), "prompts", "prompt", progress, every=1) as bar:
            for job, slots in todo:
                # each video is locked while it is made: other runs on this folder skip it (README: resuming)
                with claim_slots(job, slots, settings.request, redo_all) as claimed:
                    if not claimed:
                        bar.update(1)
                        continue
                    result = runner.render(job, claimed, live=live)
                bar.update(1)
                written.extend(result.written)
                for path in result.written:
                    logger.info("wrote %s (%.1f s)", path, result.timings["total"])
                if settings.options.get("report_timing"):
                    logger.info("timing of prompt %d: %s", job.index,
                                ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items()))
    except KeyboardInterrupt as exc:
        logger.warning("%s: %d video(s) finished in this run, %d before; any partial file was removed. Rerun the "
                       "same command to continue where it stopped.",
                       "terminated" if isinstance(exc, Terminated) else "interrupted", len(written), finished)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except OSError as exc:
        logger.error("could not write the outputs (%s); %d video(s) finished in this run are complete. Fix the "
                     "problem (disk space, permissions) and rerun the same command.", exc, len(written))
        return EXIT_FAILED
    except (MemoryError, RuntimeError) as exc:
        if not out_of_memory(exc):
            raise
        logger.error("out of memory while rendering (%s); %d video(s) finished in this run are complete and any "
                     "partial file was removed. Use --noise_order chunked, fewer --num_samples, a smaller size or a "
                     "smaller cache window (model_kwargs.local_attn_size), then rerun the same command.",
                     str(exc).strip().splitlines()[0][:200], len(written))
        return EXIT_FAILED
    logger.info("done: %d video(s) written, %d already finished", len(written), finished)
    return 0


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (CUDA out of memory, or the CPU allocator's)."""
    import torch
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(exc)


def _raise_terminated(signum, frame):
    """SIGTERM handler: unwind like Ctrl-C so partial files are removed."""
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2: bad input, 130: Ctrl-C, 143: SIGTERM)."""
    args = build_parser().parse_intermixed_args(argv)
    try:
        dist = DistEnv.from_env()
    except CLIError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    setup_logging(dist, args.log_level)
    signal.signal(signal.SIGTERM, _raise_terminated)
    from wan.loading import ModelFilesError
    from app.settings import config_from_args, resolve_settings
    try:
        if args.print_config:
            sys.stdout.write(OmegaConf.to_yaml(config_from_args(args).cfg))
            return 0
        with contextlib.ExitStack() as stack:
            return run(resolve_settings(args, dist, stack))
    except (CLIError, ModelFilesError) as exc:
        sys.stderr.write("error: " + " ".join(str(exc).split()) + "\n")
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        logger.warning("stopped before any video was started")
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED

