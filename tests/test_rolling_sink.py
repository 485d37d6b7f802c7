"""Deep Sink on top of the rolling window (RollingLoop(sink_frames=S), docs/rolling.md section 7): invariants of every
call's keys and of the cache over a run."""
import pytest
import torch

from pipeline.policies import SelfForcingWindow
from pipeline.rollout import Rollout, RolloutConfig
from pipeline.rolling import RollingLoop
from tiny import text_embeds, tiny_model

RF, CF = [1000, 800, 600, 400, 200], [1000, 750, 500, 250]
LATENT = (16, 2, 4)  # 2 tokens per frame
B = 3

CASES = {  # name: (steps, sink frames, clean pass sees the sink, buffer frames)
    "rf_anchor": (RF, None, False, 24),
    "rf_sink6": (RF, 6, True, 24),
    "rf_sink6_released_clean": (RF, 6, False, 24),
    "cf_sink9": (CF, 9, True, 24),
    "cf_sink6_buffer30": (CF, 6, True, 30),
    "cf_no_sink": (CF, 0, True, 24),
}


def run(steps, sink, sees, buffer, T=45):
    trace, held = [], []
    model = tiny_model(seed=7)
    policy = SelfForcingWindow(local_attn_size=-1, sink_size=0, trace=trace.append)
    loop = RollingLoop(sink_frames=sink, clean_pass_sees_anchor=sees, buffer_frames=buffer)
    pipe = Rollout(model, RolloutConfig(denoising_step_list=steps), policy, loop=loop)
    out = pipe.generate(text_embeds(1, model.config), torch.randn(1, T, *LATENT, generator=torch.Generator()
                                                                  .manual_seed(3)), torch.Generator().manual_seed(4),
                        callback=lambda i, f, x: held.append((i, pipe.kv.layers[0].frame[0].clone(),
                                                              pipe.kv.layers[0].n)))
    return out, trace, held, loop


@pytest.mark.parametrize("case", list(CASES))
def test_sink_invariants(case):
    steps, sink, sees, buffer = CASES[case]
    out, trace, held, loop = run(steps, sink, sees, buffer)
    S, W, cap = loop.sink(B), len(steps), loop.attention_cap_frames
    assert torch.isfinite(out).all()
    assert {r["layer"] for r in trace} == {0, 1}
    for r in trace:
        fr, tp = r["frames"][0].tolist(), r["t_pos"][0].tolist()
        s, q = r["start_frame"], r["num_frames"]
        oldest = s // B
        assert tp == list(range(tp[0], tp[0] + len(tp)))  # contiguous positions, sink included
        assert fr[-q:] == tp[-q:] == list(range(s, s + q))  # the call itself last, at its own frames
        assert len(fr) <= cap  # never more than the trained attention cap
        sink_seen = [a for a in fr[:-q] if a < S]
        rest = [a for a in fr[:-q] if a >= S]
        assert rest == sorted(rest) and all(a < s for a in rest)  # only finished blocks, in order
        if r["call"] == "denoise" or sees:
            # the whole held sink (blocks before the window's oldest) right before the working cache
            assert sink_seen == list(range(min(S, B * oldest)))
            assert len(fr) - q <= cap - q and (not rest or len(rest) // B <= (cap - q - S) // B)
        if r["call"] == "denoise" and oldest > 0 and rest:
            assert rest == list(range(rest[0], s))  # the newest blocks, adjacent to the window
        hf, ht = r["held_frames"][0].tolist(), r["held_t_pos"][0].tolist()
        assert len(hf) <= loop.buffer_frames
        assert all(a == b for a, b in zip(hf, ht) if a >= S)  # only the sink ever moves
    for i, frames, n in held:  # after each finished block: the whole sink is held once blocks 0 .. S/B - 1 are
        assert n <= loop.buffer_frames * 2
        if i >= S // B - 1:
            assert set(range(S)) <= set(frames[:n].tolist())


def test_sink_of_one_block_is_the_released_anchor():
    a = run(RF, None, False, 24)[0]
    b = run(RF, 3, False, 24)[0]
    assert torch.equal(a, b)


def test_a_larger_sink_changes_the_video():
    a = run(CF, None, True, 24)[0]
    b = run(CF, 6, True, 24)[0]
    # up to window 6 both attend the same frames at the same positions (the sink is block 0 + the working block 1)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.equal(a[:, 12:15], b[:, 12:15])  # block 4 (window 7): sink 0-5 @ 3-8 instead of 0-2 @ 3-5
