"""Comparing a state dict with what a model expects, for strict loading with errors that name the keys."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StateDictMismatch:
    """Keys a model expects but did not get, keys it got but does not know, and (key, got, expected) shapes."""

    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[tuple[str, tuple, tuple]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)


def compare_state_dicts(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> StateDictMismatch:
    """What differs between a model's own state dict (``expected``) and one to load into it (``given``)."""
    return StateDictMismatch(
        missing=[k for k in expected if k not in given],
        unexpected=[k for k in given if k not in expected],
        wrong_shape=[(k, tuple(given[k].shape), tuple(v.shape)) for k, v in expected.items()
                     if k in given and tuple(given[k].shape) != tuple(v.shape)])
