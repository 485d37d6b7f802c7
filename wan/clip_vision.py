"""Matrix-Game 2.0 image conditioning: the visual tower of open-clip xlm-roberta-large ViT-H/14 (Wan2.1 layout).

``load_clip_vision(path)`` reads the flat state dict ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` (its
``visual.`` keys). ``encoder(images)``: [B, 3, H, W] in [-1, 1] -> 224x224 bicubic (no antialias) -> CLIP normalisation
-> residual stream after all but the last block (upstream ``use_31_block``): [B, 257, 1280], no post-norm, no pooling.
The last block never runs and is not built; its keys, ``post_norm`` and ``head`` are accepted and ignored.
"""
from __future__ import annotations

import logging
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wan.attention import attention

logger = logging.getLogger(__name__)

CLIP_CHECKPOINT_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
HUB_REPO = "Skywork/Matrix-Game-2.0"
HEAD_DIM = 80  # ViT-H/14: 1280 / 16 heads
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
UNUSED_VISUAL_KEYS = ("post_norm.weight", "post_norm.bias", "head")  # plus the last block's keys
_FIX = f"use the released {CLIP_CHECKPOINT_FILE} (hub repo {HUB_REPO}; download it again if it is damaged)"
_BLOCK_KEY = re.compile(r"^transformer\.(\d+)\.")


class ClipCheckpointError(ValueError):
    """A CLIP checkpoint that cannot be read or does not match the visual tower."""


def _keys(keys: list[str]) -> str:
    """Up to 5 keys, quoted with their ``visual.`` prefix."""
    return ", ".join(f"'visual.{k}'" for k in keys[:5]) + (f" (and {len(keys) - 5} more)" if len(keys) > 5 else "")


@dataclass(frozen=True)
class ClipVisionConfig:
    """Geometry of the CLIP visual tower (defaults: ViT-H/14 at 224 pixels)."""
    image_size: int = 224
    patch_size: int = 14
    dim: int = 1280
    num_layers: int = 32  # blocks in the checkpoint; the last one is not run
    num_heads: int = 16
    mlp_ratio: int = 4
    eps: float = 1e-5
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD

    def __post_init__(self):
        lows = {"image_size": 1, "patch_size": 1, "dim": 1, "num_layers": 2, "num_heads": 1, "mlp_ratio": 1}
        bad = [f"{k} must be an int >= {low}, got {getattr(self, k)!r}" for k, low in lows.items()
               if type(getattr(self, k)) is not int or getattr(self, k) < low]  # num_layers: the last is skipped
        if not bad and self.image_size % self.patch_size:
            bad.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if not bad and self.dim % self.num_heads:
            bad.append(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if not self.eps > 0:
            bad.append(f"eps must be > 0, got {self.eps!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            bad.append(f"mean/std must be 3 values each (std > 0), got {self.mean}, {self.std}")
        if bad:
            raise ValueError("invalid ClipVisionConfig: " + "; ".join(bad))

    @property
    def num_tokens(self) -> int:
        """CLS token plus one token per patch: 1 + (image_size // patch_size) ** 2."""
        return 1 + (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_state_dict(cls, state: dict, source: str = "the state dict") -> "ClipVisionConfig":
        """Infer the geometry from a state dict (``visual.`` prefix optional); ``source`` names it in errors."""
        visual = {k[7:]: v for k, v in state.items() if str(k).startswith("visual.")} or dict(state)
        patch_w, pos = visual.get("patch_embedding.weight"), visual.get("pos_embedding")  # [C, 3, p, p], [1, T, C]
        if not (isinstance(patch_w, torch.Tensor) and patch_w.dim() == 4 and patch_w.shape[2] == patch_w.shape[3]
                and isinstance(pos, torch.Tensor) and pos.dim() == 3 and pos.shape[1] > 1):
            raise ClipCheckpointError(f"{source}: 'visual.patch_embedding.weight' [dim, 3, p, p] and "
                                      f"'visual.pos_embedding' [1, T, dim] are missing or malformed; {_FIX}")
        dim, patch, grid = pos.shape[2], patch_w.shape[2], math.isqrt(pos.shape[1] - 1)
        if grid * grid != pos.shape[1] - 1:
            raise ClipCheckpointError(f"{source}: 'visual.pos_embedding' has {pos.shape[1]} tokens, not 1 + a square "
                                      f"patch grid; {_FIX}")
        if dim % HEAD_DIM:
            raise ClipCheckpointError(f"{source}: width {dim} (from 'visual.pos_embedding') is not a multiple of the "
                                      f"ViT-H head dim {HEAD_DIM}, so the number of heads cannot be inferred; {_FIX}")
        mlp = visual.get("transformer.0.mlp.0.weight")  # [ratio * C, C]
        ratio = mlp.shape[0] // dim if isinstance(mlp, torch.Tensor) and mlp.shape[0] % dim == 0 else cls.mlp_ratio
        layers = max((int(m.group(1)) for m in map(_BLOCK_KEY.match, visual) if m), default=-1) + 1
        try:
            return cls(image_size=grid * patch, patch_size=patch, dim=dim, num_layers=layers,
                       num_heads=dim // HEAD_DIM, mlp_ratio=ratio)
        except ValueError as exc:
            raise ClipCheckpointError(f"{source}: {exc}; {_FIX}") from None


class LayerNorm(nn.LayerNorm):
    """Affine LayerNorm computed in float32 and cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dim of ``x`` in float32."""
        w, b = self.weight.float(), self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class SelfAttention(nn.Module):
    """Non-causal multi-head self-attention with a fused qkv projection (q, k, v; heads contiguous)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, C] -> [B, L, C]."""
        b, n, c = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.num_heads, self.head_dim).unbind(2)  # each [B, L, H, D]
        return self.proj(attention(q, k, v).reshape(b, n, c))  # attention -> [B, L, H, D], scale 1/sqrt(D)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm1 x), then x + mlp(norm2 x) with exact GELU."""

    def __init__(self, cfg: ClipVisionConfig):
        super().__init__()
        self.norm1 = LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = SelfAttention(cfg.dim, cfg.num_heads)
        self.norm2 = LayerNorm(cfg.dim, eps=cfg.eps)
        hidden = cfg.mlp_ratio * cfg.dim
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Linear(hidden, cfg.dim))  # mlp.0, mlp.2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, C] -> [B, L, C]."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ClipVisionEncoder(nn.Module):
    """CLIP ViT visual tower giving all tokens after block num_layers - 2; parameter names are the ``visual.`` keys."""

    def __init__(self, cfg: ClipVisionConfig = ClipVisionConfig()):
        super().__init__()
        self.config = cfg
        self.patch_embedding = nn.Conv2d(3, cfg.dim, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.cls_embedding = nn.Parameter(torch.randn(1, 1, cfg.dim) * cfg.dim ** -0.5)  # [1, 1, C]
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.num_tokens, cfg.dim) * cfg.dim ** -0.5)  # [1, T, C]
        self.pre_norm = LayerNorm(cfg.dim, eps=cfg.eps)
        self.transformer = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers - 1))

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights."""
        return self.pos_embedding.dtype

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.pos_embedding.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, 3, S, S] bicubic-resized and CLIP-normalised, in the input dtype."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"CLIP images must be [B, 3, H, W] in [-1, 1], got shape {list(images.shape)}")
        size = self.config.image_size
        x = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False) * 0.5 + 0.5  # [0, 1]
        mean = torch.tensor(self.config.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.config.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, num_tokens, dim] in the model dtype; preprocessing runs on its device."""
        x = self.patch_embedding(self.preprocess(images.to(self.device)).to(self.dtype))  # [B, C, S/p, S/p]
        x = x.flatten(2).transpose(1, 2)  # [B, N, C], patches row-major
        x = torch.cat([self.cls_embedding.expand(x.shape[0], -1, -1), x], dim=1)  # [B, 1 + N, C]
        x = self.pre_norm(x + self.pos_embedding)
        for block in self.transformer:
            x = block(x)
        return x


def _read_state_dict(path: Path) -> dict:
    """``torch.load`` of ``path`` (weights only, memory-mapped unless legacy format); must be a flat dict."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # a legacy (pre-zip) file cannot be memory-mapped
            if "mmap can only be used" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, KeyError, ValueError, IndexError) as exc:
        if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc):  # else: a damaged file
            raise ClipCheckpointError(f"CLIP checkpoint {path} was refused: it holds pickled Python objects, not "
                                      f"only tensors (read with weights_only=True, so nothing in it ran); "
                                      f"{_FIX}") from None
        raise ClipCheckpointError(f"CLIP checkpoint {path} could not be read ({type(exc).__name__}: "
                                  f"{(str(exc).splitlines() or [''])[0]}); it is truncated or corrupt: "
                                  f"{_FIX}") from None
    if not isinstance(state, dict) or not any(str(k).startswith("visual.") for k in state):
        found = list(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ClipCheckpointError(f"CLIP checkpoint {path} is not a flat state dict with 'visual.*' keys (found "
                                  f"{found}); {_FIX}")
    return state


def load_clip_vision(path, dtype: torch.dtype = torch.float32, device="cpu") -> ClipVisionEncoder:
    """Load the visual tower from a CLIP ``.pth`` state dict, strictly, in ``dtype`` on ``device`` (eval, no grad)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP checkpoint not found: {path}. Download {CLIP_CHECKPOINT_FILE} from the hub "
                                f"repo {HUB_REPO} (hf download {HUB_REPO} {CLIP_CHECKPOINT_FILE})")
    visual = {k[7:]: v for k, v in _read_state_dict(path).items() if str(k).startswith("visual.")}  # drops textual.*
    cfg = ClipVisionConfig.from_state_dict(visual, source=f"CLIP checkpoint {path}")
    with torch.device("meta"):
        model = ClipVisionEncoder(cfg)
    # strict: every built tensor with its shape, and nothing but the known unused extras (the last block included)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in visual]
    if missing:
        raise ClipCheckpointError(f"CLIP checkpoint {path} lacks {len(missing)} tensor(s): {_keys(missing)}; {_FIX}")
    for key, shape in expected.items():
        value = visual[key]
        if not isinstance(value, torch.Tensor) or value.shape != shape:
            found = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ClipCheckpointError(f"CLIP checkpoint {path}: 'visual.{key}' is {found}, expected {list(shape)} "
                                      f"for the tower inferred from the file ({cfg}); {_FIX}")
    last = f"transformer.{cfg.num_layers - 1}."
    block_keys = {k.split(".", 2)[2] for k in expected if k.startswith("transformer.0.")}
    unknown = [k for k in visual if k not in expected and k not in UNUSED_VISUAL_KEYS
               and not (k.startswith(last) and k[len(last):] in block_keys)]
    if unknown:
        raise ClipCheckpointError(f"CLIP checkpoint {path} has {len(unknown)} unexpected key(s): {_keys(unknown)}; "
                                  f"it is not the open-clip ViT-H/14 layout; {_FIX}")
    lacking = sorted(block_keys - {k[len(last):] for k in visual if k.startswith(last)})
    if lacking:  # num_layers is the highest block index + 1: a file without its last block loses one
        raise ClipCheckpointError(f"CLIP checkpoint {path}: the unused last block is incomplete, it lacks "
                                  f"{_keys([last + k for k in lacking])}; {_FIX}")
    model.load_state_dict({k: visual[k] for k in expected}, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    logger.info("loaded the CLIP visual tower from %s: %d of %d blocks, width %d, %d tokens, %s on %s", path,
                cfg.num_layers - 1, cfg.num_layers, cfg.dim, cfg.num_tokens, dtype, device)
    return model
