"""Shared machinery of the released-vector tests: find a vector (skip when absent), build its tiny model, and run a
pipeline from its recipes (initial noise and every re-noise draw checked against the stored sha256)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from wan.causal_model import CausalWanModel
from wan.config import WanConfig

VECTORS = Path(os.environ.get("DF_VECTORS_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "vectors"))


def sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's contiguous bytes (the vectors' recipe checksums)."""
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def load_vector(name: str) -> dict:
    """The vector file ``name`` as a dict; skips the test when the vectors folder does not hold it."""
    path = VECTORS / name
    if not path.exists():
        pytest.skip(f"reference vector {name} not found in {VECTORS}; set DF_VECTORS_DIR to the folder holding it")
    return torch.load(path, weights_only=False)


def vector_model(d: dict, name: str) -> CausalWanModel:
    """The vector's tiny generator, loaded strictly from its Self Forcing-named state dict."""
    model = CausalWanModel(WanConfig.from_dict(d["model_config"])).eval()
    model.load_state_dict_strict({k.removeprefix("model."): v for k, v in d["state_dict"].items()}, source=name)
    return model


def run_vector(pipe, d: dict) -> float:
    """Run ``pipe`` on the vector's prompt and noise recipes; returns the max abs difference to its latents."""
    assert torch.allclose(pipe.timesteps, torch.as_tensor(d["warped_timesteps"], dtype=torch.float32))
    noise = torch.randn(d["noise"]["shape"], generator=torch.Generator().manual_seed(d["noise"]["seed"]),
                        dtype=torch.float32)
    assert sha256(noise) == d["noise"]["sha256"]
    g = torch.Generator().manual_seed(d["renoise"]["seed"])
    hashes = iter(d["renoise"]["sha256"])

    def renoise(shape, dtype, device):
        eps = torch.randn(shape, generator=g, dtype=dtype, device=device)
        assert sha256(eps) == next(hashes), "re-noise draws out of upstream order"
        return eps

    latents = pipe.generate(d["prompt_embeds"], noise, renoise)
    assert next(hashes, None) is None, "fewer re-noise draws than upstream"
    return (latents - d["latents"]).abs().max().item()
