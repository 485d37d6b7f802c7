"""The Self Forcing chunk-wise rollout: few-step denoising of each chunk, then a clean pass that fills the cache.

Entry points: ``CausalInferencePipeline.generate`` (prompt embeddings + initial noise + a re-noise source -> latents),
``generate_seeded`` (upstream's single-stream seeding), and ``iter_chunks`` (the same rollout, chunk by chunk).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from utils.scheduler import FlowMatchScheduler

from .kv_cache import KVCache
from .policies import CachePolicy

logger = logging.getLogger(__name__)

# (shape, dtype, device) -> a standard normal tensor; called once per re-noising, in upstream's order.
NoiseSource = Callable[[tuple, torch.dtype, torch.device], torch.Tensor]
# (chunk index, first latent frame, x0 of the chunk [B, num_frames, C, H, W]) -> None
ChunkCallback = Callable[[int, int, torch.Tensor], None]


@dataclass
class RolloutConfig:
    """Rollout settings, upstream YAML key names (SPEC section 3)."""

    denoising_step_list: list = field(default_factory=lambda: [1000, 750, 500, 250])
    warp_denoising_step: bool = True
    num_frame_per_block: int = 3
    context_noise: float = 0
    timestep_shift: float = 5.0
    independent_first_frame: bool = False
    num_train_timesteps: int = 1000

    def __post_init__(self):
        steps = list(self.denoising_step_list)
        if not steps or any(not 0 < int(s) <= self.num_train_timesteps for s in steps):
            raise ValueError(f"denoising_step_list={steps}: every step must be in (0, {self.num_train_timesteps}]")
        if self.num_frame_per_block < 1:
            raise ValueError(f"num_frame_per_block={self.num_frame_per_block} must be >= 1")
        if self.independent_first_frame:
            raise ValueError("independent_first_frame=true is not supported by this text-to-video rollout")
        if self.timestep_shift <= 0:
            raise ValueError(f"timestep_shift={self.timestep_shift} must be > 0")

    @classmethod
    def from_dict(cls, d: dict) -> "RolloutConfig":
        """Take the rollout keys out of a (possibly larger) config dict."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def generator_noise(generator: torch.Generator) -> NoiseSource:
    """A noise source drawing from ``generator`` (one ``torch.randn`` per request)."""
    def draw(shape, dtype, device):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    return draw


class CausalInferencePipeline:
    """Runs the causal rollout of a ``CausalWanModel`` with a KV cache managed by ``policy``."""

    def __init__(self, model, config: RolloutConfig, policy: CachePolicy, rebase: bool = True,
                 progress: bool = False):
        self.model = model
        self.config = config
        self.policy = policy
        self.rebase = rebase
        self.progress = progress
        self.scheduler = FlowMatchScheduler(config.timestep_shift, config.num_train_timesteps)
        steps = [int(s) for s in config.denoising_step_list]
        self.timesteps = (self.scheduler.warp(steps) if config.warp_denoising_step
                          else torch.tensor(steps, dtype=torch.float32))  # float32 [num_steps]
        policy.validate(config.num_frame_per_block)
        self.kv: KVCache | None = None

    def _cache_for(self, batch: int, tokens_per_frame: int) -> KVCache:
        """The KV cache for this batch size and resolution, allocated once and reused across videos."""
        cfg, B = self.model.config, self.config.num_frame_per_block
        kv = self.kv
        if (kv is None or kv.tokens_per_frame != tokens_per_frame or kv.layers[0].k.shape[0] != batch
                or kv.policy is not self.policy or kv.layers[0].k.dtype != self.model.dtype):
            capacity = self.policy.capacity_frames(B) * tokens_per_frame
            logger.debug("allocating KV cache: %d layers x %d tokens x %d heads x %d", cfg.num_layers, capacity,
                         cfg.num_heads, cfg.head_dim)
            self.kv = None  # free the old one first
            kv = KVCache(cfg.num_layers, batch, capacity, cfg.num_heads, cfg.head_dim, self.model.dtype,
                         self.model.device, self.policy, tokens_per_frame, self.model.rope.rotate_time,
                         rebase=self.rebase)
            self.kv = kv
        kv.reset()
        return kv

    @torch.no_grad()
    def iter_chunks(self, prompt_embeds: torch.Tensor, noise: torch.Tensor,
                    renoise: NoiseSource | torch.Generator) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield (chunk index, first frame, x0 [B, num_frames, C, H, W]) chunk by chunk.

        prompt_embeds [B, text_len, text_dim]; noise [B, T, C, H, W] initial noise (T a multiple of the chunk).
        """
        model, B = self.model, self.config.num_frame_per_block
        batch, T, C, H, W = noise.shape
        if T % B:
            raise ValueError(f"{T} latent frames is not a multiple of num_frame_per_block={B}")
        if prompt_embeds.shape[0] != batch:
            raise ValueError(f"prompt_embeds batch {prompt_embeds.shape[0]} != noise batch {batch}")
        if isinstance(renoise, torch.Generator):
            renoise = generator_noise(renoise)
        F = model.config.tokens_per_frame(H, W)
        kv = self._cache_for(batch, F)
        text_kv = model.encode_text(prompt_embeds.to(model.device))
        device = model.device
        ts = self.timesteps.to(device)
        num_chunks = T // B
        bar = tqdm(range(num_chunks), desc="chunks", unit="chunk", disable=not self.progress, leave=False)
        for i in bar:
            f = i * B
            kv.begin_chunk(f, B)
            xt = noise[:, f:f + B].to(device)
            x0 = None
            for j in range(len(ts)):
                t = ts[j].expand(batch, B)  # [batch, B] float32
                flow = model(xt, t, text_kv, kv, start_frame=f)
                x0 = self.scheduler.flow_to_x0(flow.flatten(0, 1), xt.flatten(0, 1).to(flow.dtype),
                                               t.flatten()).unflatten(0, (batch, B))
                if j + 1 < len(ts):
                    eps = renoise((batch * B, C, H, W), x0.dtype, device)
                    t_next = ts[j + 1].expand(batch * B)
                    xt = self.scheduler.add_noise(x0.flatten(0, 1), eps, t_next).unflatten(0, (batch, B))
            clean_t = torch.full((batch, B), float(self.config.context_noise), device=device)
            model(x0, clean_t, text_kv, kv, start_frame=f)
            kv.commit()
            yield i, f, x0

    def generate(self, prompt_embeds: torch.Tensor, noise: torch.Tensor, renoise: NoiseSource | torch.Generator,
                 callback: ChunkCallback | None = None) -> torch.Tensor:
        """Run the whole rollout and return latents [B, T, C, H, W] (x0 of every chunk's last step)."""
        out = torch.empty_like(noise, dtype=self.model.dtype, device=self.model.device)
        for i, f, x0 in self.iter_chunks(prompt_embeds, noise, renoise):
            out[:, f:f + x0.shape[1]] = x0
            if callback is not None:
                callback(i, f, x0)
        return out

    def generate_seeded(self, prompt_embeds: torch.Tensor, num_frames: int, latent_shape: tuple[int, int, int],
                        seed: int, callback: ChunkCallback | None = None) -> torch.Tensor:
        """Upstream's seeding: one generator seeded once; the whole initial noise first, then every re-noise draw.

        latent_shape = (C, H, W), e.g. (16, 60, 104). Returns latents [B, num_frames, C, H, W].
        """
        device = self.model.device
        g = torch.Generator(device=device).manual_seed(int(seed))
        batch = prompt_embeds.shape[0]
        noise = torch.randn((batch, num_frames, *latent_shape), generator=g, dtype=self.model.dtype, device=device)
        return self.generate(prompt_embeds, noise, g, callback=callback)
