"""The rolling window (pipeline/rolling.py, docs/rolling.md): the released vector, an independent naive reference with
explicit per-window key lists, the re-noise draws, streaming order, prompt switches, length handling, validation."""
from __future__ import annotations

import gc
import math
import warnings

import pytest
import torch

from naive_wan import _sigma_table
from pipeline.kv_cache import KVCache
from pipeline.loops import LOOPS, build_loop
from pipeline.noise import LazyNoise, generator_noise
from pipeline.policies import CachePolicy, CachePolicyError, DeepSink, SelfForcingWindow
from pipeline.recache import OursRecache
from pipeline.rollout import ImageToVideoError, Rollout, RolloutConfig, RolloutInputs
from pipeline.rolling import RollingLoop, window_schedule
from reference_vectors import load_vector, run_vector
from tiny import text_embeds, tiny_model

RF_STEPS = [1000, 800, 600, 400, 200]
CF_STEPS = [1000, 750, 500, 250]  # Causal Forcing long_video
LATENT = (16, 4, 6)  # C, H, W -> 6 tokens per frame
B = 3


def rolling_pipeline(model, steps=RF_STEPS, trace=None, **loop):
    """A rollout with the rolling loop and the released cache settings (sink 0, global window)."""
    policy = SelfForcingWindow(local_attn_size=-1, sink_size=0, trace=trace)
    return Rollout(model, RolloutConfig(denoising_step_list=steps), policy, loop=RollingLoop(**loop))


# ------------------------------------------------------------------------------------------ the public vector
def test_vector_window_table_is_our_schedule():
    """The vector's `windows` (blocks, level per block, fresh block, re-noised blocks) are our schedule."""
    d = load_vector("rolling_forcing_18f_seed5.pt")
    W = d["rollout"]["window_blocks"]
    ours = list(window_schedule(18 // B, W))
    assert len(ours) == len(d["windows"]) == 10
    for win, ref in zip(ours, d["windows"]):
        assert list(win.blocks) == ref["blocks"]
        assert [win.step(b) for b in win.blocks] == ref["level_index"]  # index into the warped list
        assert win.fresh == ref["input_from_noise_block"]
        assert [b for b in win.blocks if win.step(b) < W - 1] == ref["draws"]


# ------------------------------------------------------------------------------ the naive, explicit reference
def spec_denoise_keys(buffer, oldest, q, cap=21, anchor=3):
    """(frame, position) of the cache keys of a denoising call (spec: anchor right before the working cache)."""
    if oldest == 0:
        return []
    s = 3 * oldest
    non_anchor = buffer[1:]
    k = min((cap - q - anchor) // 3, len(non_anchor))
    working = non_anchor[len(non_anchor) - k:]
    keys = [(j, s - 3 * k - 3 + j) for j in range(3)]
    return keys + [(3 * b + j, 3 * b + j) for b in working for j in range(3)]


def spec_clean_keys(buffer, block, sees_anchor, cap=21):
    """(frame, position) of the cache keys of the clean pass of ``block`` (buffer already holds it)."""
    if sees_anchor:
        return spec_denoise_keys([b for b in buffer if b != block], block, 3, cap)
    frames = [3 * b + j for b in buffer for j in range(3)][-cap:]  # the newest cap frames, itself included
    return [(fr, fr) for fr in frames if fr // 3 != block]  # the anchor (if kept) sits at 0-2, its true place


def time_rope(x, positions):
    """Rotate the time pairs of x [B, n, H, D] at per-token positions [n] (complex arithmetic, float64)."""
    D = x.shape[-1]
    td = D - 4 * (D // 6)
    inv = 1.0 / (10000.0 ** (torch.arange(0, td, 2, dtype=torch.float64) / td))
    ang = torch.as_tensor(positions, dtype=torch.float64)[:, None] * inv
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], D // 2, 2).contiguous())
    xc = torch.cat([xc[..., :td // 2] * torch.polar(torch.ones_like(ang), ang)[:, None], xc[..., td // 2:]], -1)
    return torch.view_as_real(xc).flatten(-2).to(x.dtype)


class ExplicitKeys:
    """Cache stand-in: attends exactly the listed (k, v, position) frames per layer, then the call; records k/v."""

    base = 0  # absolute positions

    def __init__(self, context, positions):
        self.context, self.positions = context, positions  # per layer: list of (k [B, F, H, D], v, position)
        self.k, self.v = [], []

    def update(self, layer, q, k, v, pos, rotation):
        self.k.append(k)
        self.v.append(v)
        F = k.shape[1] // len(self.positions)
        own = torch.tensor(self.positions).repeat_interleave(F)
        ctx = self.context[layer]
        keys = [time_rope(ck, [p] * ck.shape[1]) for ck, _, p in ctx] + [time_rope(k, own)]
        return torch.cat(keys, 1), torch.cat([cv for _, cv, _ in ctx] + [v], 1)


def naive_rolling(model, text, noise, renoise_gen, steps, sees_anchor=False, trace=None):
    """Rolling Forcing written out: per window the explicit key list of the spec, one call per window and clean pass.

    trace(w, kind, keys, own) gets every call's cache keys and its own frames as (frame, position) pairs.
    """
    sig, ts = _sigma_table()
    table = torch.cat([ts, torch.zeros(1)])
    warped = [float(table[1000 - s]) for s in steps]
    sigma = lambda tv: sig[torch.argmin((ts - tv).abs())].double()  # noqa: E731
    W, (batch, T) = len(warped), noise.shape[:2]
    nb = T // 3
    text_kv = model.encode_text(text)
    clean = [dict() for _ in model.blocks]  # per layer: frame -> (k, v) of its last clean pass
    buffer = []  # blocks in the released 24-frame buffer: [anchor, up to 7 newest]
    current, out = {}, torch.zeros_like(noise)

    def context(keys):
        return [[(*clean[layer][fr], pos) for fr, pos in keys] for layer in range(len(clean))]

    def run(x, t, keys, s):
        cache = ExplicitKeys(context(keys), list(range(s, s + x.shape[1])))
        flow = model(x, t, text_kv, cache, frame_positions=torch.arange(s, s + x.shape[1]))
        return flow, cache

    for w in range(nb + W - 1):
        blocks = list(range(max(0, w - W + 1), min(nb - 1, w) + 1))
        if w < nb:
            current[w] = noise[:, 3 * w:3 * w + 3]
        s, q = 3 * blocks[0], 3 * len(blocks)
        x = torch.cat([current[b] for b in blocks], 1)
        tv = [warped[w - b] for b in blocks for _ in range(3)]
        keys = spec_denoise_keys(buffer, blocks[0], q)
        if trace:
            trace(w, "denoise", keys, [(s + i, s + i) for i in range(q)])
        flow, _ = run(x, torch.tensor(tv).expand(batch, q), keys, s)
        x0 = torch.stack([(x[:, i].double() - sigma(tv[i]) * flow[:, i].double()).float() for i in range(q)], 1)
        for j, b in enumerate(blocks):
            if w - b < W - 1:
                eps = torch.randn((batch * q, *noise.shape[2:]), generator=renoise_gen).view(batch, q, *noise.shape[2:])
                sn = sigma(warped[w - b + 1]).float()
                current[b] = (1 - sn) * x0[:, 3 * j:3 * j + 3] + sn * eps[:, 3 * j:3 * j + 3]
        if blocks[0] not in buffer:
            buffer.append(blocks[0])
            if len(buffer) > 8:
                del buffer[1]  # the oldest non-anchor block is shifted out
        keys = spec_clean_keys(buffer, blocks[0], sees_anchor)
        if trace:
            trace(w, "clean", keys, [(s + i, s + i) for i in range(3)])
        _, rec = run(x0[:, :3], torch.zeros(batch, 3), keys, s)
        F = rec.k[0].shape[1] // 3
        for layer in range(len(clean)):
            for j in range(3):
                clean[layer][s + j] = (rec.k[layer][:, j * F:(j + 1) * F], rec.v[layer][:, j * F:(j + 1) * F])
        if w - blocks[0] == W - 1:
            out[:, s:s + 3] = x0[:, :3]
    return out


def segs(keys):
    """(frame, position) pairs as ``a-b@c-d`` runs."""
    runs = []
    for fr, p in keys:
        if runs and fr == runs[-1][1] + 1 and p == runs[-1][3] + 1:
            runs[-1][1], runs[-1][3] = fr, p
        else:
            runs.append([fr, fr, p, p])
    return " ".join(f"{a}-{b}@{c}-{d}" for a, b, c, d in runs)


# The worked example of the spec (RF, T = 27), as released: per window the denoising call's keys (anchor | working |
# window, frames@RoPE position) and the clean pass's keys (itself included).
SPEC_T27 = {
    0: ("- | - | 0-2@0-2", "0-2@0-2"),
    1: ("- | - | 0-5@0-5", "0-2@0-2"),
    2: ("- | - | 0-8@0-8", "0-2@0-2"),
    3: ("- | - | 0-11@0-11", "0-2@0-2"),
    4: ("- | - | 0-14@0-14", "0-2@0-2"),
    5: ("0-2@0-2 | - | 3-17@3-17", "0-5@0-5"),
    6: ("0-2@0-2 | 3-5@3-5 | 6-20@6-20", "0-8@0-8"),
    7: ("0-2@3-5 | 6-8@6-8 | 9-23@9-23", "0-11@0-11"),
    8: ("0-2@6-8 | 9-11@9-11 | 12-26@12-26", "0-14@0-14"),
    9: ("0-2@6-8 | 9-14@9-14 | 15-26@15-26", "0-17@0-17"),
    10: ("0-2@6-8 | 9-17@9-17 | 18-26@18-26", "0-20@0-20"),
    11: ("0-2@6-8 | 9-20@9-20 | 21-26@21-26", "3-23@3-23"),
    12: ("0-2@6-8 | 9-23@9-23 | 24-26@24-26", "6-26@6-26"),
}


def test_naive_key_lists_are_the_spec_worked_example():
    seen = {}

    def trace(w, kind, keys, own):
        if kind == "denoise":
            seen[w] = " | ".join(segs(part) or "-" for part in (keys[:3], keys[3:], own))
        else:
            seen[w] = (seen[w], segs(keys + own))
    model = tiny_model(seed=1)
    noise = torch.randn(1, 27, 16, 2, 2, generator=torch.Generator().manual_seed(0))
    naive_rolling(model, text_embeds(1, model.config), noise, torch.Generator().manual_seed(0), RF_STEPS,
                  trace=trace)
    assert seen == SPEC_T27


CASES = {  # name: (T, steps, batch, loop parameters)
    "rf_18": (18, RF_STEPS, 1, {}),
    "rf_27_released": (27, RF_STEPS, 1, {}),
    "rf_27_sees_anchor": (27, RF_STEPS, 1, dict(clean_pass_sees_anchor=True)),
    "rf_15_tail_heavy": (15, RF_STEPS, 1, {}),
    "rf_18_batch2": (18, RF_STEPS, 2, {}),
    "cf_w4_30": (30, CF_STEPS, 1, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rolling_loop_equals_naive_reference(case):
    T, steps, batch, loop = CASES[case]
    model = tiny_model(seed=4)
    text = torch.cat([text_embeds(1, model.config, seed=1 + i) for i in range(batch)])
    noise = torch.randn(batch, T, *LATENT, generator=torch.Generator().manual_seed(11))
    ours = rolling_pipeline(model, steps, **loop).generate(text, noise, torch.Generator().manual_seed(7))
    ref = naive_rolling(model, text, noise, torch.Generator().manual_seed(7), steps,
                        sees_anchor=loop.get("clean_pass_sees_anchor", False))
    assert (ours - ref).abs().max().item() < 1e-5
    assert ours.abs().min() > 0  # every frame written


def test_anchor_parameter_changes_blocks_from_seven_on():
    model = tiny_model(seed=4)
    text = text_embeds(1, model.config)
    noise = torch.randn(1, 27, *LATENT, generator=torch.Generator().manual_seed(11))
    a, b = (rolling_pipeline(model, clean_pass_sees_anchor=flag).generate(text, noise, torch.Generator().manual_seed(7))
            for flag in (False, True))
    # block 7's clean keys differ first; they are attended from window 12 on, where block 8 is finished
    assert torch.equal(a[:, :24], b[:, :24]) and not torch.equal(a[:, 24:], b[:, 24:])


def test_batch_of_two_equals_two_single_runs():
    model = tiny_model(seed=2)
    text = torch.cat([text_embeds(1, model.config, seed=1), text_embeds(1, model.config, seed=2)])
    noise = torch.randn(2, 18, *LATENT, generator=torch.Generator().manual_seed(3))
    draws = []
    g = torch.Generator().manual_seed(4)

    def joint(shape, dtype, device):  # [2 q, C, H, W], sample-major
        draws.append(torch.randn(shape, generator=g, dtype=dtype))
        return draws[-1]
    pipe = rolling_pipeline(model)
    both = pipe.generate(text, noise, joint)
    for i in range(2):
        it = iter(draws)
        single = pipe.generate(text[i:i + 1], noise[i:i + 1],
                               lambda shape, dtype, device: next(it).view(2, -1, *shape[1:])[i])
        assert torch.allclose(both[i:i + 1], single, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------- random draws
def count_calls(model):
    """A list that grows by the frame count of every DiT call of ``model``."""
    calls = []
    model.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[1]))
    return calls


@pytest.mark.parametrize("T,per_window", [(18, [1, 2, 3, 4, 4, 4, 3, 2, 1, 0]),
                                          (27, [1, 2, 3, 4, 4, 4, 4, 4, 4, 3, 2, 1, 0])])
def test_renoise_draws_count_order_and_shape(T, per_window):
    model = tiny_model(seed=3)
    calls = count_calls(model)
    draws = []
    g = torch.Generator().manual_seed(0)

    def source(shape, dtype, device):
        draws.append((len(calls), tuple(shape)))
        return torch.randn(shape, generator=g, dtype=dtype)
    rolling_pipeline(model).generate(text_embeds(1, model.config), torch.randn(1, T, *LATENT), source)
    windows = list(window_schedule(T // B, 5))
    counts = [0] * len(windows)
    for n_calls, shape in draws:
        w = (n_calls - 1) // 2  # after the window's denoising call, before its clean pass
        assert n_calls % 2 == 1 and shape == (3 * len(windows[w].blocks), *LATENT)
        counts[w] += 1
    assert counts == per_window and len(draws) == sum(per_window) == {18: 24, 27: 36}[T]
    assert len(calls) == 2 * (T // B + 4)


def test_renoise_keeps_only_the_blocks_rows():
    """Rows of a draw other than its block's do not matter; the block's rows do."""
    model = tiny_model(seed=3)
    pipe = rolling_pipeline(model)
    text, noise = text_embeds(1, model.config), torch.randn(1, 18, *LATENT, generator=torch.Generator().manual_seed(1))
    events = [(w.index, j, 3 * len(w.blocks)) for w in window_schedule(6, 5) for j, b in enumerate(w.blocks)
              if w.step(b) < 4]

    def source(poison_other_rows, poison_own=False):
        g, it = torch.Generator().manual_seed(2), iter(events)

        def draw(shape, dtype, device):
            eps = torch.randn(shape, generator=g, dtype=dtype)
            _, j, q = next(it)
            keep = torch.zeros(q, dtype=torch.bool)
            keep[3 * j:3 * j + 3] = True
            if poison_other_rows:
                eps[~keep] = 1e6
            if poison_own:
                eps[keep] += 1.0
            return eps
        return draw
    base = pipe.generate(text, noise, source(False))
    assert torch.equal(base, pipe.generate(text, noise, source(True)))
    assert not torch.allclose(base, pipe.generate(text, noise, source(False, poison_own=True)))


# -------------------------------------------------------------------------------------------- streaming
def test_blocks_are_yielded_in_order_right_after_their_last_window():
    model = tiny_model(seed=3)
    calls = count_calls(model)
    pipe = rolling_pipeline(model)
    T, W = 24, 5
    seen = []
    for i, f, x0 in pipe.frames(RolloutInputs(text_embeds(1, model.config), torch.randn(1, T, *LATENT),
                                              torch.Generator().manual_seed(0))):
        seen.append((i, f, tuple(x0.shape), len(calls)))
    assert [s[:3] for s in seen] == [(b, 3 * b, (1, 3, *LATENT)) for b in range(T // 3)]
    assert [s[3] for s in seen] == [2 * (b + W) for b in range(T // 3)]  # window b + W - 1 just ended


def test_generate_equals_frames_and_callback_order():
    model = tiny_model(seed=3)
    pipe = rolling_pipeline(model, CF_STEPS)
    text, noise = text_embeds(1, model.config), torch.randn(1, 15, *LATENT)
    got = []
    out = pipe.generate(text, noise, torch.Generator().manual_seed(0), callback=lambda i, f, x: got.append((i, f)))
    assert got == [(b, 3 * b) for b in range(5)]
    streamed = torch.cat([x for _, _, x in pipe.frames(RolloutInputs(text, noise, torch.Generator().manual_seed(0)))],
                         dim=1)
    assert torch.equal(out, streamed)


def test_prompt_switch_asked_when_each_block_enters():
    model = tiny_model(seed=3)
    calls = count_calls(model)
    pipe = rolling_pipeline(model)
    text_kv_ids = []
    orig = model.forward

    def forward(x, t, text_kv, *a, **k):
        text_kv_ids.append(id(text_kv))
        return orig(x, t, text_kv, *a, **k)
    model.forward = forward
    asked = []
    other = text_embeds(1, model.config, seed=9)

    def switch(i, f):
        asked.append((i, f, len(calls)))
        return other if i == 3 else None
    text, noise = text_embeds(1, model.config), torch.randn(1, 21, *LATENT, generator=torch.Generator().manual_seed(5))
    switched = pipe.generate(text, noise, torch.Generator().manual_seed(0), prompt_switch=switch)
    assert asked == [(b, 3 * b, 2 * b) for b in range(1, 7)]  # before window b's denoising call
    assert len(set(text_kv_ids[:6])) == 1 and len(set(text_kv_ids[6:])) == 1 and text_kv_ids[5] != text_kv_ids[6]
    plain = pipe.generate(text, noise, torch.Generator().manual_seed(0))
    assert not torch.equal(plain, switched)


def test_state_resets_between_videos_and_seeded_single_stream():
    model = tiny_model(seed=3)
    pipe = rolling_pipeline(model, CF_STEPS)
    cfg = model.config
    first = pipe.generate_seeded(text_embeds(1, cfg, seed=9), 27, LATENT, seed=5)
    pipe.generate_seeded(text_embeds(1, cfg, seed=1), 15, LATENT, seed=3)
    assert torch.equal(first, pipe.generate_seeded(text_embeds(1, cfg, seed=9), 27, LATENT, seed=5))
    g = torch.Generator().manual_seed(5)  # the CLI's order: the whole initial noise, then every re-noise draw
    noise = torch.randn(1, 27, *LATENT, generator=g)
    assert torch.equal(first, pipe.generate(text_embeds(1, cfg, seed=9), noise, g))


# ----------------------------------------------------------------------------------------------- length
def live_latent_bytes(latent):
    """Bytes of distinct storages of live tensors shaped [..., C, H, W] like the latents."""
    storages = {}
    with warnings.catch_warnings():  # isinstance() on some torch module objects warns
        warnings.simplefilter("ignore")
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    for o in tensors:
        if o.dim() >= 3 and tuple(o.shape[-3:]) == latent:
            s = o.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
    return sum(storages.values())


def test_past_frame_1100_with_flat_memory_and_rebasing_preserves_results():
    model = tiny_model(seed=2)
    text = text_embeds(1, model.config)
    latent = (16, 4, 4)  # 4 tokens per frame
    T = 1110

    def lazy(num_frames):
        return LazyNoise(1, latent, generator_noise(torch.Generator().manual_seed(8)), torch.float32, "cpu",
                         num_frames)
    pipe = rolling_pipeline(model)
    kv_storage, live, blocks = None, {}, []
    for i, f, x0 in pipe.frames(RolloutInputs(text, lazy(T), torch.Generator().manual_seed(9))):
        c = pipe.kv.layers[0]
        state = (c.k.data_ptr(), tuple(c.k.shape), c.v.data_ptr(), c.t_pos.data_ptr())
        kv_storage = kv_storage or state
        assert state == kv_storage and c.n <= 24 * 4 and len(pipe.kv.frame_slots) <= 24
        assert int(c.frame[0, :c.n].max()) == f + 2  # the block just written is in the cache
        if i in (80, 360):  # both after the 60 blocks kept below
            live[i] = live_latent_bytes(latent)
        if i < 60:
            blocks.append(x0)
    assert i == T // 3 - 1 and f == T - 3
    assert live[360] <= live[80]  # no state grows with the length
    assert pipe.kv.rotated is None  # the rolling loop never reads a rotated-key buffer: none is allocated
    absolute = Rollout(model, pipe.config, pipe.policy, loop=RollingLoop(), rebase=False)
    short = absolute.generate(text, lazy(180), torch.Generator().manual_seed(9))  # 60 blocks, absolute positions
    assert (torch.cat(blocks[:56], 1) - short[:, :168]).abs().max().item() < 1e-5  # blocks 0 .. 60 - W


def test_endless_runs_full_windows_until_closed():
    model = tiny_model(seed=2)
    text = text_embeds(1, model.config)

    def lazy(num_frames):
        return LazyNoise(1, LATENT, generator_noise(torch.Generator().manual_seed(8)), torch.float32, "cpu",
                         num_frames)
    pipe = rolling_pipeline(model)
    calls = count_calls(model)
    it = pipe.frames(RolloutInputs(text, lazy(None), torch.Generator().manual_seed(9)))
    endless = [next(it) for _ in range(6)]
    it.close()
    assert [(i, f) for i, f, _ in endless] == [(b, 3 * b) for b in range(6)]
    assert len(calls) == 2 * (5 + 5)  # block 5 came right after window 9; nothing ran after the close
    finite = pipe.generate(text, lazy(30), torch.Generator().manual_seed(9))  # 10 blocks: 0 .. 10 - W agree
    assert torch.equal(torch.cat([x for _, _, x in endless], 1), finite[:, :18])


@pytest.mark.parametrize("T,match", [(12, "shorter than one rolling window"), (16, "multiple")])
def test_length_checks(T, match):
    pipe = rolling_pipeline(tiny_model())
    with pytest.raises(ValueError, match=match):
        pipe.generate(text_embeds(1, pipe.model.config), torch.randn(1, T, *LATENT), torch.Generator())
    rolling_pipeline(tiny_model(), CF_STEPS).generate(text_embeds(1, pipe.model.config), torch.randn(1, 12, *LATENT),
                                                       torch.Generator())  # W B = 12 is enough for W = 4


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("policy,match", [
    (SelfForcingWindow(local_attn_size=-1, sink_size=3), "sink_size=3"),
    (SelfForcingWindow(local_attn_size=12, sink_size=0), "local_attn_size=12"),
    (DeepSink(local_attn_size=21, sink_size=10), "deep_sink"),
])
def test_rejects_cache_settings_rolling_forcing_ignores(policy, match):
    with pytest.raises(CachePolicyError, match=match):
        Rollout(tiny_model(), RolloutConfig(denoising_step_list=RF_STEPS), policy, loop=RollingLoop())


def test_accepts_the_released_settings():
    for policy in (CachePolicy(local_attn_size=21, sink_size=0), SelfForcingWindow(local_attn_size=-1, sink_size=0)):
        Rollout(tiny_model(), RolloutConfig(denoising_step_list=RF_STEPS), policy, loop=RollingLoop())


@pytest.mark.parametrize("loop,steps,match", [
    (dict(sink_frames=9), RF_STEPS, "exceeds attention_cap_frames=21"),
    (dict(attention_cap_frames=15), RF_STEPS, "exceeds attention_cap_frames=15"),
    (dict(sink_frames=4), CF_STEPS, "multiple"),
    (dict(buffer_frames=3), CF_STEPS, "buffer_frames=3"),
])
def test_rejects_windows_that_do_not_fit(loop, steps, match):
    with pytest.raises(ValueError, match=match):
        Rollout(tiny_model(), RolloutConfig(denoising_step_list=steps), CachePolicy(local_attn_size=-1, sink_size=0),
                loop=RollingLoop(**loop))


def test_rejects_first_chunk_steps_recache_and_image_to_video():
    model = tiny_model()
    policy = CachePolicy(local_attn_size=-1, sink_size=0)
    with pytest.raises(ValueError, match="denoising_step_list_first_chunk"):
        Rollout(model, RolloutConfig(denoising_step_list=CF_STEPS, denoising_step_list_first_chunk=[1000, 500]),
                policy, loop=RollingLoop())
    with pytest.raises(ValueError, match="re-cache"):
        Rollout(model, RolloutConfig(denoising_step_list=CF_STEPS), policy, loop=RollingLoop(), recache=OursRecache())
    pipe = rolling_pipeline(model, CF_STEPS)
    with pytest.raises(ImageToVideoError, match="image-to-video"):
        pipe.generate(text_embeds(1, model.config), torch.randn(1, 12, *LATENT), torch.Generator(),
                      image_latent=torch.randn(1, *LATENT))


def test_registered_by_name():
    assert LOOPS["rolling"] is RollingLoop
    loop = build_loop("rolling", clean_pass_sees_anchor=True)
    assert loop == RollingLoop(21, 24, None, True)


# ----------------------------------------------------------------------------------------- cache mechanics
def test_window_plan_errors():
    from pipeline.kv_cache import WindowPlan
    kv = KVCache(1, 1, 6, 1, 4, torch.float32, "cpu", CachePolicy(), 1, lambda x, p: x)
    kv.reset()
    with pytest.raises(RuntimeError, match="frame 0 is not in the cache"):
        kv.begin_window(WindowPlan(3, 3, attend=((0, 1, None),)))
    kv.begin_window(WindowPlan(0, 3, write=3))
    k = torch.randn(1, 3, 1, 4)
    kv.update(0, k, k, k, torch.arange(3), type("R", (), {"apply": staticmethod(lambda x: x)}))
    assert kv.layers[0].n == 3 and kv.frame_slots == {0: 0, 1: 1, 2: 2}
    with pytest.raises(RuntimeError, match="attends frame 0 it evicts"):
        kv.begin_window(WindowPlan(3, 1, attend=((0, 1, None),), write=1, evict=((0, 1),)))
    with pytest.raises(RuntimeError, match="overflow"):
        kv.begin_window(WindowPlan(3, 4, write=4))
    assert math.isfinite(float(kv.layers[0].k.sum()))


@pytest.mark.slow
def test_released_vector_through_the_checkpoint_loader_and_the_cli_config(tmp_path):
    """Rolling Forcing as released (18 frames, noise seed 5, re-noise seed 6: 24 whole-window draws, each checked), with
    every setting taken where a user's run takes it: the shipped YAML selects the method
    (rollout, cache policy, rolling loop as the CLI builds them), and the weights come from a checkpoint file in the
    released layout (``generator_ema`` with FSDP's ``_fsdp_wrapped_module.`` infix) through the strict loader."""
    from app.checks import build_cache_policy, build_strategy
    from app.cli_config import load_config
    from app.demo_model import write_config, write_dit_weights
    from methods import get_method
    from utils.paths import CONFIGS_DIR
    from wan.config import WanConfig
    from wan.loading import load_generator

    name = "rolling_forcing_18f_seed5.pt"
    d = load_vector(name)
    r = d["rollout"]  # the released geometry: a window of 5 blocks, 24-frame buffer, 21-frame cap, 3-frame blocks
    assert r["window_blocks"] == len(r["denoising_step_list"]) == 5
    assert (r["kv_cache_size"], r["max_attention_size"], r["block_length"]) == (24 * 1560, 21 * 1560, 3 * 1560)
    loaded = load_config(CONFIGS_DIR / "rolling_forcing" / "rolling_forcing_dmd.yaml")
    cfg = loaded.cfg
    assert (cfg.method, cfg.use_ema, cfg.rollout.denoising_step_list) == ("rolling_forcing", True, [1000, 800, 600,
                                                                                                    400, 200])
    model_dir = tmp_path / "wan"
    model_dir.mkdir()
    arch = WanConfig.from_dict(d["model_config"])
    write_config(model_dir, arch)
    write_dit_weights(model_dir, arch)
    ema = {k.replace("model.blocks.0.", "model.blocks.0._fsdp_wrapped_module.")
            .replace("model.blocks.1.", "model.blocks.1._fsdp_wrapped_module."): v for k, v in d["state_dict"].items()}
    ckpt = tmp_path / "checkpoints" / "rolling_forcing_dmd.pt"
    ckpt.parent.mkdir()
    torch.save({"generator_ema": ema, "generator": {}, "critic": {}}, ckpt)
    model = load_generator(model_dir, ckpt, use_ema=cfg.use_ema)
    method = get_method(cfg.method)
    policy = build_cache_policy(loaded, cfg.rollout.num_frame_per_block)
    loop = build_strategy(loaded, method, getattr(cfg, method.name), cfg.rollout, policy)
    diff = run_vector(Rollout(model, cfg.rollout, policy, loop=loop), d)
    assert diff < 1e-4, f"max abs difference {diff}"
