"""Flow-matching scheduler facts of the Self Forcing rollout (shifted sigmas, nearest-timestep lookup)."""
from __future__ import annotations

import torch


class FlowMatchScheduler:
    """Shifted flow-matching sigmas over ``num_train_timesteps`` steps, float32 as upstream."""

    def __init__(self, shift: float = 5.0, num_train_timesteps: int = 1000):
        self.shift = shift
        self.num_train_timesteps = num_train_timesteps
        sigmas = torch.linspace(1.0, 0.0, num_train_timesteps + 1)[:-1]  # float32 [1000]
        self.sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        self.timesteps = self.sigmas * num_train_timesteps
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps, sigmas) [num_train_timesteps] on ``device``, copied there once and kept (no per-call copy)."""
        tables = self._on_device.get(device)
        if tables is None:
            tables = (self.timesteps.to(device), self.sigmas.to(device))
            self._on_device[device] = tables
        return tables

    def warp(self, steps: list[int]) -> torch.Tensor:
        """Map a denoising step list to scheduler timesteps: ``timesteps[1000 - step]`` (0 maps to 0.0)."""
        table = torch.cat([self.timesteps, torch.zeros(1)])
        return table[self.num_train_timesteps - torch.tensor(steps, dtype=torch.long)]

    def sigma_at(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma of the scheduler timestep nearest to each of ``t`` [N] -> float32 [N]."""
        ts, sigmas = self.tables(t.device)  # [1000] each, on t's device
        idx = torch.argmin((ts.unsqueeze(0) - t.float().unsqueeze(1)).abs(), dim=1)  # [N] device indices
        return sigmas[idx]

    def flow_to_x0(self, flow: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 = xt - sigma(t) * flow, in float64, cast back to flow's dtype. flow/xt [N, ...], t [N]."""
        sigma = self.sigma_at(t).double().view(-1, *([1] * (flow.dim() - 1)))
        return (xt.double() - sigma * flow.double()).to(flow.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """xt = (1 - sigma(t)) x0 + sigma(t) noise, with float32 sigma, cast to noise's dtype. x0 [N, ...], t [N]."""
        sigma = self.sigma_at(t).view(-1, *([1] * (x0.dim() - 1)))
        return ((1 - sigma) * x0 + sigma * noise).type_as(noise)
