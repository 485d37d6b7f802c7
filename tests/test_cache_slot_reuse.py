"""FIFO eviction reuses the evicted slots: no gather / index read of the cache's k/v in a steady chunk, and the kept
tokens' storage is never rewritten, in every FIFO mode (docs/cache.md, "Slot reuse"); PC still compacts by selection.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline.kv_cache import KVCache
from pipeline.policies import build_policy
from wan.rope import WanRope

F, H, D, B = 4, 2, 16, 3
FIFO = {
    "self_forcing": dict(mode="self_forcing", sink_size=3),
    "deep_sink": dict(mode="deep_sink", sink_size=14),
    "infinite_forcing": dict(mode="infinite_forcing", local_attn_size=6, sink_size=1),
    "longlive": dict(mode="self_forcing", local_attn_size=12, sink_size=3),
    "longlive_infinite": dict(mode="infinite_forcing", local_attn_size=12, sink_size=3),
    "window_not_a_multiple_of_the_chunk": dict(mode="deep_sink", local_attn_size=7, sink_size=2),
}
READS = {"gather", "index", "index_select", "take", "take_along_dim"}  # ops that read tokens by index


class CacheReads(TorchDispatchMode):
    """Records the index-reading ops whose input shares storage with one of ``tensors``."""

    def __init__(self, tensors):
        super().__init__()
        self.storages = {t.untyped_storage().data_ptr() for t in tensors}
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in READS and any(isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() in self.storages
                                 for a in args):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def chunk(kv, f, calls=3):
    """One chunk of ``calls`` calls (random q/k/v) then the commit."""
    kv.begin_chunk(f, B)
    pos = torch.arange(f, f + B).repeat_interleave(F)
    rotation = WanRope(D).time_rotation(pos - kv.base, torch.float32)
    for _ in range(calls):
        q, k, v = torch.randn(3, 1, B * F, H, D).unbind(0)
        k[..., 0], v[..., 0] = pos.float()[None, :, None], pos.float()[None, :, None]  # identify the source frame
        kv.update(0, q, k, v, pos, rotation)
    kv.commit()


def make_kv(cfg, trace=None):
    """A one-layer cache at the policy's capacity (the window: the chunk reuses evicted slots)."""
    policy = build_policy(trace=trace, **cfg)
    kv = KVCache(1, 1, policy.capacity_frames(B) * F, H, D, torch.float32, "cpu", policy, F, WanRope(D).rotate_time)
    kv.reset()
    return kv


@pytest.mark.parametrize("name", list(FIFO))
def test_fifo_eviction_gathers_nothing_and_keeps_kept_tokens_in_place(name):
    kv = make_kv(FIFO[name])
    L = kv.policy.window_frames
    assert kv.layers[0].capacity == L * F  # no room for an extra chunk: the chunk takes the evicted slots
    c = kv.layers[0]
    f = 0
    while f < 3 * L:  # well past the first eviction and past a wrap of the slots
        chunk(kv, f)
        f += B
    for _ in range(3):  # steady chunks, each with an eviction
        before_k, before_v, before_frame = c.k.clone(), c.v.clone(), c.frame.clone()
        with CacheReads([c.k, c.v] + kv.rotated) as reads:
            chunk(kv, f)
        assert reads.ops == []
        changed = (c.k != before_k).flatten(2).any(-1)[0] | (c.v != before_v).flatten(2).any(-1)[0]  # [cap]
        moved = changed.nonzero().flatten()
        assert len(moved) == B * F  # only the chunk's slots were written ...
        assert set(c.frame[0, moved].tolist()) == set(range(f, f + B))
        S = kv.policy.sink_size
        oldest = f - (L - S)  # ... the slots of the oldest non-sink frames
        assert set(before_frame[0, moved].tolist()) == set(range(oldest, oldest + B))
        assert c.k[0, :, 0, 0].tolist() == c.frame[0].float().tolist()  # every slot holds its own frame's key
        frames = c.frame[0, c.order()[::F]].tolist()
        assert frames == list(range(S)) + list(range(f + B - (L - S), f + B))  # exactly the FIFO window
        f += B


def test_trace_lists_kept_tokens_chronologically_and_kept_indexes_the_slots():
    records = []
    kv = make_kv(FIFO["longlive"], trace=records.append)
    for f in range(0, 30, B):
        raw = kv.layers[0].frame.clone()
        chunk(kv, f)
        if f >= 12:
            rec = records[-1]
            assert rec["chunk_start"] == f
            assert torch.equal(raw.gather(1, rec["kept"]), rec["frames"])  # pre-event slots of the kept tokens
            assert rec["frames"][0, ::F].tolist() == [0, 1, 2] + list(range(f - 6, f))


def test_participative_compression_still_compacts_by_selection():
    kv = make_kv(dict(mode="deep_sink_pc", sink_size=10, budget=16, recent=4))
    c = kv.layers[0]
    for f in range(0, 21, B):
        chunk(kv, f)
    with CacheReads([c.k, c.v]) as reads:
        chunk(kv, 21)  # the compression
    assert "gather" in reads.ops
    frames = c.frame[0, :c.n].tolist()
    assert frames == sorted(frames)  # [sink | top-C | recent]: storage stays chronological in PC mode
