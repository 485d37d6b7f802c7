"""The window tables of docs/rolling.md are what our loop and cache do: every cell is recomputed from a run (DiT calls
and their timesteps, the noise slices taken, the cache's window trace, the blocks yielded)."""
import re
from pathlib import Path

import pytest
import torch

from pipeline.noise import TensorNoise
from pipeline.policies import SelfForcingWindow
from pipeline.rollout import Rollout, RolloutConfig, RolloutInputs
from pipeline.rolling import RollingLoop
from test_cache_docs import segments
from tiny import text_embeds, tiny_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "rolling.md"
RF, CF = [1000, 800, 600, 400, 200], [1000, 750, 500, 250]

# (text the table follows, step list, latent frames, loop parameters)
TABLES = [
    ("### Worked example", RF, 27, {}),
    ("With `clean_pass_sees_anchor=True` rows", RF, 27, dict(clean_pass_sees_anchor=True)),
    ("CF long_video (W = 4), S = 6", CF, 36, dict(sink_frames=6, clean_pass_sees_anchor=True)),
]


def doc_rows(marker):
    """{w: [cells after w]} of the first table after ``marker``."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(marker))
    rows = {}
    for line in lines[start:]:
        m = re.match(r"\| (\d+) \|(.*)\|$", line)
        if m:
            rows[int(m[1])] = [c.strip() for c in m[2].split("|")]
        elif rows and not line.startswith("|"):
            break
    return rows


class WatchedNoise(TensorNoise):
    """Initial noise that records which frames were taken after how many DiT calls."""

    def __init__(self, noise, calls):
        super().__init__(noise)
        self.calls, self.taken = calls, []

    def frames(self, start, count):
        self.taken.append((len(self.calls), start))
        return super().frames(start, count)


def span(a, b):
    return f"{a}" if a == b else f"{a}–{b}"


def recompute(steps, T, loop):
    """{w: cells} recomputed from one run of the tiny model."""
    model = tiny_model(seed=0)
    calls = []
    model.register_forward_pre_hook(lambda mod, args: calls.append(args[1][0].tolist()))  # t [batch, q]
    trace = []
    policy = SelfForcingWindow(local_attn_size=-1, sink_size=0, trace=trace.append)
    pipe = Rollout(model, RolloutConfig(denoising_step_list=steps), policy, loop=RollingLoop(**loop))
    noise = WatchedNoise(torch.randn(1, T, 16, 2, 2, generator=torch.Generator().manual_seed(0)), calls)
    final = {}
    for i, f, _ in pipe.frames(RolloutInputs(text_embeds(1, model.config), noise, torch.Generator().manual_seed(1))):
        assert len(calls) % 2 == 0
        final[len(calls) // 2 - 1] = i  # windows have two calls: this one just ended
    S = pipe.loop.sink(3)
    records = [r for r in trace if r["layer"] == 0]
    assert len(records) == len(calls) == 2 * (T // 3 + len(steps) - 1)
    rows = {}
    for w in range(len(records) // 2):
        den, cln = records[2 * w], records[2 * w + 1]
        s, q = den["start_frame"], den["num_frames"]
        fr, tp = den["frames"][0].tolist(), den["t_pos"][0].tolist()

        def part(keep):
            pairs = [(a, b) for a, b in zip(fr, tp) if keep(a)]
            return segments([a for a, _ in pairs], [b for _, b in pairs]) or "–"
        blocks = list(range(s // 3, (s + q) // 3))
        t = calls[2 * w]
        fresh = {start // 3 for n, start in noise.taken if n == 2 * w}
        written, evicted = cln["written"], cln["evicted"]
        rows[w] = [", ".join(f"{b} ({t[3 * b - s]:.2f})" for b in blocks),
                   "".join("N" if b in fresh else "c" for b in blocks),
                   part(lambda a: a < S and not s <= a < s + q),
                   part(lambda a: a >= S and not s <= a < s + q),
                   part(lambda a: s <= a < s + q),
                   segments(cln["frames"][0].tolist(), cln["t_pos"][0].tolist()),
                   span(written[0], written[-1]),
                   span(evicted[0], evicted[-1]) if evicted else "–",
                   str(final.get(w, "–"))]
        assert cln["start_frame"] == s and cln["num_frames"] == 3 and t.count(0.0) == 0
        assert calls[2 * w + 1] == [0.0] * 3  # the clean pass at context_noise
    return rows


@pytest.mark.parametrize("marker,steps,T,loop", TABLES, ids=["rf27", "rf27_sees_anchor", "cf_deep_sink6"])
def test_doc_table_matches_the_loop_and_cache(marker, steps, T, loop):
    rows = doc_rows(marker)
    assert len(rows) >= 4
    ours = recompute(steps, T, loop)
    for w, cells in rows.items():
        assert cells == ours[w], f"window {w}"
    if marker.startswith("### Worked"):
        assert set(rows) == set(ours)  # the full table
