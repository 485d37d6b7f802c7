"""LoRA adapters merged into the generator at load time (PEFT's ``lora_A`` / ``lora_B`` layout), without peft.

The file is a dict whose ``generator_lora`` entry (or, failing that, the dict itself) maps
``base_model.model.blocks.{i}.<module>.lora_A.weight`` ``[r, in]`` and ``.lora_B.weight`` ``[out, r]`` for every
``nn.Linear`` inside every transformer block. The adapted layer computes ``W x + b + (alpha / r) * B (A x)``; merging
folds this into the weight once, ``W <- W + (alpha / r) * (B @ A)`` (in float32, then cast), the bias unchanged.
``r`` is read from the file; ``alpha`` is not in the file and comes from the config (``adapter.alpha``; null means
``alpha = r``). Every expected key must be present with its shape and nothing else may be: a LoRA file that does not
fit the model is an error, never a silent partial merge.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .loading import ModelFilesError, first_line

logger = logging.getLogger(__name__)

LORA_ENTRY = "generator_lora"
PEFT_PREFIX = "base_model.model."
A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"
BLOCKS = "blocks"


@dataclass(frozen=True)
class LoraTarget:
    """One adapted linear layer: its module name in the model and its (in, out) features."""

    name: str
    in_features: int
    out_features: int


def lora_targets(model: nn.Module) -> list[LoraTarget]:
    """Every ``nn.Linear`` inside the model's transformer blocks (``blocks.{i}.…``), in module order."""
    out = []
    for name, module in model.named_modules():
        if name.startswith(BLOCKS + ".") and isinstance(module, nn.Linear):
            out.append(LoraTarget(name, module.in_features, module.out_features))
    return out


def expected_lora_shapes(model: nn.Module, rank: int) -> dict[str, tuple[int, int]]:
    """{key without the peft prefix: shape} of a rank-``rank`` LoRA for ``model`` (A ``[r, in]``, B ``[out, r]``)."""
    shapes = {}
    for t in lora_targets(model):
        shapes[t.name + A_SUFFIX] = (rank, t.in_features)
        shapes[t.name + B_SUFFIX] = (t.out_features, rank)
    return shapes


def _fix(path: Path) -> str:
    """The closing advice of every LoRA file error."""
    return (f"Pass lora_ckpt with the LoRA file that was trained for this checkpoint, or download {path.name} again "
            f"if it may be damaged")


def read_lora_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``path`` (``generator_lora`` entry, else the whole dict), peft prefix stripped."""
    path = Path(path)
    if not path.is_file():
        raise ModelFilesError(f"LoRA file not found: {path}. Check lora_ckpt; it must name the LoRA file released "
                              f"with the checkpoint (README: 'Other checkpoints of the family').")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, OSError, EOFError, KeyError, ValueError, IndexError,
            AttributeError, ImportError) as exc:
        raise ModelFilesError(f"LoRA file {path} could not be read ({type(exc).__name__}: {first_line(exc)}); it is "
                              f"truncated, corrupt or holds Python objects besides tensors. {_fix(path)}.") from None
    if isinstance(data, dict) and LORA_ENTRY in data:
        data = data[LORA_ENTRY]
    if not isinstance(data, dict):
        raise ModelFilesError(f"LoRA file {path} holds a {type(data).__name__}, not a dict of LoRA tensors (with or "
                              f"without a '{LORA_ENTRY}' entry). {_fix(path)}.")
    out = {}
    for key, value in data.items():
        name = str(key).removeprefix(PEFT_PREFIX)
        if not torch.is_tensor(value):
            raise ModelFilesError(f"LoRA file {path}: key '{key}' holds a {type(value).__name__}, not a tensor; the "
                                  f"file is not a LoRA state dict. {_fix(path)}.")
        out[name] = value
    return out


def lora_rank(tensors: dict[str, torch.Tensor], path: Path) -> int:
    """r = ``lora_A.shape[0]``, the same for every adapted layer (else ModelFilesError naming the odd key)."""
    ranks = {k: int(v.shape[0]) for k, v in tensors.items() if k.endswith(A_SUFFIX) and v.dim() == 2}
    if not ranks:
        raise ModelFilesError(f"LoRA file {path} has no '*{A_SUFFIX}' key (its keys start with "
                              f"{sorted(tensors)[:3]}); it is not a LoRA file in the peft layout. {_fix(path)}.")
    first_key = min(ranks)
    r = ranks[first_key]
    for key, value in sorted(ranks.items()):
        if value != r:
            raise ModelFilesError(f"LoRA file {path}: '{PEFT_PREFIX}{key}' has rank {value} but "
                                  f"'{PEFT_PREFIX}{first_key}' has rank {r}; every lora_A must have the same number "
                                  f"of rows. {_fix(path)}.")
    return r


def check_lora(tensors: dict[str, torch.Tensor], model: nn.Module, path: Path, rank: int | None = None) -> int:
    """Check keys and shapes against the model (and ``rank`` when given); returns r. Errors are one paragraph."""
    r = lora_rank(tensors, path)
    if rank is not None and int(rank) != r:
        raise ModelFilesError(f"LoRA file {path} has rank {r} (lora_A has {r} rows) but the config says adapter.rank "
                              f"= {rank}; set adapter.rank: {r} in the YAML, or pass the LoRA file trained with rank "
                              f"{rank}.")
    expected = expected_lora_shapes(model, r)
    unexpected = sorted(k for k in tensors if k not in expected)
    if unexpected:
        raise ModelFilesError(f"LoRA file {path} has the unexpected key '{PEFT_PREFIX}{unexpected[0]}' "
                              f"({len(unexpected)} unexpected in all); only lora_A/lora_B weights of the linear layers "
                              f"of blocks 0-{model.config.num_layers - 1} (self_attn, cross_attn, ffn) can be merged, "
                              f"no biases, embeddings or head. {_fix(path)}.")
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise ModelFilesError(f"LoRA file {path} lacks the key '{PEFT_PREFIX}{missing[0]}' ({len(missing)} of "
                              f"{len(expected)} missing); the file adapts a different set of layers or a model with "
                              f"fewer blocks than this one ({model.config.num_layers}). {_fix(path)}.")
    for key, shape in expected.items():
        got = tuple(tensors[key].shape)
        if got != shape:
            raise ModelFilesError(f"LoRA file {path}: '{PEFT_PREFIX}{key}' has shape {list(got)}, expected "
                                  f"{list(shape)} for this model (dim {model.config.dim}, ffn_dim "
                                  f"{model.config.ffn_dim}, rank {r}); the LoRA was trained for a different model "
                                  f"size. {_fix(path)}.")
    return r


def lora_scale(alpha: float | None, rank: int, path: Path) -> float:
    """``alpha / r``; alpha None means alpha = r (scale 1)."""
    if alpha is None:
        return 1.0
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ModelFilesError(f"adapter.alpha = {alpha!r} is not a positive number (for the LoRA file {path}); set "
                              f"adapter.alpha in the YAML to the alpha the LoRA was trained with, or null for "
                              f"alpha = rank.")
    return float(alpha) / rank


@torch.no_grad()
def merge_lora(model: nn.Module, lora_path: str | os.PathLike, alpha: float | None = None,
               rank: int | None = None) -> float:
    """Fold the LoRA file into ``model``'s weights in place (``W += alpha/r * B @ A``); returns the scale used."""
    path = Path(lora_path)
    tensors = read_lora_file(path)
    r = check_lora(tensors, model, path, rank)
    scale = lora_scale(alpha, r, path)
    modules = dict(model.named_modules())
    targets = lora_targets(model)
    for t in targets:
        layer = modules[t.name]
        w = layer.weight  # [out, in]
        a = tensors[t.name + A_SUFFIX].to(device=w.device, dtype=torch.float32)  # [r, in]
        b = tensors[t.name + B_SUFFIX].to(device=w.device, dtype=torch.float32)  # [out, r]
        w.copy_((w.float() + scale * (b @ a)).to(w.dtype))
    logger.info("merged LoRA %s into %d linear layers (rank %d, alpha %s, scale %g)", path, len(targets), r,
                alpha if alpha is not None else r, scale)
    return scale
