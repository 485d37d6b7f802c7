"""Fetch LongLive's checkpoint (``models/longlive_base.pt``) and LoRA (``models/lora.pt``) from the Hugging Face hub.

The files of ``Efficient-Large-Model/LongLive`` land in ``longlive_models/`` (``longlive_models/models/...``, the
paths LongLive's configs use). Offline mode or an unreachable hub ends in a :class:`~wan.loading.ModelFilesError`
with the manual ``hf download`` command, as for the Wan folder and the Self Forcing checkpoint (``wan.hub``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .hub import fetch_file
from .loading import ModelFilesError, display_path, resolve_path

logger = logging.getLogger(__name__)

LONGLIVE_REPO_ID = "Efficient-Large-Model/LongLive"
LONGLIVE_DIR = "longlive_models"
LONGLIVE_BASE_FILE = "models/longlive_base.pt"
LONGLIVE_LORA_FILE = "models/lora.pt"
DEFAULT_LONGLIVE_CHECKPOINT = f"{LONGLIVE_DIR}/{LONGLIVE_BASE_FILE}"
DEFAULT_LONGLIVE_LORA = f"{LONGLIVE_DIR}/{LONGLIVE_LORA_FILE}"


def _repo_file(path: Path) -> str | None:
    """The repository file a local path stands for (``models/…``), when it ends like one; else None."""
    posix = Path(path).as_posix()
    for name in (LONGLIVE_BASE_FILE, LONGLIVE_LORA_FILE):
        if posix.endswith("/" + name):
            return name
    return None


def longlive_download_command(paths: list[Path]) -> str:
    """The ``hf download`` command that puts the given LongLive files where ``paths`` say."""
    names = [_repo_file(p) for p in paths]
    known = [p for p, n in zip(paths, names) if n is not None]
    local_dir = Path(known[0]).absolute().parent.parent if known else Path.cwd() / LONGLIVE_DIR
    files = " ".join(dict.fromkeys(n for n in names if n is not None)) or f"{LONGLIVE_BASE_FILE} {LONGLIVE_LORA_FILE}"
    return f"hf download {LONGLIVE_REPO_ID} {files} --local-dir {display_path(local_dir)}"


def _fail(reason: str, missing: list[Path]) -> ModelFilesError:
    """The error raised when LongLive files are missing and cannot be downloaded; gives the manual command."""
    what = " and ".join(str(p) for p in missing)
    return ModelFilesError(f"Missing: the LongLive file(s) {what}; the download could not run ({reason}). Download "
                           f"manually, from the working directory, with `{longlive_download_command(missing)}`; then "
                           f"run again.")


def ensure_longlive_files(checkpoint: str | os.PathLike, lora: str | os.PathLike | None = None,
                          download: bool = True) -> tuple[Path, Path | None]:
    """Resolve LongLive's checkpoint and LoRA paths; fetch missing ones from the hub when allowed (default layout)."""
    paths = [resolve_path(checkpoint)] + ([resolve_path(lora)] if lora is not None else [])
    missing = [p for p in paths if not p.is_file()]
    if missing:
        odd = [p for p in missing if _repo_file(p) is None]
        if odd:
            raise ModelFilesError(f"LongLive file not found: {odd[0]}. Only paths ending in {LONGLIVE_BASE_FILE} or "
                                  f"{LONGLIVE_LORA_FILE} are downloaded automatically; fix the path, or fetch the "
                                  f"files with `{longlive_download_command([])}` and point generator_ckpt / lora_ckpt "
                                  f"at them.")
        if not download:
            raise _fail("downloads are switched off", missing)
        download_longlive(missing)
    return paths[0], (paths[1] if lora is not None else None)


def download_longlive(paths: list[Path]) -> list[Path]:
    """Fetch the LongLive files ``paths`` (each ending in ``models/…``) from the hub, one file at a time."""
    paths = [Path(p).absolute() for p in paths]
    for path in paths:
        fetch_file(LONGLIVE_REPO_ID, _repo_file(path), path.parent.parent, lambda reason: _fail(reason, paths))
    return paths
