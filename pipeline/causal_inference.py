"""The Self Forcing chunk-wise rollout: few-step denoising of each chunk, then a clean pass that fills the cache.

Entry points: ``CausalInferencePipeline.generate`` (prompt embeddings + initial noise + a re-noise source -> latents),
``generate_seeded`` (upstream's single-stream seeding), and ``iter_chunks`` (the same rollout, chunk by chunk).

Causal Forcing additions: ``denoising_step_list_first_chunk`` (the first generated chunk uses its own, longer step
list) and image-to-video (``image_latent``: the image is written into the cache as frame 0 by one call at t = 0, and
the generated chunks start at frame 1).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from .scheduler import FlowMatchScheduler

from .kv_cache import KVCache
from .policies import CachePolicy
from .recache import mark_token_slots, recache_store

logger = logging.getLogger(__name__)

# (shape, dtype, device) -> a standard normal tensor; called once per re-noising, in upstream's order.
NoiseSource = Callable[[tuple, torch.dtype, torch.device], torch.Tensor]
# (chunk index, first latent frame, x0 of the chunk [B, num_frames, C, H, W]) -> None
ChunkCallback = Callable[[int, int, torch.Tensor], None]


@dataclass
class RolloutConfig:
    """Rollout settings, upstream YAML key names (README "Configs"; the chunk loop in docs/architecture.md)."""

    denoising_step_list: list = field(default_factory=lambda: [1000, 750, 500, 250])
    # Causal Forcing++: steps of the first generated chunk (None: the same list as every other chunk).
    denoising_step_list_first_chunk: list | None = None
    warp_denoising_step: bool = True
    num_frame_per_block: int = 3
    context_noise: float = 0
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


def generator_noise(generator: torch.Generator) -> NoiseSource:
    """A noise source drawing from ``generator`` (one ``torch.randn`` per request)."""
    def draw(shape, dtype, device):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    return draw


class TensorNoise:
    """Initial noise drawn up front (upstream order): a tensor [B, T, C, H, W] served chunk by chunk."""

    def __init__(self, noise: torch.Tensor):
        self.noise = noise
        self.batch, self.num_frames = noise.shape[:2]
        self.latent_shape = tuple(noise.shape[2:])

    def frames(self, start: int, count: int) -> torch.Tensor:
        """Noise of frames [start, start + count) -> [B, count, C, H, W]."""
        return self.noise[:, start:start + count]


class LazyNoise:
    """Initial noise drawn chunk by chunk from ``source`` right before each chunk: memory does not grow with
    length and ``num_frames`` may be None (endless). Differs from upstream's order, which draws all noise first."""

    def __init__(self, batch: int, latent_shape: tuple, source: NoiseSource, dtype: torch.dtype,
                 device: torch.device, num_frames: int | None = None):
        self.batch, self.num_frames, self.latent_shape = batch, num_frames, tuple(latent_shape)
        self.source, self.dtype, self.device = source, dtype, device

    def frames(self, start: int, count: int) -> torch.Tensor:
        """A fresh draw [B, count, C, H, W] (``start`` is ignored: draws happen in call order)."""
        return self.source((self.batch, count, *self.latent_shape), self.dtype, self.device)


# (chunk index, first frame) -> new prompt embeddings [B, text_len, text_dim] to switch to, or None to keep.
PromptSwitch = Callable[[int, int], "torch.Tensor | None"]


class CausalInferencePipeline:
    """Runs the causal rollout of a ``CausalWanModel`` with a KV cache managed by ``policy``."""

    def __init__(self, model, config: RolloutConfig, policy: CachePolicy, rebase: bool = True,
                 progress: bool = False, rotated_key_buffer: bool = True):
        self.model = model
        self.config = config
        self.policy = policy
        self.rebase = rebase
        self.progress = progress
        self.rotated_key_buffer = rotated_key_buffer
        self.scheduler = FlowMatchScheduler(config.timestep_shift, config.num_train_timesteps)
        self.timesteps = self._warped(config.denoising_step_list)  # float32 [num_steps]
        first = config.denoising_step_list_first_chunk
        self.first_chunk_timesteps = self.timesteps if first is None else self._warped(first)  # float32 [steps]
        policy.validate(config.num_frame_per_block)
        self.kv: KVCache | None = None

    def _warped(self, steps: list) -> torch.Tensor:
        """A step list as scheduler timesteps (warped when ``warp_denoising_step``) -> float32 [num_steps]."""
        steps = [int(s) for s in steps]
        return self.scheduler.warp(steps) if self.config.warp_denoising_step else torch.tensor(steps,
                                                                                              dtype=torch.float32)

    def chunk_timesteps(self, g: int) -> torch.Tensor:
        """Timesteps [num_steps] of generated chunk ``g``: the first-chunk list for g = 0, the main list after."""
        device = self.model.device
        if self.timesteps.device != device:  # moved once, not copied to the device on every chunk
            self.timesteps = self.timesteps.to(device)
            self.first_chunk_timesteps = self.first_chunk_timesteps.to(device)
        return self.first_chunk_timesteps if g == 0 else self.timesteps

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
                         rebase=self.rebase, rotated_key_buffer=self.rotated_key_buffer)
            self.kv = kv
        kv.reset()
        return kv

    @torch.no_grad()
    def iter_chunks(self, prompt_embeds: torch.Tensor, noise: "torch.Tensor | TensorNoise | LazyNoise",
                    renoise: NoiseSource | torch.Generator, prompt_switch: PromptSwitch | None = None,
                    recache: bool | str = False, global_sink: bool = True,
                    image_latent: torch.Tensor | None = None
                    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield (chunk index, first frame, x0 [B, num_frames, C, H, W]) chunk by chunk.

        prompt_embeds [B, text_len, text_dim]; noise: initial noise [B, T, C, H, W] (T a multiple of the chunk),
        or a ``TensorNoise`` / ``LazyNoise`` (``num_frames=None``: endless, stop iterating when done).
        ``prompt_switch(i, f)`` is asked before every chunk after the first; when it returns embeddings, the
        cross-attention keys/values are recomputed for them, and with ``recache`` the cached keys/values of the
        retained frames are recomputed under the new prompt (see ``pipeline.recache``): ``recache`` True or "ours"
        recomputes every cached frame at its position, "longlive" is LongLive's re-cache, whose ``global_sink``
        (True as released) keeps the sink's keys/values; False keeps the cache as it is.
        ``image_latent`` [B, C, H, W] (image-to-video, ``num_frame_per_block`` 1 only): written into the cache as
        frame 0 (one call at t = 0) and yielded as chunk 0 (``(0, 0, image [B, 1, C, H, W])``); the noise covers
        the generated frames 1, 2, ..., chunk i >= 1 is frame i, and the first-chunk step list goes to frame 1.
        """
        model, B = self.model, self.config.num_frame_per_block
        if isinstance(noise, torch.Tensor):
            noise = TensorNoise(noise)
        batch, T, (_, H, W) = noise.batch, noise.num_frames, noise.latent_shape
        if T is not None and T % B:
            raise ValueError(f"{T} latent frames is not a multiple of num_frame_per_block={B}")
        if prompt_embeds.shape[0] != batch:
            raise ValueError(f"prompt_embeds batch {prompt_embeds.shape[0]} != noise batch {batch}")
        if image_latent is not None:
            check_image_latent(image_latent, batch, noise.latent_shape, B)
        if isinstance(renoise, torch.Generator):
            renoise = generator_noise(renoise)
        F = model.config.tokens_per_frame(H, W)
        kv = self._cache_for(batch, F)
        text_kv = model.encode_text(prompt_embeds.to(model.device))
        clean = recache_store(recache, global_sink, self.policy)
        device = model.device
        f0 = 0  # frames before the first generated chunk: 1 with an image
        if image_latent is not None:
            yield 0, 0, self._prefill_image(kv, text_kv, image_latent, clean)
            f0 = 1
        num_chunks = None if T is None else T // B
        chunk_indices = range(num_chunks) if num_chunks is not None else _count()
        bar = tqdm(chunk_indices, total=num_chunks, desc="chunks", unit="chunk", disable=not self.progress,
                   leave=False)
        try:
            for g in bar:  # g: generated chunk; i: chunk index counting the image as chunk 0
                i, f = f0 + g, f0 + g * B
                if prompt_switch is not None and i > 0:
                    new_prompt = prompt_switch(i, f)
                    if new_prompt is not None:
                        text_kv = model.encode_text(new_prompt.to(device))
                        if clean is not None:
                            clean.recache(model, kv, text_kv, self.config.context_noise)
                kv.begin_chunk(f, B)
                xt = noise.frames(g * B, B).to(device)  # [B, n, C, H, W]
                x0 = self._denoise_chunk(kv, text_kv, xt, f, renoise, self.chunk_timesteps(g))
                if clean is not None:
                    mark_token_slots(kv)
                kv.commit()
                if clean is not None:
                    clean.add(f, x0)
                    clean.prune(kv)
                yield i, f, x0
        finally:
            bar.close()

    def _prefill_image(self, kv: KVCache, text_kv: list, image_latent: torch.Tensor, clean) -> torch.Tensor:
        """Write the image latent [B, C, H, W] into the cache as frame 0: one call at timestep 0, then commit.

        Returns the image as a one-frame chunk [B, 1, C, H, W] (model dtype and device).
        ``clean``: the re-cache store of clean latents (``pipeline.recache``) or None; it gets the image as frame 0.
        """
        model = self.model
        x = image_latent.to(device=model.device, dtype=model.dtype).unsqueeze(1)  # [B, 1, C, H, W]
        kv.begin_chunk(0, 1)
        t = torch.zeros(x.shape[:2], device=model.device)  # [B, 1]: timestep 0, not context_noise (as released)
        model(x, t, text_kv, kv, start_frame=0)
        if clean is not None:
            mark_token_slots(kv)
        kv.commit()
        if clean is not None:
            clean.add(0, x)
        return x

    def _denoise_chunk(self, kv: KVCache, text_kv: list, xt: torch.Tensor, f: int,
                       renoise: NoiseSource, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """Few-step denoising of one chunk from noise xt [B, n, C, H, W], then the clean pass that fills the cache.

        ``timesteps`` [num_steps] (default: the main step list). Returns x0 of the last step [B, n, C, H, W];
        re-noise draws [B * n, C, H, W] happen after every non-final step, in order.
        """
        model = self.model
        ts = self.chunk_timesteps(1) if timesteps is None else timesteps  # float32 [num_steps]
        batch, n = xt.shape[:2]
        x0 = xt
        for j in range(len(ts)):
            t = ts[j].expand(batch, n)  # [batch, n] float32
            flow = model(xt, t, text_kv, kv, start_frame=f)
            x0 = self.scheduler.flow_to_x0(flow.flatten(0, 1), xt.flatten(0, 1).to(flow.dtype),
                                           t.flatten()).unflatten(0, (batch, n))
            if j + 1 < len(ts):
                eps = renoise((batch * n, *xt.shape[2:]), x0.dtype, xt.device)
                xt = self.scheduler.add_noise(x0.flatten(0, 1), eps, ts[j + 1].expand(batch * n)).unflatten(
                    0, (batch, n))
        clean_t = torch.full((batch, n), float(self.config.context_noise), device=xt.device)
        model(x0, clean_t, text_kv, kv, start_frame=f)
        return x0

    def generate(self, prompt_embeds: torch.Tensor, noise: "torch.Tensor | TensorNoise | LazyNoise",
                 renoise: NoiseSource | torch.Generator, callback: ChunkCallback | None = None,
                 prompt_switch: PromptSwitch | None = None, recache: bool = False,
                 image_latent: torch.Tensor | None = None) -> torch.Tensor:
        """Run the whole rollout and return latents [B, T, C, H, W] (x0 of every chunk's last step).

        With ``image_latent`` [B, C, H, W] the noise covers T - 1 frames and frame 0 of the result is the image.
        """
        if isinstance(noise, torch.Tensor):
            noise = TensorNoise(noise)
        if noise.num_frames is None:
            raise ValueError("generate() needs a finite number of frames; use iter_chunks() for endless videos")
        f0 = 0
        if image_latent is not None:
            check_image_latent(image_latent, noise.batch, noise.latent_shape, self.config.num_frame_per_block)
            f0 = 1
        out = torch.empty((noise.batch, f0 + noise.num_frames, *noise.latent_shape), dtype=self.model.dtype,
                          device=self.model.device)
        for i, f, x0 in self.iter_chunks(prompt_embeds, noise, renoise, prompt_switch=prompt_switch,
                                            recache=recache, image_latent=image_latent):
            out[:, f:f + x0.shape[1]] = x0
            if callback is not None:
                callback(i, f, x0)
        return out

    def seeded_noise(self, batch: int, num_frames: int | None, latent_shape: tuple, seed: int,
                     noise_order: str = "upstream") -> tuple["TensorNoise | LazyNoise", NoiseSource]:
        """Initial noise and re-noise source from one generator seeded once.

        ``upstream``: the whole initial noise [batch, T, C, H, W] first, then every re-noise draw (same seed, same
        noise as the released code). ``chunked``: each chunk's initial noise is drawn right before the chunk
        (memory independent of length, endless videos possible; different random numbers).
        """
        device = self.model.device
        g = torch.Generator(device=device).manual_seed(int(seed))
        source = generator_noise(g)
        if noise_order == "upstream":
            if num_frames is None:
                raise ValueError("noise_order='upstream' needs a finite number of frames; use 'chunked'")
            return TensorNoise(source((batch, num_frames, *latent_shape), self.model.dtype, device)), source
        if noise_order == "chunked":
            return LazyNoise(batch, latent_shape, source, self.model.dtype, device, num_frames), source
        raise ValueError(f"noise_order={noise_order!r}: use 'upstream' or 'chunked'")

    def generate_seeded(self, prompt_embeds: torch.Tensor, num_frames: int, latent_shape: tuple[int, int, int],
                        seed: int, callback: ChunkCallback | None = None, noise_order: str = "upstream",
                        prompt_switch: PromptSwitch | None = None, recache: bool = False,
                        image_latent: torch.Tensor | None = None) -> torch.Tensor:
        """Upstream's seeding: one generator seeded once; the whole initial noise first, then every re-noise draw.

        latent_shape = (C, H, W), e.g. (16, 60, 104). Returns latents [B, num_frames, C, H, W]; with
        ``image_latent`` (image-to-video) frame 0 is the image and noise is drawn for the other num_frames - 1.
        """
        generated = num_frames if image_latent is None else num_frames - 1
        noise, source = self.seeded_noise(prompt_embeds.shape[0], generated, latent_shape, seed, noise_order)
        return self.generate(prompt_embeds, noise, source, callback=callback, prompt_switch=prompt_switch,
                             recache=recache, image_latent=image_latent)


class ImageToVideoError(ValueError):
    """An image-to-video setting the rollout cannot run; the message names the value and the fix."""


def check_image_latent(image_latent: torch.Tensor, batch: int, latent_shape: tuple, chunk_frames: int) -> None:
    """Check an image latent [batch, C, H, W] against the rollout (one-frame chunks, the noise's geometry)."""
    if chunk_frames != 1:
        raise ImageToVideoError(
            f"image-to-video needs frame-wise chunks (num_frame_per_block: 1) but the config has "
            f"num_frame_per_block: {chunk_frames}; one image latent cannot fill a {chunk_frames}-frame chunk. Use a "
            f"frame-wise Causal Forcing checkpoint (framewise/causal_forcing.pt) with its frame-wise config.")
    if tuple(image_latent.shape) != (batch, *latent_shape):
        raise ImageToVideoError(f"image latent has shape {tuple(image_latent.shape)} but the rollout needs "
                                f"{(batch, *latent_shape)} (batch, channels, latent height, latent width); encode "
                                f"the image at the video's resolution.")


def _count():
    """0, 1, 2, ... (endless chunk indices)."""
    i = 0
    while True:
        yield i
        i += 1
