"""Tiny LoRA files in LongLive's on-disk layout (tests and the CPU demo).

``write_lora_file(path, cfg)`` writes what LongLive's ``models/lora.pt`` holds: ``{generator_lora, critic_lora,
step}``, each LoRA a peft state dict keyed ``base_model.model.blocks.{i}.<module>.lora_A.weight`` ``[r, in]`` /
``.lora_B.weight`` ``[out, r]`` for every linear layer of every block. Weights are random but deterministic.
"""
from __future__ import annotations

from pathlib import Path

import torch

from wan.causal_model import CausalWanModel
from wan.config import WanConfig
from wan.lora import LORA_ENTRY, PEFT_PREFIX, expected_lora_shapes


def random_lora(cfg: WanConfig, rank: int, seed: int = 0, std: float = 0.2) -> dict[str, torch.Tensor]:
    """A peft-keyed LoRA state dict for ``CausalWanModel(cfg)`` with non-zero A and B (so merging changes W)."""
    with torch.device("meta"):
        model = CausalWanModel(cfg)
    g = torch.Generator().manual_seed(seed)
    return {PEFT_PREFIX + key: std * torch.randn(shape, generator=g)
            for key, shape in expected_lora_shapes(model, rank).items()}


def write_lora_file(path: str | Path, cfg: WanConfig, rank: int = 4, seed: int = 0) -> Path:
    """Write ``path`` as LongLive's ``lora.pt``: ``{generator_lora, critic_lora, step}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({LORA_ENTRY: random_lora(cfg, rank, seed), "critic_lora": random_lora(cfg, rank, seed + 1),
                "step": 0}, path)
    return path
