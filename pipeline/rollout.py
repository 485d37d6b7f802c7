"""The rollout driver: one video from prompt embeddings and noise, frames handed out as soon as they are final.

``Rollout`` owns what every loop shares (the KV cache, the prompt and its switches, the re-cache, the image
prefix, progress) and hands a ``RolloutSession`` to its loop strategy (``pipeline.loops``), which only produces
finished frames: Self Forcing's chunk loop (``ChunkLoop``) or any registered strategy. Entry points:
``Rollout.frames(inputs)`` (an iterator of finished blocks) and ``generate`` / ``generate_seeded`` (whole videos).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator, List, Optional

import torch
from tqdm.auto import tqdm

from .kv_cache import KVCache
from .loops import ChunkLoop, LoopStrategy
from .noise import LazyNoise, NoiseSource, TensorNoise, as_noise, as_source, seeded_noise
from .policies import CachePolicy
from .recache import Recache
from .scheduler import FlowMatchScheduler

logger = logging.getLogger(__name__)

# (block index, first latent frame, x0 of the block [B, num_frames, C, H, W]) -> None
ChunkCallback = Callable[[int, int, torch.Tensor], None]
# (block index, first frame) -> new prompt embeddings [B, text_len, text_dim] to switch to, or None to keep.
PromptSwitch = Callable[[int, int], "torch.Tensor | None"]
# (block index, first frame, x0 [B, n, C, H, W]): a block of finished frames.
Finished = tuple[int, int, torch.Tensor]


@dataclass
class RolloutConfig:
    """Rollout settings, upstream YAML key names (README "Configs"; the loops in docs/architecture.md)."""

    denoising_step_list: List[int] = field(default_factory=lambda: [1000, 750, 500, 250])
    # Causal Forcing++: steps of the first generated chunk (None: the same list as every other chunk).
    denoising_step_list_first_chunk: Optional[List[int]] = None
    warp_denoising_step: bool = True
    num_frame_per_block: int = 3
    context_noise: float = 0.0           # timestep of the clean pass that writes a block into the KV cache
    timestep_shift: float = 5.0
    independent_first_frame: bool = False
    num_train_timesteps: int = 1000

    def __post_init__(self):
        for key in ("denoising_step_list", "denoising_step_list_first_chunk"):
            steps = getattr(self, key)
            if steps is None and key == "denoising_step_list_first_chunk":
                continue
            steps = list(steps)
            if not steps or any(not 0 < int(s) <= self.num_train_timesteps for s in steps):
                raise ValueError(f"{key}={steps}: every step must be in (0, {self.num_train_timesteps}]")
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


@dataclass
class RolloutInputs:
    """What one video is made from: conditioning, initial noise, re-noise draws and optional extras."""

    prompt_embeds: torch.Tensor                      # [B, text_len, text_dim] (or the model's conditioning object)
    noise: "torch.Tensor | TensorNoise | LazyNoise"  # [B, T, C, H, W] or a noise object (num_frames None: endless)
    renoise: "NoiseSource | torch.Generator"
    prompt_switch: PromptSwitch | None = None        # asked before every block after the first
    image_latent: torch.Tensor | None = None         # [B, C, H, W]: image-to-video, written as frame 0


class ImageToVideoError(ValueError):
    """An image-to-video setting the rollout cannot run; the message names the value and the fix."""


def check_image_latent(image_latent: torch.Tensor, batch: int, latent_shape: tuple, chunk_frames: int) -> None:
    """Check an image latent [batch, C, H, W] against the rollout (one-frame chunks, the noise's geometry)."""
    if chunk_frames != 1:
        raise ImageToVideoError(
            f"image-to-video needs frame-wise chunks (num_frame_per_block: 1) but the config has "
            f"num_frame_per_block: {chunk_frames}; one image latent cannot fill a {chunk_frames}-frame chunk. Use a "
            f"frame-wise checkpoint with its frame-wise config.")
    if tuple(image_latent.shape) != (batch, *latent_shape):
        raise ImageToVideoError(f"image latent has shape {tuple(image_latent.shape)} but the rollout needs "
                                f"{(batch, *latent_shape)} (batch, channels, latent height, latent width); encode "
                                f"the image at the video's resolution.")


class RolloutSession:
    """One video in progress: what a loop strategy reads (model, cache, noise, prompt) and the driver's services."""

    def __init__(self, rollout: "Rollout", inputs: RolloutInputs, kv: KVCache):
        self.rollout, self.kv = rollout, kv
        self.model, self.config, self.scheduler = rollout.model, rollout.config, rollout.scheduler
        self.noise = as_noise(inputs.noise)
        self.renoise = as_source(inputs.renoise)
        self.prompt_switch = inputs.prompt_switch
        self.text_kv = self.model.encode_context(inputs.prompt_embeds.to(self.model.device))
        # clean latents for the re-cache (None: re-cache off, or no prompt can change)
        self.store = None if self.prompt_switch is None else rollout.recache.new_store(rollout.policy)
        self.first_frame = 0  # frames before the first generated block: 1 after an image prefix
        self.first_index = 0

    @property
    def device(self) -> torch.device:
        """The model's device."""
        return self.model.device

    def timesteps(self, g: int) -> torch.Tensor:
        """Timesteps [num_steps] of generated block ``g`` (the first-chunk list for g = 0)."""
        return self.rollout.chunk_timesteps(g)

    def switch(self, index: int, frame: int) -> None:
        """Before block ``index`` at ``frame``: take a prompt switch, if any, and re-cache under the new prompt."""
        if self.prompt_switch is None:
            return
        new_prompt = self.prompt_switch(index, frame)
        if new_prompt is None:
            return
        self.text_kv = self.model.encode_text(new_prompt.to(self.device))
        if self.store is not None:
            self.rollout.recache.apply(self.model, self.kv, self.text_kv, self.store, self.config.context_noise)

    def commit(self, frame: int, x0: torch.Tensor) -> None:
        """After the clean pass of the block x0 [B, n, C, H, W] at ``frame``: make it context (and remember it)."""
        if self.store is None:
            self.kv.commit()
            return
        self.kv.mark_token_slots()
        self.kv.commit()
        self.store.add(frame, x0)
        self.store.prune(self.kv)

    def prefill_image(self, image_latent: torch.Tensor) -> torch.Tensor:
        """Write the image latent [B, C, H, W] into the cache as frame 0 (one call at t = 0) -> [B, 1, C, H, W]."""
        x = image_latent.to(device=self.device, dtype=self.model.dtype).unsqueeze(1)  # [B, 1, C, H, W]
        self.kv.begin_chunk(0, 1)
        t = torch.zeros(x.shape[:2], device=self.device)  # [B, 1]: timestep 0, not context_noise (as released)
        self.model(x, t, self.text_kv, self.kv, start_frame=0)
        self.commit(0, x)
        self.first_frame, self.first_index = 1, 1
        return x


class Rollout:
    """Runs ``loop`` over a ``CausalWanModel`` with a KV cache managed by ``policy`` and re-cached by ``recache``."""

    def __init__(self, model, config: RolloutConfig, policy: CachePolicy, loop: LoopStrategy | None = None,
                 recache: Recache | None = None, progress: bool = False, rebase: bool = True,
                 rotated_key_buffer: bool = True):
        self.model, self.config, self.policy = model, config, policy
        self.loop = loop if loop is not None else ChunkLoop()
        self.recache = recache if recache is not None else Recache()
        self.progress, self.rebase, self.rotated_key_buffer = progress, rebase, rotated_key_buffer
        self.scheduler = FlowMatchScheduler(config.timestep_shift, config.num_train_timesteps)
        self.timesteps = self._warped(config.denoising_step_list)  # float32 [num_steps]
        first = config.denoising_step_list_first_chunk
        self.first_chunk_timesteps = self.timesteps if first is None else self._warped(first)  # float32 [steps]
        self.loop.validate(config, policy)
        self.loop.check_recache(self.recache)
        self.kv: KVCache | None = None

    def _warped(self, steps: list) -> torch.Tensor:
        """A step list as scheduler timesteps (warped when ``warp_denoising_step``) -> float32 [num_steps]."""
        steps = [int(s) for s in steps]
        if self.config.warp_denoising_step:
            return self.scheduler.warp(steps)
        return torch.tensor(steps, dtype=torch.float32)

    def chunk_timesteps(self, g: int) -> torch.Tensor:
        """Timesteps [num_steps] of generated chunk ``g``: the first-chunk list for g = 0, the main list after."""
        device = self.model.device
        if self.timesteps.device != device:  # moved once, not copied to the device on every chunk
            self.timesteps = self.timesteps.to(device)
            self.first_chunk_timesteps = self.first_chunk_timesteps.to(device)
        return self.first_chunk_timesteps if g == 0 else self.timesteps

    def _cache_for(self, batch: int, tokens_per_frame: int) -> KVCache:
        """The KV cache for this batch size and resolution, allocated once and reused across videos."""
        cfg = self.model.config
        kv = self.kv
        if (kv is None or kv.tokens_per_frame != tokens_per_frame or kv.layers[0].k.shape[0] != batch
                or kv.policy is not self.policy or kv.layers[0].k.dtype != self.model.dtype):
            capacity = self.loop.cache_frames(self.config, self.policy) * tokens_per_frame
            logger.debug("allocating KV cache: %d layers x %d tokens x %d heads x %d", cfg.num_layers, capacity,
                         cfg.num_heads, cfg.head_dim)
            self.kv = None  # free the old one first
            kv = KVCache(cfg.num_layers, batch, capacity, cfg.num_heads, cfg.head_dim, self.model.dtype,
                         self.model.device, self.policy, tokens_per_frame, self.model.rope.rotate_time,
                         rebase=self.rebase,
                         rotated_key_buffer=self.rotated_key_buffer and self.loop.uses_rotated_key_buffer)
            self.kv = kv
        kv.reset()
        return kv

    def start(self, inputs: RolloutInputs) -> RolloutSession:
        """Check the inputs and open a session (fresh cache, prompt encoded)."""
        noise = as_noise(inputs.noise)
        batch, T, (_, H, W) = noise.batch, noise.num_frames, noise.latent_shape
        self.loop.check_length(self.config, T)
        self.loop.check_inputs(self.config, inputs)
        if len(inputs.prompt_embeds) != batch:
            raise ValueError(f"conditioning batch {len(inputs.prompt_embeds)} != noise batch {batch}")
        if inputs.image_latent is not None:
            check_image_latent(inputs.image_latent, batch, noise.latent_shape, self.config.num_frame_per_block)
        kv = self._cache_for(batch, self.model.config.tokens_per_frame(H, W))
        return RolloutSession(self, inputs, kv)

    @torch.no_grad()
    def frames(self, inputs: RolloutInputs) -> Iterator[Finished]:
        """Yield (block index, first frame, x0 [B, n, C, H, W]) as soon as each block is final.

        With an image (``inputs.image_latent``) it is written into the cache as frame 0 and yielded first as
        ``(0, 0, image [B, 1, C, H, W])``; the noise then covers the generated frames 1, 2, ...
        """
        session = self.start(inputs)
        if inputs.image_latent is not None:
            yield 0, 0, session.prefill_image(inputs.image_latent)
        T = session.noise.num_frames
        total = None if T is None else self.loop.num_blocks(self.config, T)
        blocks = self.loop.run(session)
        bar = tqdm(total=total, desc="blocks", unit="block", disable=not self.progress, leave=False)
        try:
            for item in blocks:
                bar.update(1)
                yield item
        finally:
            blocks.close()
            bar.close()

    def generate(self, prompt_embeds: torch.Tensor, noise: "torch.Tensor | TensorNoise | LazyNoise",
                 renoise: NoiseSource | torch.Generator, callback: ChunkCallback | None = None,
                 prompt_switch: PromptSwitch | None = None, image_latent: torch.Tensor | None = None) -> torch.Tensor:
        """Run the whole rollout and return latents [B, T, C, H, W] (every block's final x0).

        With ``image_latent`` [B, C, H, W] the noise covers T - 1 frames and frame 0 of the result is the image.
        """
        noise = as_noise(noise)
        if noise.num_frames is None:
            raise ValueError("generate() needs a finite number of frames; use frames() for endless videos")
        f0 = 0 if image_latent is None else 1
        out = torch.empty((noise.batch, f0 + noise.num_frames, *noise.latent_shape), dtype=self.model.dtype,
                          device=self.model.device)
        for i, f, x0 in self.frames(RolloutInputs(prompt_embeds, noise, renoise, prompt_switch, image_latent)):
            out[:, f:f + x0.shape[1]] = x0
            if callback is not None:
                callback(i, f, x0)
        return out

    def seeded_noise(self, batch: int, num_frames: int | None, latent_shape: tuple, seed: int,
                     noise_order: str = "upstream", channels_first: bool = False
                     ) -> tuple["TensorNoise | LazyNoise", NoiseSource]:
        """Initial noise and re-noise source from one seed, in the model's dtype and device (``noise.seeded_noise``)."""
        return seeded_noise(batch, num_frames, latent_shape, seed, self.model.dtype, self.model.device, noise_order,
                            channels_first)

    def generate_seeded(self, prompt_embeds: torch.Tensor, num_frames: int, latent_shape: tuple[int, int, int],
                        seed: int, callback: ChunkCallback | None = None, noise_order: str = "upstream",
                        prompt_switch: PromptSwitch | None = None,
                        image_latent: torch.Tensor | None = None) -> torch.Tensor:
        """Upstream's seeding: one generator seeded once; the whole initial noise first, then every re-noise draw.

        latent_shape = (C, H, W), e.g. (16, 60, 104). Returns latents [B, num_frames, C, H, W]; with
        ``image_latent`` (image-to-video) frame 0 is the image and noise is drawn for the other num_frames - 1.
        """
        generated = num_frames if image_latent is None else num_frames - 1
        noise, source = self.seeded_noise(prompt_embeds.shape[0], generated, latent_shape, seed, noise_order)
        return self.generate(prompt_embeds, noise, source, callback=callback, prompt_switch=prompt_switch,
                             image_latent=image_latent)
