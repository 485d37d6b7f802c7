"""Weight streaming: run a host-resident model on an accelerator one piece (e.g. one transformer block) at a time.

While a :class:`WeightStreamer` is active, each of its modules gets a forward pre-hook that copies the module's
parameters and buffers to the target device and a forward hook that points them back at their host tensors, so the
device copies are freed as soon as the module has run. At any moment at most one streamed module's weights sit on the
device (plus whatever the caller keeps there itself). The arithmetic is the module's own, on the same device, so the
result is bit-identical to running the module with its weights resident on that device.
"""
from __future__ import annotations

import logging
from typing import Iterable

import torch
from torch import nn

logger = logging.getLogger(__name__)


def module_numel(module: nn.Module) -> int:
    """Elements of a module's parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel()
    return total


class WeightStreamer:
    """Context manager: while active, ``modules`` hold their weights on ``device`` only during their own forward.

    ``peak_numel`` records the most parameter/buffer elements this streamer had on the device at once (one module's
    worth); ``moves`` counts the modules staged. The modules must not share tensors with each other.
    """

    def __init__(self, modules: Iterable[nn.Module], device: str | torch.device):
        self.modules = list(modules)
        self.device = torch.device(device)
        self.resident_numel = 0
        self.peak_numel = 0
        self.moves = 0
        self._handles: list = []
        self._homes: dict[int, list[tuple[nn.Module, str, bool, torch.Tensor]]] = {}

    @staticmethod
    def move(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Copy one weight tensor to the device (the single place where streamed weights cross to the device)."""
        return tensor.to(device, non_blocking=True)

    def __enter__(self) -> "WeightStreamer":
        for module in self.modules:
            self._handles.append(module.register_forward_pre_hook(lambda m, args: self.stage(m)))
            self._handles.append(module.register_forward_hook(lambda m, args, out: self.release(m)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in [m for m in self.modules if id(m) in self._homes]:
            self.release(module)  # a forward that raised leaves its module staged

    def stage(self, module: nn.Module) -> None:
        """Point the module's parameters and buffers at fresh copies on the device (keeping the host tensors)."""
        if id(module) in self._homes:
            return
        homes = []
        for owner in module.modules():
            for name, p in owner.named_parameters(recurse=False):
                homes.append((owner, name, True, p.data))
                p.data = self.move(p.data, self.device)
            for name, b in owner.named_buffers(recurse=False):
                homes.append((owner, name, False, b))
                owner._buffers[name] = self.move(b, self.device)
        self._homes[id(module)] = homes
        self.moves += 1
        self.resident_numel += sum(t.numel() for *_, t in homes)
        self.peak_numel = max(self.peak_numel, self.resident_numel)

    def release(self, module: nn.Module) -> None:
        """Point the module's parameters and buffers back at their host tensors; the device copies are freed."""
        homes = self._homes.pop(id(module), None)
        if homes is None:
            return
        for owner, name, is_param, home in homes:
            if is_param:
                getattr(owner, name).data = home
            else:
                owner._buffers[name] = home
        self.resident_numel -= sum(t.numel() for *_, t in homes)
