"""What a benchmark ran on: device, package versions, optional packages, numeric flags (TF32, cuDNN), attention.

Nothing here imports an optional package at module level, and a missing one is reported, never raised: the
figures of ``bench.gpu`` must come out on a bare GPU image (no diffusers, av, omegaconf, ftfy, torchao).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import re
import warnings
from pathlib import Path

import torch

PACKAGES = ("torch", "transformers", "huggingface_hub", "safetensors", "sentencepiece", "numpy", "psutil", "diffusers",
            "av", "omegaconf", "ftfy", "torchao", "triton", "flash-attn", "matplotlib")
# import name -> what the benchmark loses without it
OPTIONAL = {"diffusers": "the VAE (decode figures)", "av": "the mp4 writer (write figures)",
            "omegaconf": "nothing in the benchmark (the CLI's config layer)",
            "ftfy": "nothing in the benchmark (the text encoder's prompt cleaning)",
            "torchao": "the FP8 linear path", "transformers": "the text encoder of the low-memory stage",
            "matplotlib": "bench.run's plot"}


def device_name(device: torch.device) -> str:
    """Human-readable name of the device the figures were taken on."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "meta":
        return "meta (no data, shapes only)"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def slug(text: str) -> str:
    """Lower-case file-name-safe form of a device name (result folder names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def package_versions(names=PACKAGES) -> dict:
    """Installed version of each distribution (None when not installed), read from metadata without importing."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def importable(name: str) -> str | None:
    """None when the import system finds ``name`` (without importing it), else the reason. A package that is
    present but fails to import is reported by the stage that imports it."""
    try:
        found = importlib.util.find_spec(name) is not None
    except Exception as exc:  # noqa: BLE001 - hidden or a broken parent: "not available"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    return None if found else f"ModuleNotFoundError: No module named {name!r}"


def optional_packages() -> dict:
    """{import name: {"importable", "error", "without it"}} of the optional packages."""
    out = {}
    for name, loss in OPTIONAL.items():
        error = importable(name)
        out[name] = {"importable": error is None, "error": error, "without it": loss}
    return out


def numeric_flags() -> dict:
    """TF32 and cuDNN settings in force (both the older ``allow_tf32`` flags and the newer ``fp32_precision``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch warns that allow_tf32 is superseded
        out = {"matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
               "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
               "float32_matmul_precision": torch.get_float32_matmul_precision(),
               "cudnn_benchmark": torch.backends.cudnn.benchmark,
               "cudnn_deterministic": torch.backends.cudnn.deterministic}
        for key, obj in (("matmul_fp32_precision", torch.backends.cuda.matmul),
                         ("cudnn_conv_fp32_precision", getattr(torch.backends.cudnn, "conv", None))):
            value = getattr(obj, "fp32_precision", None) if obj is not None else None
            if value is not None:
                out[key] = value
    return out


def environment(device: torch.device) -> dict:
    """Device, library versions, optional packages, numeric flags and kernel availability."""
    from wan.attention import attention_backend, fa2_kernel, fa3_kernel, flash_attn_available
    device = torch.device(device)
    versions = package_versions()
    env = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
           "cuda": torch.version.cuda, "diffusers": versions["diffusers"], "transformers": versions["transformers"],
           "versions": versions, "optional": optional_packages(), "numeric": numeric_flags(),
           "flash_attn": flash_attn_available(), "fa3_importable": fa3_kernel() is not None,
           "fa2_importable": fa2_kernel() is not None,
           "attention_backend": {str(dt).replace("torch.", ""): attention_backend(device, dt)
                                 for dt in (torch.bfloat16, torch.float32)} if device.type != "meta" else None,
           "python": platform.python_version(),
           "platform": platform.platform(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu_total_memory_bytes=props.total_memory, cudnn=torch.backends.cudnn.version(),
                   capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
        try:
            import flash_attn
            env["flash_attn_version"] = flash_attn.__version__
        except Exception:  # noqa: BLE001 - informational only
            pass
    return env
