"""The causal Wan DiT: architecture and strict loading (1.3B on the meta device), diffusers equivalence, bf16."""
import math

import pytest
import torch

from wan.causal_model import CausalWanModel
from wan.config import WanConfig

from tiny import text_embeds, tiny_model

# SPEC section 1: names and shapes of the 1.3B model (N = block index).
SPEC_SHAPES = {
    "patch_embedding.weight": (1536, 16, 1, 2, 2), "patch_embedding.bias": (1536,),
    "text_embedding.0.weight": (1536, 4096), "text_embedding.0.bias": (1536,),
    "text_embedding.2.weight": (1536, 1536), "text_embedding.2.bias": (1536,),
    "time_embedding.0.weight": (1536, 256), "time_embedding.0.bias": (1536,),
    "time_embedding.2.weight": (1536, 1536), "time_embedding.2.bias": (1536,),
    "time_projection.1.weight": (9216, 1536), "time_projection.1.bias": (9216,),
    "head.modulation": (1, 2, 1536), "head.head.weight": (64, 1536), "head.head.bias": (64,),
}
BLOCK_SHAPES = {
    "modulation": (1, 6, 1536),
    **{f"{a}.{p}.weight": (1536, 1536) for a in ("self_attn", "cross_attn") for p in "qkvo"},
    **{f"{a}.{p}.bias": (1536,) for a in ("self_attn", "cross_attn") for p in "qkvo"},
    **{f"{a}.norm_{p}.weight": (1536,) for a in ("self_attn", "cross_attn") for p in "qk"},
    "norm3.weight": (1536,), "norm3.bias": (1536,),
    "ffn.0.weight": (8960, 1536), "ffn.0.bias": (8960,), "ffn.2.weight": (1536, 8960), "ffn.2.bias": (1536,),
}
REAL_CONFIG = dict(dim=1536, ffn_dim=8960, freq_dim=256, text_dim=4096, in_dim=16, out_dim=16, num_heads=12,
                   num_layers=30, text_len=512, patch_size=[1, 2, 2], eps=1e-6, qk_norm=True, cross_attn_norm=True,
                   model_type="t2v", _class_name="WanModel", _diffusers_version="0.30.0")


def spec_state_shapes():
    shapes = dict(SPEC_SHAPES)
    for n in range(30):
        shapes.update({f"blocks.{n}.{k}": v for k, v in BLOCK_SHAPES.items()})
    return shapes


@pytest.fixture(scope="module")
def meta_model():
    with torch.device("meta"):
        return CausalWanModel(WanConfig.from_dict(REAL_CONFIG))


def test_real_architecture_names_shapes_and_count(meta_model):
    sd = meta_model.state_dict()
    assert len(sd) == 825
    assert {k: tuple(v.shape) for k, v in sd.items()} == spec_state_shapes()
    assert sum(p.numel() for p in meta_model.parameters()) == 1_418_996_800


def test_real_geometry_is_derived_from_config():
    cfg = WanConfig.from_dict(REAL_CONFIG)
    assert cfg.head_dim == 128 and cfg.tokens_per_frame(60, 104) == 1560


def test_strict_load_accepts_exact_keys(meta_model):
    sd = {k: torch.empty(v.shape, device="meta") for k, v in meta_model.state_dict().items()}
    meta_model.load_state_dict_strict(sd)


def test_strict_load_names_missing_and_unexpected_keys(meta_model):
    sd = {k: torch.empty(v.shape, device="meta") for k, v in meta_model.state_dict().items()}
    del sd["blocks.3.ffn.0.weight"]
    sd["blocks.3.ffn.9.weight"] = torch.empty(1, device="meta")
    with pytest.raises(KeyError) as err:
        meta_model.load_state_dict_strict(sd, source="ckpt.pt")
    msg = str(err.value)
    assert "blocks.3.ffn.0.weight" in msg and "blocks.3.ffn.9.weight" in msg and "ckpt.pt" in msg


def test_strict_load_names_shape_mismatch(meta_model):
    sd = {k: torch.empty(v.shape, device="meta") for k, v in meta_model.state_dict().items()}
    sd["head.head.weight"] = torch.empty(64, 5120, device="meta")
    with pytest.raises(ValueError, match="head.head.weight"):
        meta_model.load_state_dict_strict(sd)


def test_unknown_config_key_is_rejected():
    with pytest.raises(ValueError, match="num_head"):
        WanConfig.from_dict({**REAL_CONFIG, "num_head": 3})


def _diffusers_twin(model):
    diffusers = pytest.importorskip("diffusers")
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    cfg = model.config
    twin = diffusers.WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=cfg.cross_attn_norm,
        qk_norm="rms_norm_across_heads", eps=cfg.eps)
    converted = convert_wan_transformer_to_diffusers({k: v.clone() for k, v in model.state_dict().items()})
    twin.load_state_dict(converted, strict=True)
    return twin.eval()


def test_first_chunk_matches_diffusers_wan_transformer():
    model = tiny_model(seed=3)
    twin = _diffusers_twin(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 16, 6, 8, generator=g)  # [B, T, C, H, W]
    text = text_embeds(1, model.config)
    for tval in (1000.0, 937.5, 0.0):
        with torch.no_grad():
            ours = model(x, torch.full((1, 3), tval), model.encode_text(text))
            ref = twin(hidden_states=x.permute(0, 2, 1, 3, 4), timestep=torch.tensor([tval]),
                       encoder_hidden_states=text, return_dict=False)[0].permute(0, 2, 1, 3, 4)
        scale = ref.abs().max().item()
        assert (ours - ref).abs().max().item() < 1e-4 * scale, tval


def test_cross_attention_kv_depends_only_on_prompt():
    model = tiny_model()
    text = text_embeds(1, model.config)
    kv1, kv2 = model.encode_text(text), model.encode_text(text.clone())
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(kv1, kv2))
    with pytest.raises(ValueError, match="text_len"):
        model.encode_text(text[:, :-1])


def test_bf16_forward_on_cpu():
    model = tiny_model().to(torch.bfloat16)
    x = torch.randn(1, 3, 16, 4, 4)
    with torch.no_grad():
        out = model(x, torch.full((1, 3), 1000.0), model.encode_text(text_embeds(1, model.config)))
    assert out.dtype == torch.bfloat16 and out.shape == x.shape and torch.isfinite(out.float()).all()


def test_sinusoidal_embedding_is_cos_then_sin_in_float64():
    from wan.causal_model import sinusoidal_embedding
    e = sinusoidal_embedding(8, torch.tensor([937.5]))
    assert e.dtype == torch.float64
    assert math.isclose(e[0, 0].item(), math.cos(937.5)) and math.isclose(e[0, 4].item(), math.sin(937.5))
