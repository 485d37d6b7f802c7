"""Opt-in FP8 linear layers for the DiT through torchao (off by default; nothing else in the project uses it).

``convert_fp8_linear(model)`` swaps the weights of the transformer blocks' ``nn.Linear`` layers (self- and
cross-attention projections, FFN) for float8 tensors with dynamic float8 activation scaling
(``torchao.quantization.Float8DynamicActivationFloat8WeightConfig``), so their matrix products run on the GPU's FP8
tensor cores. Embeddings, the time projection and the output head stay in the model's dtype. It needs torchao and a
CUDA GPU of compute capability >= 8.9 (Ada, Hopper or newer); ``fp8_unavailable(device)`` says what is missing, and
``convert_fp8_linear`` raises ``FP8Unavailable`` with that reason instead of converting. Outputs differ from bf16 by
FP8 rounding: measure before using it (``python -m bench.gpu --stages fp8``).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

MIN_CAPABILITY = (8, 9)
GRANULARITIES = ("row", "tensor")
INSTALL_HINT = "pip install torchao (0.18 for torch 2.11+)"


class FP8Unavailable(RuntimeError):
    """FP8 linear layers cannot be used here; the message names what is missing."""


def _torchao():
    """(torchao version, ``torchao.quantization.quantize_``), or FP8Unavailable naming the import error."""
    try:
        import torchao
        from torchao.quantization import quantize_
    except Exception as exc:  # noqa: BLE001 - missing, or built for another torch
        raise FP8Unavailable(f"FP8 linear layers need torchao, which is not importable here "
                             f"({type(exc).__name__}: {exc}); {INSTALL_HINT}") from None
    return torchao.__version__, quantize_


def fp8_unavailable(device) -> str | None:
    """Why FP8 linear layers cannot run on ``device`` (torchao missing, not CUDA, capability < 8.9), or None."""
    device = torch.device(device)
    if device.type != "cuda":
        return (f"FP8 linear layers need a CUDA GPU of compute capability >= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} "
                f"(Ada, Hopper or newer); the model is on {device}")
    if not torch.cuda.is_available():
        return f"FP8 linear layers need a CUDA GPU; torch {torch.__version__} sees none"
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        return (f"FP8 linear layers need compute capability >= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} (Ada, Hopper or "
                f"newer); {torch.cuda.get_device_name(device)} has {cap[0]}.{cap[1]}")
    try:
        _torchao()
    except FP8Unavailable as exc:
        return str(exc)
    return None


def fp8_layer_filter(module: nn.Module, name: str) -> bool:
    """Whether ``name`` is converted: an ``nn.Linear`` inside a transformer block whose in/out features are
    multiples of 16 (what the FP8 matrix kernels take)."""
    return (isinstance(module, nn.Linear) and name.startswith("blocks.")
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def fp8_layers(model: nn.Module) -> list[str]:
    """Names of the layers ``convert_fp8_linear`` converts."""
    return [name for name, module in model.named_modules() if fp8_layer_filter(module, name)]


def _config(granularity: str):
    """torchao's dynamic-activation float8 config with per-row (default) or per-tensor scales."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor
    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow() if granularity == "row" else PerTensor())


def convert_fp8_linear(model: nn.Module, granularity: str = "row") -> dict:
    """Convert the DiT's block linears to FP8 in place; returns {layers, granularity, torchao}.

    Raises ``FP8Unavailable`` (torchao missing, no CUDA GPU, capability < 8.9) before touching the model.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r}: use one of {', '.join(GRANULARITIES)}")
    device = next(model.parameters()).device
    reason = fp8_unavailable(device)
    if reason is not None:
        raise FP8Unavailable(reason)
    version, quantize_ = _torchao()
    names = fp8_layers(model)
    quantize_(model, _config(granularity), filter_fn=fp8_layer_filter)
    logger.info("FP8 linear layers (torchao %s, %s scales): %d layers", version, granularity, len(names))
    return {"layers": len(names), "granularity": granularity, "torchao": version}
