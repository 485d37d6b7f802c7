"""Causal Forcing: Self Forcing networks distilled from a causal ODE / CD initialisation (hub ``zhuhz22/Causal-Forcing``).

Every released file holds the Self Forcing network (Wan2.1-T2V-1.3B); the variants differ in the weights entry, the
chunk size and the step lists, all declared here, so ``--method causal_forcing --variant framewise`` (or the released
checkpoint path) runs a file as released without hand-typed keys:

| variant | file | entry | frames per chunk | steps (first chunk) |
|---|---|---|---|---|
| chunkwise | chunkwise/causal_forcing.pt | generator | 3 | 1000, 750, 500, 250 |
| framewise | framewise/causal_forcing.pt | generator_ema | 1 | 1000, 750, 500, 250 (also image-to-video) |
| framewise-2step | causal-forcing++/framewise-2step.pt | generator_ema | 1 | 1000, 500 (1000, 750, 500, 250) |
| framewise-1step | causal-forcing++/framewise-1step.pt | generator_ema | 1 | 1000 (1000, 750, 500, 250) |
| longvideo | chunkwise/longvideo.pt | generator_ema | 3 | 1000, 750, 500, 250 in Rolling Forcing's rolling loop |

The cache is Self Forcing's as released (FIFO window of 21 frames, no sink); ``--mode`` puts Deep Sink / PC on top.
``longvideo`` is a Rolling Forcing model (Causal Forcing's ``long_video/``): the rolling loop of
``methods/rolling_forcing.py`` with a window of 4 blocks and its own cache.
Files land under ``checkpoints/causal_forcing/`` (``hf download zhuhz22/Causal-Forcing FILE --local-dir
checkpoints/causal_forcing``).
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import CheckpointFile, Method
from .rolling_forcing import RollingSection, build_rolling_loop, rolling_defaults

REPO_ID = "zhuhz22/Causal-Forcing"
LOCAL_DIR = "checkpoints/causal_forcing"
FOUR_STEPS = (1000, 750, 500, 250)


@dataclass(frozen=True)
class Variant:
    """One released file's recipe."""

    file: CheckpointFile
    num_frame_per_block: int
    denoising_step_list: tuple[int, ...]
    denoising_step_list_first_chunk: tuple[int, ...] | None = None
    i2v: bool = False
    rolling: bool = False  # Rolling Forcing's loop (methods/rolling_forcing.py)


def _file(filename: str, entry: str) -> CheckpointFile:
    return CheckpointFile(REPO_ID, filename, LOCAL_DIR, entry)


VARIANTS = {
    "chunkwise": Variant(_file("chunkwise/causal_forcing.pt", "generator"), 3, FOUR_STEPS),
    "framewise": Variant(_file("framewise/causal_forcing.pt", "generator_ema"), 1, FOUR_STEPS, i2v=True),
    "framewise-2step": Variant(_file("causal-forcing++/framewise-2step.pt", "generator_ema"), 1, (1000, 500),
                               FOUR_STEPS),
    "framewise-1step": Variant(_file("causal-forcing++/framewise-1step.pt", "generator_ema"), 1, (1000,),
                               FOUR_STEPS),
    "longvideo": Variant(_file("chunkwise/longvideo.pt", "generator_ema"), 3, FOUR_STEPS, rolling=True),
}


class CausalForcing(Method):
    """The Causal Forcing / Causal Forcing++ checkpoints in the chunk loop, each with its chunk size and steps."""

    name = "causal_forcing"
    summary = "Causal Forcing / CF++ (chunk-wise or frame-wise, 4/2/1 steps; frame-wise also image-to-video)"
    checkpoints = {name: v.file for name, v in VARIANTS.items()}
    default_variant = "chunkwise"
    section = RollingSection  # the rolling loop's options, read by the longvideo variant (causal_forcing.<key>)

    def defaults(self, variant: str | None) -> dict:
        """The variant's chunk size, step lists and weights entry, with Self Forcing's released cache."""
        v = VARIANTS[variant or self.default_variant]
        if v.rolling:
            return rolling_defaults(FOUR_STEPS, use_ema=True)
        first = None if v.denoising_step_list_first_chunk is None else list(v.denoising_step_list_first_chunk)
        return {"mode": "self_forcing", "model_kwargs": {"sink_size": 0}, "use_ema": v.file.use_ema,
                "num_frame_per_block": v.num_frame_per_block, "denoising_step_list": list(v.denoising_step_list),
                "denoising_step_list_first_chunk": first}

    def build_loop(self, section, variant: str | None):
        """The chunk loop, or the rolling loop (as released) for ``longvideo``."""
        if VARIANTS[variant or self.default_variant].rolling:
            return build_rolling_loop(section)
        return super().build_loop(section, variant)

    def claims(self, values: dict) -> bool:
        """A YAML with a first-chunk step list is a Causal Forcing++ one."""
        return values.get("denoising_step_list_first_chunk") is not None
