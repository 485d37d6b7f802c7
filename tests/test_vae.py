"""Wan VAE through diffusers' AutoencoderKLWan: config, key mapping, normalisation, full and streaming decode."""
import inspect
import shutil

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from app.demo_model import random_state_dict, wan_vae_state_dict, write_tiny_model
from wan.loading import VAE_WEIGHTS_FILE, ModelFilesError
from wan.vae import WanVAE, convert_wan_vae_state_dict, load_vae_config



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny_vae"), seed=2)


@pytest.fixture(scope="module")
def vae(tiny):
    return WanVAE.from_model_dir(tiny.model_dir, dtype=torch.float32, device="cpu")


def _diffusers_shapes(**overrides):
    with torch.device("meta"):
        model = AutoencoderKLWan(**{**load_vae_config(), **overrides})
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_config_is_wan21_and_matches_diffusers_defaults():
    cfg = load_vae_config()
    defaults = {k: p.default for k, p in inspect.signature(AutoencoderKLWan.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    for key, value in cfg.items():
        assert value == defaults[key], key
    assert (cfg["base_dim"], cfg["z_dim"], cfg["dim_mult"], cfg["num_res_blocks"]) == (96, 16, [1, 2, 4, 4], 2)
    assert cfg["temperal_downsample"] == [False, True, True] and cfg["attn_scales"] == []
    assert len(cfg["latents_mean"]) == len(cfg["latents_std"]) == 16
    assert cfg["latents_mean"][:2] == [-0.7571, -0.7089] and cfg["latents_std"][-1] == 1.916


@pytest.mark.parametrize("base_dim", [8, 96])
def test_inverse_key_mapping_round_trips_through_diffusers_converter(base_dim):
    shapes = _diffusers_shapes(base_dim=base_dim)
    if base_dim == 96:  # the real size: keys only (no need to allocate 127M parameters)
        sd = {k: torch.empty(0) for k in shapes}
    else:
        sd = random_state_dict(shapes, seed=0)
    wan = wan_vae_state_dict(sd)
    assert len(wan) == len(sd) and all(k.split(".")[0] in ("encoder", "decoder", "conv1", "conv2") for k in wan)
    back = convert_wan_vae_to_diffusers(dict(wan))
    assert set(back) == set(sd)
    assert all(back[k] is sd[k] for k in sd)  # every tensor lands on the key it came from


def test_every_wan_key_maps_and_loads(vae, tiny):
    wan = torch.load(tiny.model_dir / VAE_WEIGHTS_FILE, map_location="cpu", weights_only=True)
    assert any(k.startswith("decoder.upsamples.") for k in wan) and "conv2.weight" in wan  # Wan names on disk
    mapped = convert_wan_vae_state_dict(wan)
    own = vae.model.state_dict()
    assert set(own) == set(mapped)
    assert all(torch.equal(own[k], mapped[k]) for k in own)
    assert vae.z_dim == 16 and vae.spatial_factor == 8 and vae.temporal_factor == 4


def test_denormalize_arithmetic(vae):
    z = torch.randn(2, 3, 16, 4, 6)
    mean = torch.tensor(load_vae_config()["latents_mean"]).view(1, 16, 1, 1, 1)
    std = torch.tensor(load_vae_config()["latents_std"]).view(1, 16, 1, 1, 1)
    expected = z.permute(0, 2, 1, 3, 4) / (1.0 / std) + mean
    assert torch.equal(vae.denormalize(z), expected)
    zb = z.bfloat16()
    expected_bf16 = zb.permute(0, 2, 1, 3, 4) / (1.0 / std.bfloat16()) + mean.bfloat16()
    assert torch.equal(vae.denormalize(zb), expected_bf16.float())


def test_full_decode_equals_diffusers_and_streaming_is_exact(vae):
    T = 7
    latents = torch.randn(1, T, 16, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = vae.model.decode(vae.denormalize(latents)).sample.float().permute(0, 2, 1, 3, 4)
    full = vae.decode(latents)
    assert full.shape == (1, 4 * (T - 1) + 1, 3, 32, 48) == reference.shape
    assert torch.equal(full, reference)
    assert full.min() >= -1 and full.max() <= 1

    stream = vae.stream_decoder()
    parts = [stream.decode_chunk(latents[:, i:i + 3]) for i in range(0, T, 3)]
    assert [p.shape[1] for p in parts] == [4 * 3 - 3, 4 * 3, 4 * 1]
    assert torch.equal(torch.cat(parts, dim=1), reference)

    stream.reset()  # a second video through the same decoder starts fresh
    assert torch.equal(stream.decode_chunk(latents[:, :3]), reference[:, :9])


def test_frame_count(vae):
    assert [vae.num_frames(t) for t in (1, 2, 21)] == [1, 5, 81]
    out = vae.decode(torch.zeros(1, 2, 16, 2, 2))
    assert out.shape == (1, 5, 3, 16, 16)


def test_missing_key_error(tiny, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny.model_dir, folder)
    path = folder / VAE_WEIGHTS_FILE
    sd = torch.load(path, weights_only=True)
    del sd["decoder.upsamples.4.shortcut.weight"]
    torch.save(sd, path)
    with pytest.raises(ModelFilesError) as err:
        WanVAE.from_model_dir(folder)
    msg = str(err.value)
    assert str(path) in msg and "decoder.up_blocks.1.resnets.0.conv_shortcut.weight" in msg and "\n" not in msg


def test_corrupt_file_error(tiny, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny.model_dir, folder)
    path = folder / VAE_WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:10000])
    with pytest.raises(ModelFilesError, match="corrupt"):
        WanVAE.from_model_dir(folder)


def _stream(vae, latents):
    stream = vae.stream_decoder()
    return torch.cat([stream.decode_chunk(latents[:, i:i + 3]) for i in range(0, latents.shape[1], 3)], dim=1)


def test_channels_last_decoder_equals_the_default(tiny, vae):
    latents = torch.randn(1, 4, 16, 4, 6, generator=torch.Generator().manual_seed(1))
    reference = _stream(vae, latents)
    fast = WanVAE.from_model_dir(tiny.model_dir, dtype=torch.float32, device="cpu", channels_last=True)
    assert fast.channels_last and fast.model.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(_stream(fast, latents), reference, rtol=1e-5, atol=1e-5)


def test_compiled_decoder_equals_the_default(tiny, vae):
    """Dynamo capture with the eager backend (seconds on a CPU; bench.gpu's vae stage compiles with Inductor)."""
    latents = torch.randn(1, 2, 16, 2, 2, generator=torch.Generator().manual_seed(2))  # first frame, then cached
    reference = _stream(vae, latents)
    torch._dynamo.reset()
    compiled = WanVAE.from_model_dir(tiny.model_dir, dtype=torch.float32, device="cpu")
    compiled.compile_decoder(backend="eager")
    try:
        assert compiled.compiled == {"backend": "eager", "mode": None} and compiled.decoder is not compiled.model.decoder
        torch.testing.assert_close(_stream(compiled, latents), reference, rtol=1e-5, atol=1e-5)
    finally:
        torch._dynamo.reset()
