"""Cache policies (docs/cache.md): invariants over every policy and option, the worked examples, PC's top-C selection
against an independent score, the ramp test, state reset between prompts, long rollouts, configuration and modes."""
import pytest
import torch

from pipeline.rollout import Rollout, RolloutConfig, RolloutInputs
from pipeline.kv_cache import KVCache
from pipeline.policies import (CachePolicyError, DeepSink, ParticipativeCompression, SelfForcingWindow,
                               build_policy, select_top)
from wan.rope import WanRope

from tiny import tiny_model
from helpers import B, D, F, H, LATENT, drive, make_kv, ramp_qkv, text

POLICIES = {
    "self_forcing": dict(mode="self_forcing", sink_size=3),
    "deep_sink": dict(mode="deep_sink", sink_size=14),
    "deep_sink_pc": dict(mode="deep_sink_pc", sink_size=10, budget=16, recent=4),
    "deep_sink_pc_paper": dict(mode="deep_sink_pc", sink_size=10, budget=16, recent=4, reuse_cap=1,
                               realign_topc=True),
    # the family's checkpoints: Infinite-Forcing (W 6, S 1), LongLive (W 12, S 3), normal and infinite
    "infinite_forcing": dict(mode="infinite_forcing", local_attn_size=6, sink_size=1),
    "infinite_forcing_w12_s2": dict(mode="infinite_forcing", local_attn_size=12, sink_size=2),
    "infinite_forcing_w12_s1": dict(mode="infinite_forcing", local_attn_size=12, sink_size=1),
    "longlive": dict(mode="self_forcing", local_attn_size=12, sink_size=3),
    "longlive_infinite": dict(mode="infinite_forcing", local_attn_size=12, sink_size=3),
    # Deep Sink / PC on those windows, and the gap option
    "deep_sink_gap0": dict(mode="deep_sink", sink_size=14, sink_gap=0),
    "deep_sink_gap5": dict(mode="deep_sink", sink_size=10, sink_gap=5),
    "deep_sink_w6": dict(mode="deep_sink", local_attn_size=6, sink_size=2),
    "deep_sink_w12": dict(mode="deep_sink", local_attn_size=12, sink_size=6),
    "deep_sink_pc_w6": dict(mode="deep_sink_pc", local_attn_size=6, sink_size=1, budget=6, recent=4),
    "deep_sink_pc_w12": dict(mode="deep_sink_pc", local_attn_size=12, sink_size=3, budget=10, recent=4),
    "deep_sink_pc_w12_gap0": dict(mode="deep_sink_pc", local_attn_size=12, sink_size=3, budget=10, recent=4,
                                  sink_gap=0),
}
NEW = [n for n in POLICIES if n not in ("self_forcing", "deep_sink", "deep_sink_pc", "deep_sink_pc_paper")]


def naive_rot(x, t):
    """Time rotation by complex multiplication at positions t (float64). x [..., n, H, D], t [n]."""
    td = D - 4 * (D // 6)
    inv = 1.0 / (10000.0 ** (torch.arange(0, td, 2, dtype=torch.float64) / td))
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], D // 2, 2).contiguous())
    ang = torch.as_tensor(t, dtype=torch.float64)[:, None] * inv  # [n, td/2]
    rot = torch.polar(torch.ones_like(ang), ang)
    xc = torch.cat([xc[..., :td // 2] * rot[:, None, :], xc[..., td // 2:]], dim=-1)
    return torch.view_as_real(xc).flatten(-2)


# -------------------------------------------------------------------------------------------- 1. invariants
CHUNK_SIZES = (1, 3)


def _valid(name: str, chunk: int) -> bool:
    """Whether the entry is a valid setting for this chunk size (e.g. a V-sink needs sink <= chunk)."""
    try:
        build_policy(**POLICIES[name]).validate(chunk)
        return True
    except CachePolicyError:
        return False


INVARIANT_CASES = [(name, chunk) for name in POLICIES for chunk in CHUNK_SIZES if _valid(name, chunk)]


def test_every_registered_mode_has_invariant_cases():
    """A newly registered cache mode (outside the tests) must get entries in POLICIES, at both chunk sizes."""
    import methods  # noqa: F401  (registers the methods' cache modes)
    from pipeline.policies import POLICIES as REGISTRY
    for mode, cls in REGISTRY.items():
        if cls.__module__.split(".")[-1].startswith("test_"):
            continue  # a policy defined by a test
        for chunk in CHUNK_SIZES:
            assert any(POLICIES[n]["mode"] == mode and c == chunk for n, c in INVARIANT_CASES), (mode, chunk)


@pytest.mark.parametrize("name,chunk", INVARIANT_CASES)
def test_policy_invariants_over_a_rollout(name, chunk):
    cfg = POLICIES[name]
    B = chunk
    trace = []
    policy = build_policy(trace=trace.append, **cfg)
    S, L = policy.sink_size, policy.window_frames
    pipe = Rollout(tiny_model(3), RolloutConfig(num_frame_per_block=B), policy)
    T = 42  # B = 3: 14 chunks, PC compresses at f = 21, 27, 33, 39
    noise = torch.randn(1, T, *LATENT, generator=torch.Generator().manual_seed(2))

    calls, snap, refs, sizes, raw = {}, {}, {}, {}, {}
    events_at = {}

    def state(layer):  # committed tokens in chronological order (storage order is not: slots are reused)
        c = pipe.kv.layers[layer]
        o = c.order()
        return [t[:, o].clone() for t in (c.k, c.v, c.t_pos, c.frame)]

    def same(a, b):
        return len(a[0][0]) == len(b[0][0]) and all(torch.equal(x, y) for x, y in zip(a, b))

    def check_tokens(layer):
        """Every committed token's stored k and v are those of one token written by its frame's clean pass."""
        c = pipe.kv.layers[layer]
        for i in c.order().tolist():
            ref_k, ref_v = refs[(layer, int(c.frame[0, i]))]
            hits = ((ref_k == c.k[0, i]).flatten(1).all(1) & (ref_v == c.v[0, i]).flatten(1).all(1)).sum()
            assert hits == 1
        if not policy.describe().get("realign_topc"):
            assert torch.equal(c.t_pos[0, S * F:c.n], c.frame[0, S * F:c.n])  # only the sink ever moves

    observe = policy.observe_queries

    def watched(kv, layer, q, pos):
        f = kv.chunk.start_frame
        n_call = calls[(f, layer)] = calls.get((f, layer), 0) + 1
        assert torch.equal(pos, torch.arange(f, f + B).repeat_interleave(F))  # queries at absolute frames
        if n_call == 1:
            assert layer not in snap or same(state(layer), snap[layer])  # untouched since the commit
        elif n_call == 2:  # state right after the first call's event
            c = kv.layers[layer]
            assert c.n + c.staged <= L * F  # never more than L frames, chunk included
            sizes.setdefault(layer, []).append((f, c.n + c.staged))
            if (f, layer) not in events_at:
                assert same(state(layer), snap.get(layer, state(layer)))
            snap[layer] = state(layer)
            check_tokens(layer)
        else:
            assert same(state(layer), snap[layer])  # later calls never change the context
        observe(kv, layer, q, pos)

    def on_event(rec):
        f, layer = rec["chunk_start"], rec["layer"]
        assert calls[(f, layer)] == 1  # only on the first call of a chunk
        assert rec["tokens_before"] + B * F > L * F  # only on overflow
        events_at.setdefault((f, layer), []).append(rec["event"])
        # kept indexes the pre-event cache (raw: storage after the last commit)
        assert torch.equal(torch.gather(raw[layer], 1, rec["kept"]), rec["frames"])
        assert (rec["frames"][:, 1:] >= rec["frames"][:, :-1]).all()  # listed chronologically
        trace.append(rec)

    policy.observe_queries = watched
    policy.trace = on_event
    for i, f, _ in pipe.frames(RolloutInputs(text(), noise, torch.Generator().manual_seed(4))):
        for layer in range(2):
            c = pipe.kv.layers[layer]
            assert c.n <= L * F
            o = c.order()
            for j in range(B):
                at = o[c.n - (B - j) * F:c.n - (B - j - 1) * F]  # frame f + j's slots
                refs[(layer, f + j)] = (c.k[0, at].clone(), c.v[0, at].clone())
            if f + B >= S:
                assert torch.equal(c.frame[0, :S * F], torch.arange(S).repeat_interleave(F))  # sink never evicted
            check_tokens(layer)
            snap[layer] = state(layer)
            raw[layer] = c.frame[:, :c.n].clone()

    overflow = [f for f in range(0, T, B) if f >= L]
    kinds = {e for evs in events_at.values() for e in evs}
    if cfg["mode"] == "deep_sink_pc":
        N, frames, expect_events, expect_sizes = policy.budget, 0, [], []
        for f in range(0, T, B):  # compress to N - B frames whenever the chunk would overflow the window
            if frames + B > L:
                expect_events.append(f)
                frames = N - B
            frames += B
            expect_sizes.append((f, frames * F))
        assert sorted({f for f, _ in events_at}) == expect_events and kinds == {"compress"}
        if L == 21 and B == 3:
            assert expect_events == [21, 27, 33, 39]  # N -> N + B -> compress -> N
        for layer in range(2):
            assert sizes[layer] == expect_sizes
    else:
        assert sorted({f for f, _ in events_at}) == overflow
        assert kinds == {"evict"}  # Deep Sink's sink move is part of its one "evict" record


# ------------------------------------------------------------------------------------- 2. worked examples
def test_deep_sink_worked_example():
    trace = []
    policy = DeepSink(local_attn_size=21, sink_size=14, trace=trace.append)
    kv = make_kv(policy)
    for f in drive(kv, 10, ramp_qkv(lambda fr, tok: fr)):
        pass
    evict = {r["chunk_start"]: r for r in trace if r["event"] == "evict"}
    assert sorted(evict) == [21, 24, 27]
    for f, start in [(21, 0), (24, 3), (27, 6)]:
        t = evict[f]["t_pos"][0]
        assert t[:14 * F].tolist() == list(torch.arange(start, start + 14).repeat_interleave(F))  # [f-L, f-L+S)
        assert evict[f]["sink_start"] == f - 21
    t27 = evict[27]["t_pos"][0]
    tail_oldest = int(t27[14 * F])
    assert tail_oldest == 27 + 3 - (21 - 14) == 23  # f + B - (L - S), its true frame index
    assert tail_oldest - int(t27[14 * F - 1]) - 1 == 3  # B unused indices: the one-chunk gap
    assert evict[24]["shift"] == evict[27]["shift"] == 3


def test_deep_sink_pc_worked_example():
    trace = []
    policy = ParticipativeCompression(local_attn_size=21, sink_size=10, budget=16, recent=4, trace=trace.append)
    kv = make_kv(policy)
    sizes = []
    for f in drive(kv, 14, ramp_qkv(lambda fr, tok: -fr)):
        sizes.append(kv.layers[0].n // F)
    comp = [r for r in trace if r["event"] == "compress"]
    assert [r["chunk_start"] for r in comp] == [21, 27, 33, 39]
    assert [r["shift"] for r in comp] == [5, 6, 6, 6]  # L - N at the first compression, then 2B
    assert [r["sink_start"] for r in comp] == [5, 11, 17, 23]  # [f - N, f - N + S)
    C = (16 - 10 - 4) * F
    assert policy.candidate_tokens(F) == C == 8
    assert policy.candidate_tokens(1560) == (16 - 10 - 4) * 1560 == 3120  # the released model's F
    for r in comp:
        assert r["selected"].shape == (1, C) and r["num_tokens"] == (16 - B) * F
        assert r["t_pos"][0, :10 * F].tolist() == list(
            torch.arange(r["sink_start"], r["sink_start"] + 10).repeat_interleave(F))
    # committed frames after each chunk: grows to 21, then cycles 16 -> 19 -> (compress to 13 + chunk) 16
    assert sizes == [3, 6, 9, 12, 15, 18, 21, 16, 19, 16, 19, 16, 19, 16]


@pytest.mark.parametrize("cap", [7, 3, 0])
def test_pc_excludes_a_token_picked_reuse_cap_times(cap):
    """Token 0 of frame 10 outscores everything; after ``cap`` picks it is excluded and evicted (cap 0: never)."""
    policy = ParticipativeCompression(local_attn_size=21, sink_size=10, budget=16, recent=4, reuse_cap=cap)
    kv = make_kv(policy)
    qkv = ramp_qkv(lambda fr, tok: torch.where((fr == 10) & (tok == 0), 1000.0, -fr))
    history = []
    for f in drive(kv, 30, qkv):
        if f in range(21, 90, 6):  # the chunk that compressed
            c = kv.layers[0]
            hit = ((c.v[0, :c.n, 0, 0] == 10) & (c.v[0, :c.n, 0, 2] == 0)).nonzero().flatten()
            history.append(int(c.aux[policy.PICKS][0, hit]) if len(hit) else None)
    n = len(history)
    assert n == 12
    if cap == 0:
        assert history == list(range(1, n + 1))
    else:
        assert history == list(range(1, cap + 1)) + [None] * (n - cap)


# ------------------------------------------------------------------------------ 3. top-C vs independent score
def _hand_made_pc(batch=2, seed=0, keys=None, cap=7, picks=None, q_fill=None, dtype=torch.float32):
    """A hand-made committed cache of 8 frames (moved positions), two observed calls, then the chunk f = 8."""
    policy = ParticipativeCompression(local_attn_size=8, sink_size=2, budget=6, recent=3, reuse_cap=cap)
    Bc = 2
    rope = WanRope(D)
    kv = KVCache(1, batch, policy.capacity_frames(Bc) * F, H, D, dtype, "cpu", policy, F, rope.rotate_time)
    kv.reset()
    g = torch.Generator().manual_seed(seed)
    n = 8 * F
    k = torch.randn(batch, n, H, D, generator=g) if keys is None else keys
    v = torch.randn(batch, n, H, D, generator=g)
    t_pos = torch.tensor([0, 1, 3, 2, 4, 5, 6, 7]).repeat_interleave(F)  # a candidate frame pair out of order
    c = kv.layers[0]
    k, v = k.to(dtype), v.to(dtype)
    c.stage(k, v, t_pos)
    c.commit()
    c.t_pos[:, :2 * F] = torch.tensor([1, 2]).repeat_interleave(F)  # a moved sink
    if picks is not None:
        c.aux_field(policy.PICKS)[:, :n] = picks
    queries = []
    for f0, frames in [(6, 2), (8, 2)]:  # previous chunk's clean pass (frames 6, 7), then the new chunk (8, 9)
        if f0 == 8:
            kv.begin_chunk(8, Bc)
        q = torch.randn(batch, frames * F, H, D, generator=g).to(dtype)
        if q_fill is not None:
            q = torch.zeros_like(q)
            q[..., WanRope(D).time_dim:] = q_fill
        pos = torch.arange(f0, f0 + frames).repeat_interleave(F)
        policy.observe_queries(kv, 0, q, pos)
        queries.append((q, pos))
    trace = []
    policy.trace = trace.append
    pre_t = c.t_pos[:, :n].clone()
    kv.chunk_events(0)
    q_all = torch.cat([q for q, _ in queries], 1)[:, -3 * F:]  # the last R*F queries
    p_all = torch.cat([p for _, p in queries])[-3 * F:]
    return policy, kv, trace[0], k, pre_t, q_all, p_all


def _independent_scores(k, pre_t, q, p, lo, hi):
    """Scores [batch, hi - lo] by explicit loops over candidates: sum over queries and heads of rotated q.k."""
    out = torch.zeros(k.shape[0], hi - lo, dtype=torch.float64)
    for b in range(k.shape[0]):
        qr = naive_rot(q[b], p)  # [nq, H, D]
        for j in range(lo, hi):
            kr = naive_rot(k[b, j:j + 1], pre_t[b, j:j + 1])[0]  # [H, D]
            out[b, j - lo] = (qr * kr).sum()
    return out


def _expected_topc(scores, picks, C, cap):
    """Python ranking: under-cap first, then higher score, then earlier index; keep C, ascending."""
    n = len(scores)
    order = sorted(range(n), key=lambda j: (cap > 0 and picks[j] >= cap, -scores[j], j))
    return sorted(order[:C])


def test_pc_keeps_top_c_of_an_independent_score():
    policy, kv, rec, k, pre_t, q, p = _hand_made_pc()
    lo, hi = rec["candidates"]
    assert (lo, hi) == (2 * F, 8 * F - (3 - 2) * F)  # sink 2 frames, last R - B = 1 committed frame is recent
    ref = _independent_scores(k, pre_t, q, p, lo, hi)
    assert torch.allclose(rec["scores"].double(), ref, rtol=1e-5, atol=1e-4)
    C = policy.candidate_tokens(F)
    for b in range(2):
        want = [lo + j for j in _expected_topc(ref[b].tolist(), [0] * (hi - lo), C, 7)]
        assert rec["selected"][b].tolist() == want
    assert not torch.equal(rec["selected"][0], rec["selected"][1])  # chosen per sample
    expect_kept = [list(range(lo)) + rec["selected"][b].tolist() + list(range(hi, 8 * F)) for b in range(2)]
    assert rec["kept"].tolist() == expect_kept
    c = kv.layers[0]
    assert c.n == (policy.budget - 2) * F and c.aux[policy.PICKS][:, lo:lo + C].eq(1).all()
    assert c.t_pos[:, :lo].tolist() == [[8 - 6] * F + [9 - 6] * F] * 2  # sink at [f - N, f - N + S)


def test_pc_ties_go_to_the_earlier_token_and_the_cap_fills_from_capped_tokens():
    time_dim = WanRope(D).time_dim
    keys = torch.zeros(1, 8 * F, H, D)
    keys[..., time_dim:] = 1.0  # exact ties: identical integer keys, no time channels
    keys[0, 5 * F + 1, :, time_dim:] = 2.0  # one clear winner
    _, _, rec, *_ = _hand_made_pc(batch=1, keys=keys, q_fill=1.0)
    assert rec["scores"][0].unique().numel() == 2  # exact ties
    lo, _ = rec["candidates"]
    assert rec["selected"][0].tolist() == [lo, lo + 1, lo + 2, 5 * F + 1]  # winner + earliest tied tokens
    # reuse cap: only two candidates under the cap -> they, then the best capped ones (ties: earlier first)
    picks = torch.full((1, 8 * F), 7)
    picks[0, [4 * F + 3, 6 * F]] = 0
    _, _, rec, *_ = _hand_made_pc(batch=1, keys=keys, picks=picks, q_fill=1.0)
    assert rec["eligible"].tolist() == [2]
    assert rec["selected"][0].tolist() == [lo, 4 * F + 3, 5 * F + 1, 6 * F]


def test_select_top_edge_cases_against_python_ranking():
    g = torch.Generator().manual_seed(5)
    scores = torch.randint(-3, 3, (3, 17), generator=g).float()  # many ties
    picks = torch.randint(0, 4, (3, 17), generator=g)
    for keep in [0, 1, 5, 16, 17, 40]:  # 40: candidate set smaller than C -> every candidate is kept
        for cap in [0, 1, 2, 3]:
            got = select_top(scores, picks, keep, cap)
            for b in range(3):
                assert got[b].tolist() == _expected_topc(scores[b].tolist(), picks[b].tolist(), keep, cap)


def test_pc_scores_on_a_bfloat16_cache():
    """Half-precision caches: scores in float32 close to the float64 reference; top-C of those scores kept."""
    policy, kv, rec, k, pre_t, q, p = _hand_made_pc(seed=3, dtype=torch.bfloat16)
    ref = _independent_scores(k, pre_t, q, p, *rec["candidates"])
    assert rec["scores"].dtype == torch.float32
    assert (rec["scores"].double() - ref).abs().max() < 0.02 * ref.abs().max()
    for b in range(2):
        want = _expected_topc(rec["scores"][b].tolist(), [0] * ref.shape[1], policy.candidate_tokens(F), 7)
        assert rec["selected"][b].tolist() == [rec["candidates"][0] + j for j in want]


# ---------------------------------------------------------------------------------------------- 6. ramp test
def _expected_frames(mode, T, L, S, N=16, R=4, cap=7):
    """Frame-level simulation of the rules of docs/cache.md with frame score -frame (older candidates preferred)."""
    cache, picks = [], {}
    for f in range(0, T, B):
        if len(cache) + B > L:
            if mode == "deep_sink_pc":
                cand = cache[S:len(cache) - (R - B)]
                cand = sorted(cand, key=lambda fr: (cap > 0 and picks.get(fr, 0) >= cap, fr))[:N - S - R]
                for fr in cand:
                    picks[fr] = picks.get(fr, 0) + 1
                cache = cache[:S] + sorted(cand) + cache[len(cache) - (R - B):]
            else:
                cache = cache[:S] + cache[S + len(cache) + B - L:]
        cache += list(range(f, f + B))
    return cache


@pytest.mark.parametrize("name", ["self_forcing", "deep_sink", "deep_sink_pc", *NEW])
def test_ramp_cache_holds_exactly_the_expected_frames(name):
    cfg = POLICIES[name]
    policy = build_policy(**cfg)
    kv = make_kv(policy, layers=2, batch=2)
    L = policy.window_frames
    pc = dict(N=policy.budget, R=policy.recent) if cfg["mode"] == "deep_sink_pc" else {}
    T = 90  # 30 chunks; PC's oldest candidates hit the reuse cap of 7 and get replaced
    qkv = ramp_qkv(lambda fr, tok: -fr, batch=2)
    for f in drive(kv, T // B, qkv):
        expect = _expected_frames(cfg["mode"], f + B, L, policy.sink_size, **pc)
        for layer in range(2):
            c = kv.layers[layer]
            want = torch.tensor(expect).repeat_interleave(F)
            o = c.order()  # chronological (FIFO reuses slots; PC's layout is chronological)
            assert c.frame[:, o].tolist() == [want.tolist()] * 2
            v = c.v[:, o, 0]  # the values identify their source token: (frame, call, token, layer)
            assert torch.equal(v[..., 0], want.float().expand(2, -1))
            assert v[..., 1].eq(4).all() and v[..., 3].eq(layer).all()  # written by the clean pass, this layer
            assert torch.equal(v[..., 2], torch.arange(F).repeat(len(expect)).float().expand(2, -1))
    final = _expected_frames(cfg["mode"], T, L, policy.sink_size, **pc)
    if name == "deep_sink_pc":
        # frames 10, 11 were picked at f = 21 .. 57 (7 times), then excluded; 56, 57 took over at f = 63
        assert final == list(range(10)) + [56, 57, 86, 87, 88, 89]
        assert kv.layers[0].t_pos[0, 0].item() == 87 - 16  # sink at f - N of the last compression (f = 87)
    elif cfg["mode"] != "deep_sink_pc":
        assert final == list(range(policy.sink_size)) + list(range(T - L + policy.sink_size, T))


# ----------------------------------------------------------------------------- 5. state and length; batching
@pytest.mark.parametrize("name", ["self_forcing", "deep_sink", "deep_sink_pc", "infinite_forcing",
                                  "longlive_infinite", "deep_sink_pc_w12_gap0"])
def test_prompts_in_one_process_equal_fresh_pipelines(name):
    model = tiny_model(7)
    noise = torch.randn(2, 30, *LATENT, generator=torch.Generator().manual_seed(8))

    def run(pipe, which):
        return pipe.generate(text(10 + which), noise[which:which + 1], torch.Generator().manual_seed(which))

    shared = Rollout(model, RolloutConfig(), build_policy(**POLICIES[name]))
    a1, b1, a2 = run(shared, 0), run(shared, 1), run(shared, 0)
    b2 = run(Rollout(model, RolloutConfig(), build_policy(**POLICIES[name])), 1)
    assert torch.equal(a1, a2) and torch.equal(b1, b2) and not torch.equal(a1, b1)


def test_pc_batch_of_two_equals_two_single_runs():
    model = tiny_model(9)
    noise = torch.randn(2, 30, *LATENT, generator=torch.Generator().manual_seed(1))
    draws = torch.randn(40, 2, B, *LATENT, generator=torch.Generator().manual_seed(2))

    def source(sample):
        it = iter(draws)

        def draw(shape, dtype, device):
            d = next(it)
            return d.flatten(0, 1) if sample is None else d[sample]
        return draw

    trace = []
    pipe = Rollout(model, RolloutConfig(), build_policy(**POLICIES["deep_sink_pc"],
                                                                        trace=trace.append))
    both = pipe.generate(torch.cat([text(1), text(2)]), noise, source(None))
    sel = [r["selected"] for r in trace if r["event"] == "compress"]
    assert any(not torch.equal(s[0], s[1]) for s in sel)  # the samples chose different tokens
    for i in range(2):
        single = pipe.generate(text(1 + i), noise[i:i + 1], source(i))
        assert torch.allclose(both[i:i + 1], single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["self_forcing", "deep_sink", "deep_sink_pc", *NEW])
def test_rollout_past_latent_frame_1100(name):
    model = tiny_model(2)
    cfg = RolloutConfig(denoising_step_list=[1000])  # one step + clean pass per chunk keeps this fast
    pipe = Rollout(model, cfg, build_policy(**POLICIES[name]))
    out = pipe.generate_seeded(text(), 1104, (16, 2, 2), seed=3)  # F = 1
    assert out.shape[1] == 1104 and torch.isfinite(out).all()
    c = pipe.kv.layers[0]
    assert c.frame[0, c.order()[-1]] == 1103 and c.frame[0, 0] == 0  # the sink survived (frame 0 is a sink frame)
    assert c.n <= 21
    if POLICIES[name]["mode"] != "self_forcing":  # moving sinks: positions relative to the chunk stay bounded
        assert (c.t_pos[0, :c.n] - pipe.kv.base).abs().max() < 2 * pipe.policy.window_frames


# --------------------------------------------------------------------------------- configuration and modes
def test_build_policy_modes_and_describe():
    assert isinstance(build_policy("self_forcing", sink_size=2), SelfForcingWindow)
    ds = build_policy("deep_sink", sink_size=14)
    assert type(ds) is DeepSink and ds.describe()["mode"] == "deep_sink"
    pc = build_policy("deep_sink_pc", sink_size=10, budget=16, recent=4, reuse_cap=5, realign_topc=True)
    assert isinstance(pc, ParticipativeCompression)
    assert pc.describe() == {"mode": "deep_sink_pc", "local_attn_size": 21, "sink_size": 10, "window_frames": 21,
                             "global_cap_frames": 21, "budget": 16, "recent": 4, "reuse_cap": 5,
                             "realign_topc": True}
    assert build_policy("deep_sink", sink_size=14, sink_gap=0).describe()["sink_gap"] == 0
    assert build_policy("infinite_forcing").describe() == {"mode": "infinite_forcing", "local_attn_size": 6,
                                                           "sink_size": 1, "window_frames": 6,
                                                           "global_cap_frames": 21, "sink_gap": 0}
    assert build_policy("deep_sink_pc", local_attn_size=-1, sink_size=10).window_frames == 21
    with pytest.raises(CachePolicyError, match="unknown"):
        build_policy("streaming")


@pytest.mark.parametrize("kwargs,chunk,match", [
    (dict(mode="deep_sink", sink_size=21), 3, "smaller than the window"),
    (dict(mode="deep_sink", sink_size=19), 3, "sink_size=19"),
    (dict(mode="deep_sink_pc", sink_size=10, budget=22), 3, "--Budget=22"),
    (dict(mode="deep_sink_pc", sink_size=10, budget=13), 3, "--Budget=13"),
    (dict(mode="deep_sink_pc", sink_size=10, recent=2, budget=16), 3, "--Recent=2"),
    (dict(mode="deep_sink_pc", sink_size=10, recent=0), 3, "positive"),
    (dict(mode="deep_sink_pc", sink_size=10, budget=0), 3, "positive"),
    (dict(mode="deep_sink_pc", sink_size=10, reuse_cap=-1), 3, "reuse_cap=-1"),
    (dict(mode="self_forcing", local_attn_size=0), 3, "local_attn_size=0"),
    (dict(mode="infinite_forcing", local_attn_size=12, sink_size=4), 3, "sink_size=4 is larger than the chunk"),
    (dict(mode="infinite_forcing", local_attn_size=6, sink_size=1), 6, "exceeds the window"),
    (dict(mode="infinite_forcing"), 2, None),  # the released W 6, S 1 with 2-frame chunks is fine
    (dict(mode="deep_sink", sink_size=10, sink_gap=-1), 3, "sink_gap=-1"),
    (dict(mode="deep_sink", local_attn_size=6, sink_size=4), 3, "sink_size=4"),
    (dict(mode="deep_sink_pc", local_attn_size=6, sink_size=1), 3, "--Budget=16"),
    (dict(mode="deep_sink_pc", local_attn_size=12, sink_size=3, budget=12, recent=2), 3, "--Recent=2"),
])
def test_invalid_settings_raise_one_clear_error(kwargs, chunk, match):
    if match is None:
        return build_policy(**kwargs).validate(chunk)
    with pytest.raises(ValueError, match=match) as err:
        build_policy(**kwargs).validate(chunk)
    assert isinstance(err.value, CachePolicyError) and "\n" not in str(err.value)


def test_pipeline_validates_the_policy_against_the_chunk_size():
    with pytest.raises(CachePolicyError, match="--Recent=2"):
        Rollout(tiny_model(), RolloutConfig(), build_policy("deep_sink_pc", sink_size=10, recent=2,
                                                                            budget=16))


@pytest.mark.parametrize("name", list(POLICIES))
def test_plans_read_the_cache_and_never_write_it(name):
    """Policies decide, the cache applies: ``plan`` leaves every per-token field as it found it."""
    policy = build_policy(**POLICIES[name])
    kv = make_kv(policy, layers=2, batch=2)
    plans, original = [], policy.plan

    def checked(kv, layer):
        c = kv.layers[layer]
        before = [t.clone() for t in (c.k, c.v, c.t_pos, c.frame, *c.aux.values())], c.n, c.staged
        plan = original(kv, layer)
        after = [c.k, c.v, c.t_pos, c.frame, *c.aux.values()], c.n, c.staged
        assert before[1:] == after[1:] and all(torch.equal(x, y) for x, y in zip(before[0], after[0]))
        plans.append(plan)
        return plan

    policy.plan = checked
    for _ in drive(kv, 16, ramp_qkv(lambda fr, tok: -fr, batch=2)):
        pass
    assert len(plans) == 32 and sum(p is not None for p in plans) >= 8
