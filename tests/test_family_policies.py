"""The worked-example tables of the family's cache modes (docs/cache.md), checked on the cache's frames and time
positions for chunks f = 0 .. 30: Infinite-Forcing's V-sink (W 6, S 1 and W 12, S 2), LongLive normal and infinite
(W 12, S 3). The attended index of a key is its time position relative to the window's origin ``f - n_c``."""
import pytest

import methods  # noqa: F401  (registers the infinite_forcing cache mode: methods/infinite_forcing.py)
from pipeline.policies import build_policy

from test_policies import B, F, drive, make_kv, ramp_qkv


def rollout_table(policy, num_chunks=11):
    """Per chunk f: (frames, attended indices, evicted frames) of the layer-0 cache while the chunk is generated."""
    trace = []
    policy.trace = trace.append
    kv = make_kv(policy)
    rows, prev = {}, []
    for f in drive(kv, num_chunks, ramp_qkv(lambda fr, tok: fr)):
        c = kv.layers[0]
        frames, t_pos = c.frame[0, c.order()[::F]].tolist(), c.t_pos[0, c.order()[::F]].tolist()
        n_c = len(frames) - B  # committed frames after the chunk's event
        rows[f] = (frames, [t - (f - n_c) for t in t_pos], sorted(set(prev) - set(frames)))
        prev = frames
    events = {r["chunk_start"] for r in trace}
    assert all(r["event"] == "evict" for r in trace)
    return rows, events


def expected_gap0(f, W, S):
    """The V-sink rule: sink 0..S-1, tail f-(n_c-S)..f-1, chunk f..f+B-1; indices 0..n_c+B-1 (absolute before W)."""
    n_c = min(f, W - B)
    frames = list(range(S)) + list(range(f - (n_c - S), f)) + list(range(f, f + B)) if f >= S else \
        list(range(f + B))
    return frames, list(range(len(frames)))


def test_infinite_forcing_vsink1_table():
    rows, events = rollout_table(build_policy("infinite_forcing", local_attn_size=6, sink_size=1))
    table = {  # f: (cache slots, attended indices, evicted), as the release computes them
        0: ([0, 1, 2], [0, 1, 2], []),
        3: ([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5], []),
        6: ([0, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5], [1, 2, 3]),
        9: ([0, 7, 8, 9, 10, 11], [0, 1, 2, 3, 4, 5], [4, 5, 6]),
        12: ([0, 10, 11, 12, 13, 14], [0, 1, 2, 3, 4, 5], [7, 8, 9]),
        15: ([0, 13, 14, 15, 16, 17], [0, 1, 2, 3, 4, 5], [10, 11, 12]),
        30: ([0, 28, 29, 30, 31, 32], [0, 1, 2, 3, 4, 5], [25, 26, 27]),
    }
    for f, row in table.items():
        assert rows[f] == row, f
    for f in range(6, 31, 3):  # general row: evicted f-5 .. f-3; keys 0@0, (f-2)@1, (f-1)@2, (f .. f+2)@3-5
        assert rows[f] == ([0, f - 2, f - 1, f, f + 1, f + 2], [0, 1, 2, 3, 4, 5], [f - 5, f - 4, f - 3])
        assert rows[f][:2] == expected_gap0(f, 6, 1)
    assert events == set(range(6, 31, 3))


def test_infinite_forcing_w12_s2_table():
    rows, events = rollout_table(build_policy("infinite_forcing", local_attn_size=12, sink_size=2))
    for f in range(0, 12, 3):  # absolute up to f = 9
        assert rows[f] == (list(range(f + 3)), list(range(f + 3)), [])
    assert rows[12][2] == [2, 3, 4]
    for f in range(12, 31, 3):  # keys 0@0 1@1 (f-7 .. f-1)@2-8 (f .. f+2)@9-11
        assert rows[f][:2] == ([0, 1] + list(range(f - 7, f + 3)), list(range(12)))
        assert rows[f][:2] == expected_gap0(f, 12, 2)
        if f > 12:
            assert rows[f][2] == [f - 10, f - 9, f - 8]  # the 3 oldest tail frames
    assert events == set(range(12, 31, 3))


@pytest.mark.parametrize("infinite", [False, True])
def test_longlive_normal_and_infinite_table(infinite):
    mode = "infinite_forcing" if infinite else "self_forcing"
    rows, _ = rollout_table(build_policy(mode, local_attn_size=12, sink_size=3))
    for f in range(0, 12, 3):  # both modes: keys 0 .. f+2 at their absolute frames
        assert rows[f] == (list(range(f + 3)), list(range(f + 3)), [])
    for f in range(12, 31, 3):
        frames = [0, 1, 2] + list(range(f - 6, f + 3))
        assert rows[f][0] == frames and rows[f][2] == [f - 9, f - 8, f - 7]  # evicted f-9 .. f-7
        if infinite:  # sink 0-2 / window 3-8 / chunk 9-11
            assert rows[f][1] == list(range(12))
        else:  # sink 0-2 / window f-6 .. f-1 / chunk f .. f+2: every position is the absolute frame
            assert [i + (f - 9) for i in rows[f][1]] == frames


def test_deep_sink_gap_is_the_chunk_size_and_gap0_touches_the_tail():
    """Deep Sink (gap B) leaves B unused indices before the oldest tail frame; sink_gap 0 closes them."""
    for gap, want in [(None, B), (0, 0), (5, 5)]:
        rows, _ = rollout_table(build_policy("deep_sink", local_attn_size=12, sink_size=6, sink_gap=gap))
        for f in range(12, 31, 3):
            idx = rows[f][1]
            assert idx[6] - idx[5] - 1 == want  # hole between the last sink frame and the oldest tail frame
            assert idx[6:] == list(range(idx[6], idx[6] + 6))  # tail and chunk contiguous
