"""One GPU script that measures everything in under 8 minutes: ``python -m bench.gpu`` (``--smoke``: tiny, CPU).

Stages, in order, each written to ``results.json`` as soon as it ends (a stage that fails records its error and the
next one runs; a stage that would pass the time budget stops early and says how far it got):

1. ``environment``: device, versions, attention backend per dtype, flash packages.
2. ``equality``: the tiny model in fp32 (TF32 off) on the device vs on the CPU, every mode, 10 chunks.
3. ``fps``: the real-size model (Wan2.1-T2V-1.3B config, random weights built on the device, bf16, 480x832) per
   mode over a 30 s video: per chunk the DiT, the streaming VAE decode and the encode+write of the frames (media
   writer, optional) timed apart; FPS of DiT only / + VAE / + write, first-chunk latency, p50/p90 chunk time, peak
   memory allocated/reserved.
4. ``profile``: torch.profiler top kernels of one Self Forcing eviction chunk and one PC compression chunk.
5. ``low_memory``: chunked noise, VAE one latent frame per call, a real-size random UMT5 encoder offloaded to the
   CPU (``WanTextEncoder(offload=True)``) encoding the first prompt and a switch mid-video; peak memory vs 24 GB.
6. ``long``: Deep Sink + PC (then Self Forcing if time remains) toward 5 min of video, DiT only: memory per chunk,
   figures at 30 s and at the end (``reached_seconds``).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from .clock import Clock, GpuMemory
from .measure import noise_source
from .modes import label_chunk, make_policy
from .presets import MODES, TINY_DIT, build_random_model, get_preset

logger = logging.getLogger("bench.gpu")
RESULTS = Path(__file__).resolve().parent / "results"
GB = 1e9
LOW_MEMORY_LIMIT_BYTES = 24 * 2 ** 30
# Wan2.1's umt5-xxl encoder (models_t5_umt5-xxl-enc-bf16.pth)
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32)
UMT5_TINY = dict(vocab_size=1000, d_model=TINY_DIT["text_dim"], d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=32)


class Budget:
    """Wall-clock budget of the whole script."""

    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        """Seconds left."""
        return self.seconds - (time.perf_counter() - self.t0)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, every stage, seconds (tests)")
    p.add_argument("--device", default=None, help="default cuda (cpu with --smoke)")
    p.add_argument("--budget-s", type=float, default=None, help="wall-clock budget of the stages (default 420: with the interpreter and CUDA start, under 8 min; "
                   "smoke 300)")
    p.add_argument("--stages", nargs="+", default=None, help="subset of stages to run (default all)")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/<device name>/")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def plan(args) -> dict:
    """Sizes of every stage: real size on a GPU, or tiny on the CPU with ``--smoke``."""
    if args.smoke:
        preset = get_preset("cpu").with_overrides(device=args.device or "cpu")
        return dict(preset=preset, fps_frames=24, long_frames=30, long_seconds=None, lowmem_frames=12,
                    encoder=UMT5_TINY, budget_s=args.budget_s or 300)
    preset = get_preset("real").with_overrides(device=args.device or "cuda")
    return dict(preset=preset, fps_frames=preset.latent_frames_for(30), long_frames=preset.latent_frames_for(300),
                long_seconds=300, lowmem_frames=24, encoder=UMT5_XXL, budget_s=args.budget_s or 420)


# ---------------------------------------------------------------------------------------------------- stages

def stage_environment(ctx: dict) -> dict:
    """Device, versions and the attention backend chosen per dtype."""
    from .run import environment
    return environment(torch.device(ctx["preset"].device))


def stage_equality(ctx: dict) -> dict:
    """Tiny fp32 model: device rollout vs CPU rollout in every mode (same noise), max |diff| per mode."""
    from pipeline.rollout import Rollout, RolloutConfig, RolloutInputs
    device = torch.device(ctx["preset"].device)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    tiny = get_preset("cpu")
    cpu_model = build_random_model(tiny.with_overrides(device="cpu"))
    dev_model = copy.deepcopy(cpu_model).to(device)
    cfg = cpu_model.config
    out = {"device": str(device), "latent_frames": 30, "modes": {}}
    try:
        for mode in MODES:
            results = []
            for model in (cpu_model, dev_model):
                g = torch.Generator().manual_seed(0)
                text = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
                noise = torch.randn(1, 30, *tiny.latent_shape, generator=g)
                renoise = (lambda shape, dtype, dev, _g=g: torch.randn(shape, generator=_g, dtype=dtype).to(dev))
                pipe = Rollout(model, RolloutConfig(), make_policy(mode)[0])
                results.append(pipe.generate(text, noise.to(model.device), renoise).cpu())
            diff = (results[0] - results[1]).abs().max().item()
            scale = results[0].abs().max().item()
            out["modes"][mode] = {"max_abs_diff": diff, "max_abs_value": scale, "equal": diff <= 1e-4 * max(1, scale)}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    out["all_equal"] = all(m["equal"] for m in out["modes"].values())
    return out


def _models(ctx: dict):
    """The real-size (or smoke) DiT and VAE, built once on the device."""
    if "model" not in ctx:
        from .vae import BenchVAE
        preset = ctx["preset"]
        t0 = time.perf_counter()
        ctx["model"] = build_random_model(preset)
        ctx["vae"] = BenchVAE(preset.vae, preset.torch_dtype, preset.device)
        ctx["build_s"] = time.perf_counter() - t0
    return ctx["model"], ctx["vae"]


def open_writer(path: Path, width: int, height: int, fps: float):
    """A streaming video writer from ``media`` (its public API: ``append(uint8 [n, H, W, 3])``, ``close()``) and a
    frame converter ``[n, 3, H, W] in [-1, 1] -> uint8 host array``; raises if the media layer is unavailable."""
    from media.video import Mp4Writer, to_uint8
    return Mp4Writer(path, width, height, fps), to_uint8


def _rollout(ctx: dict, mode: str, latent_frames: int, decode: bool, write: bool, low_memory: bool = False,
             prompt_switch=None, text=None, deadline: Budget | None = None, margin_s: float = 0.0) -> dict:
    """One timed rollout: per chunk DiT / VAE / write seconds (device events), kinds and memory."""
    from pipeline.rollout import Rollout, LazyNoise, RolloutConfig
    preset = ctx["preset"]
    model, vae = _models(ctx)
    device = model.device
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the previous rollout's cache must not count in this one's reserved peak
    pipe = Rollout(model, RolloutConfig(), make_policy(mode)[0])
    cfg = model.config
    clock, gpu = Clock(device), GpuMemory(device)
    if text is None:
        text = torch.randn(1, cfg.text_len, cfg.text_dim, dtype=model.dtype, device=device)
    if low_memory:
        noise = LazyNoise(1, preset.latent_shape, noise_source(device, 1), model.dtype, device, latent_frames)
    else:
        noise = torch.randn(1, latent_frames, *preset.latent_shape, dtype=model.dtype, device=device)
    decoder = vae.stream_decoder() if decode else None
    writer = convert = None
    tmp = None
    write_error = None
    if write:
        tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
        try:
            writer, convert = open_writer(tmp / f"{mode}.mp4", preset.width, preset.height, preset.fps)
        except Exception as exc:  # noqa: BLE001 - the write stage is optional (media layer replaced concurrently)
            write_error = f"{type(exc).__name__}: {exc}"
    raw, stopped = [], False
    clock.sync()
    gpu.reset_peak()
    t0 = time.perf_counter()
    start = clock.mark()
    it = pipe.frames(RolloutInputs(text, noise, noise_source(device, 2), prompt_switch=prompt_switch))
    try:
        while True:
            if deadline is not None and deadline.left() < margin_s:
                stopped = True
                break
            before = pipe.kv.layers[0].n if raw else 0
            m0 = clock.mark()
            try:
                i, f, x0 = next(it)
            except StopIteration:
                break
            m1 = clock.mark()
            frames = None
            if decoder is not None:
                parts = [x0[:, j:j + 1] for j in range(x0.shape[1])] if low_memory else [x0]
                for part in parts:
                    frames = decoder.decode_chunk(part)  # [1, n, 3, H, W]
                    if writer is not None:
                        writer.append(convert(frames[0]))
            m2 = clock.mark()
            raw.append((i, x0.shape[1], m0, m1, m2, before, pipe.kv.layers[0].n, gpu.allocated(), gpu.peak(),
                        gpu.reserved_peak()))
    finally:
        it.close()
        if writer is not None:
            try:
                writer.close()
            except Exception as exc:  # noqa: BLE001
                write_error = f"{type(exc).__name__}: {exc}"
        clock.sync()
        wall = time.perf_counter() - t0
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    F = pipe.kv.tokens_per_frame
    chunks = []
    for i, n, m0, m1, m2, before, after, alloc, peak, reserved in raw:
        chunks.append({"index": i, "kind": label_chunk(before, after, n * F, mode),
                       "dit_s": clock.seconds(m0, m1), "post_s": clock.seconds(m1, m2),
                       "allocated_bytes": alloc, "peak_allocated_bytes": peak, "peak_reserved_bytes": reserved})
    first_event = next((c["index"] for c in chunks if c["kind"] != "normal"), len(chunks))
    for c in chunks[:first_event]:
        c["kind"] = "fill"
    out = {"mode": mode, "latent_frames_asked": latent_frames, "chunks_done": len(chunks), "stopped_by_budget": stopped,
           "wall_s": wall, "chunks": chunks}
    if chunks:
        out["first_chunk_latency_s"] = clock.seconds(start, raw[0][3])
        out["first_chunk_latency_with_post_s"] = clock.seconds(start, raw[0][4])
    if write:
        out["write_error"] = write_error
    return out


def _pct(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of ``values``."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def summarise(run: dict, preset, post: str) -> dict:
    """FPS (DiT only and with the post-processing ``post``), p50/p90 chunk times, memory peaks of a rollout."""
    chunks = run["chunks"]
    if not chunks:
        return {"chunks": 0}
    frames = preset.pixel_frames(len(chunks) * preset.chunk_frames)
    dit = [c["dit_s"] for c in chunks]
    full = [c["dit_s"] + c["post_s"] for c in chunks]
    later_dit, later_full = dit[1:] or dit, full[1:] or full
    return {
        "chunks": len(chunks), "output_frames": frames,
        "video_seconds": frames / preset.fps,
        "fps_dit_only": frames / sum(dit), f"fps_dit_{post}": frames / sum(full),
        "first_chunk_latency_s": run.get("first_chunk_latency_s"),
        f"first_chunk_latency_with_{post}_s": run.get("first_chunk_latency_with_post_s"),
        "chunk_dit_p50_s": statistics.median(later_dit), "chunk_dit_p90_s": _pct(later_dit, 0.9),
        f"chunk_dit_{post}_p50_s": statistics.median(later_full), f"chunk_dit_{post}_p90_s": _pct(later_full, 0.9),
        "kinds": sorted({c["kind"] for c in chunks}),
        "peak_allocated_bytes": max(c["peak_allocated_bytes"] for c in chunks),
        "peak_reserved_bytes": max(c["peak_reserved_bytes"] for c in chunks),
    }


def stage_fps(ctx: dict) -> dict:
    """Per mode, a 30 s video: DiT, + VAE decode, + encode and write, timed per chunk."""
    preset = ctx["preset"]
    _models(ctx)
    warm = _rollout(ctx, MODES[0], preset.chunk_frames, decode=True, write=False)  # kernels, allocator, cuDNN
    out = {"model_build_s": ctx["build_s"], "warmup_s": warm["wall_s"], "modes": {}}
    per_mode = max(0.0, (ctx["budget"].left() - 150) / len(MODES))  # leave room for the later stages
    for mode in MODES:
        deadline = Budget(per_mode)
        run = _rollout(ctx, mode, ctx["fps_frames"], decode=True, write=True, deadline=deadline, margin_s=2.0)
        summary = summarise(run, preset, "vae_write")
        ctx.setdefault("kinds", {})[mode] = [c["kind"] for c in run["chunks"]]
        out["modes"][mode] = {"summary": summary, "write_error": run.get("write_error"),
                              "stopped_by_budget": run["stopped_by_budget"], "chunks": run["chunks"]}
        ctx["write"](ctx)
    # VAE decode alone (without the writer) on one mode, to split "+ VAE" from "+ write"
    run = _rollout(ctx, "deep_sink_pc", min(ctx["fps_frames"], 10 * preset.chunk_frames), decode=True, write=False)
    out["vae_without_write"] = {"mode": "deep_sink_pc", "summary": summarise(run, preset, "vae")}
    return out


def stage_profile(ctx: dict) -> dict:
    """torch.profiler top kernels of the first eviction chunk (Self Forcing) and compression chunk (DS + PC)."""
    from torch.profiler import ProfilerActivity, profile

    from pipeline.rollout import Rollout, RolloutConfig
    preset = ctx["preset"]
    model, _ = _models(ctx)
    device = model.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    out = {}
    for mode, event in (("self_forcing", "evict"), ("deep_sink_pc", "compress")):
        kinds = ctx.get("kinds", {}).get(mode, [])
        target = kinds.index(event) if event in kinds else 7  # 7: the 21-frame window fills after 7 chunks of 3
        pipe = Rollout(model, RolloutConfig(), make_policy(mode)[0])
        cfg = model.config
        text = torch.randn(1, cfg.text_len, cfg.text_dim, dtype=model.dtype, device=device)
        noise = torch.randn(1, (target + 1) * preset.chunk_frames, *preset.latent_shape, dtype=model.dtype,
                            device=device)
        it = pipe.frames(RolloutInputs(text, noise, noise_source(device, 3)))
        for _ in range(target):
            next(it)
        before = pipe.kv.layers[0].n
        with profile(activities=activities) as prof:
            next(it)
            if device.type == "cuda":
                torch.cuda.synchronize()
        kind = label_chunk(before, pipe.kv.layers[0].n, preset.chunk_frames * pipe.kv.tokens_per_frame, mode)
        it.close()
        rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
        total = sum(getattr(e, key, 0) for e in prof.key_averages()) or 1
        out[mode] = {"chunk_index": target, "kind": kind, "time_key": key, "total_ms": total / 1e3,
                     "top": [{"name": e.key, "calls": e.count, "self_ms": getattr(e, key, 0) / 1e3,
                              "share": getattr(e, key, 0) / total} for e in rows[:25]]}
        (ctx["out"] / f"profile_{mode}.txt").write_text(
            prof.key_averages().table(sort_by=key, row_limit=40) + "\n", encoding="utf-8")
    return out


class _IdsTokenizer:
    """Stands in for the UMT5 tokenizer (not shipped with random weights): fixed token ids, ``text_len`` long."""

    def __init__(self, vocab: int, seed: int):
        self.vocab, self.seed = vocab, seed

    def __call__(self, text, padding=None, max_length=None, truncation=None, add_special_tokens=True,
                 return_attention_mask=True, return_tensors=None):
        """Same call shapes as a Hugging Face tokenizer: ids of a 40-token prompt, padded to ``max_length``."""
        if return_tensors is None:
            return {"input_ids": list(range(min(40, max_length or 40)))}
        batch, n = len(text), min(40, max_length)
        ids = torch.zeros(batch, max_length, dtype=torch.long)
        ids[:, :n] = torch.randint(1, self.vocab, (batch, n), generator=torch.Generator().manual_seed(self.seed))
        mask = torch.zeros(batch, max_length, dtype=torch.long)
        mask[:, :n] = 1
        return {"input_ids": ids, "attention_mask": mask}


def build_offloaded_encoder(spec: dict, dtype: torch.dtype, device, text_len: int):
    """A random-weight UMT5 encoder of ``spec``'s size on the CPU (built on meta, then materialised; weights are
    constants, which does not change the kernels) wrapped in ``WanTextEncoder(offload=True)``."""
    from transformers import UMT5Config, UMT5EncoderModel

    from wan.text_encoder import WanTextEncoder
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
    encoder = WanTextEncoder(model.eval().requires_grad_(False), _IdsTokenizer(spec["vocab_size"], 0), text_len,
                             device, offload=True)
    return encoder, sum(p.numel() for p in model.parameters())


def stage_low_memory(ctx: dict) -> dict:
    """Chunked noise, per-frame VAE decode, an offloaded real-size text encoder and a prompt switch mid-video."""
    preset = ctx["preset"]
    model, _ = _models(ctx)
    device = model.device
    t0 = time.perf_counter()
    encoder, params = build_offloaded_encoder(ctx["encoder"], preset.torch_dtype, device, model.config.text_len)
    build_s = time.perf_counter() - t0
    gpu = GpuMemory(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    gpu.reset_peak()
    clock = Clock(device)
    t1 = time.perf_counter()
    text = encoder.encode("a prompt").to(model.dtype)
    clock.sync()
    first_encode_s = time.perf_counter() - t1
    chunks = ctx["lowmem_frames"] // preset.chunk_frames
    switch_at = chunks // 2
    switches = []

    def switch(i, f):
        """Encode a new prompt before chunk ``switch_at`` (timed on the host, including the weight copies)."""
        if i != switch_at:
            return None
        s0 = time.perf_counter()
        emb = encoder.encode("another prompt").to(model.dtype)
        clock.sync()
        switches.append({"chunk": i, "encode_s": time.perf_counter() - s0})
        return emb

    run = _rollout(ctx, "deep_sink_pc", ctx["lowmem_frames"], decode=True, write=False, low_memory=True,
                   prompt_switch=switch, text=text)
    peak = max([gpu.peak()] + [c["peak_allocated_bytes"] for c in run["chunks"]])
    reserved = max([gpu.reserved_peak()] + [c["peak_reserved_bytes"] for c in run["chunks"]])
    return {"encoder_parameters": params, "encoder_dtype": str(preset.torch_dtype), "encoder_build_s": build_s,
            "first_encode_s": first_encode_s, "switches": switches, "summary": summarise(run, preset, "vae"),
            "peak_allocated_bytes": peak, "peak_reserved_bytes": reserved,
            "limit_bytes": LOW_MEMORY_LIMIT_BYTES, "under_limit": reserved < LOW_MEMORY_LIMIT_BYTES,
            "note": "peak over the whole run including both prompt encodings (the encoder weights live on the CPU)"}


def stage_long(ctx: dict) -> dict:
    """DS + PC, then Self Forcing, toward 5 min of video (DiT only) within the budget: memory at 30 s and at the end."""
    preset = ctx["preset"]
    _models(ctx)
    out = {"target_latent_frames": ctx["long_frames"], "target_seconds": ctx["long_seconds"], "modes": {}}
    at30 = preset.latent_frames_for(30) // preset.chunk_frames  # chunks in 30 s of video
    for mode, share in (("deep_sink_pc", 0.65), ("self_forcing", 1.0)):  # DS + PC first, most of the time
        left = ctx["budget"].left() - 10.0
        if left < 10:
            break
        run = _rollout(ctx, mode, ctx["long_frames"], decode=False, write=False, deadline=Budget(left * share),
                       margin_s=0.0)
        chunks = run["chunks"]
        if not chunks:
            continue

        def memory(upto):
            part = chunks[:upto]
            return {"chunks": len(part), "video_seconds": preset.pixel_frames(len(part) * preset.chunk_frames) /
                    preset.fps, "peak_allocated_bytes": max(c["peak_allocated_bytes"] for c in part),
                    "peak_reserved_bytes": max(c["peak_reserved_bytes"] for c in part),
                    "allocated_bytes": part[-1]["allocated_bytes"]}
        out["modes"][mode] = {"at_30s": memory(min(at30, len(chunks))), "at_end": memory(len(chunks)),
                              "reached_seconds": memory(len(chunks))["video_seconds"],
                              "stopped_by_budget": run["stopped_by_budget"],
                              "summary": summarise(run, preset, "none"),
                              "allocated_per_chunk": [c["allocated_bytes"] for c in chunks]}
        ctx["write"](ctx)
    return out


STAGES = {"environment": stage_environment, "equality": stage_equality, "fps": stage_fps,
          "profile": stage_profile, "low_memory": stage_low_memory, "long": stage_long}


# ---------------------------------------------------------------------------------------------------- report

def markdown(results: dict) -> str:
    """A short human-readable summary of results.json."""
    env = results["stages"].get("environment", {}).get("result") or {}
    lines = [f"# bench.gpu on {env.get('device_name', '?')}", "", f"`{results['command']}`", "",
             f"torch {env.get('torch')}, CUDA {env.get('cuda')}, attention backends "
             f"{env.get('attention_backend')}; smoke: {results['smoke']}", ""]
    for name, stage in results["stages"].items():
        lines.append(f"- {name}: {stage['status']} in {stage['seconds']:.1f} s" +
                     (f" ({stage['error'].splitlines()[-1]})" if stage.get("error") else ""))
    fps = (results["stages"].get("fps") or {}).get("result")
    if fps:
        lines += ["", "| mode | chunks | FPS DiT | FPS +VAE+write | first chunk s | p50 / p90 chunk s (DiT) | "
                      "peak alloc / reserved GB |", "|---|---|---|---|---|---|---|"]
        for mode, m in fps["modes"].items():
            s = m["summary"]
            if not s.get("chunks"):
                continue
            lines.append(f"| {mode} | {s['chunks']} | {s['fps_dit_only']:.2f} | {s['fps_dit_vae_write']:.2f} | "
                         f"{s['first_chunk_latency_s']:.3f} | {s['chunk_dit_p50_s']:.3f} / "
                         f"{s['chunk_dit_p90_s']:.3f} | {s['peak_allocated_bytes'] / GB:.2f} / "
                         f"{s['peak_reserved_bytes'] / GB:.2f} |")
    return "\n".join(lines) + "\n"


def run(args) -> Path:
    """Run the stages; returns the output folder."""
    from .run import _slug, device_name
    ctx = plan(args)
    preset = ctx["preset"]
    device = torch.device(preset.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} sees no GPU; run on a GPU machine or pass --smoke")
    ctx["budget"] = Budget(ctx["budget_s"])
    out = args.out or RESULTS / (_slug(device_name(device)) + ("-smoke" if args.smoke else ""))
    out.mkdir(parents=True, exist_ok=True)
    ctx["out"] = out
    results = {"schema": 1, "smoke": bool(args.smoke), "budget_s": ctx["budget_s"],
               "command": " ".join([sys.executable, "-m", "bench.gpu", *args.argv]),
               "config": {"preset": preset.name, "dtype": preset.dtype, "height": preset.height,
                          "width": preset.width, "layers": preset.model.num_layers,
                          "fps_latent_frames": ctx["fps_frames"], "long_latent_frames": ctx["long_frames"]},
               "stages": {}}

    def write(_ctx=None):
        """Write results.json and results.md now (called after every stage and every long mode)."""
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
        (out / "results.md").write_text(markdown(results), encoding="utf-8")
    ctx["write"] = write
    for name in args.stages or list(STAGES):
        t0 = time.perf_counter()
        entry = results["stages"][name] = {"status": "running", "seconds": 0.0}
        logger.info("stage %s (%.0f s of the budget left)", name, ctx["budget"].left())
        try:
            entry["result"] = STAGES[name](ctx)
            entry["status"] = "ok"
        except Exception:  # noqa: BLE001 - record and go on with the next stage
            entry["status"] = "failed"
            entry["error"] = traceback.format_exc()
            logger.error("stage %s failed:\n%s", name, entry["error"])
        entry["seconds"] = time.perf_counter() - t0
        write()
    return out


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
    try:
        out = run(args)
    except RuntimeError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(f"{out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
