"""Reproduce the released LongLive rollout (normal mode, window 12 with a 3-frame sink, a rank-4 LoRA merged at load
time) from the recipes stored with the reference vector, computed by LongLive's own code."""
import hashlib
import os
from pathlib import Path

import pytest
import torch

from pipeline.causal_inference import CausalInferencePipeline, RolloutConfig
from pipeline.policies import SelfForcingWindow
from wan.causal_model import CausalWanModel
from wan.config import WanConfig
from wan.lora import merge_lora

VECTORS = Path(os.environ.get("DF_VECTORS_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "vectors"))
NAME = "longlive_window12_sink3_lora_24f.pt"


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def test_released_longlive_vector(tmp_path):
    path = VECTORS / NAME
    if not path.exists():
        pytest.skip(f"reference vectors not found at {path} (they live in ../shared/vectors of the team checkout; "
                    f"set DF_VECTORS_DIR to point elsewhere)")
    d = torch.load(path, weights_only=False)
    r, lora = d["rollout"], d["lora"]
    assert not r["use_infinite_attention"]
    model = CausalWanModel(WanConfig.from_dict(d["model_config"])).eval()
    model.load_state_dict_strict({k.removeprefix("model."): v for k, v in d["state_dict"].items()}, source=NAME)
    # The adapter goes through the loader as LongLive ships it: lora.pt with a generator_lora entry, alpha from the
    # config (not in the file), rank checked against the config.
    lora_file = tmp_path / "lora.pt"
    torch.save({"generator_lora": lora["state_dict"], "critic_lora": {}, "step": 0}, lora_file)
    assert merge_lora(model, lora_file, lora["alpha"], lora["rank"]) == 2.0

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
    assert next(hashes, None) is None
    diff = (latents - d["latents"]).abs().max().item()
    assert diff < 1e-4, f"max abs difference {diff}"
