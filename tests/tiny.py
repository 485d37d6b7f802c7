"""Tiny model and pipeline builders shared by the tests."""
from __future__ import annotations

import torch

from pipeline.rollout import Rollout, RolloutConfig
from pipeline.policies import SelfForcingWindow
from wan.causal_model import CausalWanModel
from wan.config import WanConfig

TINY = dict(dim=32, ffn_dim=64, freq_dim=16, text_dim=32, in_dim=16, out_dim=16, num_heads=2, num_layers=2,
            text_len=16, patch_size=(1, 2, 2), eps=1e-6, qk_norm=True, cross_attn_norm=True)


def tiny_config(**overrides) -> WanConfig:
    """A 2-layer, 2-head Wan config."""
    return WanConfig(**{**TINY, **overrides})


def tiny_model(seed: int = 0, **overrides) -> CausalWanModel:
    """A randomly initialised tiny CausalWanModel (biases and norms perturbed so every parameter matters)."""
    torch.manual_seed(seed)
    model = CausalWanModel(tiny_config(**overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def tiny_pipeline(model=None, local_attn_size=21, sink_size=0, rebase=True, policy=None, rotated_key_buffer=True):
    """A rollout pipeline over a tiny model with the Self Forcing window policy."""
    model = model or tiny_model()
    policy = policy or SelfForcingWindow(local_attn_size=local_attn_size, sink_size=sink_size)
    return Rollout(model, RolloutConfig(), policy, rebase=rebase,
                                   rotated_key_buffer=rotated_key_buffer)


def text_embeds(batch: int, cfg: WanConfig, seed: int = 1, valid: int = 5) -> torch.Tensor:
    """Prompt embeddings [batch, text_len, text_dim] with zero padding after ``valid`` tokens."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g)
    e[:, valid:] = 0
    return e
