"""Process setup for the CLI: torchrun rank/world from the environment, device and dtype choice, logging."""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import torch

from .cli_config import CLIError

logger = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK); 0/1/0 when run alone.

    No process group is created: ranks share no tensors, each renders its own prompts, so there is no collective
    that could time out while one rank is still busy with a long video.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: dict | None = None) -> "DistEnv":
        """Read torchrun's variables; raise CLIError when they are malformed."""
        env = os.environ if environ is None else environ
        values = {}
        for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", None)):
            raw = env.get(name)
            try:
                values[name] = default if raw in (None, "") else int(raw)
            except ValueError:
                raise CLIError(f"Environment variable {name}={raw!r} is not an integer; launch with torchrun "
                               f"(which sets it) or unset it.") from None
        rank, world = values["RANK"], values["WORLD_SIZE"]
        local = values["LOCAL_RANK"] if values["LOCAL_RANK"] is not None else rank
        if world < 1 or not 0 <= rank < world or local < 0:
            raise CLIError(f"Inconsistent torchrun environment RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}; "
                           f"launch with torchrun --nproc_per_node=K inference.py ... or unset these variables.")
        return cls(rank, world, local)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0


def resolve_device(requested: str | None, demo: bool, dist: DistEnv) -> torch.device:
    """The device to run on: --device, else CUDA (cuda:LOCAL_RANK under torchrun), else CPU for --demo."""
    if requested is None:
        if demo:
            return torch.device("cpu")
        requested = "cuda"
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {requested!r} is not a device name; use cuda, cuda:N or cpu.") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise CLIError(f"--device {requested}: only cuda and cpu are supported.")
    if not torch.cuda.is_available():
        raise CLIError("CUDA is not available on this machine (no NVIDIA GPU or a CPU-only torch build), but the run "
                       "needs --device cuda. To see the whole pipeline work on CPU without weights, run "
                       "'python inference.py --demo'; to run the real model on CPU (very slow) pass --device cpu.")
    count = torch.cuda.device_count()
    index = device.index if device.index is not None else dist.local_rank
    if index >= count:
        raise CLIError(f"GPU cuda:{index} does not exist (this machine has {count}); with torchrun use "
                       f"--nproc_per_node <= {count}, or pass --device cuda:N with N < {count}.")
    return torch.device("cuda", index)


def resolve_dtype(requested: str | None, device: torch.device) -> torch.dtype:
    """--dtype, else bfloat16 on CUDA and float32 on CPU."""
    if requested is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[requested.lower()]
    except KeyError:
        raise CLIError(f"--dtype {requested!r} is not supported; use bf16, fp16 or fp32.") from None


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bfloat16'."""
    return str(dtype).removeprefix("torch.")


def progress_enabled(dist: DistEnv) -> bool:
    """Progress bars on the first process of each machine, unless TQDM_DISABLE is set."""
    off = os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")
    return dist.local_rank == 0 and not off


def setup_logging(dist: DistEnv, level: str = "INFO") -> None:
    """Log to stderr with time and, under torchrun, the rank."""
    rank = f" [rank {dist.rank}/{dist.world_size}]" if dist.world_size > 1 else ""
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr, force=True,
                        format=f"%(asctime)s %(levelname)s{rank} %(name)s: %(message)s", datefmt="%H:%M:%S")
