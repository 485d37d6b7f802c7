"""One GPU script for the figures of the product, bounded to 8 minutes: ``python -m bench.gpu`` (``--smoke``: CPU).

It runs on a bare GPU image with only torch, transformers and the wheels bench/README.md says to carry; every
stage degrades instead of failing (no VAE without diffusers: DiT-only figures; no write figure without av; nothing
needs omegaconf or ftfy) and records what it skipped and why. Stages, in order (``results.json`` is rewritten after
each one; a stage that fails records its traceback and the next one runs):

1. ``environment``: device, versions, optional packages, TF32 / cuDNN flags, attention backend.
2. ``attention``: SDPA kernel probe (flash / cuDNN / efficient / math) on the rollout's shape; the fastest is used
   by every later stage (``--sdpa`` forces one) and recorded.
3. ``equality``: the tiny model in fp32 (TF32 off) on the device vs on the CPU in every mode, and the
   released-style rollout (``bench.release_style``) vs ours on the device.
4. ``fps``: the real-size DiT (Wan2.1-T2V-1.3B config, random weights, bf16, 480x832) per mode over a 30 s video:
   per block the DiT, then the streaming VAE decode and the encode + write of the frames (``media.video``, as the
   application writes them); FPS over all blocks and over the steady blocks (after the 7 fill blocks) apart,
   p50/p90 block times, first-frame latency, peak allocated/reserved memory.
5. ``baseline``: the released-style rollout beside ours on identical inputs (Self Forcing, Deep Sink), DiT only:
   FPS of each, project/release ratio, latent difference.
6. ``vae``: streaming decode eager vs channels-last vs compiled decoder: seconds per block, frames vs eager.
7. ``compile``: ``CausalWanModel.compile_blocks`` on/off on identical inputs: compile time, FPS, difference.
8. ``fp8``: the DiT's block linears in FP8 through torchao (``wan.quantize``; compute capability >= 8.9) vs bf16.
9. ``profile``: torch.profiler top kernels of one Self Forcing eviction block and one PC compression block.
10. ``low_memory``: chunked noise, VAE one latent frame per call, a real-size random UMT5 encoder offloaded to the
    CPU encoding the first prompt and a switch mid-video; peak memory vs 24 GiB.
11. ``long``: Deep Sink + PC (then Self Forcing) toward 5 min of video, DiT only, until the budget ends.

Time: the budget (``--budget-s``, default 450 s) counts from the start of the process. A stage that needs more
time than is left is skipped (and says so); loops stop at their stage's share; an alarm stops a stage that runs past
the budget, so the whole run ends before 8 minutes. Every figure is read through ``bench.timing.timed_blocks``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .env import device_name, environment, slug
from .measure import random_inputs
from .modes import make_policy
from .presets import MODES, TINY_DIT, build_random_model, get_preset
from .sdpa import NAMES as SDPA_NAMES
from .sdpa import backend_context
from .timing import decode_step, summary, timed_blocks, write_step

logger = logging.getLogger("bench.gpu")
RESULTS = Path(__file__).resolve().parent / "results"
GB = 1e9
LOW_MEMORY_LIMIT_BYTES = 24 * 2 ** 30
# Wan2.1's umt5-xxl encoder (models_t5_umt5-xxl-enc-bf16.pth)
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32)
UMT5_TINY = dict(vocab_size=1000, d_model=TINY_DIT["text_dim"], d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=32)
BASELINE_MODES = ("self_forcing", "deep_sink")
DEFAULT_BUDGET_S = 450.0   # from the process start: the run ends before 8 minutes


def _process_start() -> float:
    """``time.time()`` at which this process started (psutil), else the import of this module."""
    try:
        import psutil
        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001
        return _IMPORTED


_IMPORTED = time.time()


class Budget:
    """Wall-clock seconds left of a budget that started at ``start`` (``time.time()``)."""

    def __init__(self, seconds: float, start: float | None = None):
        self.seconds, self.start = seconds, time.time() if start is None else start

    def left(self) -> float:
        """Seconds left (negative once over)."""
        return self.seconds - (time.time() - self.start)

    def stop(self, margin_s: float = 0.0) -> Callable[[], "str | None"]:
        """A ``timed_blocks`` stop hook: the reason once fewer than ``margin_s`` seconds are left."""
        return lambda: "time budget" if self.left() < margin_s else None


class BudgetExceeded(BaseException):
    """Raised by the alarm when a stage runs past its hard limit (a BaseException: no ``except Exception`` of a
    stage's optional parts swallows it)."""


class StageSkipped(Exception):
    """A stage cannot run here (a package or a GPU feature is missing); the message says why."""


@dataclass(frozen=True)
class Stage:
    """A stage: its function, the share of the budget it may take at most, the least time it needs to be useful."""

    fn: Callable
    cap_s: float
    min_s: float


# ---------------------------------------------------------------------------------------------------- context

class Context:
    """What the stages share: sizes, device, budget, the models (built once, each on its own), the SDPA choice."""

    def __init__(self, args):
        self.smoke = bool(args.smoke)
        if self.smoke:
            self.preset = get_preset("cpu").with_overrides(device=args.device or "cpu")
            self.sizes = dict(equality_frames=24, fps_frames=24, baseline_frames=30, compile_frames=12,
                              fp8_frames=24, vae_blocks=4, profile_target=7, lowmem_frames=12, long_frames=30,
                              long_seconds=None, vae_without_write_frames=12)
            self.encoder_spec = UMT5_TINY
            self.compile_backend = "eager"  # Dynamo capture only: seconds on a CPU (inductor: minutes)
            torch.set_num_threads(1)  # the tiny model is dispatch-bound; more threads only contend
        else:
            self.preset = get_preset("real").with_overrides(device=args.device or "cuda")
            self.sizes = dict(equality_frames=30, fps_frames=self.preset.latent_frames_for(30), baseline_frames=36,
                              compile_frames=36, fp8_frames=36, vae_blocks=8, profile_target=7, lowmem_frames=24,
                              long_frames=self.preset.latent_frames_for(300), long_seconds=300,
                              vae_without_write_frames=30)
            self.encoder_spec = UMT5_XXL
            self.compile_backend = "inductor"
        self.compile_mode = args.compile_mode
        self.device = torch.device(self.preset.device)
        self.budget = Budget(args.budget_s or (240.0 if self.smoke else DEFAULT_BUDGET_S),
                             None if self.smoke else _process_start())
        self.sdpa: str | None = None if args.sdpa in ("auto", "default") else args.sdpa
        self.sdpa_forced = args.sdpa not in ("auto", "default")
        self.sdpa_default = args.sdpa == "default"
        self.out: Path | None = None
        self.write: Callable[[], None] = lambda: None
        self.kinds: dict[str, list[str]] = {}
        self._dit = None
        self._vae = None
        self.vae_error: str | None = None
        self.build_s: dict[str, float] = {}

    def dit(self):
        """The DiT of the preset with random weights, built on the device once."""
        if self._dit is None:
            t0 = time.perf_counter()
            self._dit = build_random_model(self.preset)
            self.sync()
            self.build_s["dit"] = time.perf_counter() - t0
        return self._dit

    def vae(self):
        """The random-weight VAE (``bench.vae.BenchVAE``), or None with ``vae_error`` saying why (e.g. no diffusers)."""
        if self._vae is None and self.vae_error is None:
            t0 = time.perf_counter()
            try:
                from .vae import BenchVAE
                self._vae = BenchVAE(self.preset.vae, self.preset.torch_dtype, self.preset.device)
            except Exception as exc:  # noqa: BLE001 - the VAE is optional: DiT-only figures without it
                self.vae_error = f"VAE unavailable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                logger.warning("%s; decode figures are skipped", self.vae_error)
            self.build_s["vae"] = time.perf_counter() - t0
        return self._vae

    def writer_unavailable(self) -> str | None:
        """Why frames cannot be written here (no VAE, or no PyAV with libx264), or None."""
        if self.vae() is None:
            return f"no frames to write: {self.vae_error}"
        try:
            from media.video import check_encoder
            check_encoder()
        except Exception as exc:  # noqa: BLE001 - CLIError (no av / no libx264) or an import error
            return f"mp4 writer unavailable ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        return None

    def sync(self) -> None:
        """Wait for the device."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def free(self) -> None:
        """Drop garbage and the allocator's cached blocks (a run's cache must not count in the next run's peaks)."""
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    def run(self, mode: str, latent_frames: int, *, source_cls=None, model=None, seed: int = 0, post=None,
            finish=None, stop=None, max_blocks=None, around=None, capture: bool = False, low_memory: bool = False,
            text=None, prompt_switch=None):
        """One rollout of ``mode`` through ``timed_blocks`` -> (TimedRun, latents [1, T, C, h, w] or None).

        ``source_cls``: ``pipeline.rollout.Rollout`` (default) or ``ReleaseStyleRollout``; ``capture``: keep every
        block's latents (a device copy in the post step) for comparisons.
        """
        from pipeline.rollout import Rollout, RolloutConfig
        model = self.dit() if model is None else model
        self.free()
        source = (source_cls or Rollout)(model, RolloutConfig(), make_policy(mode)[0])
        inputs = random_inputs(model, self.preset.latent_shape, latent_frames, seed, low_memory, text, prompt_switch)
        latents = None
        if capture:
            latents = torch.empty(1, latent_frames, *self.preset.latent_shape, dtype=model.dtype, device=model.device)

            def keep(i, f, x0, _post=post):
                latents[:, f:f + x0.shape[1]] = x0
                return _post(i, f, x0) if _post is not None else None
            post = keep
        run = timed_blocks(source, inputs, post=post, finish=finish, stop=stop, max_blocks=max_blocks, around=around,
                           temporal=self.preset.temporal_factor)
        if len(run.blocks) > len(self.kinds.get(mode, [])):  # the longest run's labels (profile targets)
            self.kinds[mode] = [b["kind"] for b in run.blocks]
        del source
        return run, latents

    def summary(self, run) -> dict:
        """``bench.timing.summary`` at the preset's frame rate."""
        return summary(run, self.preset.fps)


def _diff(a: torch.Tensor, b: torch.Tensor, frames: int | None = None) -> dict:
    """Max |a - b|, max |a| and the relative RMS difference of two latent tensors (float32), over their first
    ``frames`` latent frames (default all)."""
    n = min(a.shape[1], b.shape[1]) if frames is None else frames
    a, b = a[:, :n].float(), b[:, :n].float()
    return {"max_abs_diff": (a - b).abs().max().item(), "max_abs_value": a.abs().max().item(),
            "relative_rms_diff": ((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt().clamp_min(1e-12)).item(),
            "latent_frames": n}


def _steady_fps(s: dict, key: str = "fps_dit") -> float | None:
    """Steady-block FPS of a summary (all blocks when the run never left the fill)."""
    group = s.get("steady") or s.get("all") or {}
    return group.get(key)


def _ratio(a, b) -> float | None:
    return a / b if a and b else None


# ---------------------------------------------------------------------------------------------------- stages

def _run_diff(ctx: Context, run_a, latents_a, run_b, latents_b) -> dict | None:
    """``_diff`` of two captured runs over the blocks both finished (None when one finished none)."""
    blocks = min(len(run_a.blocks), len(run_b.blocks))
    return _diff(latents_a, latents_b, blocks * ctx.preset.chunk_frames) if blocks else None


def stage_environment(ctx: Context, out: dict, deadline: Budget) -> None:
    """Device, versions, optional packages, numeric flags and the attention backend chosen per dtype."""
    out.update(environment(ctx.device))
    out["budget"] = {"seconds": ctx.budget.seconds, "left_s": ctx.budget.left(), "from": "process start" if not
                     ctx.smoke else "script start"}


def stage_attention(ctx: Context, out: dict, deadline: Budget) -> None:
    """SDPA kernel probe on a chunk's queries against a full window of keys; the fastest becomes the run's choice."""
    from .sdpa import probe
    if ctx.sdpa_default:
        out.update(chosen=None, note="--sdpa default: PyTorch's own kernel order")
        return
    if ctx.sdpa_forced:
        out.update(chosen=ctx.sdpa, note="forced with --sdpa")
        return
    p, cfg = ctx.preset, ctx.preset.model
    F = p.tokens_per_frame
    result = probe(ctx.device, p.torch_dtype, p.chunk_frames * F, 21 * F, cfg.num_heads, cfg.head_dim)
    out.update(result)
    ctx.sdpa = result["chosen"]


def stage_equality(ctx: Context, out: dict, deadline: Budget) -> None:
    """Tiny fp32 model: device vs CPU in every mode; released-style vs ours on the device (same noise)."""
    from pipeline.rollout import Rollout, RolloutConfig

    from .release_style import ReleaseStyleRollout
    device = ctx.device
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    tiny = get_preset("cpu")
    cpu_model = build_random_model(tiny.with_overrides(device="cpu"))
    dev_model = copy.deepcopy(cpu_model).to(device)
    cfg = cpu_model.config
    T = ctx.sizes["equality_frames"]
    out.update(device=str(device), latent_frames=T, modes={}, release_style={})

    def generate(cls, model, mode):
        g = torch.Generator().manual_seed(0)
        text = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
        noise = torch.randn(1, T, *tiny.latent_shape, generator=g)
        renoise = (lambda shape, dtype, dev, _g=g: torch.randn(shape, generator=_g, dtype=dtype).to(dev))
        return cls(model, RolloutConfig(), make_policy(mode)[0]).generate(text, noise.to(model.device), renoise).cpu()

    def compare(a, b):
        d = _diff(a, b)
        d["equal"] = d["max_abs_diff"] <= 1e-4 * max(1.0, d["max_abs_value"])
        return d
    try:
        for mode in MODES:
            out["modes"][mode] = compare(generate(Rollout, cpu_model, mode), generate(Rollout, dev_model, mode))
        for mode in BASELINE_MODES:
            out["release_style"][mode] = compare(generate(Rollout, dev_model, mode),
                                                 generate(ReleaseStyleRollout, dev_model, mode))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    out["all_equal"] = all(m["equal"] for group in ("modes", "release_style") for m in out[group].values())


def stage_fps(ctx: Context, out: dict, deadline: Budget) -> None:
    """Per mode, a 30 s video: DiT, then the VAE decode and the write of every block, timed per block."""
    p = ctx.preset
    ctx.dit()
    vae = ctx.vae()
    skipped = out.setdefault("skipped", {})
    write_reason = ctx.writer_unavailable()
    if vae is None:
        skipped["vae_decode"] = ctx.vae_error
    if write_reason:
        skipped["write"] = write_reason
    warm_post = decode_step(vae.stream_decoder()) if vae else None
    warm, _ = ctx.run(MODES[0], p.chunk_frames, post=warm_post)  # kernels, allocator, cuDNN
    out.update(model_build_s=dict(ctx.build_s), warmup_s=warm.wall_s, latent_frames=ctx.sizes["fps_frames"],
               post="dit + vae decode + write" if not write_reason else ("dit + vae decode" if vae else "dit only"),
               modes={})
    for k, mode in enumerate(MODES):
        share = Budget(max(0.0, deadline.left() - 2.0) / (len(MODES) - k))
        entry = out["modes"][mode] = {}
        tmp = writer = None
        post = finish = None
        if vae is not None:
            decoder = vae.stream_decoder()
            post = decode_step(decoder)
            if not write_reason:
                from media.video import Mp4Writer, shared_pool, to_uint8
                tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
                try:
                    writer = Mp4Writer(tmp / f"{mode}.mp4", p.width, p.height, p.fps, pool=shared_pool())
                    post, finish = write_step(decoder, writer, to_uint8), writer.close
                except Exception as exc:  # noqa: BLE001 - the write figure is optional
                    entry["write_error"] = f"{type(exc).__name__}: {exc}"
        try:
            run, _ = ctx.run(mode, ctx.sizes["fps_frames"], post=post, finish=finish, stop=share.stop(1.0))
        finally:
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.abort()  # a no-op after close()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        entry.update(summary=ctx.summary(run), blocks=run.blocks)
        if writer is not None:
            entry["written"] = {"frames_in_file": writer.frames_in_file, "fragments": writer.fragments,
                                "bytes": writer.size_bytes,
                                "write_s_total": sum(b.get("write_s", 0.0) for b in run.blocks) + run.finish_s}
        ctx.write()
    if vae is not None and not write_reason and deadline.left() > 5:  # decode alone, to split "+ VAE" from "+ write"
        run, _ = ctx.run("deep_sink_pc", ctx.sizes["vae_without_write_frames"],
                         post=decode_step(vae.stream_decoder()), stop=deadline.stop(1.0))
        out["vae_without_write"] = {"mode": "deep_sink_pc", "summary": ctx.summary(run)}


def stage_baseline(ctx: Context, out: dict, deadline: Budget) -> None:
    """The released-style rollout beside ours on identical inputs, DiT only: FPS, project/release ratio, diff."""
    from pipeline.rollout import Rollout

    from .release_style import ReleaseStyleRollout
    frames = ctx.sizes["baseline_frames"]
    ctx.run(BASELINE_MODES[0], ctx.preset.chunk_frames, source_cls=ReleaseStyleRollout)  # warm-up of its kernels
    out.update(latent_frames=frames, note="DiT only; same weights, inputs, noise draws and attention kernel; "
               "ratio = project FPS / released-style FPS (> 1: the project is faster)", modes={})
    for k, mode in enumerate(BASELINE_MODES):
        share = Budget(max(0.0, deadline.left() - 2.0) / (len(BASELINE_MODES) - k))
        order = (("release_style", ReleaseStyleRollout), ("project", Rollout))
        entry = out["modes"][mode] = {}
        runs = {}
        for name, cls in (order if k % 2 == 0 else order[::-1]):  # alternate which one runs first
            runs[name] = ctx.run(mode, frames, source_cls=cls, capture=True, stop=share.stop(1.0))
            entry[name] = ctx.summary(runs[name][0])
        entry["latents"] = _run_diff(ctx, *runs["project"], *runs["release_style"])
        entry["ratio_steady"] = _ratio(_steady_fps(entry["project"]), _steady_fps(entry["release_style"]))
        entry["ratio_all"] = _ratio(entry["project"].get("all", {}).get("fps_dit"),
                                    entry["release_style"].get("all", {}).get("fps_dit"))
        ctx.write()


def _timed_decode(ctx: Context, vae, latents: torch.Tensor, blocks: int) -> tuple[list[float], torch.Tensor]:
    """Stream-decode ``blocks`` blocks of ``latents`` with one fresh decoder: seconds per block, all frames."""
    from .clock import Clock
    clock = Clock(ctx.device)
    decoder = vae.stream_decoder()
    B = ctx.preset.chunk_frames
    marks, frames = [], []
    for j in range(blocks):
        m0 = clock.mark()
        frames.append(decoder.decode_chunk(latents[:, j * B:(j + 1) * B]))
        marks.append((m0, clock.mark()))
    clock.sync()
    return [clock.seconds(a, b) for a, b in marks], torch.cat(frames, dim=1)


def stage_vae(ctx: Context, out: dict, deadline: Budget) -> None:
    """Streaming decode eager vs channels-last vs compiled decoder: seconds per block (steady), frames vs eager."""
    from wan.vae import WanVAE

    from .vae import BenchVAE
    vae = ctx.vae()
    if vae is None:
        raise StageSkipped(ctx.vae_error)
    p = ctx.preset
    blocks = ctx.sizes["vae_blocks"]
    g = torch.Generator(device=ctx.device).manual_seed(4)
    latents = torch.randn(1, blocks * p.chunk_frames, *p.latent_shape, generator=g, device=ctx.device,
                          dtype=p.torch_dtype)
    mean, std = list(p.vae["latents_mean"]), list(p.vae["latents_std"])
    out.update(blocks=blocks, variants={}, skipped={})
    reference = None

    def measure(name, wan_vae):
        nonlocal reference
        t0 = time.perf_counter()
        first, _ = _timed_decode(ctx, wan_vae, latents, min(2, blocks))  # warm-up (compiles a compiled decoder)
        warm_s = time.perf_counter() - t0
        seconds, frames = _timed_decode(ctx, wan_vae, latents, blocks)
        entry = {"warmup_s": warm_s, "block_s": seconds, "steady_block_p50_s": sorted(seconds[1:] or seconds)[
            len(seconds[1:] or seconds) // 2], "first_block_s": seconds[0]}
        if reference is None:
            reference = frames
        entry["max_abs_diff_vs_eager"] = (frames - reference).abs().max().item()
        out["variants"][name] = entry
        ctx.write()

    measure("eager", vae.vae)
    cl = BenchVAE(p.vae, p.torch_dtype, p.device, channels_last=True)
    cl.autoencoder.load_state_dict(vae.autoencoder.state_dict())  # the same weights, channels-last
    measure("channels_last", cl.vae)
    compiled = (("compiled", vae.autoencoder), ("channels_last_compiled", cl.autoencoder))
    if ctx.smoke:
        for name, _ in compiled:
            out["skipped"][name] = ("smoke: Dynamo capture of the decoder takes seconds per graph on a CPU "
                                    "(tests/test_vae.py checks the compiled decoder)")
        return
    for name, model in compiled:
        if deadline.left() < 20:
            out["skipped"][name] = f"time budget ({deadline.left():.0f} s left of the stage)"
            continue
        wrapped = WanVAE(model, mean, std, channels_last=name.startswith("channels_last"))
        try:
            wrapped.compile_decoder(backend=ctx.compile_backend, mode=ctx.compile_mode)
            measure(name, wrapped)
        except Exception as exc:  # noqa: BLE001 - a compile failure leaves the eager figures standing
            out["skipped"][name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        finally:
            torch._dynamo.reset()
    del cl


def _uncompile(model) -> None:
    """Undo ``compile_blocks``: the blocks' own methods again (the compiled wrappers were instance attributes)."""
    for blk in model.blocks:
        for name in ("pre_attention", "post_attention"):
            blk.__dict__.pop(name, None)
    model.compiled = None


def stage_compile(ctx: Context, out: dict, deadline: Budget) -> None:
    """compile_blocks on/off, Deep Sink + PC on identical inputs (DiT only): compile time, FPS, difference."""
    model = ctx.dit()
    mode, frames = "deep_sink_pc", ctx.sizes["compile_frames"]
    out.update(mode=mode, latent_frames=frames, backend=ctx.compile_backend, compile_mode=ctx.compile_mode)
    eager, eager_latents = ctx.run(mode, frames, capture=True, stop=deadline.stop(1.0))
    out["eager"] = ctx.summary(eager)
    ctx.write()
    try:
        model.compile_blocks(backend=ctx.compile_backend, mode=ctx.compile_mode)
        t0 = time.perf_counter()
        ctx.run(mode, ctx.preset.chunk_frames)  # the first block compiles (one graph per part, all blocks)
        out["compile_s"] = time.perf_counter() - t0
        ctx.write()
        compiled, compiled_latents = ctx.run(mode, frames, capture=True, stop=deadline.stop(1.0))
        out["compiled"] = ctx.summary(compiled)
        out["latents"] = _run_diff(ctx, eager, eager_latents, compiled, compiled_latents)
        out["ratio_steady"] = _ratio(_steady_fps(out["compiled"]), _steady_fps(out["eager"]))
    finally:
        _uncompile(model)
        torch._dynamo.reset()


def stage_fp8(ctx: Context, out: dict, deadline: Budget) -> None:
    """FP8 block linears (torchao) vs bf16 on identical inputs, Deep Sink + PC, DiT only: FPS and difference."""
    from wan.quantize import convert_fp8_linear, fp8_unavailable
    reason = fp8_unavailable(ctx.device)
    if reason is not None:
        raise StageSkipped(reason)
    model = ctx.dit()
    mode, frames = "deep_sink_pc", ctx.sizes["fp8_frames"]
    out.update(mode=mode, latent_frames=frames)
    base, base_latents = ctx.run(mode, frames, capture=True, stop=deadline.stop(1.0))
    out["bf16"] = ctx.summary(base)
    ctx.write()
    fp8 = copy.deepcopy(model)
    try:
        t0 = time.perf_counter()
        out["conversion"] = convert_fp8_linear(fp8)
        out["conversion"]["seconds"] = time.perf_counter() - t0
        ctx.run(mode, ctx.preset.chunk_frames, model=fp8)  # warm-up
        run, latents = ctx.run(mode, frames, model=fp8, capture=True, stop=deadline.stop(1.0))
        out["fp8"] = ctx.summary(run)
        out["latents"] = _run_diff(ctx, base, base_latents, run, latents)
        out["ratio_steady"] = _ratio(_steady_fps(out["fp8"]), _steady_fps(out["bf16"]))
    finally:
        del fp8
        ctx.free()


def stage_profile(ctx: Context, out: dict, deadline: Budget) -> None:
    """torch.profiler top kernels of the first eviction block (Self Forcing) and compression block (DS + PC)."""
    from torch.profiler import ProfilerActivity, profile
    device = ctx.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for mode, event in (("self_forcing", "evict"), ("deep_sink_pc", "compress")):
        kinds = ctx.kinds.get(mode, [])
        target = kinds.index(event) if event in kinds else ctx.sizes["profile_target"]
        holder = {}

        @contextlib.contextmanager
        def profiled():
            """The profiler around one block, the device drained before it stops."""
            with profile(activities=activities) as prof:
                holder["prof"] = prof
                yield
                ctx.sync()

        def around(n, _target=target):
            return profiled() if n == _target else contextlib.nullcontext()
        run, _ = ctx.run(mode, (target + 1) * ctx.preset.chunk_frames, around=around, max_blocks=target + 1,
                         stop=deadline.stop(1.0))
        prof = holder.get("prof")
        if prof is None or len(run.blocks) <= target:
            out.setdefault("skipped", {})[mode] = f"stopped before block {target} ({run.stopped})"
            continue
        rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
        total = sum(getattr(e, key, 0) for e in prof.key_averages()) or 1
        out[mode] = {"block_index": target, "kind": run.blocks[target]["kind"], "time_key": key,
                     "total_ms": total / 1e3,
                     "top": [{"name": e.key, "calls": e.count, "self_ms": getattr(e, key, 0) / 1e3,
                              "share": getattr(e, key, 0) / total} for e in rows[:25]]}
        (ctx.out / f"profile_{mode}.txt").write_text(
            prof.key_averages().table(sort_by=key, row_limit=40) + "\n", encoding="utf-8")
        ctx.write()


class _IdsTokenizer:
    """Stands in for the UMT5 tokenizer (not shipped with random weights): fixed token ids, ``text_len`` long."""

    def __init__(self, vocab: int, seed: int):
        self.vocab, self.seed = vocab, seed

    def ids(self, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) [batch, length] of a 40-token prompt padded to ``length``."""
        n = min(40, length)
        ids = torch.zeros(batch, length, dtype=torch.long)
        ids[:, :n] = torch.randint(1, self.vocab, (batch, n), generator=torch.Generator().manual_seed(self.seed))
        mask = torch.zeros(batch, length, dtype=torch.long)
        mask[:, :n] = 1
        return ids, mask


def build_offloaded_encoder(spec: dict, dtype: torch.dtype, device, text_len: int):
    """A random-weight UMT5 encoder of ``spec``'s size on the CPU (built on meta, then materialised; weights are
    constants, which does not change the kernels) in ``WanTextEncoder(offload=True)``; the tokenizer (and with it
    the prompt cleaning, which needs ftfy) is replaced by fixed token ids."""
    from transformers import UMT5Config, UMT5EncoderModel

    from wan.text_encoder import WanTextEncoder

    class BenchEncoder(WanTextEncoder):
        """The offloaded encoder with fixed token ids instead of a tokenizer."""

        def tokenize(self, prompts):
            return self.tokenizer.ids(len(prompts), self.text_len)

    cfg = UMT5Config(**spec, feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False,
                     use_cache=False, tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = UMT5EncoderModel(cfg)
    finally:
        torch.set_default_dtype(prev)
    model = model.to_empty(device="cpu")  # uninitialised host memory in ``dtype``, filled below
    model.tie_weights()  # one embedding tensor again before filling
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0 if "layer_norm" in name else 0.02)
    encoder = BenchEncoder(model.eval().requires_grad_(False), _IdsTokenizer(spec["vocab_size"], 0), text_len,
                           device, offload=True)
    return encoder, sum(p.numel() for p in model.parameters())


def stage_low_memory(ctx: Context, out: dict, deadline: Budget) -> None:
    """Chunked noise, per-frame VAE decode, an offloaded real-size text encoder and a prompt switch mid-video."""
    from .clock import GpuMemory
    p = ctx.preset
    model = ctx.dit()
    vae = ctx.vae()
    device = model.device
    skipped = out.setdefault("skipped", {})
    if vae is None:
        skipped["vae_decode"] = ctx.vae_error
    encoder = None
    try:
        t0 = time.perf_counter()
        encoder, params = build_offloaded_encoder(ctx.encoder_spec, p.torch_dtype, device, model.config.text_len)
        out.update(encoder_parameters=params, encoder_dtype=str(p.torch_dtype), encoder_build_s=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - transformers missing or too old: random prompt embeddings instead
        skipped["text_encoder"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    gpu = GpuMemory(device)
    ctx.free()
    gpu.reset_peak()
    peaks = []

    def encode(prompt: str):
        if encoder is None:
            return None
        s0 = time.perf_counter()
        emb = encoder.encode(prompt).to(model.dtype)
        ctx.sync()
        peaks.append((gpu.peak(), gpu.reserved_peak()))
        return emb, time.perf_counter() - s0

    first = encode("a prompt")
    text = None
    if first is not None:
        text, out["first_encode_s"] = first
    chunks = ctx.sizes["lowmem_frames"] // p.chunk_frames
    switch_at = chunks // 2
    switches = out["switches"] = []

    def switch(i, f):
        """Encode a new prompt before chunk ``switch_at`` (timed on the host, including the weight copies)."""
        if i != switch_at:
            return None
        result = encode("another prompt")
        if result is None:  # no encoder: switch to other random embeddings
            cfg = model.config
            emb = torch.randn(1, cfg.text_len, cfg.text_dim, dtype=model.dtype, device=device)
            switches.append({"chunk": i, "encode_s": None})
            return emb
        switches.append({"chunk": i, "encode_s": result[1]})
        return result[0]

    post = decode_step(vae.stream_decoder(), per_frame=True) if vae is not None else None
    run, _ = ctx.run("deep_sink_pc", ctx.sizes["lowmem_frames"], post=post, low_memory=True, text=text,
                     prompt_switch=switch, stop=deadline.stop(1.0))
    s = ctx.summary(run)
    peak = max([s.get("peak_allocated_bytes", 0)] + [a for a, _ in peaks])
    reserved = max([s.get("peak_reserved_bytes", 0)] + [r for _, r in peaks])
    out.update(summary=s, peak_allocated_bytes=peak, peak_reserved_bytes=reserved, limit_bytes=LOW_MEMORY_LIMIT_BYTES,
               under_limit=reserved < LOW_MEMORY_LIMIT_BYTES,
               note="peak over the whole run including both prompt encodings (the encoder weights live on the CPU "
                    "and are streamed to the device one block at a time)")


def stage_long(ctx: Context, out: dict, deadline: Budget) -> None:
    """DS + PC, then Self Forcing, toward 5 min of video (DiT only) within the budget: memory at 30 s and the end."""
    p = ctx.preset
    ctx.dit()
    out.update(target_latent_frames=ctx.sizes["long_frames"], target_seconds=ctx.sizes["long_seconds"], modes={})
    at30 = p.latent_frames_for(30) // p.chunk_frames  # blocks in 30 s of video
    for mode, share in (("deep_sink_pc", 0.65), ("self_forcing", 1.0)):  # DS + PC first, most of the time
        left = deadline.left() - 2.0
        if left < 5:
            out.setdefault("skipped", {})[mode] = f"time budget ({deadline.left():.0f} s left)"
            continue
        run, _ = ctx.run(mode, ctx.sizes["long_frames"], stop=Budget(left * share).stop(0.0))
        blocks = run.blocks
        if not blocks:
            continue

        def memory(upto):
            part = blocks[:upto]
            return {"blocks": len(part), "video_seconds": sum(b["output_frames"] for b in part) / p.fps,
                    "peak_allocated_bytes": max(b["peak_allocated_bytes"] for b in part),
                    "peak_reserved_bytes": max(b["peak_reserved_bytes"] for b in part),
                    "allocated_bytes": part[-1]["allocated_bytes"]}
        end = memory(len(blocks))
        out["modes"][mode] = {"at_30s": memory(min(at30, len(blocks))), "at_end": end,
                              "reached_seconds": end["video_seconds"], "stopped": run.stopped,
                              "summary": ctx.summary(run), "allocated_per_block": [b["allocated_bytes"] for b in blocks]}
        ctx.write()


# name -> (function, at most this many seconds, skipped when fewer are left); caps leave room for the later stages
STAGES = {
    "environment": Stage(stage_environment, 30, 0),
    "attention": Stage(stage_attention, 20, 5),
    "equality": Stage(stage_equality, 30, 10),
    "fps": Stage(stage_fps, 130, 40),
    "baseline": Stage(stage_baseline, 55, 20),
    "vae": Stage(stage_vae, 45, 10),
    "compile": Stage(stage_compile, 75, 30),
    "fp8": Stage(stage_fp8, 35, 15),
    "profile": Stage(stage_profile, 25, 10),
    "low_memory": Stage(stage_low_memory, 50, 20),
    "long": Stage(stage_long, 1e9, 10),
}
GRACE_S = 15.0  # a stage past its cap by this much is stopped by the alarm


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise ``BudgetExceeded`` in this (main) thread after ``seconds``; a no-op where SIGALRM is not available."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    def ring(signum, frame):
        raise BudgetExceeded(f"stopped by the time budget after {seconds:.0f} s")
    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------------------- report

def _f(x, digits: int = 2, scale: float = 1.0) -> str:
    return "-" if x is None else f"{x * scale:.{digits}f}"


def markdown(results: dict) -> str:
    """A short human-readable summary of results.json."""
    stages = results["stages"]
    env = stages.get("environment", {}).get("result") or {}
    rt = results["runtime"]
    lines = [f"# bench.gpu on {env.get('device_name', '?')}", "", f"`{results['command']}`", "",
             f"torch {env.get('torch')}, CUDA {env.get('cuda')}; SDPA kernel {rt.get('sdpa')}; TF32 "
             f"{(env.get('numeric') or {}).get('matmul_allow_tf32')}; cudnn.benchmark {rt.get('cudnn_benchmark')}; "
             f"smoke: {results['smoke']}; ran {results.get('elapsed_s', 0):.0f} s of a {results['budget_s']:.0f} s "
             f"budget", ""]
    for name, stage in stages.items():
        why = stage.get("reason") or (stage["error"].strip().splitlines()[-1] if stage.get("error") else "")
        lines.append(f"- {name}: {stage['status']} in {stage.get('seconds', 0):.1f} s" + (f" ({why})" if why else ""))
    if results.get("skipped"):
        lines += ["", "Skipped:"] + [f"- {k}: {v}" for k, v in results["skipped"].items()]
    fps = (stages.get("fps") or {}).get("result") or {}
    if fps.get("modes"):
        lines += ["", f"## FPS ({fps.get('post')})", "",
                  "| mode | blocks | FPS DiT all / steady / fill | FPS with post all / steady | first frame s | "
                  "steady block p50 / p90 s (DiT) | peak alloc / reserved GB |", "|---|---|---|---|---|---|---|"]
        for mode, m in fps["modes"].items():
            s = m.get("summary") or {}
            if not s.get("blocks"):
                continue
            a, st, fl = s["all"], s.get("steady") or {}, s.get("fill") or {}
            lines.append(f"| {mode} | {s['blocks']} | {_f(a['fps_dit'])} / {_f(st.get('fps_dit'))} / "
                         f"{_f(fl.get('fps_dit'))} | {_f(a.get('fps_with_post'))} / {_f(st.get('fps_with_post'))} | "
                         f"{_f(s.get('first_frame_latency_s') or s.get('first_block_latency_s'), 3)} | "
                         f"{_f(st.get('dit_p50_s'), 3)} / {_f(st.get('dit_p90_s'), 3)} | "
                         f"{_f(s['peak_allocated_bytes'], 2, 1 / GB)} / {_f(s['peak_reserved_bytes'], 2, 1 / GB)} |")
    base = (stages.get("baseline") or {}).get("result") or {}
    if base.get("modes"):
        lines += ["", "## Project vs released-style loop, same GPU (DiT only)", "",
                  "| mode | project FPS steady | released-style FPS steady | project / release | max latent diff |",
                  "|---|---|---|---|---|"]
        for mode, m in base["modes"].items():
            if "project" not in m or "release_style" not in m:
                continue
            lines.append(f"| {mode} | {_f(_steady_fps(m['project']))} | {_f(_steady_fps(m['release_style']))} | "
                         f"{_f(m.get('ratio_steady'), 3)} | {_f((m.get('latents') or {}).get('max_abs_diff'), 4)} |")
    comp = (stages.get("compile") or {}).get("result") or {}
    if comp.get("compiled"):
        lines += ["", f"compile_blocks ({comp['backend']}): compile {_f(comp.get('compile_s'), 1)} s, steady FPS "
                  f"{_f(_steady_fps(comp['eager']))} eager -> {_f(_steady_fps(comp['compiled']))} compiled "
                  f"(x{_f(comp.get('ratio_steady'), 3)})"]
    fp8 = (stages.get("fp8") or {}).get("result") or {}
    if fp8.get("fp8"):
        lines += ["", f"FP8 linears: steady FPS {_f(_steady_fps(fp8['bf16']))} bf16 -> {_f(_steady_fps(fp8['fp8']))} "
                  f"fp8 (x{_f(fp8.get('ratio_steady'), 3)}), relative RMS latent diff "
                  f"{_f((fp8.get('latents') or {}).get('relative_rms_diff'), 4)}"]
    vae = (stages.get("vae") or {}).get("result") or {}
    if vae.get("variants"):
        lines += ["", "VAE decode per block (steady p50 s): " + ", ".join(
            f"{k} {_f(v['steady_block_p50_s'], 3)} (diff {_f(v['max_abs_diff_vs_eager'], 4)})"
            for k, v in vae["variants"].items())]
    return "\n".join(lines) + "\n"


def _collect_skipped(results: dict) -> dict:
    """Every skipped stage and part, flat: {"stage" or "stage.part": reason}."""
    out = {}
    for name, stage in results["stages"].items():
        if stage["status"] == "skipped":
            out[name] = stage.get("reason")
        for part, reason in ((stage.get("result") or {}).get("skipped") or {}).items():
            out[f"{name}.{part}"] = reason
    return out


def run(args) -> Path:
    """Run the stages; returns the output folder."""
    ctx = Context(args)
    if ctx.device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} sees no GPU; run on a GPU machine or pass --smoke")
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    out = args.out or RESULTS / (slug(device_name(ctx.device)) + ("-smoke" if ctx.smoke else ""))
    out.mkdir(parents=True, exist_ok=True)
    ctx.out = out
    p = ctx.preset
    results = {"schema": 2, "smoke": ctx.smoke, "budget_s": ctx.budget.seconds,
               "command": " ".join([Path(sys.executable).name, "-m", "bench.gpu", *args.argv]),
               "config": {"preset": p.name, "dtype": p.dtype, "height": p.height, "width": p.width,
                          "layers": p.model.num_layers, **ctx.sizes},
               "runtime": {"sdpa": ctx.sdpa, "sdpa_forced": ctx.sdpa_forced, "compile_backend": ctx.compile_backend,
                           "compile_mode": ctx.compile_mode, "compile_in_fps": False,
                           "cudnn_benchmark": torch.backends.cudnn.benchmark},
               "stages": {}, "skipped": {}}

    def write():
        """Write results.json and results.md now (after every stage and inside the long ones)."""
        results["skipped"] = _collect_skipped(results)
        results["elapsed_s"] = ctx.budget.seconds - ctx.budget.left()
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
        (out / "results.md").write_text(markdown(results), encoding="utf-8")
    ctx.write = write
    for name in args.stages or list(STAGES):
        stage = STAGES[name]
        left = ctx.budget.left()
        result: dict = {}
        entry = results["stages"][name] = {"status": "running", "seconds": 0.0, "result": result}
        if left < stage.min_s:
            entry.update(status="skipped", reason=f"time budget: {left:.0f} s left, the stage needs about "
                                                  f"{stage.min_s:.0f} s")
            write()
            continue
        cap = min(stage.cap_s, left)
        logger.info("stage %s (%.0f s of the budget left, at most %.0f s)", name, left, cap)
        t0 = time.perf_counter()
        try:
            with alarm(min(left, cap + GRACE_S)), backend_context(ctx.sdpa if name != "attention" else None):
                stage.fn(ctx, result, Budget(cap))
            entry["status"] = "ok"
        except StageSkipped as exc:
            entry.update(status="skipped", reason=str(exc))
        except BudgetExceeded as exc:
            entry.update(status="stopped", reason=str(exc))
        except Exception:  # noqa: BLE001 - record and go on with the next stage
            entry.update(status="failed", error=traceback.format_exc())
            logger.error("stage %s failed:\n%s", name, entry["error"])
        entry["seconds"] = time.perf_counter() - t0
        results["runtime"]["sdpa"] = ctx.sdpa
        write()
    return out


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, every stage, seconds (tests)")
    p.add_argument("--device", default=None, help="default cuda (cpu with --smoke)")
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"wall-clock budget from the process start (default {DEFAULT_BUDGET_S:.0f}: under 8 minutes; "
                        f"smoke: 240 from the script start)")
    p.add_argument("--stages", nargs="+", default=None, help=f"subset of stages, any of {', '.join(STAGES)}")
    p.add_argument("--sdpa", default="auto", choices=["auto", "default", *SDPA_NAMES],
                   help="SDPA kernel: auto = the fastest in the probe, default = PyTorch's own order, or one kernel")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode of the compile and vae stages")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True (recorded)")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/<device name>/")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """CLI entry point."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = argv
    bad = [s for s in args.stages or [] if s not in STAGES]
    if bad:
        sys.stderr.write(f"error: --stages {bad}: use any of {', '.join(STAGES)}\n")
        return 2
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    threads = torch.get_num_threads()
    try:
        out = run(args)
    except RuntimeError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    finally:
        torch.set_num_threads(threads)  # --smoke lowers it; leave the caller's setting as it was
    sys.stdout.write(f"{out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
