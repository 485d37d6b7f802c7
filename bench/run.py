"""Benchmark entry point: ``python -m bench.run --preset {real,cpu} ...`` (see bench/README.md).

For each mode and video length: first-chunk latency, per-chunk latency (cache-event chunks and normal chunks
apart), output FPS with and without VAE decode, peak GPU and host memory; then many prompts in one process against
reloading per prompt. Writes results.json, results.md and latency_memory.png.
"""
from __future__ import annotations

import argparse
import gc
import logging
import re
import shlex
import sys
import time
from pathlib import Path

import torch

from .clock import Clock
from .env import device_name, environment, slug
from .geometry import cache_storage_bytes, kv_bytes_per_frame, param_count
from .measure import RunSettings, measure_rollout, summarise, warm_up
from .modes import available_modes, make_policy
from .presets import DTYPES, MODE_SETTINGS, MODES, get_preset, build_random_model
from .report import write_all

logger = logging.getLogger("bench.run")
RESULTS = Path(__file__).resolve().parent / "results"


class BenchError(Exception):
    """A user-facing problem with the benchmark's options (printed without a traceback)."""


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=["real", "cpu"], default="cpu",
                   help="real: Wan2.1-T2V-1.3B, 480x832, bf16, CUDA, random weights; cpu: tiny dims, relative figures")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(available_modes()),
                   help="cache modes to run (any registered mode; others than the defaults use their class defaults)")
    p.add_argument("--lengths", nargs="+", type=float, default=[30, 60, 300],
                   help="video lengths in seconds (16 fps; 4 latent frames per second, whole chunks of 3)")
    p.add_argument("--latent-frames", nargs="+", type=int, default=None,
                   help="explicit latent frame counts instead of --lengths (multiples of 3; for smoke runs)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="override the preset's dtype")
    p.add_argument("--device", default=None, help="override the preset's device (cuda, cuda:1, cpu, meta)")
    p.add_argument("--layers", type=int, default=None, help="reduced layer count (smoke runs on real widths)")
    p.add_argument("--resolution", default=None, metavar="HxW", help="override the output resolution, e.g. 96x160")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every block's query-side parts (CausalWanModel.compile_blocks; timed warm-up)")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode when --compile is given")
    p.add_argument("--low-memory", action="store_true",
                   help="initial noise drawn chunk by chunk (LazyNoise: memory independent of length, different "
                        "random numbers than upstream); VAE fed one latent frame per call")
    p.add_argument("--no-vae", action="store_true", help="skip the VAE (FPS with VAE is then not measured)")
    p.add_argument("--no-frames-to-host", action="store_true",
                   help="keep decoded frames on the device (no per-chunk uint8 copy to the host)")
    p.add_argument("--warmup-chunks", type=int, default=1,
                   help="untimed chunks run before every measured rollout (excluded from the figures, reported)")
    p.add_argument("--repeats", type=int, default=1,
                   help="measure every (mode, length) this many times, modes interleaved; the median is reported")
    p.add_argument("--reload-prompts", type=int, default=3,
                   help="prompts for the one-process vs reload-per-prompt comparison (0: skip)")
    p.add_argument("--reload-seconds", type=float, default=5.0, help="video length of each of those prompts")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 for the cpu preset, which avoids oversubscription on shared "
                        "machines; torch's default otherwise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default bench/results/<preset>-<device>-<timestamp>)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def compile_blocks(model, mode: str) -> int:
    """``CausalWanModel.compile_blocks`` (query-side parts of every block, static shapes); returns blocks compiled."""
    return model.compile_blocks(mode=None if mode == "default" else mode)


def _resolve(args):
    """Preset with overrides, device and the list of (seconds, latent frames) to run."""
    preset = get_preset(args.preset)
    height = width = None
    if args.resolution:
        m = re.fullmatch(r"(\d+)x(\d+)", args.resolution)
        if not m:
            raise BenchError(f"--resolution {args.resolution!r} is not HxW (e.g. 480x832)")
        height, width = int(m.group(1)), int(m.group(2))
    preset = preset.with_overrides(layers=args.layers, dtype=args.dtype, device=args.device, height=height,
                                   width=width)
    device = torch.device(preset.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"--preset {args.preset} runs on CUDA but torch {torch.__version__} sees no GPU; run it on "
                         f"a GPU machine, or pass --device cpu with --layers 1 --resolution 96x160 for a smoke run, "
                         f"or --device meta to check shapes only")
    if args.repeats < 1 or args.warmup_chunks < 0 or args.reload_prompts < 0:
        raise BenchError("--repeats must be >= 1; --warmup-chunks and --reload-prompts must be >= 0")
    if args.latent_frames:
        bad = [t for t in args.latent_frames if t < 1 or t % preset.chunk_frames]
        if bad:
            raise BenchError(f"--latent-frames {bad}: use positive multiples of {preset.chunk_frames}")
        lengths = [(t * preset.temporal_factor / preset.fps, t) for t in args.latent_frames]
    else:
        lengths = [(s, preset.latent_frames_for(s)) for s in args.lengths]
    return preset, device, lengths


def run(args) -> Path:
    """Run the benchmark described by ``args``; returns the output folder."""
    from pipeline.rollout import Rollout, RolloutConfig

    from .reload import measure_reload
    from .vae import BenchVAE

    preset, device, lengths = _resolve(args)
    threads = args.threads or (1 if preset.name == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    meta = device.type == "meta"
    settings = RunSettings(warmup_chunks=args.warmup_chunks, decode=not args.no_vae,
                           frames_to_host=not (args.no_frames_to_host or meta), low_memory=args.low_memory,
                           seed=args.seed)
    clock = Clock(device)
    t0 = time.perf_counter()
    model = build_random_model(preset, seed=args.seed)
    clock.sync()
    build_s = time.perf_counter() - t0
    vae = None if args.no_vae else BenchVAE(preset.vae, preset.torch_dtype, preset.device)
    logger.info("built %s model (%d layers, %.2fB parameters) in %.1f s on %s", preset.name,
                preset.model.num_layers, param_count(model) / 1e9, build_s, device)
    compiled = compile_blocks(model, args.compile_mode) if args.compile else 0
    rollout = RolloutConfig()
    calls = len(rollout.denoising_step_list) + 1
    esize = torch.empty(0, dtype=preset.torch_dtype).element_size()
    geometry = {"num_layers": preset.model.num_layers, "dim": preset.model.dim, "num_heads": preset.model.num_heads,
                "head_dim": preset.model.head_dim, "latent_shape": list(preset.latent_shape),
                "tokens_per_frame": preset.tokens_per_frame, "chunk_frames": preset.chunk_frames,
                "kv_bytes_per_frame": kv_bytes_per_frame(preset.model, preset.tokens_per_frame, preset.torch_dtype),
                "parameters": param_count(model), "dit_weight_bytes": param_count(model) * esize,
                "vae_weight_bytes": vae.weight_bytes if vae else 0, "cache_storage_bytes": {}}
    runs, modes_info = _measure_all(args, preset, model, vae, rollout, settings, lengths, calls, geometry,
                                    compiled)
    reload = None
    if args.reload_prompts > 0 and not meta:
        logger.info("one process vs reload per prompt (%d prompts)", args.reload_prompts)
        mode = args.modes[-1]
        reload = measure_reload(preset, model, vae, lambda m: Rollout(m, rollout, make_policy(mode)[0]),
                                args.reload_prompts, preset.latent_frames_for(args.reload_seconds), settings)
        reload["mode"] = mode
    results = {
        "schema": 1, "preset": preset.name,
        "command": " ".join(shlex.quote(a) for a in [sys.executable, "-m", "bench.run", *args.argv]),
        "timing_valid": not meta, "environment": environment(device),
        "config": {"model": preset.model.to_dict(), "height": preset.height, "width": preset.width,
                   "fps": preset.fps, "dtype": preset.dtype, "vae": preset.vae,
                   "vae_impl": vae.impl if vae else None, "rollout": vars(rollout), "calls_per_chunk": calls,
                   "compile": {"enabled": bool(compiled), "mode": args.compile_mode, "modules": compiled},
                   "settings": vars(settings), "mode_settings": {m: MODE_SETTINGS.get(m, {}) for m in args.modes},
                   "model_build_s": build_s},
        "geometry": geometry, "modes": modes_info, "runs": runs, "relative": _relative(runs), "reload": reload,
        "notes": _notes(preset, device, modes_info),
    }
    out = args.out or RESULTS / f"{preset.name}-{slug(device_name(device))}-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = write_all(results, Path(out))
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return Path(out)


def _measure_all(args, preset, model, vae, rollout, settings, lengths, calls, geometry, compiled):
    """Every (mode, length), ``--repeats`` times, modes interleaved per length so that they see the same machine
    state; per (mode, length) the repeat with the median end-to-end FPS is kept (all repeats' FPS are listed)."""
    from pipeline.rollout import Rollout
    device = model.device
    collected: dict[tuple, list] = {}
    modes_info = {m: {"warmup": []} for m in args.modes}
    for rep in range(args.repeats):
        for seconds, T in lengths:
            for mode in args.modes:
                policy, impl = make_policy(mode)
                pipe = Rollout(model, rollout, policy)
                warm = warm_up(pipe, vae, preset.latent_shape, settings)
                first = not any(modes_info[m]["warmup"] for m in args.modes)
                logger.info("%s: warm-up %d chunk(s) %.2f s%s", mode, warm["chunks"], warm["seconds"],
                            " (includes torch.compile)" if compiled and first else "")
                modes_info[mode].update(policy=impl, settings=policy.describe())
                modes_info[mode]["warmup"].append(warm)
                chunks, extra = measure_rollout(pipe, vae, preset.latent_shape, T, settings, mode)
                summary = summarise(chunks, extra, preset, T, calls)
                collected.setdefault((mode, seconds), []).append((summary, chunks))
                logger.info("[%d/%d] %s %g s (T=%d): first chunk %.3f s, %.1f FPS DiT, %s FPS with VAE, "
                            "peak GPU %.0f MB", rep + 1, args.repeats, mode, seconds, T,
                            summary["first_chunk_latency_s"], summary["fps_dit_only"] or 0,
                            f"{summary['fps_with_vae']:.1f}" if vae else "-", summary["gpu_peak_bytes"] / 1e6)
                geometry["cache_storage_bytes"][mode] = cache_storage_bytes(pipe.kv)
                del pipe
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    runs = []
    for mode in args.modes:
        for seconds, _ in lengths:
            reps = collected[(mode, seconds)]
            key = "fps_with_vae" if vae is not None else "fps_dit_only"
            ordered = sorted(reps, key=lambda r: r[0][key] or 0)
            summary, chunks = ordered[len(ordered) // 2]
            summary["repeats"] = {k: [r[0][k] for r in reps] for k in ("fps_dit_only", "fps_with_vae",
                                                                       "gpu_peak_bytes")}
            runs.append({"mode": mode, "seconds": seconds, "summary": summary, "chunks": chunks})
    return runs, modes_info


def _relative(runs: list[dict]) -> dict:
    """Per length: Deep Sink + PC end-to-end FPS relative to the Self Forcing window (negative = slower)."""
    by = {(r["mode"], r["seconds"]): r["summary"] for r in runs}
    out = {}
    for (mode, seconds), s in by.items():
        base = by.get(("self_forcing", seconds))
        key = "fps_with_vae" if s["fps_with_vae"] and base and base["fps_with_vae"] else "fps_dit_only"
        if mode == "deep_sink_pc" and base and base[key]:
            out[f"{seconds:g} s"] = s[key] / base[key] - 1
    return out


def _notes(preset, device, modes_info) -> list[str]:
    """Caveats that belong next to the figures."""
    notes = []
    if device.type == "meta":
        notes.append("meta device: shapes and code path only; no timing or memory figure is meaningful")
    elif device.type != "cuda":
        notes.append("CPU run: compare figures relative to each other only; GPU figures come from --preset real")
    if preset.name == "real" and preset.model.num_layers != 30:
        notes.append(f"reduced layer count ({preset.model.num_layers}): not the 1.3B model's figures")
    notes.append("random weights; text encoder not run (prompt embeddings are random tensors)")
    return notes


def main(argv=None) -> int:
    """CLI entry point; user-facing errors are printed without a traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    threads = torch.get_num_threads()
    try:
        out = run(args)
    except BenchError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    finally:
        torch.set_num_threads(threads)  # run() may lower it; leave the caller's setting as it was
    sys.stdout.write(f"{out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
