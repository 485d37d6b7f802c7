"""Cache policy per benchmark mode (any mode of the ``pipeline.policies`` registry) and chunk event labels."""
from __future__ import annotations

from pipeline.policies import ParticipativeCompression, build_policy, policy_class, registered_modes

from .presets import MODE_SETTINGS


def available_modes() -> tuple[str, ...]:
    """Every registered cache mode, read when asked (a policy registered after import counts)."""
    return registered_modes()


def make_policy(mode: str):
    """(policy, class name) for ``mode``: the shipped settings of ``MODE_SETTINGS``, else its class defaults."""
    policy = build_policy(mode, **MODE_SETTINGS.get(mode, {}))
    return policy, type(policy).__name__


def event_kind(mode: str) -> str:
    """Name of the cache event of ``mode``: ``compress`` for Participative Compression modes, ``evict`` otherwise."""
    return "compress" if issubclass(policy_class(mode), ParticipativeCompression) else "evict"


def label_chunk(tokens_before: int, tokens_after: int, chunk_tokens: int, mode: str) -> str:
    """``normal`` when the chunk only appended its tokens, else the mode's event kind (host ints, no sync).

    ``tokens_before``/``tokens_after``: committed tokens of a layer before the chunk and after its commit.
    """
    return "normal" if tokens_after == tokens_before + chunk_tokens else event_kind(mode)
