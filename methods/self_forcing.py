"""Self Forcing as released: the DMD checkpoint in the chunk loop with a plain FIFO window (no sink moves).

The released inference config: chunks of 3 frames, steps [1000, 750, 500, 250] warped with shift 5, a 21-frame
window (``local_attn_size`` -1 means the 21-frame cap) and no sink (``sink_size`` 0).
"""
from __future__ import annotations

from .base import Method
from .deep_forcing import SELF_FORCING_DMD


class SelfForcing(Method):
    """Self Forcing's own cache: ``self_forcing`` mode, sink 0."""

    name = "self_forcing"
    summary = "Self Forcing as released (FIFO window of 21 frames, no sink)"
    checkpoints = {"dmd": SELF_FORCING_DMD}
    default_variant = "dmd"

    def defaults(self, variant: str | None) -> dict:
        """The released cache: FIFO window, no sink."""
        return {"mode": "self_forcing", "model_kwargs": {"sink_size": 0}}
