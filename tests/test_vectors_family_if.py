"""Reproduce the released Infinite-Forcing V-sink rollout (window 6, sink 1, reference vector computed by its own code)
with the ``infinite_forcing`` cache mode; skipped when the vectors folder is absent (DF_VECTORS_DIR overrides)."""
import hashlib
import os
from pathlib import Path

import pytest
import torch

from pipeline.causal_inference import CausalInferencePipeline, RolloutConfig
from pipeline.policies import build_policy
from wan.causal_model import CausalWanModel
from wan.config import WanConfig

VECTORS = Path(os.environ.get("DF_VECTORS_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "vectors"))
NAME = "infinite_forcing_vsink1_30f.pt"


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def test_released_infinite_forcing_vsink_vector():
    path = VECTORS / NAME
    if not path.exists():
        pytest.skip(f"reference vector not found at {path}; set DF_VECTORS_DIR to the folder holding {NAME}")
    d = torch.load(path, weights_only=False)
    model = CausalWanModel(WanConfig.from_dict(d["model_config"])).eval()
    model.load_state_dict_strict({k.removeprefix("model."): v for k, v in d["state_dict"].items()}, source=NAME)
    r = d["rollout"]
    assert (r["local_attn_size"], r["sink_size"], r["num_frame_per_block"]) == (6, 1, 3)
    policy = build_policy("infinite_forcing", local_attn_size=r["local_attn_size"], sink_size=r["sink_size"])
    pipe = CausalInferencePipeline(model, RolloutConfig.from_dict(r), policy)
    assert torch.allclose(pipe.timesteps, d["warped_timesteps"])

    noise = torch.randn(d["noise"]["shape"], generator=torch.Generator().manual_seed(d["noise"]["seed"]),
                        dtype=torch.float32)
    assert _sha256(noise) == d["noise"]["sha256"]
    g = torch.Generator().manual_seed(d["renoise"]["seed"])
    hashes = iter(d["renoise"]["sha256"])

    def renoise(shape, dtype, device):
        eps = torch.randn(shape, generator=g, dtype=dtype, device=device)
        assert _sha256(eps) == next(hashes), "re-noise draws out of upstream order"
        return eps

    latents = pipe.generate(d["prompt_embeds"], noise, renoise)
    diff = (latents - d["latents"]).abs().max().item()
    assert diff < 1e-4, f"max abs difference {diff}"
