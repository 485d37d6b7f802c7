"""Tiny Wan model folders and Self Forcing checkpoints in the real on-disk formats (tests and the CPU demo).

``write_tiny_model(root)`` writes ``root/Wan2.1-T2V-1.3B-tiny/`` with the same file names and key names as the
released folder (``config.json``, ``diffusion_pytorch_model.safetensors``, Wan-keyed UMT5 ``.pth``, Wan-keyed VAE
``.pth``, a sentencepiece tokenizer made offline under ``google/umt5-xxl/``) and ``root/tiny_checkpoint.pt``
(``generator``, ``generator_ema``, ``critic``; keys ``model.`` + DiT key). Weights are random but deterministic
given the seed; everything is small enough to write and run in seconds on a CPU.
"""
from __future__ import annotations

import io
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from wan.causal_model import CausalWanModel
from wan.config import WanConfig
from wan.loading import CONFIG_FILE, DIT_WEIGHTS_FILE, T5_WEIGHTS_FILE, TOKENIZER_DIR, VAE_WEIGHTS_FILE

TINY_MODEL_DIRNAME = "Wan2.1-T2V-1.3B-tiny"
TINY_CHECKPOINT_NAME = "tiny_checkpoint.pt"

# Tiny DiT: 2 heads of 16 channels, 2 layers; the text length stays the real model's so prompts behave alike.
TINY_DIT = dict(dim=32, ffn_dim=64, freq_dim=16, text_dim=32, in_dim=16, out_dim=16, num_heads=2, num_layers=2,
                text_len=WanConfig().text_len, eps=1e-6, model_type="t2v")
# Tiny UMT5 (its d_model is the DiT's text_dim); 32 relative-position buckets as the real encoder.
TINY_T5 = dict(num_heads=2, d_ff=64, num_layers=2, num_buckets=32)
# Tiny VAE: the Wan2.1 structure (dim_mult 1,2,4,4, 2 res blocks, z_dim 16) with 4 base channels instead of 96.
TINY_VAE_BASE_DIM = 4

_SEED_OFFSETS = {"base": 1, "generator": 2, "generator_ema": 3, "critic": 4, "t5": 5, "vae": 6}


@dataclass(frozen=True)
class TinyModel:
    """Paths of a written tiny model: the Wan-style folder and the Self Forcing-style checkpoint."""

    model_dir: Path
    checkpoint: Path


def tiny_dit_config(**overrides) -> WanConfig:
    """The tiny DiT config, with optional field overrides (e.g. ``dim=48`` for a mismatching model)."""
    return WanConfig.from_dict({**TINY_DIT, **overrides})


def _seed(seed: int, part: str) -> int:
    """Independent seed for one part of the fixture."""
    return seed * 100 + _SEED_OFFSETS[part]


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Plausible random float32 weights for a {key: shape} dict (norm scales near 1, fan-in scaled matrices)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=g)
        if key.endswith("modulation"):
            t = noise / math.sqrt(shape[-1])
        elif key.endswith("gamma") or (len(shape) == 1 and "norm" in key and key.endswith("weight")):
            t = 1.0 + 0.1 * noise
        elif len(shape) == 1:
            t = 0.02 * noise
        else:
            t = noise / math.sqrt(math.prod(shape[1:]))
        out[key] = t.contiguous()
    return out


# ---------------------------------------------------------------------------------------------------------- DiT


def dit_shapes(cfg: WanConfig) -> dict[str, tuple[int, ...]]:
    """{DiT key: shape} of ``CausalWanModel(cfg)`` (original Wan names)."""
    with torch.device("meta"):
        model = CausalWanModel(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def write_config(model_dir: Path, cfg: WanConfig) -> Path:
    """``config.json`` like the released one (architecture fields plus diffusers bookkeeping keys)."""
    data = {"_class_name": "WanModel", "_diffusers_version": "0.30.0"}
    data.update({k: v for k, v in cfg.to_dict().items() if k != "rope_theta"})
    path = Path(model_dir) / CONFIG_FILE
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def write_dit_weights(model_dir: Path, cfg: WanConfig, seed: int = 0) -> Path:
    """``diffusion_pytorch_model.safetensors`` with random base weights (float32, Wan key names)."""
    from safetensors.torch import save_file

    path = Path(model_dir) / DIT_WEIGHTS_FILE
    save_file(random_state_dict(dit_shapes(cfg), _seed(seed, "base")), str(path), metadata={"format": "pt"})
    return path


def write_checkpoint(path: Path, cfg: WanConfig | None = None, seed: int = 0, include_ema: bool = True,
                     fsdp_infix: bool = False) -> Path:
    """A Self Forcing-style ``.pt``: ``generator`` (bf16), ``generator_ema`` (fp32), ``critic``; keys ``model.`` + key.

    ``cfg`` other than the tiny one gives a mismatching checkpoint; ``include_ema=False`` leaves out
    ``generator_ema``; ``fsdp_infix`` writes EMA keys as ``model._fsdp_wrapped_module.<key>``.
    """
    cfg = cfg or tiny_dit_config()
    shapes = dit_shapes(cfg)

    def wrapped(part: str, dtype: torch.dtype, infix: str = "") -> dict[str, torch.Tensor]:
        """Random DiT weights as the generator wrapper saves them (``model.`` + key)."""
        sd = random_state_dict(shapes, _seed(seed, part))
        return {f"model.{infix}{k}": v.to(dtype) for k, v in sd.items()}

    ckpt = {"generator": wrapped("generator", torch.bfloat16)}
    if include_ema:
        ckpt["generator_ema"] = wrapped("generator_ema", torch.float32, "_fsdp_wrapped_module." if fsdp_infix else "")
    ckpt["critic"] = wrapped("critic", torch.bfloat16)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


# ---------------------------------------------------------------------------------------------------------- UMT5

# Wan T5 key templates and their shapes, written directly in the Wan format (independent of the loader's mapping).
def wan_t5_shapes(vocab: int, d_model: int, num_heads: int, d_kv: int, d_ff: int, num_layers: int,
                  num_buckets: int) -> dict[str, tuple[int, ...]]:
    """{Wan T5 encoder key: shape} of ``models_t5_umt5-xxl-enc-bf16.pth`` for the given sizes."""
    inner = num_heads * d_kv
    shapes: dict[str, tuple[int, ...]] = {"token_embedding.weight": (vocab, d_model)}
    for i in range(num_layers):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (d_model,),
            b + "attn.q.weight": (inner, d_model), b + "attn.k.weight": (inner, d_model),
            b + "attn.v.weight": (inner, d_model), b + "attn.o.weight": (d_model, inner),
            b + "norm2.weight": (d_model,),
            b + "ffn.gate.0.weight": (d_ff, d_model), b + "ffn.fc1.weight": (d_ff, d_model),
            b + "ffn.fc2.weight": (d_model, d_ff),
            b + "pos_embedding.embedding.weight": (num_buckets, num_heads),
        })
    shapes["norm.weight"] = (d_model,)
    return shapes


def write_text_encoder(model_dir: Path, d_model: int, vocab: int, seed: int = 0) -> Path:
    """``models_t5_umt5-xxl-enc-bf16.pth``: a tiny UMT5 encoder in Wan key names, stored in bf16 like the real one."""
    heads = TINY_T5["num_heads"]
    shapes = wan_t5_shapes(vocab, d_model, heads, d_model // heads, TINY_T5["d_ff"], TINY_T5["num_layers"],
                           TINY_T5["num_buckets"])
    sd = {k: v.to(torch.bfloat16) for k, v in random_state_dict(shapes, _seed(seed, "t5")).items()}
    path = Path(model_dir) / T5_WEIGHTS_FILE
    torch.save(sd, path)
    return path


_WORDS = ("a an the of with and in on under over through at near by from into slowly quickly gently "
          "cat dog bird fish horse fox robot woman man child girl boy car train boat plane city street forest beach "
          "river ocean mountain desert field garden sky cloud sun moon star snow rain fog fire light shadow "
          "red blue green yellow golden white black small large old young bright dark walks runs flies swims "
          "dances jumps sits looks turns waves camera close up wide shot cinematic view video scene sunset night "
          "morning evening summer winter drone tracking realistic style colorful").split()


def tokenizer_corpus() -> list[str]:
    """Deterministic training text for the tiny sentencepiece model (covers every printable ASCII character)."""
    rng = random.Random(0)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 16))) for _ in range(600)]
    printable = "".join(chr(c) for c in range(33, 127))
    lines += [printable, printable.upper(), " ".join(printable)]
    return lines


def write_tokenizer(tok_dir: Path) -> int:
    """A tiny UMT5-style tokenizer (unigram sentencepiece, ``<pad>``=0, ``</s>``=1, ``<unk>``=2) loadable with
    ``AutoTokenizer``; writes ``spiece.model``, ``tokenizer.json`` and ``tokenizer_config.json``. Returns its size."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    tok_dir = Path(tok_dir)
    tok_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tokenizer_corpus()), model_writer=buf, vocab_size=160, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
        num_threads=1, minloglevel=2)
    (tok_dir / "spiece.model").write_bytes(buf.getvalue())
    tokenizer = T5Tokenizer.from_pretrained(str(tok_dir), extra_ids=0, local_files_only=True)
    tokenizer.save_pretrained(str(tok_dir))
    return len(tokenizer)


# ---------------------------------------------------------------------------------------------------------- VAE

_RESNET_TO_WAN = {
    "norm1.gamma": "residual.0.gamma", "conv1.weight": "residual.2.weight", "conv1.bias": "residual.2.bias",
    "norm2.gamma": "residual.3.gamma", "conv2.weight": "residual.6.weight", "conv2.bias": "residual.6.bias",
    "conv_shortcut.weight": "shortcut.weight", "conv_shortcut.bias": "shortcut.bias",
}


def wan_vae_key(key: str, num_res_blocks: int = 2) -> str:
    """Inverse of diffusers' ``convert_wan_vae_to_diffusers`` for one key: ``AutoencoderKLWan`` name -> Wan name."""
    head, _, rest = key.partition(".")
    if head in ("quant_conv", "post_quant_conv"):
        return ("conv1." if head == "quant_conv" else "conv2.") + rest
    part, _, tail = rest.partition(".")
    if part == "conv_in":
        return f"{head}.conv1.{tail}"
    if part == "norm_out":
        return f"{head}.head.0.{tail}"
    if part == "conv_out":
        return f"{head}.head.2.{tail}"
    if part == "mid_block":  # Wan: middle = [residual, attention, residual]
        kind, idx, leaf = tail.split(".", 2)
        if kind == "attentions":
            return f"{head}.middle.{2 * int(idx) + 1}.{leaf}"
        return f"{head}.middle.{2 * int(idx)}.{_RESNET_TO_WAN[leaf]}"
    if part == "down_blocks":  # same flat list in both layouts
        idx, leaf = tail.split(".", 1)
        return f"{head}.downsamples.{idx}.{_RESNET_TO_WAN.get(leaf, leaf)}"
    if part == "up_blocks":  # Wan: flat list, per stage (num_res_blocks + 1) residual blocks then one resample
        stage, kind, idx, leaf = tail.split(".", 3)
        stride = num_res_blocks + 2
        if kind == "resnets":
            return f"{head}.upsamples.{stride * int(stage) + int(idx)}.{_RESNET_TO_WAN[leaf]}"
        if kind == "upsamplers":
            return f"{head}.upsamples.{stride * int(stage) + stride - 1}.{leaf}"
    raise KeyError(f"no Wan name known for VAE key {key!r}")


def wan_vae_state_dict(diffusers_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ``AutoencoderKLWan`` state dict renamed to the keys of ``Wan2.1_VAE.pth``."""
    return {wan_vae_key(k): v for k, v in diffusers_state.items()}


def write_vae(model_dir: Path, seed: int = 0, base_dim: int = TINY_VAE_BASE_DIM) -> Path:
    """``Wan2.1_VAE.pth``: a reduced Wan2.1 VAE (``base_dim`` channels) in Wan key names, float32."""
    from diffusers import AutoencoderKLWan

    from wan.vae import load_vae_config

    config = {**load_vae_config(), "base_dim": base_dim}
    with torch.device("meta"):
        vae = AutoencoderKLWan(**config)
    shapes = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    path = Path(model_dir) / VAE_WEIGHTS_FILE
    torch.save(wan_vae_state_dict(random_state_dict(shapes, _seed(seed, "vae"))), path)
    return path


# ---------------------------------------------------------------------------------------------------------- all


def write_model_folder(model_dir: Path, cfg: WanConfig | None = None, seed: int = 0) -> Path:
    """A complete tiny Wan model folder at ``model_dir`` (config, DiT, UMT5, VAE, tokenizer)."""
    cfg = cfg or tiny_dit_config()
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    write_config(model_dir, cfg)
    write_dit_weights(model_dir, cfg, seed)
    vocab = write_tokenizer(model_dir / TOKENIZER_DIR)
    # Like the real encoder (256384 rows for 256300 tokens), the embedding has a few rows more than the tokenizer.
    write_text_encoder(model_dir, cfg.text_dim, vocab=64 * (vocab // 64 + 1), seed=seed)
    write_vae(model_dir, seed)
    return model_dir


def write_tiny_model(root, seed: int = 0) -> TinyModel:
    """Write ``root/Wan2.1-T2V-1.3B-tiny/`` and ``root/tiny_checkpoint.pt`` (tiny, real formats, deterministic)."""
    root = Path(root)
    model_dir = write_model_folder(root / TINY_MODEL_DIRNAME, seed=seed)
    checkpoint = write_checkpoint(root / TINY_CHECKPOINT_NAME, seed=seed)
    return TinyModel(model_dir=model_dir, checkpoint=checkpoint)
