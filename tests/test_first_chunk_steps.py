"""Causal Forcing++ first-chunk step list: the timesteps every chunk runs at and the exact re-noise draws per chunk."""
import pytest
import torch

from pipeline.rollout import Rollout, RolloutConfig
from pipeline.policies import build_policy

from tiny import text_embeds, tiny_model

LATENT = (16, 2, 2)  # C, H, W -> 1 token per frame
FOUR = [1000, 750, 500, 250]
WARPED_FOUR = [1000.0, 937.5, 833.33, 625.0]


def _recorded_rollout(steps, first, num_chunks, chunk=1, batch=1, image=False):
    """Run a rollout; return the log of DiT calls ("call", start_frame, t) and re-noise draws ("draw", shape)."""
    model = tiny_model(4)
    cfg = RolloutConfig(denoising_step_list=steps, denoising_step_list_first_chunk=first, num_frame_per_block=chunk)
    pipe = Rollout(model, cfg, build_policy("self_forcing", local_attn_size=21))
    log = []

    def hook(module, args, kwargs):
        log.append(("call", kwargs["start_frame"], round(float(args[1][0, 0]), 2)))

    def source(shape, dtype, device):
        log.append(("draw", tuple(shape)))
        return torch.randn(shape, dtype=dtype, device=device)

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    noise = torch.randn(batch, num_chunks * chunk, *LATENT)
    latent = torch.randn(batch, *LATENT) if image else None
    try:
        pipe.generate(text_embeds(batch, model.config), noise, source, image_latent=latent)
    finally:
        handle.remove()
    return pipe, log


def _expected(chunk_steps, chunk=1, batch=1, f0=0):
    """The log the released rollout produces: per chunk, each step's call, a draw after every non-final step,
    then the clean pass at t = 0."""
    log = [("call", 0, 0.0)] if f0 else []  # image prefill at t = 0
    for i, ts in enumerate(chunk_steps):
        f = f0 + i * chunk
        for j, t in enumerate(ts):
            log.append(("call", f, t))
            if j + 1 < len(ts):
                log.append(("draw", (batch * chunk, *LATENT)))
        log.append(("call", f, 0.0))
    return log


def test_warped_first_chunk_and_later_lists():
    pipe, _ = _recorded_rollout([1000, 500], FOUR, 1)
    assert pipe.chunk_timesteps(0).tolist() == pytest.approx(WARPED_FOUR, abs=0.01)
    assert pipe.chunk_timesteps(1).tolist() == pytest.approx([1000.0, 833.33], abs=0.01)
    assert pipe.chunk_timesteps(7) is pipe.timesteps
    pipe, _ = _recorded_rollout([1000], FOUR, 1)
    assert pipe.chunk_timesteps(0).tolist() == pytest.approx(WARPED_FOUR, abs=0.01)
    assert pipe.chunk_timesteps(1).tolist() == [1000.0]


@pytest.mark.parametrize("steps,later", [([1000, 500], [1000.0, 833.33]), ([1000], [1000.0]),
                                         (FOUR, WARPED_FOUR)], ids=["cf++2step", "cf++1step", "cf4step"])
def test_calls_and_draws_per_chunk_follow_the_list_in_use(steps, later):
    _, log = _recorded_rollout(steps, FOUR, 5)
    assert log == _expected([WARPED_FOUR] + [later] * 4)
    assert _draws_per_chunk(log) == [3] + [len(later) - 1] * 4  # chunk 0: 3; later: 1 (2-step), 0 (1-step), 3


def _draws_per_chunk(log):
    """Number of re-noise draws made while each chunk (start frame of the preceding call) was denoised."""
    counts, f = {}, None
    for entry in log:
        if entry[0] == "call":
            f = entry[1]
            counts.setdefault(f, 0)
        else:
            counts[f] += 1
    return [counts[k] for k in sorted(counts)]


def test_without_first_chunk_list_every_chunk_uses_the_main_list():
    _, log = _recorded_rollout([1000, 500], None, 3)
    assert log == _expected([[1000.0, 833.33]] * 3)


def test_chunkwise_and_batched_draw_shapes():
    _, log = _recorded_rollout([1000], FOUR, 3, chunk=3, batch=2)
    assert log == _expected([WARPED_FOUR, [1000.0], [1000.0]], chunk=3, batch=2)
    assert [e[1] for e in log if e[0] == "draw"] == [(6, *LATENT)] * 3  # [batch * B, C, h, w]


def test_image_to_video_first_generated_chunk_is_frame_1():
    _, log = _recorded_rollout([1000, 500], FOUR, 3, image=True)
    assert log == _expected([WARPED_FOUR, [1000.0, 833.33], [1000.0, 833.33]], f0=1)


def test_seeded_rollout_draws_initial_noise_first_then_chunk_by_chunk():
    model = tiny_model(4)
    cfg = RolloutConfig(denoising_step_list=[1000, 500], denoising_step_list_first_chunk=FOUR,
                        num_frame_per_block=1)
    pipe = Rollout(model, cfg, build_policy("self_forcing", local_attn_size=21))
    text = text_embeds(1, model.config)
    g = torch.Generator().manual_seed(9)
    noise = torch.randn(1, 6, *LATENT, generator=g)
    draws = [torch.randn(1, *LATENT, generator=g) for _ in range(3 + 5)]  # 3 for chunk 0, 1 for each later one
    it = iter(draws)
    expected = pipe.generate(text, noise, lambda shape, dtype, device: next(it))
    assert next(it, None) is None  # exactly 8 draws used
    assert torch.equal(pipe.generate_seeded(text, 6, LATENT, seed=9), expected)


@pytest.mark.parametrize("bad", [[], [1000, 0], [1001]])
def test_invalid_first_chunk_list_names_the_key(bad):
    with pytest.raises(ValueError, match="denoising_step_list_first_chunk"):
        RolloutConfig(denoising_step_list_first_chunk=bad)
