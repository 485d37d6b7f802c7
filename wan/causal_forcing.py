"""The released Causal Forcing checkpoints (hub ``zhuhz22/Causal-Forcing``): which weights entry and rollout each uses.

Every file holds the Self Forcing network (Wan2.1-T2V-1.3B); only the weights entry (``generator_ema`` needs
``--use_ema``), the chunk size and the step lists differ. ``chunkwise/longvideo.pt`` is a Rolling Forcing model
(its own rollout) and is listed only so that asking for it gives a clear answer.
"""
from __future__ import annotations

from dataclasses import dataclass

CAUSAL_FORCING_REPO_ID = "zhuhz22/Causal-Forcing"
FOUR_STEPS = (1000, 750, 500, 250)


@dataclass(frozen=True)
class CausalForcingCheckpoint:
    """One released file: its weights entry, chunk size, step lists and tasks."""

    filename: str
    entry: str  # "generator_ema" (run with --use_ema) or "generator"
    num_frame_per_block: int
    denoising_step_list: tuple[int, ...]
    denoising_step_list_first_chunk: tuple[int, ...] | None = None
    i2v: bool = False
    supported: bool = True

    @property
    def use_ema(self) -> bool:
        """Whether the file is run with ``--use_ema`` (its weights are the ``generator_ema`` entry)."""
        return self.entry == "generator_ema"


CAUSAL_FORCING_CHECKPOINTS = {c.filename: c for c in [
    CausalForcingCheckpoint("chunkwise/causal_forcing.pt", "generator", 3, FOUR_STEPS),
    CausalForcingCheckpoint("framewise/causal_forcing.pt", "generator_ema", 1, FOUR_STEPS, i2v=True),
    CausalForcingCheckpoint("causal-forcing++/framewise-2step.pt", "generator_ema", 1, (1000, 500), FOUR_STEPS),
    CausalForcingCheckpoint("causal-forcing++/framewise-1step.pt", "generator_ema", 1, (1000,), FOUR_STEPS),
    CausalForcingCheckpoint("chunkwise/longvideo.pt", "generator_ema", 3, FOUR_STEPS, supported=False),
]}


def causal_forcing_checkpoint(path) -> CausalForcingCheckpoint | None:
    """The released file a local path ends with (e.g. ``.../framewise/causal_forcing.pt``), or None."""
    posix = "/" + str(path).replace("\\", "/").lstrip("/")
    for name, ckpt in CAUSAL_FORCING_CHECKPOINTS.items():
        if posix.endswith("/" + name):
            return ckpt
    return None
