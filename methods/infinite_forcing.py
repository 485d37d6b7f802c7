"""Infinite-Forcing: the Self Forcing network fine-tuned with a V-sink, run in its own cache mode.

Checkpoint: hub ``SOTAMak1r/Infinite-Forcing`` (its one ``.pt`` file, name undocumented, fetched into
``checkpoints/infinite_forcing/``; weights entry ``generator_ema``). Released config ``self_forcing_dmd_vsink1.yaml``:
a 6-frame window with a 1-frame sink placed right before the oldest kept frame (``sink_gap`` 0). The cache mode
``infinite_forcing`` is registered here; LongLive's infinite mode uses the same rule (window 12, sink 3).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.policies import CachePolicyError, DeepSink
from wan.hub import fail_download, snapshot_files
from wan.loading import ModelFilesError, quoted_path, resolve_path

from utils.errors import CLIError

from .base import CheckpointFile, Method

logger = logging.getLogger(__name__)

REPO_ID = "SOTAMak1r/Infinite-Forcing"
LOCAL_DIR = "checkpoints/infinite_forcing"


@dataclass
class InfiniteForcing(DeepSink):
    """Infinite-Forcing's V-sink: the SF window with the sink right before the oldest tail frame (gap 0), S <= B.

    Defaults: the released checkpoint (W 6, S 1); LongLive's infinite mode is this rule with W 12, S 3.
    """

    local_attn_size: int = 6
    sink_size: int = 1
    sink_gap: int | None = 0

    name = "infinite_forcing"

    def validate(self, chunk_frames: int) -> None:
        """Base checks plus S <= B (the sink is the first chunk's first S frames)."""
        super().validate(chunk_frames)
        if self.sink_size > chunk_frames:
            raise CachePolicyError(f"sink_size={self.sink_size} is larger than the chunk of num_frame_per_block="
                                   f"{chunk_frames} frames; the V-sink is taken from the first chunk: use sink_size "
                                   f"<= {chunk_frames}")


def download_command(local_dir: Path) -> str:
    """The ``hf download`` command that fetches the Infinite-Forcing checkpoint(s) into ``local_dir``."""
    return f"hf download {REPO_ID} --include '*.pt' --local-dir {quoted_path(local_dir)}"


def download(local_dir: str | Path = LOCAL_DIR) -> Path:
    """Fetch the repository's one ``.pt`` file into ``local_dir``; more or fewer than one is an error naming them."""
    local_dir = resolve_path(local_dir).absolute()

    def fail(reason: str) -> ModelFilesError:
        """The error raised when the download cannot happen, with the manual command."""
        return fail_download(f"the Infinite-Forcing checkpoint in {local_dir}", reason,
                             f"`{download_command(local_dir)}`; then pass the .pt file with --checkpoint_path")

    found = snapshot_files(REPO_ID, local_dir, ["*.pt"], fail)
    if len(found) != 1:
        raise ModelFilesError(f"{REPO_ID} gave {len(found)} .pt files in {local_dir} "
                              f"({', '.join(p.name for p in found) or 'none'}); pass the checkpoint to use with "
                              f"--checkpoint_path.")
    return found[0]


class InfiniteForcingMethod(Method):
    """The Infinite-Forcing checkpoint in its V-sink cache mode (6-frame window, sink 1, gap 0)."""

    name = "infinite_forcing"
    summary = "Infinite-Forcing's V-sink checkpoint (window 6, sink 1 before the oldest kept frame)"
    checkpoints = {"vsink1": CheckpointFile(REPO_ID, "*.pt", LOCAL_DIR, "generator_ema")}
    default_variant = "vsink1"

    def defaults(self, variant: str | None) -> dict:
        """The released ``self_forcing_dmd_vsink1.yaml`` cache, with the EMA weights."""
        return {"mode": "infinite_forcing", "use_ema": True,
                "model_kwargs": {"local_attn_size": 6, "sink_size": 1}}

    def checkpoint_path(self, section, variant: str | None) -> str | None:
        """The one ``.pt`` under ``checkpoints/infinite_forcing/`` (None before it is downloaded)."""
        folder = resolve_path(LOCAL_DIR)
        found = sorted(folder.rglob("*.pt")) if folder.is_dir() else []
        if len(found) != 1:
            raise CLIError(f"method infinite_forcing: {len(found)} .pt files in {folder} "
                           f"({', '.join(p.name for p in found) or 'none'}); its checkpoint is the one .pt file of "
                           f"{REPO_ID}. Fetch it with `{download_command(folder)}` (or python "
                           f"tools/download_checkpoints.py infinite_forcing), or pass --checkpoint_path.")
        return str(found[0])

    def fetch_checkpoint(self, path: str, variant: str | None, download: bool) -> bool:
        """The checkpoint is there, or fetched (the repository's one .pt) when allowed."""
        return resolve_path(path).is_file()

    def claims(self, values: dict) -> bool:
        """The released ``self_forcing_dmd_vsink1.yaml``: a 6-frame window with a 1-frame sink."""
        kwargs = values.get("model_kwargs")
        return isinstance(kwargs, dict) and kwargs.get("local_attn_size") == 6 and kwargs.get("sink_size") == 1

    def variant_for(self, values: dict, checkpoint: str | None) -> str | None:
        """A checkpoint under ``checkpoints/infinite_forcing/`` is this method's."""
        if checkpoint is not None and f"/{LOCAL_DIR}/" in "/" + str(checkpoint).replace("\\", "/"):
            return self.default_variant
        return None
