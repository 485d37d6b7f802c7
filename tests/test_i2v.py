"""Image-to-video: image loading, VAE encode (normalised posterior mean), the frame-0 prefill, and the image as the
first output frame, in every cache mode, with prompt switches and chunked noise."""
import pytest
import torch
from PIL import Image

from media.image import ImageInputError, image_sha256, load_image
from pipeline.rollout import ImageToVideoError, Rollout, RolloutConfig, RolloutInputs
from pipeline.policies import build_policy
from app.demo_model import write_tiny_model
from wan.vae import WanVAE

from tiny import text_embeds, tiny_model

HEIGHT, WIDTH = 32, 48  # pixels -> latent 4 x 6, 6 tokens per frame in the tiny DiT
FRAMEWISE = dict(num_frame_per_block=1)
MODES = {
    "global": dict(mode="self_forcing", local_attn_size=-1),
    "window_sink": dict(mode="self_forcing", local_attn_size=6, sink_size=2),
    "deep_sink": dict(mode="deep_sink", local_attn_size=6, sink_size=3),
    "deep_sink_pc": dict(mode="deep_sink_pc", local_attn_size=8, sink_size=2, budget=6, recent=2),
}


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    tiny = write_tiny_model(tmp_path_factory.mktemp("tiny_i2v"), seed=3)
    return WanVAE.from_model_dir(tiny.model_dir, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    """A 40 x 20 RGB gradient PNG (aspect ratio unlike the video's)."""
    path = tmp_path_factory.mktemp("img") / "gradient.png"
    y, x = torch.meshgrid(torch.arange(20), torch.arange(40), indexing="ij")
    rgb = torch.stack([x * 6, y * 12, (x + y) * 4], dim=-1).clamp(0, 255).to(torch.uint8)
    Image.fromarray(rgb.numpy()).save(path)
    return path


@pytest.fixture(scope="module")
def image(image_file):
    return load_image(image_file, HEIGHT, WIDTH)  # [1, 1, 3, H, W]


@pytest.fixture(scope="module")
def latent(vae, image):
    return vae.encode(image)[:, 0]  # [1, 16, h, w]


class Recorder:
    """Cache stand-in for one DiT call without context: records every layer's (k, v)."""

    base = 0

    def __init__(self):
        self.kv = []

    def update(self, layer, q, k, v, pos, rotation):
        """Record k (time-unrotated) and v [B, m, H, D]; attend only among the call's own tokens."""
        self.kv.append((k.clone(), v.clone()))
        return rotation.apply(k), v


def _frame0_kv(model, latent, prompt):
    """Per layer (k, v) of the image latent alone at frame 0, timestep 0: what the prefill must cache."""
    rec = Recorder()
    with torch.no_grad():
        model(latent[:, None], torch.zeros(1, 1), model.encode_text(prompt), rec, start_frame=0)
    return rec.kv


# ------------------------------------------------------------------------------------------------ image input
def test_load_image_resizes_without_keeping_aspect_and_scales_to_unit_range(tmp_path):
    path = tmp_path / "solid.png"
    Image.new("RGB", (7, 30), (255, 0, 51)).save(path)
    x = load_image(path, HEIGHT, WIDTH)
    assert x.shape == (1, 1, 3, HEIGHT, WIDTH) and x.dtype == torch.float32
    assert torch.allclose(x[0, 0, :, 5, 9], torch.tensor([1.0, -1.0, 51 / 127.5 - 1]))
    gray = tmp_path / "gray.png"
    Image.new("L", (10, 10), 0).save(gray)  # grayscale -> RGB
    assert torch.equal(load_image(gray, 8, 16), torch.full((1, 1, 3, 8, 16), -1.0))


def test_load_image_matches_pil_bilinear_resize(image_file, image):
    ref = Image.open(image_file).convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    want = torch.frombuffer(bytearray(ref.tobytes()), dtype=torch.uint8).view(HEIGHT, WIDTH, 3).permute(2, 0, 1)
    assert torch.allclose(image[0, 0], want.float() / 127.5 - 1, atol=1e-6)
    assert image.min() >= -1 and image.max() <= 1


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "truncated"])
def test_bad_image_is_one_paragraph_naming_the_file(tmp_path, image_file, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("not an image\n")
    elif kind == "truncated":
        path.write_bytes(image_file.read_bytes()[:60])
    with pytest.raises(ImageInputError) as err:
        load_image(path, HEIGHT, WIDTH)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg and "Traceback" not in msg


def test_image_hash_is_the_sha256_of_the_file(image_file, tmp_path):
    import hashlib
    assert image_sha256(image_file) == hashlib.sha256(image_file.read_bytes()).hexdigest()
    with pytest.raises(ImageInputError, match="missing.png"):
        image_sha256(tmp_path / "missing.png")


# ------------------------------------------------------------------------------------------------- VAE encode
def test_encode_is_the_normalised_posterior_mean(vae, image):
    z = vae.encode(image)
    assert z.shape == (1, 1, 16, HEIGHT // 8, WIDTH // 8)
    mu = vae.model.encode(image.permute(0, 2, 1, 3, 4)).latent_dist.mean  # [1, 16, 1, h, w]
    mean = vae.latents_mean.view(1, 16, 1, 1, 1)
    std = vae.latents_std.view(1, 16, 1, 1, 1)
    assert torch.allclose(z.permute(0, 2, 1, 3, 4), (mu - mean) * (1 / std), atol=1e-6)
    assert torch.allclose(vae.denormalize(z), mu, atol=1e-5)  # decode's un-normalisation is its inverse
    with pytest.raises(ValueError):
        vae.encode(image.permute(0, 2, 1, 3, 4)[:, :, :2])  # [B, 3, T, H, W] is the wrong layout


# ---------------------------------------------------------------------------------------------- I2V rollout
def _pipe(model, cfg, trace=None, **rollout):
    return Rollout(model, RolloutConfig(**{**FRAMEWISE, **rollout}),
                                   build_policy(**cfg, trace=trace))


@pytest.mark.parametrize("name", list(MODES))
def test_prefill_caches_the_image_as_frame_0_and_returns_it_first(name, latent):
    model = tiny_model(5)
    prompt = text_embeds(1, model.config)
    trace = []
    pipe = _pipe(model, MODES[name], trace=trace.append, context_noise=100)  # the prefill still runs at t = 0
    T = 13
    out = pipe.generate_seeded(prompt, T, tuple(latent.shape[1:]), seed=2, image_latent=latent)
    assert out.shape == (1, T, *latent.shape[1:])
    assert torch.equal(out[:, 0], latent)  # output frame 0 is the image latent itself
    assert not torch.equal(out[:, 1], latent)
    expect = _frame0_kv(model, latent, prompt)
    F = model.config.tokens_per_frame(*latent.shape[-2:])
    for layer, (k, v) in enumerate(expect):
        c = pipe.kv.layers[layer]
        if name == "window_sink" or name.startswith("deep_sink"):  # frame 0 is sink frame 0 for the whole video
            assert c.frame[0, :F].eq(0).all()
        if name == "global":  # fewer than 21 frames: nothing evicted
            assert c.frame[0, :F].eq(0).all() and c.n == T * F
        assert torch.equal(c.k[0, :F], k[0]) and torch.equal(c.v[0, :F], v[0])
    assert c.frame[0, c.order()[-1]] == T - 1  # the newest frame (storage order is not chronological)
    if name.startswith("deep_sink"):
        assert trace  # the cache was full: evictions / compressions happened, and the image stayed
    if name == "deep_sink":  # the image frame moves with the sink: [f - L, f - L + S) at the last chunk f = T - 1
        assert c.t_pos[0, :F].eq(T - 1 - 6).all()


def test_generated_frames_attend_to_the_image(latent):
    model = tiny_model(5)
    prompt = text_embeds(1, model.config)
    pipe = _pipe(model, MODES["global"])
    a = pipe.generate_seeded(prompt, 4, tuple(latent.shape[1:]), seed=2, image_latent=latent)
    b = pipe.generate_seeded(prompt, 4, tuple(latent.shape[1:]), seed=2, image_latent=-latent)
    assert not torch.allclose(a[:, 1:], b[:, 1:])


def test_decoded_first_frame_is_the_image_to_vae_round_trip_tolerance(vae, image, latent):
    model = tiny_model(5)
    pipe = _pipe(model, MODES["deep_sink"])
    out = pipe.generate_seeded(text_embeds(1, model.config), 5, tuple(latent.shape[1:]), seed=4, image_latent=latent)
    video = vae.decode(out)  # [1, 17, 3, H, W]
    round_trip = vae.decode(vae.encode(image))  # [1, 1, 3, H, W]
    assert video.shape[1] == 4 * (5 - 1) + 1
    assert torch.allclose(video[:, 0], round_trip[:, 0], atol=1e-5)
    err = (video[:, 0] - image[:, 0]).abs().max()
    assert err <= (round_trip[:, 0] - image[:, 0]).abs().max() + 1e-5


def test_streaming_yields_the_image_as_chunk_0_then_frame_i_with_chunked_noise(latent):
    model = tiny_model(5)
    pipe = _pipe(model, MODES["deep_sink_pc"])
    noise, source = pipe.seeded_noise(1, None, tuple(latent.shape[1:]), seed=1, noise_order="chunked")
    starts = []
    for i, f, x0 in pipe.frames(RolloutInputs(text_embeds(1, model.config), noise, source, image_latent=latent)):
        assert x0.shape[:2] == (1, 1)
        if i == 0:
            assert torch.equal(x0[:, 0], latent)
        starts.append((i, f))
        if i == 11:
            break
    assert starts == [(i, i) for i in range(12)]


def test_prompt_switch_with_recache_keeps_the_image_frame(latent):
    model = tiny_model(5)
    prompt, other = text_embeds(1, model.config, seed=1), text_embeds(1, model.config, seed=2)
    F = model.config.tokens_per_frame(*latent.shape[-2:])
    runs = {}
    from pipeline.recache import build_recache
    for recache in (False, True):
        pipe = _pipe(model, MODES["deep_sink"])
        pipe = Rollout(model, pipe.config, pipe.policy, recache=build_recache("ours" if recache else "off"))
        switches = []

        def switch(i, f):
            switches.append((i, f))
            return other if i == 6 else None

        runs[recache] = pipe.generate_seeded(prompt, 10, tuple(latent.shape[1:]), seed=3, image_latent=latent,
                                             prompt_switch=switch)
        assert switches[0] == (1, 1) and (6, 6) in switches  # asked before every generated frame
        c = pipe.kv.layers[0]
        assert c.frame[0, :F].eq(0).all()
        frame0_k = c.k[0, :F].clone()
        if not recache:
            plain = frame0_k
    assert torch.equal(runs[False][:, :6], runs[True][:, :6]) and torch.equal(runs[True][:, 0], latent)
    assert not torch.equal(frame0_k, plain)  # the image frame's keys were recomputed under the new prompt
    assert not torch.equal(runs[False][:, 6:], runs[True][:, 6:])


def test_image_to_video_needs_frame_wise_chunks(latent):
    pipe = Rollout(tiny_model(5), RolloutConfig(), build_policy("self_forcing"))
    with pytest.raises(ImageToVideoError, match="num_frame_per_block") as err:
        pipe.generate_seeded(text_embeds(1, pipe.model.config), 4, tuple(latent.shape[1:]), seed=1,
                             image_latent=latent)
    assert "\n" not in str(err.value)
    pipe = _pipe(tiny_model(5), MODES["global"])
    with pytest.raises(ImageToVideoError, match="shape"):
        pipe.generate_seeded(text_embeds(1, pipe.model.config), 4, (16, 2, 2), seed=1, image_latent=latent)


# ------------------------------------------------------------------------------------- the run's image input
def test_image_input_checks_hashes_and_encodes(image_file, vae, latent, tmp_path):
    import hashlib
    from app.cli_config import CLIError
    from app.image_input import ImageInput
    img = ImageInput.open(image_file, HEIGHT, WIDTH)
    assert img.request() == {"image": str(image_file), "image_sha256": hashlib.sha256(image_file.read_bytes())
                             .hexdigest()}
    z = img.latent(vae, HEIGHT, WIDTH, batch=2)
    assert z.shape == (2, *latent.shape[1:]) and torch.equal(z[1], latent[0])
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    with pytest.raises(CLIError) as err:
        ImageInput.open(bad, HEIGHT, WIDTH)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
