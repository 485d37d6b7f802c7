"""Rolling Forcing: a rolling window of blocks at staggered noise levels (hub ``TencentARC/RollingForcing``).

Checkpoint ``checkpoints/rolling_forcing_dmd.pt`` (weights entry ``generator_ema``: the released README runs with
``--use_ema``; FSDP's ``_fsdp_wrapped_module.`` infix is removed and the weights load strictly). Released config
``configs/rolling_forcing_dmd.yaml``: steps [1000, 800, 600, 400, 200] warped with shift 5 (5 steps = a window of 5
blocks), 3-frame blocks, ``context_noise`` 0; the cache is the loop's own (a 3-frame anchor, a 24-frame buffer, at
most 21 attended frames), so ``local_attn_size`` / ``sink_size`` do not apply. The loop: ``pipeline/rolling.py``,
its semantics and worked example: docs/rolling.md. Causal Forcing's ``chunkwise/longvideo.pt`` runs the same loop
with 4 steps (``--method causal_forcing --variant longvideo``).

Deep Sink on top (a documented extension, docs/rolling.md): ``rolling_forcing.sink_frames`` (whole blocks) replaces
the one-block anchor by a larger sink placed right before the working cache; ``rolling_forcing.clean_pass_sees_anchor``
keeps the sink visible to the clean pass (as released it drops out from block 7 on). Participative Compression on
top (docs/rolling.md): ``rolling_forcing.pc_budget_frames`` (with ``recent_frames``, ``reuse_cap``, and a larger
``buffer_frames`` / ``attention_cap_frames`` to leave room and history).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import CheckpointFile, Method

REPO_ID = "TencentARC/RollingForcing"
STEPS = [1000, 800, 600, 400, 200]


@dataclass
class RollingSection:
    """The rolling loop's options (``rolling_forcing.<key>``, or ``causal_forcing.<key>`` for its longvideo variant);
    the defaults are the released loop."""

    sink_frames: Optional[int] = None        # None: the released 3-frame anchor; whole blocks: a Deep Sink
    clean_pass_sees_anchor: bool = False     # False as released (the clean pass loses the anchor from block 7 on)
    pc_budget_frames: Optional[int] = None   # None: off; C: Participative Compression chooses C frames' worth of tokens
    recent_frames: Optional[int] = None      # PC: frames of denoising-call queries scored (None: 4)
    reuse_cap: Optional[int] = None          # PC: picks per token while others compete (None: 7; 0: no cap)
    buffer_frames: Optional[int] = None      # KV storage per layer in frames (None: 24 as released)
    attention_cap_frames: Optional[int] = None  # most frames a call attends (None: 21 as released)


def rolling_defaults(steps: list, use_ema: bool) -> dict:
    """Config values of a rolling-window checkpoint with ``steps``: the loop's own cache, no window or sink keys."""
    return {"mode": "self_forcing", "model_kwargs": {"local_attn_size": -1, "sink_size": 0},
            "denoising_step_list": list(steps), "num_frame_per_block": 3, "use_ema": use_ema}


def build_rolling_loop(section: RollingSection | None):
    """The rolling loop with the section's options (the released loop without one)."""
    from pipeline.loops import build_loop
    if section is None:
        return build_loop("rolling")
    optional = {name: getattr(section, name) for name in ("pc_budget_frames", "recent_frames", "reuse_cap",
                                                           "buffer_frames", "attention_cap_frames")
                if getattr(section, name) is not None}  # unset: the loop's own defaults (the released values)
    return build_loop("rolling", sink_frames=section.sink_frames,
                      clean_pass_sees_anchor=bool(section.clean_pass_sees_anchor), **optional)


class RollingForcing(Method):
    """The Rolling Forcing checkpoint in the rolling loop, as released."""

    name = "rolling_forcing"
    summary = "Rolling Forcing (rolling window of 5 blocks at staggered noise levels, 3-frame anchor)"
    section = RollingSection
    checkpoints = {"dmd": CheckpointFile(REPO_ID, "checkpoints/rolling_forcing_dmd.pt", ".", "generator_ema")}
    default_variant = "dmd"
    loop = "rolling"

    def defaults(self, variant: str | None) -> dict:
        """``rolling_forcing_dmd.yaml`` as released, with the EMA weights."""
        return rolling_defaults(STEPS, use_ema=True)

    def claims(self, values: dict) -> bool:
        """The released YAML: its five-step list [1000, 800, 600, 400, 200]."""
        return list(values.get("denoising_step_list") or []) == STEPS

    def build_loop(self, section, variant: str | None):
        """The rolling loop with the section's Deep Sink options."""
        return build_rolling_loop(section)
