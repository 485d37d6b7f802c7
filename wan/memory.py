"""GPU memory facts used to pick the low-memory mode."""
from __future__ import annotations

import torch

# Upstream Self Forcing switches to its low-memory path below this much free GPU memory.
LOW_MEMORY_THRESHOLD_GB = 40.0
_GIB = 2 ** 30


def free_memory_gb(device: str | torch.device) -> float:
    """Free memory of a CUDA device in GiB, counting memory PyTorch has reserved but is not using."""
    device = torch.device(device)
    free, _ = torch.cuda.mem_get_info(device)
    stats = torch.cuda.memory_stats(device)
    reusable = stats.get("reserved_bytes.all.current", 0) - stats.get("active_bytes.all.current", 0)
    return (free + max(reusable, 0)) / _GIB


def should_offload_text_encoder(device: str | torch.device) -> bool:
    """True on a CUDA device with less than 40 GB free: keep the text encoder off the GPU except while encoding."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return free_memory_gb(device) < LOW_MEMORY_THRESHOLD_GB
