"""Reproduce the released Self Forcing rollout (reference vectors computed by the released code) from its recipes."""
import pytest

from pipeline.rollout import Rollout, RolloutConfig
from pipeline.policies import SelfForcingWindow
from reference_vectors import load_vector, run_vector, vector_model

FILES = ["self_forcing_global_21f.pt", "self_forcing_window21_sink0_30f.pt"]


@pytest.mark.parametrize("name", FILES)
def test_released_self_forcing_vectors(name):
    d = load_vector(name)
    r = d["rollout"]
    pipe = Rollout(vector_model(d, name), RolloutConfig.from_dict(r),
                                   SelfForcingWindow(local_attn_size=r["local_attn_size"], sink_size=r["sink_size"]))
    diff = run_vector(pipe, d)
    assert diff < 1e-4, f"max abs difference {diff}"
