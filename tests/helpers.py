"""Helpers shared by the test modules (tests import these, never each other)."""
from __future__ import annotations

from pathlib import Path

import torch

import inference
from app.runner import VideoRunner
from app.runtime import DistEnv
from app.settings import resolve_settings
from mp4_probe import decoded, probe
from pipeline.kv_cache import KVCache
from pipeline.rollout import Rollout
from wan.rope import WanRope

from tiny import TINY

SMALL = ("height=32", "width=32")   # latent 4x4: 4 tokens per frame
PROMPTS = ("a paper boat drifts down a rain gutter", "a lighthouse in a winter storm", "a hummingbird at a flower")

# ------------------------------------------------------------------------------- cache traffic without a model
LATENT = (16, 4, 4)  # C, H, W -> F = 4 tokens per frame
F = 4
H, D = 2, 16  # heads, head dim of the tiny model
B = 3


def text(seed=1, batch=1):
    """Prompt embeddings [batch, text_len, text_dim], zero after 5 tokens."""
    e = torch.randn(batch, TINY["text_len"], TINY["text_dim"], generator=torch.Generator().manual_seed(seed))
    e[:, 5:] = 0
    return e


def make_kv(policy, layers=1, batch=1, dtype=torch.float32):
    """A KVCache for ``policy`` with the tiny geometry, reset for a new video."""
    rope = WanRope(D)
    kv = KVCache(layers, batch, policy.capacity_frames(B) * F, H, D, dtype, "cpu", policy, F, rope.rotate_time)
    kv.reset()
    return kv


def drive(kv, num_chunks, qkv, calls=5):
    """Simulate the rollout's cache traffic: per chunk ``calls`` calls per layer (4 steps + clean pass), commit.

    qkv(layer, f, call) -> q, k, v [batch, B*F, H, D]. Yields the chunk start after each commit.
    """
    for i in range(num_chunks):
        f = i * B
        kv.begin_chunk(f, B)
        pos = torch.arange(f, f + B).repeat_interleave(F)
        rotation = WanRope(D).time_rotation(pos - kv.base, kv.layers[0].k.dtype)  # as the model builds it per call
        for c in range(calls):
            for layer in range(len(kv.layers)):
                kv.update(layer, *qkv(layer, f, c), pos, rotation)
        kv.commit()
        yield f


def ramp_qkv(score_of, batch=1):
    """q = ones and k = score_of(frame, token) on the non-time channels; v = (frame, call, token, layer)."""
    time_dim = WanRope(D).time_dim

    def qkv(layer, f, call):
        frames = torch.arange(f, f + B).repeat_interleave(F).double()
        toks = torch.arange(F).repeat(B).double()
        q = torch.zeros(batch, B * F, H, D)
        q[..., time_dim:] = 1
        k = torch.zeros(batch, B * F, H, D)
        k[..., time_dim:] = score_of(frames, toks)[None, :, None, None].float()
        v = torch.zeros(batch, B * F, H, D)
        v[..., 0], v[..., 2] = frames.float()[None, :, None], toks.float()[None, :, None]
        v[..., 1], v[..., 3] = call, layer
        return q, k, v
    return qkv



# ------------------------------------------------------------------------------------------------- the CLI
def model_args(tiny_model_files) -> list[str]:
    """Flags pointing the CLI at the tiny model on CPU."""
    model_dir, checkpoint = tiny_model_files
    return ["--wan_model_dir", model_dir, "--checkpoint_path", checkpoint, "--device", "cpu"]


def read_video(path: Path) -> tuple[int, float, tuple[int, int], str]:
    """(frame count, fps, (width, height), codec) of an mp4, decoded with PyAV."""
    info = probe(path)
    return info["frames"], info["fps"], info["size"], info["codec"]


def frames_of(path: Path):
    """All decoded frames of an mp4 as one uint8 array [n, H, W, 3]."""
    return decoded(path)



# --------------------------------------------------------------------------------------- runner and settings
def settings_for(tiny_model_files, out: Path, *flags: str):
    """RunSettings exactly as the CLI builds them from these flags (tiny model, CPU)."""
    model_dir, checkpoint = tiny_model_files
    args = inference.build_parser().parse_intermixed_args(
        ["--wan_model_dir", str(model_dir), "--checkpoint_path", str(checkpoint), "--device", "cpu",
         "--output_folder", str(out), *SMALL, *flags])
    return resolve_settings(args, DistEnv())


def prompt_file(tmp_path: Path, *prompts: str) -> Path:
    """A prompt file with one prompt per line."""
    path = tmp_path / "prompts.txt"
    path.write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
    return path


def runner_for(models, settings) -> VideoRunner:
    """A runner for ``settings`` around the already loaded models."""
    text_encoder, model, vae = models
    pipe = Rollout(model, settings.rollout, settings.policy, loop=settings.loop, recache=settings.recache)
    return VideoRunner(settings, text_encoder, model, vae, pipe, progress=False)


