"""CLIP visual tower (wan.clip_vision): naive-reference parity, preprocessing, strict loading, geometry inference."""
import math

import pytest
import torch
import torch.nn.functional as F

from clip_fixtures import clip_state_dict, write_clip_checkpoint
from wan.clip_vision import (CLIP_MEAN, CLIP_STD, HUB_REPO, ClipCheckpointError, ClipVisionConfig, ClipVisionEncoder,
                             load_clip_vision)

DIM, LAYERS, HEADS = 160, 3, 2  # head dim 80, like ViT-H


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(path, state dict) of a tiny CLIP checkpoint in the real layout."""
    path = tmp_path_factory.mktemp("clip") / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    return path, write_clip_checkpoint(path, dim=DIM, num_layers=LAYERS, seed=0)


@pytest.fixture(scope="module")
def encoder(checkpoint):
    """The float32 encoder loaded from the tiny checkpoint."""
    return load_clip_vision(checkpoint[0])


def images(b=2, h=352, w=640, seed=1):
    """Random [B, 3, H, W] images in [-1, 1]."""
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def naive_reference(sd, imgs, blocks, heads=HEADS):
    """Plain-torch CLIP visual tower: unfold+matmul patches, explicit LayerNorm, einsum softmax attention.

    The resize runs in the input dtype, like upstream (torch's float32 CPU bicubic differs from its float64 one by
    ~1e-4); everything after it runs in float64.
    """
    sd = {k: v.double() for k, v in sd.items() if k.startswith("visual.")}
    x = F.interpolate(imgs, size=(224, 224), mode="bicubic", align_corners=False).double() * 0.5 + 0.5
    x = (x - torch.tensor(CLIP_MEAN).double().view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).double().view(1, 3, 1, 1)
    w = sd["visual.patch_embedding.weight"]  # [C, 3, p, p]
    c, p = w.shape[0], w.shape[-1]
    cols = F.unfold(x, kernel_size=p, stride=p)  # [B, 3*p*p, N], channel-major like w
    tok = cols.transpose(1, 2) @ w.reshape(c, -1).T  # [B, N, C]
    x = torch.cat([sd["visual.cls_embedding"].expand(len(tok), 1, c), tok], 1) + sd["visual.pos_embedding"]

    def ln(t, name):
        mu = t.mean(-1, keepdim=True)
        var = ((t - mu) ** 2).mean(-1, keepdim=True)
        return (t - mu) / torch.sqrt(var + 1e-5) * sd[name + ".weight"] + sd[name + ".bias"]

    def lin(t, name):
        return t @ sd[name + ".weight"].T + sd[name + ".bias"]

    x = ln(x, "visual.pre_norm")
    b, n, d = len(x), x.shape[1], c // heads
    for i in range(blocks):
        pre = f"visual.transformer.{i}."
        qkv = lin(ln(x, pre + "norm1"), pre + "attn.to_qkv")  # [B, L, 3C]
        q, k, v = (qkv[..., j * c:(j + 1) * c].reshape(b, n, heads, d) for j in range(3))
        att = torch.softmax(torch.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(d), dim=-1)
        x = x + lin(torch.einsum("bhlm,bmhd->blhd", att, v).reshape(b, n, c), pre + "attn.proj")
        h = lin(ln(x, pre + "norm2"), pre + "mlp.0")
        x = x + lin(0.5 * h * (1 + torch.erf(h / math.sqrt(2))), pre + "mlp.2")
    return x


def test_matches_naive_reference(checkpoint, encoder):
    _, sd = checkpoint
    imgs = images()
    with torch.no_grad():
        out = encoder(imgs)
    ref = naive_reference(sd, imgs, blocks=LAYERS - 1)
    assert out.shape == (2, 257, DIM) and out.dtype == torch.float32
    assert (out.double() - ref).abs().max().item() < 1e-5
    assert len(encoder.transformer) == LAYERS - 1  # the last block is not built
    assert (out.double() - naive_reference(sd, imgs, blocks=LAYERS)).abs().max().item() > 1e-2  # and it matters


def test_last_block_post_norm_head_and_textual_are_unused(checkpoint, encoder, tmp_path):
    _, sd = checkpoint
    changed = {k: (v + 1 if k.startswith(("visual.transformer.2.", "visual.post_norm", "visual.head", "textual."))
                   or k == "log_scale" else v) for k, v in sd.items()}
    path = tmp_path / "changed.pth"
    torch.save(changed, path)
    imgs = images(b=1)
    with torch.no_grad():
        assert torch.equal(load_clip_vision(path)(imgs), encoder(imgs))
    torch.save({k: v for k, v in sd.items() if k.startswith("visual.")}, path)  # no textual.*, no log_scale
    with torch.no_grad():
        assert torch.equal(load_clip_vision(path)(imgs), encoder(imgs))


def test_preprocess_constant_image(encoder):
    x = encoder.preprocess(torch.full((1, 3, 100, 60), 0.2))
    expected = (0.6 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)  # 0.2 * 0.5 + 0.5 = 0.6
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert torch.allclose(x, expected.view(1, 3, 1, 1).expand_as(x), atol=1e-6, rtol=0)
    half = encoder.preprocess(torch.full((1, 3, 32, 32), 0.2, dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16  # computed in the input dtype, mean/std rounded to it
    mean, std = torch.tensor(CLIP_MEAN, dtype=torch.bfloat16), torch.tensor(CLIP_STD, dtype=torch.bfloat16)
    assert torch.equal(half[0, :, 0, 0], (torch.tensor(0.6, dtype=torch.bfloat16) - mean) / std)


def test_preprocess_bicubic_resize(encoder):
    imgs = images(h=352, w=640)
    resized = F.interpolate(imgs, size=(224, 224), mode="bicubic", align_corners=False, antialias=False)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    expected = (resized * 0.5 + 0.5 - mean) / std
    x = encoder.preprocess(imgs)
    assert x.shape == (2, 3, 224, 224)
    assert torch.allclose(x, expected, atol=1e-6, rtol=0)
    antialiased = F.interpolate(imgs, size=(224, 224), mode="bicubic", align_corners=False, antialias=True)
    assert not torch.allclose(resized, antialiased, atol=1e-3)  # the test would notice antialiasing
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        encoder.preprocess(imgs[:, :2])


def _save(tmp_path, state, name="clip.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_loader_missing_key(checkpoint, tmp_path):
    state = dict(checkpoint[1])
    del state["visual.transformer.1.attn.proj.weight"]
    path = _save(tmp_path, state)
    with pytest.raises(ClipCheckpointError, match=r"visual\.transformer\.1\.attn\.proj\.weight") as info:
        load_clip_vision(path)
    assert str(path) in str(info.value) and HUB_REPO in str(info.value)


def test_loader_wrong_shape(checkpoint, tmp_path):
    state = dict(checkpoint[1], **{"visual.transformer.0.mlp.0.bias": torch.zeros(10)})
    path = _save(tmp_path, state)
    with pytest.raises(ClipCheckpointError, match=r"visual\.transformer\.0\.mlp\.0\.bias' is \[10\], expected \[640\]"):
        load_clip_vision(path)


def test_loader_unknown_visual_key(checkpoint, tmp_path):
    state = dict(checkpoint[1], **{"visual.proj_extra": torch.zeros(3), "visual.transformer.2.norm3.weight":
                                   torch.zeros(DIM)})
    with pytest.raises(ClipCheckpointError, match=r"2 unexpected key\(s\).*visual\.proj_extra"):
        load_clip_vision(_save(tmp_path, state))


def test_loader_incomplete_last_block(checkpoint, tmp_path):
    state = {k: v for k, v in checkpoint[1].items() if k != "visual.transformer.2.mlp.2.weight"}
    with pytest.raises(ClipCheckpointError, match=r"last block.*visual\.transformer\.2\.mlp\.2\.weight"):
        load_clip_vision(_save(tmp_path, state))


class Payload:
    """A pickled Python object a weights-only load must refuse."""


def test_loader_refuses_pickled_objects(checkpoint, tmp_path):
    path = _save(tmp_path, dict(checkpoint[1], extra=Payload()))
    with pytest.raises(ClipCheckpointError, match="pickled Python objects") as info:
        load_clip_vision(path)
    assert str(path) in str(info.value)


def test_loader_not_a_flat_state_dict(checkpoint, tmp_path):
    path = _save(tmp_path, {"state_dict": checkpoint[1]})
    with pytest.raises(ClipCheckpointError, match=r"not a flat state dict.*'state_dict'"):
        load_clip_vision(path)
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    with pytest.raises(ClipCheckpointError, match="could not be read"):
        load_clip_vision(tmp_path / "garbage.pth")


def test_loader_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "clip.pth"
    with pytest.raises(FileNotFoundError) as info:
        load_clip_vision(path)
    assert str(path) in str(info.value) and HUB_REPO in str(info.value)


def test_loader_dtype_and_bf16_file(checkpoint, tmp_path):
    model = load_clip_vision(checkpoint[0], dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.device == torch.device("cpu")
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in model.parameters()) and not model.training
    with torch.no_grad():
        out = model(images(b=1).bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == (1, 257, DIM) and torch.isfinite(out).all()
    path = tmp_path / "bf16.pth"
    write_clip_checkpoint(path, dim=DIM, num_layers=LAYERS, dtype=torch.bfloat16)
    assert load_clip_vision(path).dtype == torch.float32


def test_from_state_dict_infers_geometry(checkpoint):
    cfg = ClipVisionConfig.from_state_dict(checkpoint[1])
    assert cfg == ClipVisionConfig(dim=DIM, num_layers=LAYERS, num_heads=HEADS)
    assert (cfg.image_size, cfg.patch_size, cfg.num_tokens, cfg.mlp_ratio) == (224, 14, 257, 4)
    with torch.device("meta"):  # the real ViT-H/14 shapes, without memory
        real = {"visual." + k: v for k, v in ClipVisionEncoder(ClipVisionConfig()).state_dict().items()}
    real.update({f"visual.transformer.31.{k[len('visual.transformer.0.'):]}": v for k, v in real.items()
                 if k.startswith("visual.transformer.0.")})
    assert ClipVisionConfig.from_state_dict(real) == ClipVisionConfig()


def test_from_state_dict_dim_not_multiple_of_80(tmp_path):
    path = tmp_path / "odd.pth"
    state = write_clip_checkpoint(path, dim=96, num_layers=2)
    with pytest.raises(ClipCheckpointError, match="width 96.*multiple of the ViT-H head dim 80"):
        ClipVisionConfig.from_state_dict(state)
    with pytest.raises(ClipCheckpointError, match="odd.pth.*width 96"):
        load_clip_vision(path)


@pytest.mark.parametrize("kwargs, match", [({"image_size": 225}, "multiple of patch_size"),
                                           ({"dim": 100, "num_heads": 16}, "divisible by num_heads"),
                                           ({"num_layers": 1}, "num_layers must be an int >= 2"),
                                           ({"eps": 0.0}, "eps"), ({"std": (1.0, 0.0, 1.0)}, "mean/std"),
                                           ({"patch_size": 0}, "patch_size must be an int >= 1")])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClipVisionConfig(**kwargs)


def test_config_defaults():
    cfg = ClipVisionConfig()
    assert (cfg.image_size, cfg.patch_size, cfg.dim, cfg.num_layers, cfg.num_heads, cfg.num_tokens) == \
        (224, 14, 1280, 32, 16, 257)
    assert clip_state_dict(dim=DIM, num_layers=LAYERS)["visual.head"].shape == (DIM, 1024)
