"""Participative Compression on top of the rolling window (RollingLoop(pc_budget_frames=C), docs/rolling.md section
7): off is the released loop, invariants of every call over a 40-block run, top-C against an independent score and
pick count, the worked table, flat memory past frame 1,100, the CLI section."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.kv_cache import KVCache
from pipeline.noise import LazyNoise, generator_noise
from pipeline.policies import SelfForcingWindow
from pipeline.rollout import Rollout, RolloutConfig, RolloutInputs
from pipeline.rolling import RollingLoop
from test_cache_docs import segments
from test_rolling import live_latent_bytes, time_rope
from test_rolling_docs import doc_rows
from tiny import text_embeds, tiny_model

RF, CF = [1000, 800, 600, 400, 200], [1000, 750, 500, 250]
B = 3
DOC = Path(__file__).resolve().parents[1] / "docs" / "rolling.md"


def run(steps, loop, T, latent=(16, 2, 4), batch=1, record=None, seed=7):
    """(video, layer trace) of one rollout; ``record`` (a list) gets (layer, q, k, pos, plan) of every call."""
    trace = []
    model = tiny_model(seed=seed)
    policy = SelfForcingWindow(local_attn_size=-1, sink_size=0, trace=trace.append)
    pipe = Rollout(model, RolloutConfig(denoising_step_list=steps), policy, loop=loop)
    noise = torch.randn(batch, T, *latent, generator=torch.Generator().manual_seed(3))
    original = KVCache.window_update

    def spy(kv, layer, q, k, v, pos, rotation):
        record.append((layer, q.detach().clone(), k.detach().clone(), pos.clone(), kv.window.plan))
        return original(kv, layer, q, k, v, pos, rotation)
    if record is not None:
        KVCache.window_update = spy
    try:
        out = pipe.generate(text_embeds(batch, model.config), noise, torch.Generator().manual_seed(4))
    finally:
        KVCache.window_update = original
    return out, trace


# ------------------------------------------------------------------------------------------------ off
def test_off_is_the_released_loop_bit_for_bit():
    released, trace_a = run(RF, RollingLoop(), 27)
    record = []
    off, trace_b = run(RF, RollingLoop(pc_budget_frames=None, recent_frames=2, reuse_cap=0), 27, record=record)
    assert torch.equal(released, off)
    assert all(plan.select is None and plan.remember == 0 for *_, plan in record)  # no PC machinery runs
    assert len(trace_a) == len(trace_b)
    for a, b in zip(trace_a, trace_b):
        assert a.keys() == b.keys() and "selected_frames" not in b
        for key in a:
            same = torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key]
            assert same, key


def test_pc_equals_the_released_loop_while_every_candidate_fits():
    """CF, anchor 3, cap 21, C = 3: window 6 chooses all of block 1 (at its own place before the working block 2),
    the released working cache of blocks 1, 2; from window 7 on the choice differs, so blocks 0-3 agree."""
    released = run(CF, RollingLoop(clean_pass_sees_anchor=True), 36)[0]
    pc = run(CF, RollingLoop(clean_pass_sees_anchor=True, pc_budget_frames=3, buffer_frames=36), 36)[0]
    assert torch.equal(released[:, :12], pc[:, :12])
    assert not torch.equal(released[:, 12:15], pc[:, 12:15])


# ------------------------------------------------------------------------------------ invariants
CASES = {  # name: (steps, loop kwargs, batch)
    "cf_anchor_c3_cap2_sees": (CF, dict(pc_budget_frames=3, reuse_cap=2, buffer_frames=48,
                                        clean_pass_sees_anchor=True), 2),
    "rf_cap25_c4_released_clean": (RF, dict(attention_cap_frames=25, pc_budget_frames=4, recent_frames=5,
                                            reuse_cap=3, buffer_frames=36), 1),
    "cf_sink6_c2_nocap": (CF, dict(sink_frames=6, attention_cap_frames=23, pc_budget_frames=2, reuse_cap=0,
                                   buffer_frames=30, clean_pass_sees_anchor=True), 1),
}


def _expected_topc(scores, picks, C, cap):
    """Python ranking: under-cap first, then higher score, then earlier index; keep C, ascending."""
    order = sorted(range(len(scores)), key=lambda j: (cap > 0 and picks[j] >= cap, -scores[j], j))
    return sorted(order[:C])


@pytest.mark.parametrize("case", list(CASES))
def test_pc_invariants_and_top_c_of_an_independent_score(case):
    steps, kw, batch = CASES[case]
    loop = RollingLoop(**kw)
    record = []
    T = 120  # 40 blocks
    out, trace = run(steps, loop, T, batch=batch, record=record)
    assert torch.isfinite(out).all() and len(record) == len(trace)
    S, cap, C, R = loop.sink(B), loop.attention_cap_frames, loop.pc_budget_frames, loop.recent_frames
    F = trace[0]["tokens_per_frame"]
    queries = {0: [], 1: []}      # per layer: (q [batch, F, H, D], position) of every denoising call's frame
    keys = {0: {}, 1: {}}         # per layer: frame -> stored keys [batch, F, H, D] (its last write)
    picks = {}                    # (layer, sample, frame, token) -> picks since the frame was written
    selecting, most = 0, 0
    for (layer, q, k, pos, plan), r in zip(record, trace):
        assert r["layer"] == layer
        s, qn = r["start_frame"], r["num_frames"]
        fr, tp = r["frames"][0].tolist(), r["t_pos"][0].tolist()
        if r["call"] == "denoise":  # memory: this call's frames join first (as Participative Compression does)
            queries[layer] += [(q[:, i * F:(i + 1) * F], int(pos[i * F])) for i in range(qn)]
        assert fr[-qn:] == tp[-qn:] == list(range(s, s + qn))
        ctx_fr, ctx_tp = fr[:-qn], tp[:-qn]
        sink = [a for a in ctx_fr if a < S]
        working = [a for a in ctx_fr if a >= S]
        assert working == list(range(working[0], working[-1] + 1)) if working else True
        assert [t for a, t in zip(ctx_fr, ctx_tp) if a >= S] == working  # working blocks at their own frames
        first = working[0] if working else s
        if s and (r["call"] == "denoise" or loop.clean_pass_sees_anchor):
            assert sink == list(range(min(S, s))) and (not working or working[-1] + 1 == s)
        hf = r["held_frames"][0].tolist()
        assert len(hf) <= loop.buffer_frames and all(e >= S for e in r["evicted"])  # the sink is never evicted
        if s >= S + (len(steps) - 1) * B:
            assert set(range(S)) <= set(hf)
        chosen_tokens = 0
        if "selected_frames" in r:
            selecting += 1
            cand = r["candidates"]
            assert cand and all(S <= a < first for a in cand) and set(cand) <= set(hf)  # held older blocks only
            g = min(C, len(cand))
            chosen_tokens = r["chosen"].shape[1]
            assert chosen_tokens == g * F
            # positions: the chosen run ends right before the working cache, the sink right before the run
            assert ctx_tp[:len(sink)] == list(range(first - g - len(sink), first - g))
            for b in range(batch):
                sel_fr, sel_tok = r["selected_frames"][b].tolist(), r["selected_tokens"][b].tolist()
                assert set(sel_fr) <= set(cand)
                assert r["selected_t_pos"][b].tolist() == [first - g + i // F for i in range(g * F)]
                assert sorted(zip(sel_fr, sel_tok)) == list(zip(sel_fr, sel_tok))  # chronological
            # independent score: every remembered query token, rotated at its frame, against every candidate key
            mem = queries[layer][-R:]
            qt = torch.cat([x for x, _ in mem], 1).double()                      # [batch, R F, H, D]
            qp = torch.tensor([p for _, p in mem]).repeat_interleave(F)
            kt = torch.cat([keys[layer][a] for a in cand], 1).double()             # [batch, nc, H, D]
            kp = torch.tensor(cand).repeat_interleave(F)
            ref = torch.einsum("bqhd,bnhd->bn", time_rope(qt, qp), time_rope(kt, kp))
            assert torch.allclose(r["scores"].double(), ref, rtol=1e-4, atol=1e-3 * ref.abs().max().item())
            cap_ = loop.reuse_cap
            for b in range(batch):
                counts = [picks.get((layer, b, a, j), 0) for a in cand for j in range(F)]
                want = _expected_topc(ref[b].tolist(), counts, C * F, cap_)
                assert r["chosen"][b].tolist() == want
                assert r["picks"][b].tolist() == [counts[i] + 1 for i in want]
                if cap_ and sum(c < cap_ for c in counts) >= C * F:
                    assert all(counts[i] < cap_ for i in want)  # the reuse cap holds while enough compete
                for i in want:
                    key = (layer, b, cand[i // F], i % F)
                    picks[key] = picks.get(key, 0) + 1
                    most = max(most, picks[key])
        assert len(ctx_fr) * F + chosen_tokens + qn * F <= cap * F  # never more than the attention cap
        for i, a in enumerate(r["written"]):  # the clean pass writes: new keys, pick counts start again
            keys[layer][a] = k[:, i * F:(i + 1) * F]
            for b in range(batch):
                for j in range(F):
                    picks.pop((layer, b, a, j), None)
    assert selecting >= 70
    assert most >= loop.reuse_cap  # some token reaches the reuse cap during the run


# ------------------------------------------------------------------------------------ worked table
TABLE = ("CF long_video (W = 4) with Participative Compression", CF, 36,
         dict(pc_budget_frames=3, buffer_frames=30, clean_pass_sees_anchor=True))


def recompute_table(steps, T, kw):
    out, trace = run(steps, RollingLoop(**kw), T, latent=(16, 2, 2))
    records = [r for r in trace if r["layer"] == 0]
    rows = {}
    for w in range(len(records) // 2):
        cells = []
        for r in records[2 * w:2 * w + 2]:
            q = r["num_frames"]
            fr, tp = r["frames"][0].tolist()[:-q], r["t_pos"][0].tolist()[:-q]
            sink = [(a, t) for a, t in zip(fr, tp) if a < 3]
            work = [(a, t) for a, t in zip(fr, tp) if a >= 3]
            cand = r.get("candidates", [])
            chosen = r["selected_t_pos"][0].tolist() if "selected_t_pos" in r else []
            cells += [segments([a for a, _ in sink], [t for _, t in sink]) or "–",
                      (f"{cand[0]}–{cand[-1]}" if cand else "–"),
                      (f"@{chosen[0]}–{chosen[-1]}" if chosen else "–"),
                      segments([a for a, _ in work], [t for _, t in work]) or "–"]
        ev = records[2 * w + 1]["evicted"]
        cells.append(f"{ev[0]}–{ev[-1]}" if ev else "–")
        rows[w] = cells
    return rows


def test_doc_table_matches_the_loop_and_cache():
    marker, steps, T, kw = TABLE
    rows = doc_rows(marker)
    assert len(rows) >= 6
    ours = recompute_table(steps, T, kw)
    assert set(ours) - set(rows) == {0, 1, 2, 3} <= set(ours)  # warm-up windows, left out: nothing held to attend
    assert all(set(ours[w]) == {"–"} for w in range(4))
    for w, cells in rows.items():
        assert cells == ours[w], f"window {w}"
    text = DOC.read_text(encoding="utf-8")
    assert "not implemented on the rolling window" not in text
    assert "check_recache(recache)" in text and "check_rollout" not in text


# ------------------------------------------------------------------------------------ long runs, CLI
def test_past_frame_1100_with_flat_cache_memory():
    model = tiny_model(seed=2)
    latent = (16, 2, 2)  # 1 token per frame
    noise = LazyNoise(1, latent, generator_noise(torch.Generator().manual_seed(8)), torch.float32, "cpu", 1110)
    loop = RollingLoop(pc_budget_frames=3, buffer_frames=48, clean_pass_sees_anchor=True)
    pipe = Rollout(model, RolloutConfig(denoising_step_list=CF), SelfForcingWindow(local_attn_size=-1, sink_size=0),
                   loop=loop)
    state, live = None, {}
    for i, f, x0 in pipe.frames(RolloutInputs(text_embeds(1, model.config), noise, torch.Generator().manual_seed(9))):
        c = pipe.kv.layers[0]
        now = (c.k.data_ptr(), tuple(c.k.shape), c.v.data_ptr(), c.t_pos.data_ptr(),
               tuple(c.aux["pc_picks"].shape) if "pc_picks" in c.aux else None)
        if i > 20:
            state = state or now
            assert now == state
        assert c.n <= 48 and len(pipe.kv.frame_slots) <= 48
        assert all(m[0].shape[1] <= 4 and m[1].shape[0] <= 4 for m in pipe.kv.window_queries)
        assert set(range(3)) <= set(pipe.kv.frame_slots)
        if i in (80, 360):
            live[i] = live_latent_bytes(latent)
    assert i == 369 and f == 1107
    assert live[360] <= live[80]


def test_cli_section_builds_a_loop_with_pc_on():
    from app.cli_config import load_config
    import methods
    cfg = load_config(None, overrides=["method=rolling_forcing", "rolling_forcing.pc_budget_frames=6"]).cfg
    loop = methods.get_method("rolling_forcing").build_loop(cfg.rolling_forcing, None)
    assert (loop.pc_budget_frames, loop.recent_frames, loop.reuse_cap, loop.buffer_frames,
            loop.attention_cap_frames) == (6, 4, 7, 24, 21)
    released = methods.get_method("rolling_forcing").build_loop(load_config(
        None, overrides=["method=rolling_forcing"]).cfg.rolling_forcing, None)
    assert released == RollingLoop()


def test_pc_validation():
    cfg = RolloutConfig(denoising_step_list=RF)
    policy = SelfForcingWindow(local_attn_size=-1, sink_size=0)
    with pytest.raises(ValueError, match="attention_cap_frames >= 22"):
        RollingLoop(pc_budget_frames=1).validate(cfg, policy)  # RF: 3 + 15 + 3 leave no room under 21
    RollingLoop(pc_budget_frames=1, attention_cap_frames=22).validate(cfg, policy)
    with pytest.raises(ValueError, match="must be >= 1"):
        RollingLoop(pc_budget_frames=0, attention_cap_frames=30).validate(cfg, policy)
    with pytest.raises(ValueError, match="reuse_cap"):
        RollingLoop(pc_budget_frames=2, reuse_cap=-1, attention_cap_frames=30).validate(cfg, policy)
