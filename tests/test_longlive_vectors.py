"""Reproduce the released LongLive rollout (normal mode, window 12 with a 3-frame sink, a rank-4 LoRA merged at load
time) from the recipes stored with the reference vector, computed by LongLive's own code."""
import torch

from pipeline.rollout import Rollout, RolloutConfig
from pipeline.policies import SelfForcingWindow
from reference_vectors import load_vector, run_vector, vector_model
from wan.lora import merge_lora

NAME = "longlive_window12_sink3_lora_24f.pt"


def test_released_longlive_vector(tmp_path):
    d = load_vector(NAME)
    r, lora = d["rollout"], d["lora"]
    assert not r["use_infinite_attention"]
    model = vector_model(d, NAME)
    # The adapter goes through the loader as LongLive ships it: lora.pt with a generator_lora entry, alpha from the
    # config (not in the file), rank checked against the config.
    lora_file = tmp_path / "lora.pt"
    torch.save({"generator_lora": lora["state_dict"], "critic_lora": {}, "step": 0}, lora_file)
    assert merge_lora(model, lora_file, lora["alpha"], lora["rank"]) == 2.0
    pipe = Rollout(model, RolloutConfig.from_dict(r),
                                   SelfForcingWindow(local_attn_size=r["local_attn_size"], sink_size=r["sink_size"]))
    diff = run_vector(pipe, d)
    assert diff < 1e-4, f"max abs difference {diff}"
