"""The released-style baseline loop (``bench.release_style``) computes the same video as the project's rollout.

Same tiny model, noise and re-noise draws; 30 latent frames = 10 chunks, so the 21-frame window rolls three times
(and Deep Sink's sink moves twice). Latents agree within float rounding, so an FPS ratio of the two loops
compares equal work.
"""
import pytest
import torch

from bench.modes import make_policy
from bench.release_style import ReleaseStyleRollout
from bench.timing import timed_blocks
from pipeline.rollout import Rollout, RolloutConfig, RolloutInputs
from tiny import text_embeds, tiny_model

FRAMES = 30


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _inputs(model):
    noise = torch.randn(1, FRAMES, 16, 4, 6, generator=torch.Generator().manual_seed(3))
    return RolloutInputs(text_embeds(1, model.config), noise, torch.Generator().manual_seed(5))


def _latents(source, inputs):
    out = torch.empty_like(inputs.noise)
    for _, f, x0 in source.frames(inputs):
        out[:, f:f + x0.shape[1]] = x0
    return out


@pytest.mark.parametrize("mode", ["self_forcing", "deep_sink"])
def test_released_style_latents_equal_ours(model, mode):
    ours = _latents(Rollout(model, RolloutConfig(), make_policy(mode)[0]), _inputs(model))
    release = _latents(ReleaseStyleRollout(model, RolloutConfig(), make_policy(mode)[0]), _inputs(model))
    torch.testing.assert_close(release, ours, rtol=1e-5, atol=1e-5)


def test_the_sink_move_matters(model):
    """Without re-rotating the sink keys when the window rolls, Deep Sink's video differs: the test above sees it."""
    ours = _latents(Rollout(model, RolloutConfig(), make_policy("deep_sink")[0]), _inputs(model))
    frozen = ReleaseStyleRollout(model, RolloutConfig(), make_policy("deep_sink")[0])
    frozen._move_sink = lambda *args: None
    assert (_latents(frozen, _inputs(model)) - ours).abs().max() > 1e-3


def test_cache_events_are_labelled_alike(model):
    """The bench's block labels (fill / evict) come out the same from both loops' committed-token counts."""
    kinds = {}
    for name, cls in (("ours", Rollout), ("release", ReleaseStyleRollout)):
        run = timed_blocks(cls(model, RolloutConfig(), make_policy("deep_sink")[0]), _inputs(model))
        kinds[name] = [b["kind"] for b in run.blocks]
    assert kinds["ours"] == kinds["release"] == ["fill"] * 7 + ["evict"] * 3


def test_participative_compression_is_not_reimplemented(model):
    with pytest.raises(NotImplementedError, match="deep_sink_pc"):
        ReleaseStyleRollout(model, RolloutConfig(), make_policy("deep_sink_pc")[0])
