"""The advice in cache-setting errors is advice that works (no impossible ranges, no negative sizes)."""
import pytest

from pipeline.policies import CachePolicyError, build_policy


@pytest.mark.parametrize("mode, params, chunk, expected, absent", [
    ("deep_sink_pc", dict(sink_size=10, recent=20, budget=16), 3, "use --Recent <= 11 or sink_size <= 1",
     "between 30 and 21"),
    ("deep_sink_pc", dict(sink_size=10, recent=4, budget=5), 3, "choose --Budget between 14 and 21", None),
    ("self_forcing", dict(local_attn_size=1, sink_size=0), 3, "use local_attn_size >= 3", "sink_size <= -"),
    ("self_forcing", dict(local_attn_size=6, sink_size=5), 3, "use sink_size <= 3", None),
    ("deep_sink", dict(local_attn_size=12, sink_size=14), 3, "use sink_size <= 11", None),
])
def test_cache_errors_give_workable_advice(mode, params, chunk, expected, absent):
    with pytest.raises(CachePolicyError) as err:
        build_policy(mode, **params).validate(chunk)
    assert expected in str(err.value)
    if absent:
        assert absent not in str(err.value)
