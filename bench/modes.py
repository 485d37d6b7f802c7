"""Cache policy per benchmark mode (any mode of the ``pipeline.policies`` registry) and the name of its event."""
from __future__ import annotations

from pipeline.policies import ParticipativeCompression, build_policy, registered_modes

from .presets import MODE_SETTINGS


def available_modes() -> tuple[str, ...]:
    """Every registered cache mode, read when asked (a policy registered after import counts)."""
    return registered_modes()


def make_policy(mode: str):
    """(policy, class name) for ``mode``: the shipped settings of ``MODE_SETTINGS``, else its class defaults."""
    policy = build_policy(mode, **MODE_SETTINGS.get(mode, {}))
    return policy, type(policy).__name__


def event_kind_of(policy) -> str:
    """The cache event of a policy: ``compress`` for Participative Compression, ``evict`` otherwise (bench labels:
    a block whose committed tokens did not just grow by the chunk's is an event block)."""
    return "compress" if isinstance(policy, ParticipativeCompression) else "evict"
