"""Reproduce the released Infinite-Forcing V-sink rollout (window 6, sink 1, reference vector computed by its own code)
with the ``infinite_forcing`` cache mode; skipped when the vectors folder is absent (DF_VECTORS_DIR overrides)."""
import methods  # noqa: F401  (registers the infinite_forcing cache mode: methods/infinite_forcing.py)
from pipeline.rollout import Rollout, RolloutConfig
from pipeline.policies import build_policy
from reference_vectors import load_vector, run_vector, vector_model

NAME = "infinite_forcing_vsink1_30f.pt"


def test_released_infinite_forcing_vsink_vector():
    d = load_vector(NAME)
    r = d["rollout"]
    assert (r["local_attn_size"], r["sink_size"], r["num_frame_per_block"]) == (6, 1, 3)
    policy = build_policy("infinite_forcing", local_attn_size=r["local_attn_size"], sink_size=r["sink_size"])
    diff = run_vector(Rollout(vector_model(d, NAME), RolloutConfig.from_dict(r), policy), d)
    assert diff < 1e-4, f"max abs difference {diff}"
