"""A LongLive run, checked before any model is loaded: the LoRA to merge, the interactive JSONL and its switch
timing, the re-cache variant and ``global_sink``; plus the two upstream path keys a LongLive YAML carries.

A config is a LongLive one when it sets ``lora_ckpt`` or ``switch_frame_indices``. Only then are its
``generator_ckpt`` (the checkpoint, unless ``--checkpoint_path`` is given) and ``data_path`` (the prompts, unless
``--data_path`` is given) read: in Self Forcing and Causal Forcing YAMLs the same keys name training inputs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from utils.errors import CLIError
from .longlive_config import LoraSettings, lora_settings, recache_variant
from .longlive_prompts import LongLivePrompts, load_longlive_prompts
from .prompts import PromptJob
from .schedule import ChunkClock, PromptSchedule

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class LongLiveRun:
    """LongLive's part of a run: LoRA (or None), interactive prompts (or None), re-cache variant, global_sink."""

    lora: LoraSettings | None
    prompts: LongLivePrompts | None
    recache: str | bool            # iter_chunks' recache: False, "ours" or "longlive"
    global_sink: bool

    def schedule(self, job: PromptJob, clock: ChunkClock) -> PromptSchedule | None:
        """The prompt schedule of ``job`` (its video's segments), or None without interactive prompts."""
        return None if self.prompts is None else self.prompts.schedule(job.index, clock)

    def request(self, job: PromptJob) -> dict:
        """What LongLive adds to a video's identity (the resume check): LoRA, segments, switch indices, re-cache."""
        out = {}
        if self.lora is not None:
            out["lora"] = {"file": Path(self.lora.path).name, "alpha": self.lora.alpha, "rank": self.lora.rank}
        if self.prompts is not None:
            out["longlive_prompts"] = list(self.prompts.videos[job.index])
            out["switch_frame_indices"] = list(self.prompts.indices)
            out["recache"] = self.recache or "off"
            out["global_sink"] = self.global_sink
        return out


def is_longlive(cfg) -> bool:
    """Whether the config is a LongLive one (sets lora_ckpt or switch_frame_indices)."""
    return cfg.lora_ckpt is not None or cfg.switch_frame_indices is not None


INFINITE_KEY = "model_kwargs.use_infinite_attention"


def default_longlive_mode(loaded) -> None:
    """The cache mode of a LongLive config that no layer gave a mode: ``infinite_forcing`` with
    ``use_infinite_attention`` (LongLive's infinite mode: the sink right before the window), else ``self_forcing``
    (its normal mode). An explicit mode wins (Deep Sink / PC on top of the checkpoint)."""
    cfg = loaded.cfg
    infinite = cfg.model_kwargs.use_infinite_attention
    if "mode" in loaded.origins:
        if infinite and cfg.mode != "infinite_forcing":
            logger.warning("%s sets use_infinite_attention but %s sets mode %s; running mode %s",
                           loaded.origin(INFINITE_KEY), loaded.origin("mode"), cfg.mode, cfg.mode)
        return
    if not (infinite or is_longlive(cfg)):
        return
    cfg.mode = "infinite_forcing" if infinite else "self_forcing"
    what = "infinite mode (use_infinite_attention)" if infinite else "normal mode"
    loaded.origins["mode"] = f"LongLive's {what}"
    logger.info("LongLive config: cache mode %s (window %s, sink %s), its %s as released; set mode / --mode for Deep "
                "Sink or PC on top", cfg.mode, cfg.model_kwargs.local_attn_size, cfg.model_kwargs.sink_size, what)


def longlive_paths(cfg, checkpoint_flag: str | None, data_flag: str | None) -> tuple[str | None, str | None]:
    """(checkpoint, prompt source) a LongLive config supplies where the flags are not given (None: not supplied)."""
    if not is_longlive(cfg):
        return None, None
    checkpoint = None if checkpoint_flag else cfg.generator_ckpt
    data = None if data_flag else cfg.data_path
    return checkpoint, data


def resolve_longlive(cfg, origin, data_path: str, recache_choice: str | None, recache_on_switch: bool,
                     clock: ChunkClock, num_frames: int | None) -> LongLiveRun | None:
    """Check LongLive's keys; None when the run uses none of them. ``origin(key)`` names where a key was set."""
    lora = lora_settings(cfg.lora_ckpt, cfg.adapter, origin("lora_ckpt" if cfg.lora_ckpt is not None else "adapter"))
    prompts = None
    if cfg.switch_frame_indices is not None:
        if Path(data_path).suffix.lower() not in JSONL_SUFFIXES:
            raise CLIError(f"{origin('switch_frame_indices')}: switch_frame_indices needs LongLive's interactive "
                           f"prompts, a .jsonl file with one {{\"prompts\": [...]}} per video, but the prompts come "
                           f"from {data_path}. Pass --data_path with the .jsonl file (LongLive: "
                           f"longlive_models/prompts/interactive_example.jsonl), or remove switch_frame_indices.")
        prompts = load_longlive_prompts(data_path, cfg.switch_frame_indices, clock.chunk_latents, num_frames,
                                        origin("switch_frame_indices"))
    if recache_choice is not None:
        recache = recache_variant(recache_choice)
    elif recache_on_switch:
        recache = "ours"
    else:
        recache = "longlive" if prompts is not None else False  # LongLive always re-caches at its switches
    if lora is None and prompts is None and recache_choice is None:
        if cfg.global_sink:
            logger.warning("%s: global_sink only matters with LongLive's re-cache (--recache_variant longlive); "
                           "ignored", origin("global_sink"))
        return None
    return LongLiveRun(lora, prompts, recache, bool(cfg.global_sink))
