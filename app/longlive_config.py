"""LongLive's config keys, checked: ``lora_ckpt`` + ``adapter`` (the LoRA merged at load time) and the re-cache choice.

``adapter`` is LongLive's ``{type: lora, rank, alpha, dropout, dtype, verbose}``: ``rank`` must equal the LoRA
file's r, ``alpha`` (null: alpha = rank) gives the scale alpha / r; ``dtype`` and ``verbose`` are not read (as
upstream); only ``type: lora`` exists. Errors are ``CLIError`` paragraphs naming the key, its source and the fix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from utils.errors import CLIError

ADAPTER_KEYS = ("type", "rank", "alpha", "dropout", "dtype", "verbose")
RECACHE_CHOICES = ("off", "ours", "longlive")


@dataclass(frozen=True)
class LoraSettings:
    """What ``load_generator`` needs to merge the LoRA: the file, alpha (None: alpha = r) and the expected rank."""

    path: str
    alpha: float | None
    rank: int | None


def lora_settings(lora_ckpt: str | None, adapter: object, source: str) -> LoraSettings | None:
    """Check ``lora_ckpt`` and ``adapter`` together; None when no LoRA is configured."""
    if lora_ckpt is None and adapter is None:
        return None
    if lora_ckpt is None:
        raise CLIError(f"{source}: adapter is set but lora_ckpt is not; the adapter describes the LoRA file to merge. "
                       f"Set lora_ckpt to it (LongLive: longlive_models/models/lora.pt), or remove adapter.")
    if adapter is None:
        return LoraSettings(str(lora_ckpt), None, None)
    if not isinstance(adapter, dict):
        raise CLIError(f"{source}: adapter = {adapter!r} must be a mapping like {{type: lora, rank: 256, alpha: 256}}.")
    unknown = sorted(str(k) for k in adapter if k not in ADAPTER_KEYS)
    if unknown:
        raise CLIError(f"{source}: adapter has the unknown key '{unknown[0]}'; an adapter has only "
                       f"{', '.join(ADAPTER_KEYS)} (LongLive's LoRA settings).")
    kind = adapter.get("type", "lora")
    if kind != "lora":
        raise CLIError(f"{source}: adapter.type = {kind!r}; only 'lora' adapters can be merged. Set type: lora.")
    rank = adapter.get("rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise CLIError(f"{source}: adapter.rank = {rank!r} must be a positive integer (the LoRA's r, 256 for "
                       f"LongLive), or null to take it from the file.")
    alpha = adapter.get("alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or not math.isfinite(alpha) or alpha <= 0):
        raise CLIError(f"{source}: adapter.alpha = {alpha!r} must be a positive number, or null for alpha = rank "
                       f"(LongLive: 256).")
    if alpha is None and rank is not None:
        alpha = rank  # null means alpha = rank (the configured one; it must equal the file's r anyway)
    dropout = adapter.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise CLIError(f"{source}: adapter.dropout = {dropout!r} must be a number in [0, 1) (it does not act at "
                       f"inference).")
    return LoraSettings(str(lora_ckpt), None if alpha is None else float(alpha), rank)


def recache_variant(choice: str | bool | None) -> str | bool:
    """``iter_chunks``' ``recache`` argument for a CLI choice: off -> False, ours, longlive."""
    if choice in (None, False, "off"):
        return False
    if choice is True or choice == "ours":
        return "ours"
    if choice == "longlive":
        return "longlive"
    raise CLIError(f"re-cache variant {choice!r} is unknown; use one of {', '.join(RECACHE_CHOICES)} (ours: "
                   f"recompute every cached frame at its position; longlive: LongLive's re-cache of the last window "
                   f"frames, with global_sink keeping the first sink).")
