"""Wan 3D rotary position embedding, split into a spatial part (applied once) and a time part (applied on read).

Each head dim ``d`` is split in real dims into ``[d - 4*(d//6), 2*(d//6), 2*(d//6)]`` for (time, height, width);
consecutive real dims form a complex pair. Because the three groups touch disjoint channels, rotating the spatial
pairs when a key is written and the time pairs when it is read gives exactly full 3D RoPE, and lets time positions
be plain data that a cache policy may rewrite.
"""
from __future__ import annotations

import torch


def _inv_freq(dim: int, theta: float) -> torch.Tensor:
    """Inverse frequencies of one RoPE axis of ``dim`` real channels, float64 [dim/2] (on the CPU even when a model
    is built under a meta-device context; they are moved to the data's device when used)."""
    return 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Rotation arithmetic dtype: float64 for float32/float64 data (as upstream), float32 for half types."""
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


class Rotation:
    """Unit complex numbers of the angles of pairs ``[first_pair, first_pair + P)``, ready to apply to [B, n, H, D]."""

    def __init__(self, angles: torch.Tensor, first_pair: int, dtype: torch.dtype):
        if angles.dim() == 2:  # [n, P] -> [1, n, P]
            angles = angles.unsqueeze(0)
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        self.table = torch.polar(torch.ones_like(angles), angles).to(complex_dtype).unsqueeze(2)  # [B|1, n, 1, P]
        self.dtype = dtype
        self.first_pair = first_pair
        self.num_pairs = angles.shape[-1]
        self.cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None  # real form, see ``prepare_real``

    def prepare_real(self) -> "Rotation":
        """Also keep the rotation as real (cos, sin) [B|1, n, 1, P], used inside ``torch.compile``d code, where
        complex kernels are not generated (Inductor falls back to eager for them). Returns self."""
        self.cos_sin = (self.table.real.contiguous(), self.table.imag.contiguous())
        return self

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotated copy of ``x`` [B, n, H, D]; channels outside the rotated pairs are copied unchanged."""
        if self.cos_sin is not None and torch.compiler.is_compiling():
            return self._apply_real(x)
        out = x.clone()
        seg = out.unflatten(-1, (-1, 2))[..., self.first_pair:self.first_pair + self.num_pairs, :]  # view into out
        rotated = torch.view_as_complex(seg.to(self.dtype).contiguous()) * self.table
        seg.copy_(torch.view_as_real(rotated))
        return out

    def _apply_real(self, x: torch.Tensor) -> torch.Tensor:
        """``apply`` in real arithmetic (equal up to rounding): (a + ib)(c + is) = (ac - bs) + i(as + bc)."""
        cos, sin = self.cos_sin
        lo, hi = 2 * self.first_pair, 2 * (self.first_pair + self.num_pairs)
        pairs = x[..., lo:hi].unflatten(-1, (-1, 2)).to(self.dtype)  # [B, n, H, P, 2]
        a, b = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).to(x.dtype)  # [B,n,H,2P]
        return torch.cat([x[..., :lo], rotated, x[..., hi:]], dim=-1)


def rotate_pairs(x: torch.Tensor, angles: torch.Tensor, first_pair: int) -> torch.Tensor:
    """Rotate complex pairs ``[first_pair, first_pair + P)`` of ``x`` [B, n, H, D] by ``angles`` [n, P] or [B, n, P]."""
    return Rotation(angles, first_pair, compute_dtype(x.dtype)).apply(x)


class WanRope:
    """Angle tables for Wan's 3D RoPE of one head dim; positions are integer tensors, never a fixed-size table."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        hw = 2 * (head_dim // 6)
        self.time_dim = head_dim - 2 * hw
        self.time_pairs = self.time_dim // 2
        self.inv_freq_t = _inv_freq(self.time_dim, theta)
        self.inv_freq_h = _inv_freq(hw, theta)
        self.inv_freq_w = _inv_freq(hw, theta)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def tables(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(time, height, width) inverse frequencies on ``device``, copied there once and kept (no per-call copy)."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        tables = self._on_device.get(device)
        if tables is None:
            tables = tuple(t.to(device) for t in (self.inv_freq_t, self.inv_freq_h, self.inv_freq_w))
            self._on_device[device] = tables
        return tables

    def time_angles(self, pos: torch.Tensor) -> torch.Tensor:
        """Angles of the time pairs for integer positions ``pos`` [..., n] -> float64 [..., n, time_pairs]."""
        inv = self.tables(pos.device)[0]  # [time_pairs] float64, already on pos's device
        return pos.to(torch.float64).unsqueeze(-1) * inv

    def spatial_angles(self, height: int, width: int, device=None) -> torch.Tensor:
        """Angles of the height and width pairs for one frame's tokens (row-major) -> float64 [h*w, hw_pairs]."""
        rows = torch.arange(height, dtype=torch.float64, device=device)
        cols = torch.arange(width, dtype=torch.float64, device=device)
        _, inv_h, inv_w = self.tables(rows.device)
        ah = torch.outer(rows, inv_h)  # [h, Ph]
        aw = torch.outer(cols, inv_w)  # [w, Pw]
        ah = ah[:, None, :].expand(height, width, -1)
        aw = aw[None, :, :].expand(height, width, -1)
        return torch.cat([ah, aw], dim=-1).reshape(height * width, -1)

    def spatial_rotation(self, spatial_angles: torch.Tensor, num_frames: int, dtype: torch.dtype) -> Rotation:
        """Height/width rotation of ``num_frames`` frames of tokens (built once per call, shared by all layers)."""
        return Rotation(spatial_angles.repeat(num_frames, 1), self.time_pairs, compute_dtype(dtype))

    def time_rotation(self, pos: torch.Tensor, dtype: torch.dtype) -> Rotation:
        """Time rotation at integer positions ``pos`` [n] or [B, n]."""
        return Rotation(self.time_angles(pos), 0, compute_dtype(dtype))

    def rotate_spatial(self, x: torch.Tensor, spatial_angles: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Apply the height/width rotation to ``x`` [B, num_frames*h*w, H, D]."""
        return self.spatial_rotation(spatial_angles, num_frames, x.dtype).apply(x)

    def rotate_time(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Apply the time rotation to ``x`` [B, n, H, D] at integer positions ``pos`` [n] or [B, n]."""
        return rotate_pairs(x, self.time_angles(pos), 0)
