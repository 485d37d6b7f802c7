"""Matrix-Game 2.0: the interactive world model (hub ``Skywork/Matrix-Game-2.0``), conditioned on an image and actions.

| variant | file (under Matrix-Game-2.0/) | keyboard | mouse | window (config.json) | steps |
|---|---|---|---|---|---|
| universal | base_distilled_model/base_distill.safetensors | 4 | yes | 6 | 1000, 666, 333 |
| gta_drive | gta_distilled_model/gta_keyboard2dim.safetensors | 2 | yes | 4 | 1000, 666, 333 |
| templerun | templerun_distilled_model/templerun_7dim_onlykey.safetensors | 7 | no | 6 | 1000, 750, 500, 250 |

Every variant: chunks of 3 latent frames, context_noise 0, shift 5, 352x640 at 12 fps, Self Forcing's FIFO window
(sink 0) over all three caches (self-attention, mouse, keyboard); the architecture is the variant's ``config.json``
(shipped in configs/matrix_game2/, released keys and values). One video per image (``--image``); the actions are the
released benchmark draw (``--actions bench``, seeded by ``--seed``), an actions file, or keys typed per chunk
(``--interactive``). docs/matrix_game2.md has the semantics and what Deep Sink / PC change here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from utils.paths import CONFIGS_DIR

from .base import CheckpointFile, Method, MethodRun

REPO_ID = "Skywork/Matrix-Game-2.0"
MODEL_DIR = "Matrix-Game-2.0"
VAE_FILE = "Wan2.1_VAE.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
CONDITION_FRAMES = 120  # latent frames of image conditioning encoded at most; later frames repeat the last one


@dataclass(frozen=True)
class Variant:
    """One released variant: its generator file and step list (its window is its config.json's)."""

    file: str
    steps: tuple[int, ...]


VARIANTS = {
    "universal": Variant("base_distilled_model/base_distill.safetensors", (1000, 666, 333)),
    "gta_drive": Variant("gta_distilled_model/gta_keyboard2dim.safetensors", (1000, 666, 333)),
    "templerun": Variant("templerun_distilled_model/templerun_7dim_onlykey.safetensors", (1000, 750, 500, 250)),
}


@dataclass
class MatrixGame2Section:
    """``matrix_game2:`` keys."""

    model_config: Optional[str] = None   # the variant's config.json (or its folder); None: the shipped one
    actions: str = "bench"               # bench (the released random draw, --seed) | an actions file | a sidecar


def shipped_config(variant: str) -> Path:
    """The shipped ``config.json`` of ``variant`` (released keys and values)."""
    return CONFIGS_DIR / "matrix_game2" / "distilled_model" / variant / "config.json"


class MatrixGame2(Method):
    """The three released world-model variants in the chunk loop, conditioned on an image and actions."""

    name = "matrix_game2"
    summary = "Matrix-Game 2.0 world model (image + keyboard/mouse; universal, gta_drive, templerun)"
    section = MatrixGame2Section
    upstream_keys = ("model_kwargs.model_config",)
    checkpoints = {name: CheckpointFile(REPO_ID, v.file, MODEL_DIR, "model") for name, v in VARIANTS.items()}
    default_variant = "universal"
    conditioning = "image+actions"
    noise_channels_first = True
    variant_key = "mode"  # released YAMLs: ``mode: universal``; so is ``--mode universal``
    model_dir = MODEL_DIR

    def defaults(self, variant: str | None) -> dict:
        """The variant's steps, its config.json's window and sink, 352x640 at 12 fps, 150 latent frames (released)."""
        import json
        variant = variant or self.default_variant
        v, config = VARIANTS[variant], json.loads(shipped_config(variant).read_text(encoding="utf-8"))
        return {"mode": "self_forcing", "model_kwargs": {k: config[k] for k in ("local_attn_size", "sink_size")},
                "denoising_step_list": list(v.steps), "warp_denoising_step": True, "num_frame_per_block": 3,
                "context_noise": 0, "height": 352, "width": 640, "fps": 12.0, "num_output_frames": 150}

    def claims(self, values: dict) -> bool:
        """A released inference YAML names a variant as its ``mode``."""
        return values.get("mode") in VARIANTS

    def variant_for(self, values: dict, checkpoint: str | None) -> str | None:
        """The YAML's ``mode``, else the checkpoint file's variant."""
        return values.get("mode") if values.get("mode") in VARIANTS else super().variant_for(values, checkpoint)

    def resolve(self, ctx) -> MethodRun:
        """The image, the actions and the model files of the run, checked."""
        from .world_run import resolve_world_run
        return resolve_world_run(self, ctx)

