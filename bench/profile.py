"""Where the time of a chunk goes: exclusive wall time per category over a rollout (CPU; synchronous kernels).

``python -m bench.profile --preset cpu --mode deep_sink_pc`` wraps the model's attention, linear layers, norms,
RoPE (queries / cached keys / PC scoring), cache stage / gather, policy hooks, scheduler and VAE with timers
(innermost category gets the time) and reports milliseconds per chunk for normal and cache-event chunks, plus the
number of ATen operators per DiT call (the launch count a GPU pays in eager mode).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .measure import random_inputs
from .modes import available_modes, make_policy
from .presets import build_random_model, get_preset
from .timing import decode_step, timed_blocks

logger = logging.getLogger("bench.profile")


class CategoryTimer:
    """Exclusive wall time per category: nested timed calls subtract from their parent."""

    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[list] = []  # [name, start, child time]

    def push(self, name: str) -> None:
        """Enter a timed region."""
        self.stack.append([name, time.perf_counter(), 0.0])

    def pop(self) -> None:
        """Leave the innermost timed region."""
        name, start, child = self.stack.pop()
        total = time.perf_counter() - start
        self.totals[name] += total - child
        if self.stack:
            self.stack[-1][2] += total

    def parent(self) -> str | None:
        """Name of the innermost open region."""
        return self.stack[-1][0] if self.stack else None

    def take(self) -> dict[str, float]:
        """Totals so far, then reset."""
        out, self.totals = dict(self.totals), defaultdict(float)
        return out


@contextlib.contextmanager
def instrumented(timer: CategoryTimer):
    """Patch the model, cache, policy, scheduler and VAE entry points with the timer while the block runs."""
    import wan.causal_model as cm
    from pipeline import kv_cache
    from pipeline.scheduler import FlowMatchScheduler
    from wan.rope import Rotation
    from wan.vae import StreamDecoder

    def timed(fn, name):
        def wrapper(*args, **kwargs):
            label = name(timer.parent(), args) if callable(name) else name
            timer.push(label)
            try:
                return fn(*args, **kwargs)
            finally:
                timer.pop()
        return wrapper

    def rope_name(parent, args):
        if args[0].first_pair != 0:
            return "rope spatial"
        return {"cache update": "rope time: cached keys", "policy event": "rope time: PC scoring"}.get(
            parent, "rope time: queries")

    def attention_name(parent, args):
        return "attention: cross" if parent == "cross-attention block" else "attention: self"

    patches = [
        (cm, "attention", attention_name),
        (cm.CrossAttention, "forward", "cross-attention block"),
        (torch.nn.Linear, "forward", "linear"),
        (cm.RMSNorm, "forward", "norms"), (cm.LayerNorm, "forward", "norms"),
        (Rotation, "apply", rope_name), (Rotation, "__init__", "rope tables (cos/sin)"),
        (kv_cache.KVCache, "update", "cache update"),
        (kv_cache.LayerKVCache, "stage", "cache stage"), (kv_cache.LayerKVCache, "keep", "cache gather (keep)"),
        (FlowMatchScheduler, "flow_to_x0", "scheduler"), (FlowMatchScheduler, "add_noise", "scheduler"),
        (StreamDecoder, "decode_chunk", "vae decode"),
    ]
    for cls in {type(make_policy(m)[0]) for m in available_modes()}:
        patches += [(cls, "observe_queries", "policy observe"), (cls, "plan", "policy event")]
    saved = []
    for owner, attr, name in patches:
        original = owner.__dict__.get(attr)
        if original is None:  # inherited: patch the defining class instead
            continue
        saved.append((owner, attr, original))
        setattr(owner, attr, timed(original, name))
    try:
        yield
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


class OpCounter(TorchDispatchMode):
    """Counts ATen operator calls (each is one kernel launch or more on a GPU in eager mode), per timer category."""

    def __init__(self, timer: CategoryTimer):
        super().__init__()
        self.timer = timer
        self.count = 0
        self.by_category: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Count the operator under the innermost timer category, then run it."""
        self.count += 1
        self.by_category[self.timer.parent() or "other"] += 1
        return func(*args, **(kwargs or {}))


def profile(preset, mode: str, latent_frames: int, decode: bool = True) -> dict:
    """Per-chunk exclusive milliseconds per category (normal vs event chunks) and ATen ops per DiT call."""
    from pipeline.rollout import Rollout, RolloutConfig

    from .vae import BenchVAE
    model = build_random_model(preset)
    vae = BenchVAE(preset.vae, preset.torch_dtype, preset.device) if decode else None
    timer = CategoryTimer()
    per_block: list[dict] = []

    @contextlib.contextmanager
    def categories(n):
        """Around one block: start the category totals afresh, keep them when the block is done."""
        timer.take()
        yield
        per_block.append(timer.take())

    with instrumented(timer):
        pipe = Rollout(model, RolloutConfig(), make_policy(mode)[0])
        inputs = random_inputs(model, preset.latent_shape, latent_frames)
        post = decode_step(vae.stream_decoder(), to_host=False) if vae else None
        run = timed_blocks(pipe, inputs, post=post, around=categories)
        per_kind: dict[str, list[dict]] = defaultdict(list)
        for block, parts in list(zip(run.blocks, per_block))[1:]:  # the first also encodes the prompt and allocates
            total = block["dit_s"] + block["post_s"]
            parts["other (modulation, embeddings, unpatchify, Python)"] = total - sum(parts.values())
            per_kind["normal" if block["kind"] == "fill" else block["kind"]].append(parts)
        counter = OpCounter(timer)
        B = pipe.config.num_frame_per_block
        t = pipe.timesteps[:1].to(model.device).expand(1, B)
        text_kv = model.encode_text(inputs.prompt_embeds)
        pipe.kv.begin_chunk(latent_frames, B)
        with torch.no_grad(), counter:
            model(inputs.noise[:, :B].to(model.device), t, text_kv, pipe.kv, start_frame=latent_frames)
    layers = preset.model.num_layers
    out = {"mode": mode, "latent_frames": latent_frames, "aten_ops_per_dit_call": counter.count,
           "aten_ops_per_layer_call": counter.count / layers,
           "aten_ops_per_layer_call_by_category": {k: v / layers for k, v in sorted(
               counter.by_category.items(), key=lambda kv: -kv[1])}, "chunks": {}}
    for kind, rows in per_kind.items():
        keys = sorted({k for r in rows for k in r})
        mean = {k: 1e3 * sum(r.get(k, 0.0) for r in rows) / len(rows) for k in keys}
        out["chunks"][kind] = {"count": len(rows), "ms_per_chunk": dict(sorted(mean.items(), key=lambda kv: -kv[1])),
                               "total_ms": sum(mean.values())}
    return out


def table(result: dict) -> str:
    """Markdown: one row per category, ms per chunk and share, normal and event chunks side by side."""
    kinds = list(result["chunks"])
    cats = list(result["chunks"][kinds[0]]["ms_per_chunk"])
    for k in kinds[1:]:
        cats += [c for c in result["chunks"][k]["ms_per_chunk"] if c not in cats]
    head = "| category | " + " | ".join(f"{k} chunk ms (share)" for k in kinds) + " |"
    lines = [head, "|---|" + "---|" * len(kinds)]
    for c in cats:
        cells = []
        for k in kinds:
            ms, tot = result["chunks"][k]["ms_per_chunk"].get(c, 0.0), result["chunks"][k]["total_ms"]
            cells.append(f"{ms:.2f} ({ms / tot:.0%})")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"{result['chunks'][k]['total_ms']:.2f}" for k in kinds) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """CLI: profile one mode of a preset and print a markdown table (and write JSON with --out)."""
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=["real", "cpu"], default="cpu")
    p.add_argument("--mode", choices=list(available_modes()), default="deep_sink_pc")
    p.add_argument("--latent-frames", type=int, default=36)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--resolution", default=None, metavar="HxW")
    p.add_argument("--dtype", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-vae", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.device != "cpu":
        sys.stderr.write("error: the category profile times CPU-synchronous kernels; use --device cpu (on a GPU, "
                         "use torch.profiler or the per-chunk CUDA-event figures of bench.run)\n")
        return 2
    torch.set_num_threads(args.threads)
    h, w = (int(x) for x in args.resolution.split("x")) if args.resolution else (None, None)
    preset = get_preset(args.preset).with_overrides(layers=args.layers, dtype=args.dtype, device="cpu",
                                                   height=h, width=w)
    result = profile(preset, args.mode, args.latent_frames, decode=not args.no_vae)
    result["preset"] = {"name": preset.name, "layers": preset.model.num_layers, "dim": preset.model.dim,
                        "resolution": [preset.height, preset.width], "tokens_per_frame": preset.tokens_per_frame,
                        "dtype": preset.dtype, "threads": args.threads}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    ops = ", ".join(f"{k} {v:.1f}" for k, v in result["aten_ops_per_layer_call_by_category"].items())
    sys.stdout.write(f"{json.dumps(result['preset'])}\nATen ops per DiT call: {result['aten_ops_per_dit_call']} "
                     f"({result['aten_ops_per_layer_call']:.0f} per layer: {ops})\n\n{table(result)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
