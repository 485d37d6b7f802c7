"""Reproduce the released Self Forcing rollout (../shared/vectors, computed by the released code) from its recipes."""
import hashlib
import os
from pathlib import Path

import pytest
import torch

from pipeline.causal_inference import CausalInferencePipeline, RolloutConfig
from pipeline.policies import SelfForcingWindow
from wan.causal_model import CausalWanModel
from wan.config import WanConfig

VECTORS = Path(os.environ.get("DF_VECTORS_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "vectors"))
FILES = ["self_forcing_global_21f.pt", "self_forcing_window21_sink0_30f.pt"]


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("name", FILES)
def test_released_self_forcing_vectors(name):
    path = VECTORS / name
    if not path.exists():
        pytest.skip(f"reference vectors not found at {path} (they live in ../shared/vectors of the team checkout; "
                    f"set DF_VECTORS_DIR to point elsewhere)")
    d = torch.load(path, weights_only=False)
    model = CausalWanModel(WanConfig.from_dict(d["model_config"])).eval()
    model.load_state_dict_strict({k.removeprefix("model."): v for k, v in d["state_dict"].items()}, source=name)
    r = d["rollout"]
    pipe = CausalInferencePipeline(model, RolloutConfig.from_dict(r),
                                   SelfForcingWindow(local_attn_size=r["local_attn_size"], sink_size=r["sink_size"]))
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
