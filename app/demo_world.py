"""A tiny random Matrix-Game 2.0 release for ``--method matrix_game2 --demo`` and the tests: the released file names and
key names (``model.``-prefixed safetensors, the CLIP ``.pth`` with its text side, the Wan VAE), tiny shapes."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .demo_model import random_state_dict, write_vae

TINY_WORLD_DIRNAME = "Matrix-Game-2.0-tiny"
TINY_CLIP_DIM = 160      # two heads of 80, as the ViT-H/14 heads
TINY_CLIP_LAYERS = 3     # the last one is stored but never run


@dataclass(frozen=True)
class TinyWorld:
    """Where ``write_tiny_world`` put the files."""

    model_dir: Path
    checkpoint: Path
    config: Path


def tiny_world_config(variant: str, local_attn_size: int | None = None) -> dict:
    """A released-layout ``config.json`` dict with tiny sizes and ``variant``'s action layout."""
    from methods.matrix_game2 import shipped_config
    from methods.world_actions import get_variant
    spec = get_variant(variant)
    action = {"blocks": [0, 1], "enable_keyboard": True, "enable_mouse": spec.has_mouse, "heads_num": 2,
              "hidden_size": 8, "img_hidden_size": 64, "keyboard_dim_in": spec.keyboard_dim, "keyboard_hidden_dim": 64,
              "patch_size": [1, 2, 2], "qk_norm": True, "qkv_bias": False, "rope_dim_list": [8, 12, 12],
              "rope_theta": 256, "vae_time_compression_ratio": 4, "windows_size": 3}
    if spec.has_mouse:
        action.update(mouse_dim_in=2, mouse_hidden_dim=64, mouse_qk_dim_list=[8, 12, 12])
    released = json.loads(shipped_config(variant).read_text(encoding="utf-8"))["local_attn_size"]
    window = released if local_attn_size is None else local_attn_size
    return {"_class_name": "CausalWanModel", "_diffusers_version": "0.35.0.dev0", "action_config": action,
            "dim": 64, "eps": 1e-6, "ffn_dim": 128, "freq_dim": 32, "in_dim": 36, "inject_sample_info": False,
            "local_attn_size": window, "model_type": "i2v", "num_heads": 2, "num_layers": 3, "out_dim": 16,
            "sink_size": 0, "text_len": 512, "clip_dim": TINY_CLIP_DIM}


def world_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of the world model of ``config`` with the released keys (``model.`` + network name)."""
    from wan.world_model import CausalWorldModel, WorldModelConfig
    with torch.device("meta"):
        model = CausalWorldModel(WorldModelConfig.from_dict(config))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return {f"model.{k}": v for k, v in random_state_dict(shapes, seed * 100 + 7).items()}


def clip_state_dict(dim: int = TINY_CLIP_DIM, layers: int = TINY_CLIP_LAYERS, seed: int = 0) -> dict:
    """Random CLIP weights in the released ``.pth`` layout (visual tower incl. its unused tail, a text side)."""
    from wan.clip_vision import ClipVisionConfig, ClipVisionEncoder
    cfg = ClipVisionConfig(dim=dim, num_layers=layers, num_heads=dim // 80)
    with torch.device("meta"):
        tower = ClipVisionEncoder(cfg)
    shapes = {f"visual.{k}": tuple(v.shape) for k, v in tower.state_dict().items()}
    last = f"visual.transformer.{layers - 1}."
    shapes.update({k.replace("visual.transformer.0.", last): s for k, s in shapes.items()
                   if k.startswith("visual.transformer.0.")})
    shapes.update({"visual.post_norm.weight": (dim,), "visual.post_norm.bias": (dim,), "visual.head": (dim, 64),
                   "textual.token_embedding.weight": (32, 16), "textual.head.0.weight": (16, 16)})
    state = random_state_dict(shapes, seed * 100 + 8)
    state["log_scale"] = torch.tensor(4.6)
    return state


def write_tiny_world(root, variant: str = "universal", seed: int = 0) -> TinyWorld:
    """Write a tiny release under ``root``: VAE, CLIP, the variant's config.json and generator file."""
    from safetensors.torch import save_file
    from methods.matrix_game2 import CLIP_FILE, VARIANTS
    model_dir = Path(root) / TINY_WORLD_DIRNAME
    weights = model_dir / VARIANTS[variant].file
    weights.parent.mkdir(parents=True, exist_ok=True)
    config = tiny_world_config(variant)
    (weights.parent / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(world_state_dict(config, seed), str(weights), metadata={"format": "pt"})
    torch.save(clip_state_dict(seed=seed), model_dir / CLIP_FILE)
    write_vae(model_dir, seed)
    return TinyWorld(model_dir, weights, weights.parent / "config.json")
