"""Frame-wise chunks (num_frame_per_block 1, Causal Forcing) in every cache mode: invariants, naive references, the
Deep Sink worked example, PC's recent-query window as released, and rollouts past latent frame 1100."""
import pytest
import torch

import test_policies_reference as policy_ref
from naive_wan import naive_rollout
from pipeline.rollout import Rollout, RolloutConfig, RolloutInputs
from pipeline.policies import build_policy

from tiny import TINY, text_embeds, tiny_model
from helpers import text

LATENT = (16, 4, 4)  # C, H, W -> F = 4 tokens per frame
F = 4
FRAMEWISE = RolloutConfig(num_frame_per_block=1)

POLICIES = {
    "global": dict(mode="self_forcing", local_attn_size=-1),
    "window_sink": dict(mode="self_forcing", local_attn_size=9, sink_size=2),
    "deep_sink": dict(mode="deep_sink", local_attn_size=21, sink_size=10),
    "deep_sink_pc": dict(mode="deep_sink_pc", local_attn_size=21, sink_size=10, budget=16, recent=4),
    "deep_sink_pc_paper": dict(mode="deep_sink_pc", local_attn_size=12, sink_size=3, budget=9, recent=4,
                               reuse_cap=1, realign_topc=True),
}


# -------------------------------------------------------------------------------------------- 1. invariants
@pytest.mark.parametrize("name", list(POLICIES))
def test_policy_invariants_over_a_framewise_rollout(name):
    cfg = POLICIES[name]
    events = []
    policy = build_policy(**cfg, trace=events.append)
    S, L = policy.sink_size, policy.window_frames
    pipe = Rollout(tiny_model(3), FRAMEWISE, policy)
    T = 40
    noise = torch.randn(1, T, *LATENT, generator=torch.Generator().manual_seed(2))
    calls, written, after_event, sizes = {}, {}, {}, []
    observe = policy.observe_queries

    def state(layer):
        c = pipe.kv.layers[layer]
        o = c.order()  # chronological (FIFO eviction reuses slots)
        return [t[:, o].clone() for t in (c.k, c.v, c.t_pos, c.frame)]

    def same(a, b):
        return a[0].shape == b[0].shape and all(torch.equal(x, y) for x, y in zip(a, b))

    def watched(kv, layer, q, pos):
        f = kv.chunk.start_frame
        n_call = calls[(f, layer)] = calls.get((f, layer), 0) + 1
        assert torch.equal(pos, torch.full((F,), f))  # one frame of queries at its absolute index
        c = kv.layers[layer]
        if n_call == 2:
            assert c.n + c.staged <= L * F  # never more than L frames, the chunk included
            after_event[layer] = state(layer)
        elif n_call > 2:
            assert same(state(layer), after_event[layer])  # later calls of the chunk never change the context
        observe(kv, layer, q, pos)

    def on_event(rec):
        assert calls[(rec["chunk_start"], rec["layer"])] == 1  # only on the first call of a chunk
        assert rec["tokens_before"] + F > L * F or rec["event"] == "realign"  # only on overflow
        events.append(rec)

    policy.observe_queries = watched
    policy.trace = on_event
    for i, f, _ in pipe.frames(RolloutInputs(text(), noise, torch.Generator().manual_seed(4))):
        for layer in range(2):
            c = pipe.kv.layers[layer]
            new = c.order()[c.n - F:]  # the slots of frame f
            written[(layer, f)] = (c.k[0, new].clone(), c.v[0, new].clone())
            assert c.n <= L * F
            if layer == 0:
                sizes.append(c.n // F)  # committed frames after the chunk
            frames = c.frame[0, :c.n]
            for j in range(c.n):  # every token is one token written by its frame's clean pass (PC: any subset)
                ref_k, ref_v = written[(layer, int(frames[j]))]
                hits = (ref_k == c.k[0, j]).flatten(1).all(1) & (ref_v == c.v[0, j]).flatten(1).all(1)
                assert hits.sum() == 1
            if S and f + 1 >= S:
                assert torch.equal(frames[:S * F], torch.arange(S).repeat_interleave(F))  # sink never evicted
            if not cfg.get("realign_topc"):
                assert torch.equal(c.t_pos[0, S * F:c.n], frames[S * F:])  # only the sink ever moves

    starts = sorted({r["chunk_start"] for r in events})
    if cfg["mode"] == "deep_sink_pc":
        N = policy.budget
        period = L - N + 1  # compress when committed + 1 > L, leaving N - 1 frames: every L - N + 1 frames
        assert starts == list(range(L, T, period))
        assert sizes == [min(f + 1, L) if f < L else N + (f - L) % period for f in range(T)]
    else:
        assert starts == list(range(L, T))  # one frame evicted per chunk once the window is full
        assert sizes == [min(f + 1, L) for f in range(T)]


# ------------------------------------------------------------------------------ 2. naive references, B = 1
@pytest.mark.parametrize("window,sink,T", [(-1, 0, 25), (9, 2, 20)], ids=["global", "window9-sink2"])
def test_framewise_rollout_equals_naive_wan_reference(window, sink, T):
    model = tiny_model(seed=5)
    prompt = text_embeds(1, model.config)
    noise = torch.randn(1, T, *LATENT, generator=torch.Generator().manual_seed(11))
    policy = build_policy("self_forcing", local_attn_size=window, sink_size=sink)
    ours = Rollout(model, FRAMEWISE, policy).generate(prompt, noise, torch.Generator().manual_seed(7))
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    ref = naive_rollout(sd, model.config.to_dict(), prompt, noise, torch.Generator().manual_seed(7),
                        window=21 if window == -1 else window, sink=sink, chunk=1)
    assert (ours - ref).abs().max().item() < 1e-5


REFERENCE_CASES = {
    "self_forcing": (dict(mode="self_forcing", local_attn_size=9, sink_size=2), 16),
    "deep_sink": (dict(mode="deep_sink", local_attn_size=12, sink_size=6), 18),
    "deep_sink_pc": (dict(mode="deep_sink_pc", local_attn_size=12, sink_size=4, budget=9, recent=4), 22),
    "deep_sink_pc_cap1_paper": (dict(mode="deep_sink_pc", local_attn_size=10, sink_size=3, budget=8, recent=3,
                                     reuse_cap=1, realign_topc=True), 22),
}


@pytest.mark.parametrize("name", list(REFERENCE_CASES))
def test_framewise_rollout_equals_naive_cache_reference(name, monkeypatch):
    """The explicit token-list cache of tests/test_policies_reference.py, run with one-frame chunks."""
    monkeypatch.setattr(policy_ref, "B", 1)  # its chunk size is a module constant
    cfg, T = REFERENCE_CASES[name]
    model = tiny_model(11)
    prompt = torch.randn(1, TINY["text_len"], TINY["text_dim"], generator=torch.Generator().manual_seed(3))
    prompt[:, 6:] = 0
    noise = torch.randn(1, T, *LATENT, generator=torch.Generator().manual_seed(4))
    trace = []
    pipe = Rollout(model, FRAMEWISE, build_policy(**cfg, trace=trace.append))
    ours = pipe.generate(prompt, noise, torch.Generator().manual_seed(5))

    ref_cache = policy_ref.NaiveCache(cfg["mode"], F, L=cfg["local_attn_size"], S=cfg["sink_size"],
                                      N=cfg.get("budget", 16), R=cfg.get("recent", 4), cap=cfg.get("reuse_cap", 7),
                                      realign_topc=cfg.get("realign_topc", False))
    ref = policy_ref.naive_rollout(model, prompt, noise, 5, ref_cache)

    ours_events = sorted({(r["event"], r["layer"], r["chunk_start"]) for r in trace if r["event"] != "realign"})
    ref_events = sorted({("evict" if e in ("deep_sink", "self_forcing") else e, layer, f)
                         for e, layer, f in ref_cache.events})
    assert ours_events == ref_events and len(ref_events) >= 6
    for layer in range(2):  # same tokens at the same time positions, in the same order
        c = pipe.kv.layers[layer]
        tokens = ref_cache.committed[layer] + ref_cache.staged[layer]
        o = c.order()  # chronological (FIFO eviction reuses slots)
        assert c.frame[0, o].tolist() == [tok.frame for tok in tokens]
        assert c.t_pos[0, o].tolist() == [tok.t for tok in tokens]
    assert (ours - ref).abs().max().item() < 1e-5


# -------------------------------------------------------------------------------------- 3. worked examples
def test_deep_sink_framewise_worked_example():
    """B = 1, L 21, S 10: at f = 21 frame 10 goes, sink at 0-9, tail 11-20; at f = 22 sink at 1-10, tail 12-21."""
    policy = build_policy("deep_sink", local_attn_size=21, sink_size=10)
    pipe = Rollout(tiny_model(3), FRAMEWISE, policy)
    seen = {}
    for i, f, _ in pipe.frames(RolloutInputs(text(), torch.randn(1, 23, *LATENT), torch.Generator().manual_seed(1))):
        c = pipe.kv.layers[0]  # after the chunk's commit: sink | tail | chunk f
        seen[f] = (c.frame[0, c.order()[::F]].tolist(), c.t_pos[0, c.order()[::F]].tolist())
    assert seen[20] == (list(range(21)), list(range(21)))  # full, nothing moved yet
    for f, sink, tail in [(21, range(0, 10), range(11, 21)), (22, range(1, 11), range(12, 22))]:
        frames, t_pos = seen[f]
        assert frames == list(range(10)) + list(tail) + [f]  # frame 10 (then 11) evicted, sink frames 0-9 kept
        assert t_pos == list(sink) + list(tail) + [f]  # sink at [f - L, f - L + S), tail at its true indices
        assert t_pos[10] - t_pos[9] - 1 == 1  # one unused index between sink and tail (B = 1)


def test_pc_framewise_compresses_every_six_frames_with_the_released_recent_queries():
    """L 21, N 16, R 4, B 1, four steps: compression at f = 21, 27, 33, ...; the recent-query window (last R
    frame-rows of all DiT calls, as released) holds only frames f - 1 (steps 833.33, 625 and the clean pass) and f
    (step 1000)."""
    trace, rows, timesteps = [], [], []
    policy = build_policy(**POLICIES["deep_sink_pc"], trace=trace.append)
    model = tiny_model(3)
    pipe = Rollout(model, FRAMEWISE, policy)
    observe = policy.observe_queries

    def watched(kv, layer, q, pos):
        if layer == 0:
            rows.append((int(pos[0]), timesteps[-1]))
        observe(kv, layer, q, pos)

    def compressed(rec):
        if rec["layer"] == 0:
            trace.append((rec["chunk_start"], rows[-4:]))

    policy.observe_queries = watched
    policy.trace = compressed
    hook = model.register_forward_pre_hook(lambda m, a: timesteps.append(round(float(a[1][0, 0]), 2)))
    try:
        pipe.generate(text(), torch.randn(1, 40, *LATENT), torch.Generator().manual_seed(1))
    finally:
        hook.remove()
    assert [f for f, _ in trace] == [21, 27, 33, 39]
    for f, recent in trace:
        assert recent == [(f - 1, 833.33), (f - 1, 625.0), (f - 1, 0.0), (f, 1000.0)]


# ------------------------------------------------------------------------------------------ 4. long videos
@pytest.mark.parametrize("chunk", [1, 3], ids=["framewise", "chunkwise"])
@pytest.mark.parametrize("mode", ["self_forcing", "deep_sink", "deep_sink_pc"])
def test_rollout_past_latent_frame_1100(mode, chunk):
    cfg = RolloutConfig(denoising_step_list=[1000], denoising_step_list_first_chunk=[1000, 750, 500, 250],
                        num_frame_per_block=chunk)  # Causal Forcing++ 1-step: one call + the clean pass per chunk
    params = {"self_forcing": dict(sink_size=3), "deep_sink": dict(sink_size=10),
              "deep_sink_pc": dict(sink_size=10, budget=16, recent=4)}[mode]
    pipe = Rollout(tiny_model(2, num_layers=1), cfg, build_policy(mode, **params))
    T = 1104
    out = pipe.generate_seeded(text(), T, (16, 2, 2), seed=3)  # F = 1 token per frame
    assert out.shape[1] == T and torch.isfinite(out).all()
    c = pipe.kv.layers[0]
    last = c.order()[-1]
    assert c.frame[0, last] == T - 1 and c.frame[0, 0] == 0 and c.n <= 21
    assert c.t_pos[0, last] == T - 1
