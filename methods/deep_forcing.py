"""Deep Forcing (the default method): the Self Forcing checkpoint with Deep Sink + Participative Compression.

Training-free: the released Self Forcing DMD checkpoint (``gdhe17/Self-Forcing``, ``checkpoints/self_forcing_dmd.pt``)
in the chunk loop, with the cache mode ``deep_sink_pc`` (sink 10, budget 16, recent 4) or ``deep_sink``
(``--is_ds_only 1``). The schema's defaults are this method's, so it adds no values of its own.
"""
from __future__ import annotations

from .base import CheckpointFile, Method

SELF_FORCING_DMD = CheckpointFile("gdhe17/Self-Forcing", "checkpoints/self_forcing_dmd.pt", ".", "generator")


class DeepForcing(Method):
    """Deep Sink (+ PC) over the Self Forcing checkpoint; ``--use_ema`` as the released scripts."""

    name = "deep_forcing"
    summary = "Deep Sink + Participative Compression on the Self Forcing checkpoint (training-free)"
    checkpoints = {"dmd": SELF_FORCING_DMD}
    default_variant = "dmd"

    def defaults(self, variant: str | None) -> dict:
        """The schema defaults are Deep Forcing's: nothing to add (the released scripts pass --use_ema)."""
        return {}
