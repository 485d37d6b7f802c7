"""``bench.timing.timed_blocks``: the one loop every bench figure is read from (labels, frames, hooks, summary)."""
import contextlib

import torch

from bench.modes import make_policy
from bench.timing import output_frames, summary, timed_blocks
from pipeline.rollout import Rollout, RolloutConfig, RolloutInputs
from tiny import text_embeds, tiny_model


def _rollout(mode="deep_sink_pc"):
    return Rollout(tiny_model(), RolloutConfig(), make_policy(mode)[0])


def _inputs(model, frames=24):
    noise = torch.randn(1, frames, 16, 4, 6, generator=torch.Generator().manual_seed(0))
    return RolloutInputs(text_embeds(1, model.config), noise, torch.Generator().manual_seed(1))


def test_blocks_are_labelled_and_counted_in_video_frames():
    pipe = _rollout()
    seen = []
    run = timed_blocks(pipe, _inputs(pipe.model), post=lambda i, f, x0: seen.append(f) or {"mark": i})
    assert [b["kind"] for b in run.blocks] == ["fill"] * 7 + ["compress"]
    assert [b["output_frames"] for b in run.blocks] == [9] + [12] * 7 and output_frames(0, 24) == 93
    assert seen == [b["start_frame"] for b in run.blocks] == list(range(0, 24, 3))
    assert [b["mark"] for b in run.blocks] == list(range(8)) and run.stopped is None
    assert [b["context_frames"] for b in run.blocks][:3] == [0, 3, 6]
    s = summary(run)
    assert s["output_frames"] == 93 and s["fill"]["blocks"] == 7 and s["steady"]["blocks"] == 1
    assert s["steady"]["output_frames"] == 12 and s["all"]["fps_with_post"] > 0 and s["first_frame_latency_s"] > 0


def test_stop_max_blocks_and_around_hooks():
    pipe = _rollout("self_forcing")
    entered = []

    @contextlib.contextmanager
    def around(n):
        entered.append(n)
        yield

    calls = iter([None, None, "budget"])
    run = timed_blocks(pipe, _inputs(pipe.model), stop=lambda: next(calls), around=around)
    assert len(run.blocks) == 2 and run.stopped == "budget" and entered == [0, 1]
    run = timed_blocks(pipe, _inputs(pipe.model), max_blocks=3)
    assert len(run.blocks) == 3 and run.stopped == "max_blocks"
    s = summary(run)
    assert s["steady"] is None and s["first_frame_latency_s"] is None and "fps_with_post" not in s["all"]


def test_world_bench_smoke(tmp_path):
    """bench.world --tiny: every cache mode over the three caches runs and reports its blocks by cache event."""
    import json
    from bench.world import main
    assert main(["--tiny", "--latent-frames", "12", "--out", str(tmp_path / "w.json")]) == 0
    figures = json.loads((tmp_path / "w.json").read_text())
    assert set(figures["modes"]) == {"self_forcing", "deep_sink", "deep_sink_pc"}
    assert all(m["blocks"] == 4 and m["all"]["fps_dit"] > 0 for m in figures["modes"].values())
    assert "evict" in figures["modes"]["self_forcing"]["kinds"]
