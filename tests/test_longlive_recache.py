"""LongLive's re-cache at a prompt switch against an independent naive reference (explicit per-layer frame lists,
absolute positions, no cache object), for global_sink true and false, switches before and after frame 12."""
import pytest
import torch

from pipeline.rollout import Rollout, RolloutInputs

from naive_wan import _sigma_table, naive_forward
from methods.longlive import LongLiveRecache, WindowStore
from pipeline.recache import CleanLatentStore, build_recache
from pipeline.policies import SelfForcingWindow, build_policy, registered_modes
from tiny import text_embeds, tiny_model, tiny_pipeline

LATENT = (16, 4, 4)  # F = 4 tokens per frame
L, S, B = 12, 3, 3
T = 30


def naive_longlive(sd, cfg, prompts, noise, renoise_gen, global_sink, steps=(1000, 750, 500, 250), slots=False):
    """The Self Forcing window rollout (L, S, B) with LongLive's switch + re-cache, written out on frame lists.

    prompts: {chunk index: text embeddings} (chunk 0 the opening prompt). Each layer's cache is a list of
    (k unrotated, v, absolute position, frame) entries, one per frame, the sink its first S entries.
    With ``slots`` (LongLive's infinite mode) every key sits at its cache slot and the queries at the slots they
    will take, instead of absolute positions. Returns (latents, per-layer cached frame lists at the end).
    """
    sig, ts = _sigma_table()
    table = torch.cat([ts, torch.zeros(1)])
    warped = [table[1000 - s] for s in steps]

    def sigma(tv):
        return sig[torch.argmin((ts - tv).abs())]

    batch = noise.shape[0]
    cache = [[] for _ in range(cfg["num_layers"])]
    clean = {}
    out = torch.zeros_like(noise)
    text = prompts[0]
    for i, f in enumerate(range(0, noise.shape[1], B)):
        if i > 0 and i in prompts:
            text = prompts[i]
            if global_sink and f > L:
                frames = list(range(f - (L - S), f))
                extra = [[(k, v, p) for k, v, p, _ in layer[:S]] for layer in cache]  # the old sink, frozen
            else:
                frames = list(range(f - min(L, f), f))
                extra = [[] for _ in cache]  # the frames attend only each other
            x = torch.stack([clean[fr] for fr in frames], dim=1)
            if slots:
                extra = [[(k, v, j) for j, (k, v, _) in enumerate(layer)] for layer in extra]
            start = len(extra[0]) if slots else frames[0]
            _, own = naive_forward(sd, cfg, x, torch.zeros(batch, len(frames)), text, extra, start)
            for li, (k, v) in enumerate(own):
                Fn = k.shape[1] // len(frames)
                new = [(k[:, j * Fn:(j + 1) * Fn], v[:, j * Fn:(j + 1) * Fn], fr, fr) for j, fr in enumerate(frames)]
                cache[li] = (cache[li][:S] + new) if (global_sink and f > L) else new
        for li, layer in enumerate(cache):
            if len(layer) + B > L:
                cache[li] = layer[:S] + layer[len(layer) - (L - B - S):]
        ctx = [[(k, v, j if slots else p) for j, (k, v, p, _) in enumerate(layer)] for layer in cache]
        start = len(ctx[0]) if slots else f
        x = noise[:, f:f + B]
        for j, tv in enumerate(warped):
            flow, _ = naive_forward(sd, cfg, x, torch.full((batch, B), float(tv)), text, ctx, start)
            x0 = (x.double() - sigma(tv).double() * flow.double()).float()
            if j + 1 < len(warped):
                eps = torch.randn((batch * B, *noise.shape[2:]), generator=renoise_gen)
                sn = sigma(warped[j + 1])
                x = ((1 - sn) * x0.flatten(0, 1) + sn * eps).view_as(x0)
        out[:, f:f + B] = x0
        for c in range(B):
            clean[f + c] = x0[:, c]
        _, own = naive_forward(sd, cfg, x0, torch.zeros(batch, B), text, ctx, start)
        for li, (k, v) in enumerate(own):
            Fn = k.shape[1] // B
            cache[li] += [(k[:, c * Fn:(c + 1) * Fn], v[:, c * Fn:(c + 1) * Fn], f + c, f + c) for c in range(B)]
    return out, [[e[3] for e in layer] for layer in cache]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=8)


def _recache(recache, global_sink=True):
    """The re-cache object of an old-style choice: False (off), True / "ours", "longlive" (with global_sink)."""
    name = {False: "off", True: "ours"}.get(recache, recache)
    return build_recache(name, global_sink=global_sink)


def _pipeline(model, recache, global_sink=True, policy=None):
    pipe = tiny_pipeline(model, local_attn_size=L, sink_size=S, policy=policy)
    return Rollout(model, pipe.config, pipe.policy, recache=_recache(recache, global_sink))


def _run(model, prompts, noise, recache, global_sink=True, policy=None):
    pipe = _pipeline(model, recache, global_sink, policy)
    chunks = list(pipe.frames(RolloutInputs(prompts[0], noise, torch.Generator().manual_seed(7),
                                            prompt_switch=lambda i, f: prompts.get(i))))
    return torch.cat([x0 for _, _, x0 in chunks], dim=1), pipe


# Switch chunks: 2 (f = 6 < L), 4 (f = 12 = L), 6 (f = 18 > L), 9 (f = 27 > L).
@pytest.mark.parametrize("global_sink", [True, False])
@pytest.mark.parametrize("switch_chunks", [(2, 4), (6, 9), (2, 6)], ids=["before12", "after12", "both"])
def test_longlive_recache_equals_naive_reference(model, global_sink, switch_chunks):
    noise = torch.randn(1, T, *LATENT, generator=torch.Generator().manual_seed(3))
    prompts = {0: text_embeds(1, model.config, seed=1)}
    for n, i in enumerate(switch_chunks):
        prompts[i] = text_embeds(1, model.config, seed=10 + n)
    ours, pipe = _run(model, prompts, noise, "longlive", global_sink)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    ref, ref_frames = naive_longlive(sd, model.config.to_dict(), prompts, noise, torch.Generator().manual_seed(7),
                                     global_sink)
    F = model.config.tokens_per_frame(*LATENT[1:])
    for layer, frames in zip(pipe.kv.layers, ref_frames):
        assert layer.frame[0, layer.order()[::F]].tolist() == frames
        assert torch.equal(layer.t_pos[0, :layer.n], layer.frame[0, :layer.n])  # absolute positions
    assert (ours - ref).abs().max().item() < 1e-5


def test_global_sink_false_moves_the_sink_and_true_keeps_it(model):
    noise = torch.randn(1, 24, *LATENT, generator=torch.Generator().manual_seed(3))
    prompts = {0: text_embeds(1, model.config, seed=1), 6: text_embeds(1, model.config, seed=2)}  # f = 18
    F = model.config.tokens_per_frame(*LATENT[1:])
    kept, kept_pipe = _run(model, prompts, noise, "longlive", True)
    moved, moved_pipe = _run(model, prompts, noise, "longlive", False)
    # after the run (chunk at 21 committed): true keeps frames 0-2 as the sink; false has frames 6-8 (= 18-12 ...)
    assert kept_pipe.kv.layers[0].frame[0, :S * F:F].tolist() == [0, 1, 2]
    assert moved_pipe.kv.layers[0].frame[0, :S * F:F].tolist() == [6, 7, 8]
    assert torch.equal(kept[:, :18], moved[:, :18])
    assert (kept[:, 18:] - moved[:, 18:]).abs().max() > 1e-4


def test_longlive_and_ours_agree_up_to_the_window_and_differ_after(model):
    noise = torch.randn(1, 24, *LATENT, generator=torch.Generator().manual_seed(3))
    a, b = text_embeds(1, model.config, seed=1), text_embeds(1, model.config, seed=2)
    early = {0: a, 3: b}  # f = 9 <= L: both recompute frames 0-8 jointly at their positions
    ll, _ = _run(model, early, noise, "longlive")
    assert torch.allclose(ll, _run(model, early, noise, True)[0], atol=1e-6)
    assert torch.allclose(ll, _run(model, early, noise, "ours")[0], atol=1e-6)
    late = {0: a, 5: b}  # f = 15 > L: LongLive keeps the old sink; ours recomputes it too
    assert (_run(model, late, noise, "longlive")[0] - _run(model, late, noise, "ours")[0]).abs().max() > 1e-4
    assert not torch.equal(ll, _run(model, early, noise, False)[0])


def test_store_keeps_the_last_window_frames_for_longlive(model):
    pipe = tiny_pipeline(model, local_attn_size=L, sink_size=S)
    store = LongLiveRecache(global_sink=False).new_store(pipe.policy)
    assert isinstance(store, WindowStore) and store.keep_last == L
    assert type(_recache(True, True).new_store(pipe.policy)) is CleanLatentStore
    assert _recache(False, True).new_store(pipe.policy) is None
    noise = torch.randn(1, 27, *LATENT, generator=torch.Generator().manual_seed(3))
    pipe._cache_for(1, 4)
    for f in range(0, 27, B):
        store.add(f, noise[:, f:f + B])
        store.prune(pipe.kv)  # an empty cache references nothing: only the last L frames stay
    assert sorted(store._frames) == list(range(27 - L, 27))
    with pytest.raises(ValueError, match=r"'peft'.*longlive"):
        _recache("peft", True).new_store(SelfForcingWindow(local_attn_size=L, sink_size=S))


def test_longlive_recache_past_frame_1100():
    global_sink = False  # the variant that moves the sink (positions rebuilt from the pass)
    model = tiny_model(seed=9, num_layers=1)
    pipe = _pipeline(model, "longlive", global_sink)
    prompts = {0: text_embeds(1, model.config, seed=1), 367: text_embeds(1, model.config, seed=2),
               369: text_embeds(1, model.config, seed=3)}  # switches at f = 1101 and 1107
    noise, source = pipe.seeded_noise(1, 1113, (16, 2, 2), seed=0, noise_order="chunked")
    last = None
    for i, f, x0 in pipe.frames(RolloutInputs(prompts[0], noise, source, prompt_switch=lambda i, f: prompts.get(i))):
        last = x0
    assert torch.isfinite(last).all()
    sink = pipe.kv.layers[0].frame[0, :S].tolist()  # F = 1 token per frame
    assert sink == ([0, 1, 2] if global_sink else [1107 - L + j for j in range(S)])
    assert pipe.kv.layers[0].frame[0, pipe.kv.layers[0].order()].tolist()[S:] == list(range(1113 - (L - S), 1113))


@pytest.mark.skipif("infinite_forcing" not in registered_modes(), reason="needs the infinite_forcing cache mode")
@pytest.mark.parametrize("global_sink", [True, False])
def test_longlive_recache_in_infinite_mode_equals_slot_reference(model, global_sink):
    # LongLive's infinite mode: keys at their cache slot, a rolled chunk's queries at slots L-B .. L-1; the re-cache
    # pass at slots too (f > L: the frames at 0 .. L-1, or S .. L-1 after the kept sink).
    noise = torch.randn(1, T, *LATENT, generator=torch.Generator().manual_seed(3))
    prompts = {0: text_embeds(1, model.config, seed=1), 3: text_embeds(1, model.config, seed=10),
               6: text_embeds(1, model.config, seed=11), 9: text_embeds(1, model.config, seed=12)}
    policy = build_policy("infinite_forcing", local_attn_size=L, sink_size=S)
    ours, _ = _run(model, prompts, noise, "longlive", global_sink, policy=policy)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    ref, _ = naive_longlive(sd, model.config.to_dict(), prompts, noise, torch.Generator().manual_seed(7),
                            global_sink, slots=True)
    assert (ours - ref).abs().max().item() < 1e-5
