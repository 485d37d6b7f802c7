"""Cache policy per benchmark mode (``pipeline.policies.build_policy`` when present) and chunk event labels."""
from __future__ import annotations

import logging

from .presets import MODE_SETTINGS

logger = logging.getLogger(__name__)


def make_policy(mode: str):
    """(policy, implementation name) for ``mode`` with the shipped settings of ``MODE_SETTINGS``.

    Falls back to ``SelfForcingWindow`` with the mode's sink size when ``build_policy`` is not available yet, and
    says so in the implementation name (the figures are then not those of the mode).
    """
    if mode not in MODE_SETTINGS:
        raise ValueError(f"--modes: {mode!r} is unknown; use any of {', '.join(MODE_SETTINGS)}")
    settings = MODE_SETTINGS[mode]
    try:
        from pipeline.policies import build_policy
    except ImportError:
        from pipeline.policies import SelfForcingWindow
        logger.warning("pipeline.policies.build_policy is missing: mode %s runs SelfForcingWindow", mode)
        return (SelfForcingWindow(local_attn_size=settings["local_attn_size"], sink_size=settings["sink_size"]),
                "SelfForcingWindow (fallback)")
    policy = build_policy(mode, **settings)
    return policy, type(policy).__name__


def event_kind(mode: str) -> str:
    """Name of the cache event of ``mode``: ``compress`` for Deep Sink + PC, ``evict`` otherwise."""
    return "compress" if mode == "deep_sink_pc" else "evict"


def label_chunk(tokens_before: int, tokens_after: int, chunk_tokens: int, mode: str) -> str:
    """``normal`` when the chunk only appended its tokens, else the mode's event kind (host ints, no sync).

    ``tokens_before``/``tokens_after``: committed tokens of a layer before the chunk and after its commit.
    """
    return "normal" if tokens_after == tokens_before + chunk_tokens else event_kind(mode)
