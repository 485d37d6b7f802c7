"""Matrix-Game 2.0 speed: ``python -m bench.world --variant universal --latent-frames 60`` (bench/README.md).

The variant's shipped ``config.json`` at 352x640 (880 tokens per frame) in bf16 on CUDA with random weights, random
image tokens and image latents, the released benchmark actions; the chunk loop (4 DiT calls per chunk, 5 for
templerun) timed by ``bench.timing.timed_blocks`` for each cache mode, DiT only. ``--tiny`` runs the demo's tiny
config at 64x112 on the CPU (a smoke run: relative figures only).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .timing import summary, timed_blocks

# cache modes over the three caches: the released FIFO, and Deep Sink / PC in a window larger than trained
MODES = {"self_forcing": {}, "deep_sink": {"local_attn_size": 9, "sink_size": 3},
         "deep_sink_pc": {"local_attn_size": 12, "sink_size": 3, "budget": 9, "recent": 3}}


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.world", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="universal", choices=("universal", "gta_drive", "templerun"))
    p.add_argument("--latent-frames", type=int, default=60, help="latent frames per video (a multiple of 3)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--tiny", action="store_true", help="the tiny demo config at 64x112 on the CPU (smoke run)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--out", default=None, help="also write the figures as JSON to this file")
    return p.parse_args(argv)


def build(variant: str, tiny: bool, device: torch.device, dtype: torch.dtype):
    """(model with random weights, latent (h, w), config dict) of the variant at its size."""
    from app.demo_world import tiny_world_config
    from methods.matrix_game2 import shipped_config
    from wan.world_model import CausalWorldModel, WorldModelConfig
    config = tiny_world_config(variant) if tiny else json.loads(shipped_config(variant).read_text(encoding="utf-8"))
    torch.manual_seed(0)
    with torch.device(device):
        model = CausalWorldModel(WorldModelConfig.from_dict(config)).to(dtype).eval().requires_grad_(False)
    return model, ((8, 14) if tiny else (44, 80)), config


def measure(variant: str, latent_frames: int, modes: list[str], tiny: bool, device: torch.device) -> dict:
    """Figures per cache mode: FPS (all / steady / fill blocks), block latencies, peaks (``bench.timing.summary``)."""
    from methods.matrix_game2 import VARIANTS
    from methods.world_actions import bench_actions
    from methods.world_run import ActionTrack
    from pipeline.policies import build_policy
    from pipeline.rollout import Rollout, RolloutConfig, RolloutInputs
    from wan.world_model import WorldConditioning
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    model, (h, w), config = build(variant, tiny, device, dtype)
    g = torch.Generator(device=device).manual_seed(0)
    cond = WorldConditioning(torch.randn(1, 257, model.world.clip_dim, generator=g, device=device, dtype=dtype),
                             torch.randn(1, latent_frames, 20, h, w, generator=g, device=device, dtype=dtype),
                             ActionTrack(bench_actions(variant, latent_frames, 0), 1, device))
    out = {"variant": variant, "latent_frames": latent_frames, "latent": [h, w], "device": str(device),
           "dtype": str(dtype), "tiny": tiny, "modes": {}}
    for mode in modes:
        params = {"local_attn_size": config["local_attn_size"], "sink_size": 0, **MODES[mode]}
        rollout = Rollout(model, RolloutConfig(denoising_step_list=list(VARIANTS[variant].steps)),
                          build_policy(mode, **params))
        noise, source = rollout.seeded_noise(1, latent_frames, (16, h, w), 0, channels_first=True)
        run = timed_blocks(rollout, RolloutInputs(cond, noise, source))
        out["modes"][mode] = {"cache": params, **summary(run, fps=12.0)}
    return out


def main(argv=None) -> int:
    """Entry point: print the figures (and write them with --out)."""
    args = parse_args(argv)
    if args.latent_frames < 3 or args.latent_frames % 3:
        sys.stderr.write(f"error: --latent-frames {args.latent_frames} must be a positive multiple of 3\n")
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    figures = measure(args.variant, args.latent_frames, args.modes, args.tiny, device)
    text = json.dumps(figures, indent=1, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
