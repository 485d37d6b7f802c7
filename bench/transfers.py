"""Count host<->device transfers of a piece of code with a ``TorchDispatchMode``.

Every ATen call is inspected: a transfer is an op whose tensor arguments live on more than one device (a host
tensor read by a device kernel, e.g. ``copy_`` from the CPU or indexing a device tensor with a host index), or a
``_to_copy`` whose output device differs from its input's. Run the model on the ``meta`` device and a host read
(``.item()``, ``bool(t)``, ``.tolist()``) fails outright, so both kinds of sync are caught on a machine without a GPU.

With ``host_copies=True`` a copy from the meta device to the host (the one a runner makes of each block's finished
frames) is counted and returns uninitialised host memory of the right shape instead of failing, so code that copies
its results to the host can run on the meta device and every other transfer is still counted.

``python -m bench.transfers`` prints the count per chunk of a tiny model on the meta device for every mode.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass
class TransferLog:
    """Transfers seen: total ``count`` and ``ops`` (op name -> count)."""

    count: int = 0
    ops: Counter = field(default_factory=Counter)

    sites: Counter = field(default_factory=Counter)

    def add(self, name: str, site: str | None = None) -> None:
        """Record one transfer by op ``name`` (at source line ``site`` when known)."""
        self.count += 1
        self.ops[name] += 1
        if site:
            self.sites[site] += 1


COPY_OPS = ("_to_copy", "copy", "copy_", "_copy_from", "_copy_from_and_resize")


class CountTransfers(TorchDispatchMode):
    """Dispatch mode counting ops that move data between devices (see the module docstring)."""

    def __init__(self, where: bool = False, host_copies: bool = False):
        super().__init__()
        self.log = TransferLog()
        self.where = where
        self.host_copies = host_copies

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Inspect the op's tensor arguments, run it, compare its output device for copies."""
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        devices = {t.device for t in flat if isinstance(t, torch.Tensor)}
        name = str(func.overloadpacket.__name__)
        if self.host_copies and name in COPY_OPS:
            fake = _meta_to_host(name, args, kwargs)
            if fake is not None:
                self.log.add(name, _site() if self.where else None)
                return fake
        out = func(*args, **kwargs)
        moved = len(devices) > 1
        if not moved and devices and name in ("_to_copy", "copy", "_copy_from", "_copy_from_and_resize"):
            outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            moved = any(o.device not in devices for o in outs)
        if moved:
            self.log.add(name, _site() if self.where else None)
        return out


def _meta_to_host(name: str, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """What a copy of a meta tensor to the host returns, without data (None: the op is no such copy)."""
    if name == "copy_":   # dst.copy_(src): the destination, left as it is
        dst, src = args[0], args[1]
        return dst if dst.device.type == "cpu" and src.is_meta else None
    if name == "_to_copy":  # src.to("cpu"): new uninitialised host memory
        src, device = args[0], kwargs.get("device")
        if src.is_meta and device is not None and torch.device(device).type == "cpu":
            return torch.empty(src.shape, dtype=kwargs.get("dtype") or src.dtype, device="cpu")
    return None


def _site() -> str:
    """``file:line`` of the innermost caller frame in the project (not torch, not this module)."""
    import traceback
    for frame in reversed(traceback.extract_stack()):
        if "/torch/" not in frame.filename and not frame.filename.endswith("transfers.py"):
            return f"{frame.filename.rsplit('/', 2)[-2]}/{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
    return "?"


def count_transfers(fn, *args, **kwargs) -> tuple[object, TransferLog]:
    """(result of ``fn(*args, **kwargs)``, transfers it made)."""
    with CountTransfers() as mode:
        result = fn(*args, **kwargs)
    return result, mode.log


def chunk_transfers(pipe, text: torch.Tensor, noise: torch.Tensor, renoise, where: bool = False,
                    prompt_switch=None) -> list[TransferLog]:
    """Transfers made by each block of ``pipe.frames`` (each block runs under its own counter)."""
    from pipeline.rollout import RolloutInputs

    from .timing import timed_blocks
    logs = []

    @contextlib.contextmanager
    def counted(n):
        """Count the transfers of one block."""
        with CountTransfers(where) as mode:
            yield
        logs.append(mode.log)

    run = timed_blocks(pipe, RolloutInputs(text, noise, renoise, prompt_switch=prompt_switch), around=counted)
    return logs[:len(run.blocks)]  # the last attempt found the video finished


def decode_transfers(vae, latents: torch.Tensor, chunks: int) -> list[TransferLog]:
    """Transfers made by each of ``chunks`` streaming decodes of ``latents`` [B, t, C, h, w]."""
    decoder = vae.stream_decoder()
    logs = []
    for _ in range(chunks):
        with CountTransfers() as mode:
            decoder.decode_chunk(latents)
        logs.append(mode.log)
    return logs


def meta_rollout_transfers(mode: str, latent_frames: int = 30, where: bool = False, layers: int | None = None,
                           recache: str = "off", switch_at: int | None = None, **recache_params) -> list[TransferLog]:
    """Per-chunk transfers of the CPU preset's tiny model (``layers``: fewer layers) on the meta device in ``mode``.

    With a ``recache`` variant other than ``off`` a prompt switch callback is given (so the re-cache store is kept),
    switching once, before chunk ``switch_at`` (None: never).
    """
    from pipeline.recache import build_recache
    from pipeline.rollout import Rollout, RolloutConfig

    from .measure import noise_source
    from .modes import make_policy
    from .presets import build_random_model, get_preset
    if recache == "longlive":
        import methods.longlive  # noqa: F401  (registers the variant)
    preset = get_preset("cpu").with_overrides(device="meta", layers=layers)
    model = build_random_model(preset)
    pipe = Rollout(model, RolloutConfig(), make_policy(mode)[0], recache=build_recache(recache, **recache_params))
    cfg = model.config
    text = torch.randn(1, cfg.text_len, cfg.text_dim, device="meta")
    other = torch.randn(1, cfg.text_len, cfg.text_dim, device="meta")
    switch = None if recache == "off" else (lambda i, f: other if i == switch_at else None)
    noise = torch.randn(1, latent_frames, *preset.latent_shape, device="meta")
    return chunk_transfers(pipe, text, noise, noise_source(torch.device("meta"), 0), where, prompt_switch=switch)


def main(argv=None) -> int:
    """CLI: transfers per chunk on the meta device for each mode (and per streaming VAE decode)."""
    from .presets import MODES
    p = argparse.ArgumentParser(prog="python -m bench.transfers", description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--latent-frames", type=int, default=30)
    p.add_argument("--where", action="store_true", help="also list the source lines of the transfers")
    p.add_argument("--recache", default="off", choices=("off", "ours"),
                   help="with 'ours' a prompt switch callback keeps the re-cache store (switching at --switch-at)")
    p.add_argument("--switch-at", type=int, default=None, help="the chunk to switch the prompt before (--recache)")
    args = p.parse_args(argv)
    for mode in args.modes:
        logs = meta_rollout_transfers(mode, args.latent_frames, args.where, recache=args.recache,
                                      switch_at=args.switch_at)
        counts = [log.count for log in logs]
        ops = sum((log.ops for log in logs[1:]), Counter())
        sys.stdout.write(f"{mode}: per chunk {counts}; ops after the first chunk {dict(ops)}\n")
        if args.where:
            sites = sum((log.sites for log in logs[1:]), Counter())
            sys.stdout.write("".join(f"  {n:5d}  {s}\n" for s, n in sites.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
