"""Full rollouts of every cache mode against an independent naive reference (docs/cache.md), fp32, < 1e-5.

The reference shares only the model's weights and forward with the library: its cache is a plain object with
per-layer python lists of tokens (key, value, explicit absolute time position, source frame, pick count), the policy
rules re-implemented from docs/cache.md with explicit loops, keys time-rotated at absolute positions with complex
numbers (no re-basing), and its own chunk loop. No KVCache, no policy class.
"""
import pytest
import torch

from pipeline.rollout import Rollout, RolloutConfig
from pipeline.policies import build_policy
from pipeline.scheduler import FlowMatchScheduler

from tiny import TINY, tiny_model

LATENT = (16, 4, 4)  # F = 4 tokens per frame
B = 3


def rot_time(x, t):
    """Time rotation of one token x [H, D] (spatial rotation already applied) at absolute position t (float64)."""
    D = x.shape[-1]
    td = D - 4 * (D // 6)
    inv = 1.0 / (10000.0 ** (torch.arange(0, td, 2, dtype=torch.float64) / td))
    xc = torch.view_as_complex(x.double().reshape(x.shape[0], D // 2, 2).contiguous())
    rot = torch.polar(torch.ones_like(inv), t * inv)
    xc = torch.cat([xc[:, :td // 2] * rot, xc[:, td // 2:]], dim=1)
    return torch.view_as_real(xc).reshape(x.shape)


class Token:
    """One cached token: spatially rotated key, value, time position, source frame, pick count."""

    def __init__(self, k, v, t, frame):
        self.k, self.v, self.t, self.frame, self.picks = k, v, t, frame, 0


class NaiveCache:
    """Explicit token lists per layer and the rules of docs/cache.md; same update() protocol the model calls."""

    base = 0  # absolute positions everywhere

    def __init__(self, mode, F, L=21, S=0, N=16, R=4, cap=7, realign_topc=False, layers=2, gap=None):
        self.mode, self.F, self.L, self.S, self.N, self.R, self.cap, self.paper = mode, F, L, S, N, R, cap, realign_topc
        self.gap = gap  # sink_gap: None = as released (Deep Sink / PC: B; Infinite-Forcing: 0)
        self.committed = [[] for _ in range(layers)]
        self.staged = [[] for _ in range(layers)]
        self.chunk = [None] * layers
        self.queries = [[] for _ in range(layers)]  # (q [H, D], absolute position) of the last R*F query tokens
        self.events = []

    def update(self, layer, q, k, v, pos, rotation):
        """Remember queries, run the chunk's cache event on its first call, stage, return all keys/values."""
        assert q.shape[0] == 1
        for i in range(q.shape[1]):
            self.queries[layer].append((q[0, i], int(pos[i])))
        self.queries[layer] = self.queries[layer][-self.R * self.F:]
        f = int(pos[0])
        if self.chunk[layer] != f:  # first call of a new chunk: the previous clean pass becomes context
            self.committed[layer] += self.staged[layer]
            self.chunk[layer] = f
            self.event(layer, f)
        self.staged[layer] = [Token(k[0, i], v[0, i], int(pos[i]), int(pos[i])) for i in range(k.shape[1])]
        tokens = self.committed[layer] + self.staged[layer]
        keys = torch.stack([rot_time(tok.k, tok.t).to(k.dtype) for tok in tokens])[None]
        values = torch.stack([tok.v for tok in tokens])[None]
        return keys, values

    def event(self, layer, f):
        """The rule of this mode for the chunk starting at f (before it is staged)."""
        F, L, S, cache = self.F, self.L, self.S, self.committed[layer]
        frames = len(cache) // F
        if frames + B <= L:
            return
        if self.mode in ("self_forcing", "deep_sink", "infinite_forcing"):
            evict = frames + B - L
            del cache[S * F:(S + evict) * F]
            n_c = len(cache) // F  # committed frames left
            if self.mode == "deep_sink" and self.gap is None:
                for i in range(S * F):
                    cache[i].t = f - L + i // F  # as released: [f - L, f - L + S)
            elif self.mode != "self_forcing":  # sink frame j at f - n_c - gap + j (IF: gap 0)
                for i in range(S * F):
                    cache[i].t = f - n_c - (self.gap or 0) + i // F
            self.events.append(("evict", layer, f))
            return
        # Participative Compression
        N, R = self.N, self.R
        recent_committed = (R - B) * F
        cand = cache[S * F:len(cache) - recent_committed]
        qs = self.queries[layer]
        rotated_q = [rot_time(q, p) for q, p in qs]
        scores = []
        for tok in cand:
            kr = rot_time(tok.k, tok.t)
            scores.append(sum(float((rq * kr).sum()) for rq in rotated_q))
        order = sorted(range(len(cand)),
                       key=lambda j: (self.cap > 0 and cand[j].picks >= self.cap, -scores[j], j))
        chosen = sorted(order[:(N - S - R) * F])
        for j in chosen:
            cand[j].picks += 1
        top = [cand[j] for j in chosen]
        recent = cache[len(cache) - recent_committed:]
        if self.paper:
            slots = -(-len(top) // F)
            start = f - (R - B) - slots
            for i, tok in enumerate(top):
                tok.t = start + i // F
            sink_start = start - S
        elif self.gap is None:
            sink_start = f - N
        else:  # gap unused positions before the oldest kept frame (N - B frames are kept)
            sink_start = f - (N - B) - self.gap
        for i in range(S * F):
            cache[i].t = sink_start + i // F
        self.committed[layer] = cache[:S * F] + top + recent
        self.events.append(("compress", layer, f))


def naive_rollout(model, prompt, noise, seed, cache):
    """The Self Forcing chunk loop written out: 4 denoising steps, re-noise between them, one clean pass."""
    sched = FlowMatchScheduler(5.0)
    ts = sched.warp([1000, 750, 500, 250])
    g = torch.Generator().manual_seed(seed)
    text_kv = model.encode_text(prompt)
    out = torch.zeros_like(noise)
    _, T, C, Hh, Ww = noise.shape
    with torch.no_grad():
        for f in range(0, T, B):
            xt = noise[:, f:f + B]
            for j, t in enumerate(ts):
                tt = t.expand(1, B)
                flow = model(xt, tt, text_kv, cache, start_frame=f)
                x0 = sched.flow_to_x0(flow[0], xt[0], tt[0])[None]
                if j + 1 < len(ts):
                    eps = torch.randn((B, C, Hh, Ww), generator=g)
                    xt = sched.add_noise(x0[0], eps, ts[j + 1].expand(B))[None]
            model(x0, torch.zeros(1, B), text_kv, cache, start_frame=f)
            out[:, f:f + B] = x0
    return out


CASES = {
    "self_forcing": (dict(mode="self_forcing", local_attn_size=9, sink_size=2), 30),
    "deep_sink": (dict(mode="deep_sink", local_attn_size=12, sink_size=6), 30),
    "deep_sink_pc": (dict(mode="deep_sink_pc", local_attn_size=21, sink_size=10, budget=16, recent=4), 45),
    "deep_sink_pc_cap1_paper": (dict(mode="deep_sink_pc", local_attn_size=12, sink_size=3, budget=9, recent=4,
                                     reuse_cap=1, realign_topc=True), 36),
    "infinite_forcing_vsink1": (dict(mode="infinite_forcing", local_attn_size=6, sink_size=1), 24),
    "longlive_infinite": (dict(mode="infinite_forcing", local_attn_size=12, sink_size=3), 30),
    "deep_sink_gap0": (dict(mode="deep_sink", local_attn_size=12, sink_size=6, sink_gap=0), 30),
    "deep_sink_pc_w12_gap2": (dict(mode="deep_sink_pc", local_attn_size=12, sink_size=3, budget=10, recent=4,
                                   sink_gap=2), 36),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rollout_equals_naive_reference(name):
    cfg, T = CASES[name]
    model = tiny_model(11)
    prompt = torch.randn(1, TINY["text_len"], TINY["text_dim"], generator=torch.Generator().manual_seed(3))
    prompt[:, 6:] = 0
    noise = torch.randn(1, T, *LATENT, generator=torch.Generator().manual_seed(4))
    trace = []
    pipe = Rollout(model, RolloutConfig(), build_policy(**cfg, trace=trace.append))
    ours = pipe.generate(prompt, noise, torch.Generator().manual_seed(5))

    F = model.config.tokens_per_frame(*LATENT[1:])
    ref_cache = NaiveCache(cfg["mode"], F, L=cfg["local_attn_size"], S=cfg["sink_size"], N=cfg.get("budget", 16),
                           R=cfg.get("recent", 4), cap=cfg.get("reuse_cap", 7),
                           realign_topc=cfg.get("realign_topc", False), gap=cfg.get("sink_gap"))
    ref = naive_rollout(model, prompt, noise, 5, ref_cache)

    ours_events = sorted({(r["event"], r["layer"], r["chunk_start"]) for r in trace})
    ref_events = sorted(set(ref_cache.events))
    assert ours_events == ref_events and len(ref_events) >= 6  # several cache events per layer
    for layer in range(2):  # same tokens, same time positions, in the same (chronological) order
        c = pipe.kv.layers[layer]
        o = c.order()  # FIFO eviction reuses slots: storage order is not chronological
        assert c.frame[0, o].tolist() == [tok.frame for tok in ref_cache.committed[layer]] + \
            [tok.frame for tok in ref_cache.staged[layer]]
        assert c.t_pos[0, o].tolist() == [tok.t for tok in ref_cache.committed[layer]] + \
            [tok.t for tok in ref_cache.staged[layer]]
    assert (ours - ref).abs().max().item() < 1e-5
