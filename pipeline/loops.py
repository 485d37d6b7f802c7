"""Loop strategies: how a rollout turns noise into finished frames, block by block (docs/architecture.md).

A strategy gets a ``RolloutSession`` (model, cache, noise, current prompt, the driver's ``switch`` / ``commit``
services) and yields ``(block index, first frame, x0)`` for every block once it is final. It decides which frames each
DiT call sees and at which timesteps; the driver owns everything else. Every subclass with its own ``name`` registers
itself (``LOOPS``); a method picks its strategy by name (``build_loop``).
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch

if TYPE_CHECKING:  # only for annotations: the driver imports this module
    from .rollout import RolloutConfig, RolloutSession

LOOPS: dict[str, type["LoopStrategy"]] = {}


@dataclass
class LoopStrategy:
    """Base strategy: the interface (``run``) and the checks and sizes the driver asks of every strategy."""

    name = "base"
    # Whether the driver should give the cache its rotated-key buffer (``KVCache(rotated_key_buffer=...)``).
    uses_rotated_key_buffer = True

    def __init_subclass__(cls, **kwargs):
        """Register a subclass under its own ``name``."""
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            LOOPS[cls.name] = cls

    def describe(self) -> dict:
        """The strategy's parameters (its dataclass fields), for sidecars."""
        return dataclasses.asdict(self)

    def validate(self, config: "RolloutConfig", policy) -> None:
        """Check the rollout config and the cache policy against this strategy (ValueError / CachePolicyError)."""
        policy.validate(config.num_frame_per_block)

    def check_recache(self, recache) -> None:
        """Check the driver's re-cache variant against this strategy (ValueError)."""

    def check_inputs(self, config: "RolloutConfig", inputs) -> None:
        """Check one video's ``RolloutInputs`` (e.g. an image prefix) before the session opens."""

    def check_length(self, config: "RolloutConfig", num_frames: int | None) -> None:
        """Check a video length in latent frames (None: endless)."""
        B = config.num_frame_per_block
        if num_frames is not None and num_frames % B:
            raise ValueError(f"{num_frames} latent frames is not a multiple of num_frame_per_block={B}")

    def num_blocks(self, config: "RolloutConfig", num_frames: int) -> int:
        """Blocks yielded for ``num_frames`` generated latent frames."""
        return num_frames // config.num_frame_per_block

    def cache_frames(self, config: "RolloutConfig", policy) -> int:
        """Frames of KV storage to preallocate per layer."""
        return policy.capacity_frames(config.num_frame_per_block)

    def run(self, session: "RolloutSession") -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield (block index, first frame, x0 [B, n, C, H, W]) for every finished block."""
        raise NotImplementedError


def denoise_block(session: "RolloutSession", xt: torch.Tensor, f: int, timesteps: torch.Tensor) -> torch.Tensor:
    """Few-step denoising of one block from noise xt [B, n, C, H, W] at ``f`` -> x0 of the last step.

    One DiT call per step; after every step but the last, x0 is re-noised to the next timestep with one draw
    [B * n, C, H, W] from the session's re-noise source (upstream's order).
    """
    model, scheduler = session.model, session.scheduler
    batch, n = xt.shape[:2]
    x0 = xt
    for j in range(len(timesteps)):
        t = timesteps[j].expand(batch, n)  # [batch, n] float32
        flow = model(xt, t, session.text_kv, session.kv, start_frame=f)
        x0 = scheduler.flow_to_x0(flow.flatten(0, 1), xt.flatten(0, 1).to(flow.dtype),
                                  t.flatten()).unflatten(0, (batch, n))
        if j + 1 < len(timesteps):
            eps = session.renoise((batch * n, *xt.shape[2:]), x0.dtype, xt.device)
            xt = scheduler.add_noise(x0.flatten(0, 1), eps, timesteps[j + 1].expand(batch * n)).unflatten(
                0, (batch, n))
    return x0


def clean_pass(session: "RolloutSession", x0: torch.Tensor, f: int) -> None:
    """The call at timestep ``context_noise`` that writes the block x0 [B, n, C, H, W] into the cache."""
    batch, n = x0.shape[:2]
    t = torch.full((batch, n), float(session.config.context_noise), device=x0.device)
    session.model(x0, t, session.text_kv, session.kv, start_frame=f)


@dataclass
class ChunkLoop(LoopStrategy):
    """Self Forcing's loop: each chunk of B frames is denoised on its own, then committed by a clean pass."""

    name = "chunk"

    def run(self, session: "RolloutSession") -> Iterator[tuple[int, int, torch.Tensor]]:
        """Chunk g covers frames f = first_frame + g * B .. f + B - 1 (generated index g, block index first + g)."""
        B, T = session.config.num_frame_per_block, session.noise.num_frames
        for g in (range(T // B) if T is not None else itertools.count()):
            i, f = session.first_index + g, session.first_frame + g * B
            if i > 0:
                session.switch(i, f)
            session.kv.begin_chunk(f, B)
            xt = session.noise.frames(g * B, B).to(session.device)  # [B, n, C, H, W]
            x0 = denoise_block(session, xt, f, session.timesteps(g))
            clean_pass(session, x0, f)
            session.commit(f, x0)
            yield i, f, x0


def build_loop(name: str, **params) -> LoopStrategy:
    """The registered strategy ``name`` built from ``params``."""
    try:
        cls = LOOPS[name]
    except KeyError:
        raise ValueError(f"loop strategy {name!r} is unknown; use one of {', '.join(LOOPS)}") from None
    return cls(**params)


from . import rolling  # noqa: E402,F401  (registers the "rolling" strategy; it imports this module's base class)
