"""Architecture configuration of the Wan2.1 DiT, read from the model folder's ``config.json``."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field


MODEL_TYPES = ("t2v", "i2v")  # i2v: the image-conditioned world model (wan.world_model)


@dataclass(frozen=True)
class WanConfig:
    """Wan2.1 DiT architecture (original Wan field names, as in ``config.json``)."""

    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    in_dim: int = 16
    out_dim: int = 16
    num_heads: int = 12
    num_layers: int = 30
    text_len: int = 512
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    model_type: str = "t2v"
    rope_theta: float = 10000.0
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if self.dim % self.num_heads:
            raise ValueError(f"config: dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"config: head_dim={self.head_dim} must be even and >= 6 for 3D RoPE")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"config: model_type={self.model_type!r} is not supported (one of {MODEL_TYPES})")

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.dim // self.num_heads

    def tokens_per_frame(self, latent_height: int, latent_width: int) -> int:
        """Tokens one latent frame becomes after patchify (1560 for 60x104 with patch 2x2)."""
        _, ph, pw = self.patch_size
        if latent_height % ph or latent_width % pw:
            raise ValueError(
                f"latent size {latent_height}x{latent_width} is not divisible by the patch size {ph}x{pw}")
        return (latent_height // ph) * (latent_width // pw)

    @classmethod
    def from_dict(cls, d: dict) -> "WanConfig":
        """Build from a ``config.json`` dict; diffusers bookkeeping keys (``_class_name`` ...) are kept aside."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        unknown = [k for k in extra if not k.startswith("_") and k not in _IGNORED_KEYS]
        if unknown:
            raise ValueError(f"config: unknown architecture keys {sorted(unknown)}; known keys are {sorted(names)}")
        return cls(**known, extra=extra)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "WanConfig":
        """Read a Wan ``config.json``."""
        with open(path, encoding="utf-8") as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc}); re-download the model folder") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: holds a JSON {_json_kind(data)}, not an object of architecture keys "
                             f"(e.g. {{\"dim\": 1536, \"num_layers\": 30, ...}})")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None

    def to_dict(self) -> dict:
        """The architecture fields as a JSON-ready dict (what ``config.json`` holds)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["patch_size"] = list(self.patch_size)
        return d


def _json_kind(value: object) -> str:
    """JSON name of a parsed value's type (list -> 'array')."""
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# Keys some released config.json files carry that do not change the architecture.
_IGNORED_KEYS = {"window_size", "num_frames", "sample_fps", "vae_stride"}
