"""Fetch the Wan model folder and the Self Forcing checkpoint from the Hugging Face hub.

Uses ``huggingface_hub`` (its progress bars, ``HF_HOME``, ``HF_TOKEN``, resumable downloads). Offline mode
(``HF_HUB_OFFLINE=1``, read when a download is attempted, not at import) or an unreachable hub ends in a
:class:`~wan.loading.ModelFilesError` that gives the manual ``hf download`` commands.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from .loading import (CHECKPOINT_REPO_FILE, CHECKPOINT_REPO_ID, MODEL_FOLDER_FILES, TOKENIZER_DIR, WAN_REPO_ID,
                      ModelFilesError, check_model_files, checkpoint_download_command, first_line,
                      is_default_checkpoint_layout, missing_checkpoint_error, missing_model_files, resolve_path,
                      wan_download_command)

logger = logging.getLogger(__name__)

# Only what inference needs from the Wan repository (it also holds examples and assets).
WAN_ALLOW_PATTERNS = [*MODEL_FOLDER_FILES, f"{TOKENIZER_DIR}/*"]


def hub_offline() -> bool:
    """Whether the hub is switched off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``), read at call time."""
    from huggingface_hub import constants

    def truthy(value: str | None) -> bool:
        """huggingface_hub's reading of a boolean environment variable."""
        return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}

    return (truthy(os.environ.get("HF_HUB_OFFLINE")) or truthy(os.environ.get("TRANSFORMERS_OFFLINE"))
            or bool(constants.HF_HUB_OFFLINE))


def manual_commands(model_dir: Path | None, checkpoint: Path | None) -> str:
    """The manual download commands for the given targets, as one sentence."""
    cmds = []
    if model_dir is not None:
        cmds.append(f"`{wan_download_command(model_dir)}`")
    if checkpoint is not None:
        cmds.append(f"`{checkpoint_download_command(checkpoint)}`")
    return " and ".join(cmds)


@contextlib.contextmanager
def _bars_only_on_terminal():
    """Switch the hub's tqdm bars off while stderr is not a terminal (they fill log files with control codes)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    try:
        terminal = sys.stderr.isatty()
    except (AttributeError, ValueError, OSError):
        terminal = False
    if terminal or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the hub could not be used' (unreachable, refused, not found)."""
    from huggingface_hub import errors

    types: list[type[BaseException]] = [OSError, errors.HfHubHTTPError, errors.LocalEntryNotFoundError]
    try:
        import httpx
        types.append(httpx.HTTPError)
    except ImportError:
        pass
    return tuple(types)


def _fail(reason: str, model_dir: Path | None, checkpoint: Path | None) -> ModelFilesError:
    """The error raised when a download cannot happen; names what is missing and gives the manual commands."""
    parts = [f"files of the Wan model folder {model_dir}" if model_dir is not None else "",
             f"the Self Forcing checkpoint {checkpoint}" if checkpoint is not None else ""]
    what = " and ".join(p for p in parts if p)
    return ModelFilesError(f"Missing: {what}; the download could not run ({reason}). Download manually, from the "
                           f"working directory, with {manual_commands(model_dir, checkpoint)}; then run again.")


def download_wan_model(model_dir: Path, checkpoint: Path | None = None) -> Path:
    """Fetch the Wan2.1-T2V-1.3B files inference needs into ``model_dir`` (``snapshot_download``, resumable)."""
    model_dir = Path(model_dir)
    if hub_offline():
        raise _fail("HF_HUB_OFFLINE is set", model_dir, checkpoint)
    import huggingface_hub

    logger.info("downloading %s into %s", WAN_REPO_ID, model_dir)
    try:
        with _bars_only_on_terminal():
            huggingface_hub.snapshot_download(repo_id=WAN_REPO_ID, local_dir=str(model_dir),
                                              allow_patterns=WAN_ALLOW_PATTERNS)
    except _network_errors() as exc:
        raise _fail(f"{type(exc).__name__}: {first_line(exc)}", model_dir, checkpoint) from None
    return model_dir


def fetch_file(repo_id: str, filename: str, local_dir: Path, fail: Callable[[str], ModelFilesError]) -> Path:
    """Fetch ``filename`` of hub repository ``repo_id`` to ``local_dir / filename`` (``hf_hub_download``).

    Offline, or with the hub unreachable, raises ``fail(reason)``: the caller's error with its manual command.
    """
    local_dir = Path(local_dir).absolute()
    target = local_dir / filename
    if hub_offline():
        raise fail("HF_HUB_OFFLINE is set")
    import huggingface_hub

    logger.info("downloading %s/%s into %s", repo_id, filename, local_dir)
    try:
        with _bars_only_on_terminal():
            path = huggingface_hub.hf_hub_download(repo_id=repo_id, filename=filename, local_dir=str(local_dir))
    except _network_errors() as exc:
        raise fail(f"{type(exc).__name__}: {first_line(exc)}") from None
    if Path(path).absolute() != target:
        logger.warning("the hub placed %s at %s, expected %s", filename, path, target)
    return target


def download_checkpoint(checkpoint: Path) -> Path:
    """Fetch ``checkpoints/self_forcing_dmd.pt`` from ``gdhe17/Self-Forcing`` so that it lands at ``checkpoint``."""
    checkpoint = Path(checkpoint).absolute()
    return fetch_file(CHECKPOINT_REPO_ID, CHECKPOINT_REPO_FILE, checkpoint.parent.parent,
                      lambda reason: _fail(reason, None, checkpoint))


def fail_download(what: str, reason: str, manual: str) -> ModelFilesError:
    """The error of a download that could not run: what is missing, why, and the manual command(s) ``manual``."""
    return ModelFilesError(f"Missing: {what}; the download could not run ({reason}). Download it manually, from the "
                           f"working directory, with {manual}; then run again.")


def snapshot_files(repo_id: str, local_dir: Path, patterns: list[str],
                   fail: Callable[[str], ModelFilesError]) -> list[Path]:
    """Fetch the files of ``repo_id`` matching ``patterns`` into ``local_dir``; returns the matching local files."""
    local_dir = Path(local_dir).absolute()
    if hub_offline():
        raise fail("HF_HUB_OFFLINE is set")
    import huggingface_hub

    logger.info("downloading %s of %s into %s", ", ".join(patterns), repo_id, local_dir)
    try:
        with _bars_only_on_terminal():
            huggingface_hub.snapshot_download(repo_id=repo_id, local_dir=str(local_dir), allow_patterns=patterns)
    except _network_errors() as exc:
        raise fail(f"{type(exc).__name__}: {first_line(exc)}") from None
    return sorted(path for pattern in patterns for path in local_dir.rglob(pattern))


def ensure_model_files(model_dir: str | os.PathLike, checkpoint_path: str | os.PathLike | None,
                       download: bool = True) -> tuple[Path, Path | None]:
    """Resolve both paths and, when files are missing and ``download`` is set, fetch them from the Hugging Face hub.

    Offline (``HF_HUB_OFFLINE=1``) or with the hub unreachable this raises :class:`ModelFilesError` with the manual
    ``hf download`` commands. Returns the resolved ``(model_dir, checkpoint_path)``.
    """
    folder = resolve_path(model_dir)
    ckpt = resolve_path(checkpoint_path) if checkpoint_path is not None else None
    if download:
        ckpt_missing = ckpt is not None and not ckpt.is_file()
        if ckpt_missing and not is_default_checkpoint_layout(ckpt):
            raise missing_checkpoint_error(ckpt)  # only the released file can be fetched
        if missing_model_files(folder):
            download_wan_model(folder, checkpoint=ckpt if ckpt_missing else None)
        if ckpt_missing:
            download_checkpoint(ckpt)
    check_model_files(folder, ckpt)
    return folder, ckpt
