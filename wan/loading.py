"""Model folder and checkpoint discovery, strict loading of the Self Forcing generator, user-facing file errors.

Users arrive with ``wan_models/Wan2.1-T2V-1.3B/`` (from ``Wan-AI/Wan2.1-T2V-1.3B``) and
``checkpoints/self_forcing_dmd.pt`` (from ``gdhe17/Self-Forcing``), or with nothing yet. Everything here either
loads exactly those files or stops with a :class:`ModelFilesError`: one paragraph naming the file, key or value
that is wrong and what to do, printable by the CLI without a traceback.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import torch

from utils.paths import REPO_ROOT

from .causal_model import CausalWanModel
from .config import WanConfig

logger = logging.getLogger(__name__)

DEFAULT_WAN_MODEL_DIR = "wan_models/Wan2.1-T2V-1.3B"
DEFAULT_CHECKPOINT = "checkpoints/self_forcing_dmd.pt"

# Hub locations.
WAN_REPO_ID = "Wan-AI/Wan2.1-T2V-1.3B"
CHECKPOINT_REPO_ID = "gdhe17/Self-Forcing"
CHECKPOINT_REPO_FILE = "checkpoints/self_forcing_dmd.pt"

# Files of the Wan model folder.
CONFIG_FILE = "config.json"
DIT_WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
T5_WEIGHTS_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
VAE_WEIGHTS_FILE = "Wan2.1_VAE.pth"
TOKENIZER_DIR = "google/umt5-xxl"
MODEL_FOLDER_FILES = (CONFIG_FILE, DIT_WEIGHTS_FILE, T5_WEIGHTS_FILE, VAE_WEIGHTS_FILE)



class ModelFilesError(Exception):
    """A model file or checkpoint is missing, corrupt or does not match; the message says what to do."""


# --------------------------------------------------------------------------------------------------------------
# paths and manual download commands


def resolve_path(path: str | os.PathLike) -> Path:
    """Resolve ``path`` relative to the working directory first, then to the repository root.

    Absolute paths are returned as given. When the path exists in neither place, the working-directory
    location is returned (that is where a download goes).
    """
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    in_cwd = Path.cwd() / p
    if in_cwd.exists():
        return in_cwd
    in_repo = REPO_ROOT / p
    if in_repo.exists():
        return in_repo
    return in_cwd


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it (``.`` for the directory itself)."""
    try:
        rel = Path(path).absolute().relative_to(Path.cwd())
    except ValueError:
        return str(path)
    return str(rel) if str(rel) != "." else "."


def _quote(arg: str) -> str:
    """Quote a shell argument only when it needs it."""
    return arg if arg and all(c.isalnum() or c in "/._-~:=" for c in arg) else f'"{arg}"'


def quoted_path(path: Path) -> str:
    """``path`` as shown to users (relative when under the working directory), quoted for a shell."""
    return _quote(display_path(path))


def wan_download_command(model_dir: Path, filename: str | None = None) -> str:
    """The ``hf download`` command that downloads the Wan folder (or one file of it) into ``model_dir``."""
    what = "" if filename is None else f" {_quote(filename)}"
    return f"hf download {WAN_REPO_ID}{what} --local-dir {_quote(display_path(model_dir))}"


def tokenizer_download_command(model_dir: Path) -> str:
    """The ``hf download`` command that fetches the tokenizer folder of the Wan model into ``model_dir``."""
    return (f"hf download {WAN_REPO_ID} --include {_quote(TOKENIZER_DIR + '/*')} "
            f"--local-dir {_quote(display_path(model_dir))}")


def checkpoint_download_command(checkpoint_path: Path) -> str:
    """The ``hf download`` command that fetches ``checkpoints/self_forcing_dmd.pt`` to ``checkpoint_path``.

    For a path not ending in ``checkpoints/self_forcing_dmd.pt`` the command downloads into the working directory.
    """
    path = Path(checkpoint_path).absolute()
    local_dir = path.parent.parent if is_default_checkpoint_layout(path) else Path.cwd()
    return (f"hf download {CHECKPOINT_REPO_ID} {CHECKPOINT_REPO_FILE} "
            f"--local-dir {_quote(display_path(local_dir))}")


def is_default_checkpoint_layout(checkpoint_path: Path) -> bool:
    """True when the path ends in ``checkpoints/self_forcing_dmd.pt`` (so the hub file lands exactly there)."""
    return Path(checkpoint_path).as_posix().endswith("/" + CHECKPOINT_REPO_FILE)


# --------------------------------------------------------------------------------------------------------------
# existence checks


def missing_model_files(model_dir: Path) -> list[str]:
    """Names of the files of the Wan model folder that are absent or empty (the folder itself: ``[""]``)."""
    if not model_dir.is_dir():
        return [""]
    missing = [name for name in MODEL_FOLDER_FILES
               if not (model_dir / name).is_file() or (model_dir / name).stat().st_size == 0]
    tok = model_dir / TOKENIZER_DIR
    if not tok.is_dir() or not any(tok.iterdir()):
        missing.append(TOKENIZER_DIR + "/")
    return missing


def missing_folder_error(model_dir: Path) -> ModelFilesError:
    """Error for an absent Wan model folder."""
    return ModelFilesError(
        f"Wan model folder not found: {model_dir} (relative paths are looked up in the working directory "
        f"{Path.cwd()} and then in the repository {REPO_ROOT}). Download it with `{wan_download_command(model_dir)}`, "
        f"or pass --wan_model_dir with the folder that holds {CONFIG_FILE}, {DIT_WEIGHTS_FILE}, "
        f"{T5_WEIGHTS_FILE}, {VAE_WEIGHTS_FILE} and {TOKENIZER_DIR}/.")


def missing_file_error(model_dir: Path, name: str) -> ModelFilesError:
    """Error for one absent or empty file of the Wan model folder."""
    path = model_dir / name
    if name.endswith("/"):
        cmd = tokenizer_download_command(model_dir)
        what = f"tokenizer folder {path} is missing or empty"
    else:
        cmd = wan_download_command(model_dir, name)
        what = f"{path} is missing" if not path.exists() else f"{path} is empty (an interrupted download?)"
    return ModelFilesError(
        f"The Wan model folder {model_dir} is incomplete: {what}. Fetch that file with `{cmd}`, "
        f"or re-download the whole folder with `{wan_download_command(model_dir)}`.")


def missing_checkpoint_error(checkpoint: Path) -> ModelFilesError:
    """Error for an absent Self Forcing checkpoint."""
    cmd = checkpoint_download_command(checkpoint)
    if is_default_checkpoint_layout(checkpoint):
        fix = f"Download it with `{cmd}`"
    else:
        fix = (f"Pass --checkpoint_path with an existing file, or download the released one with `{cmd}` "
               f"and pass --checkpoint_path {CHECKPOINT_REPO_FILE}")
    return ModelFilesError(
        f"Self Forcing checkpoint not found: {checkpoint} (relative paths are looked up in the working directory "
        f"{Path.cwd()} and then in the repository {REPO_ROOT}). {fix}.")


def check_model_files(model_dir: str | os.PathLike, checkpoint_path: str | os.PathLike | None) -> None:
    """Cheap existence checks of the Wan folder and the checkpoint; raises ModelFilesError naming the first gap."""
    folder = resolve_path(model_dir)
    missing = missing_model_files(folder)
    if missing == [""]:
        raise missing_folder_error(folder)
    if missing:
        raise missing_file_error(folder, missing[0])
    if checkpoint_path is not None:
        ckpt = resolve_path(checkpoint_path)
        if not ckpt.is_file():
            raise missing_checkpoint_error(ckpt)
        if ckpt.stat().st_size == 0:
            raise ModelFilesError(f"Self Forcing checkpoint {ckpt} is empty (an interrupted download?). Delete it "
                                  f"and download it again with `{checkpoint_download_command(ckpt)}`.")


# --------------------------------------------------------------------------------------------------------------
# reading files


TRUST_FLAG = "--trust_checkpoint"


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint", trust: bool = False,
                    opt_in: str | None = TRUST_FLAG) -> object:
    """``torch.load`` on CPU, memory-mapped, ``weights_only=True``; unsafe or corrupt files raise ModelFilesError.

    A file in the legacy (pre-zip) format is loaded without memory-mapping (logged). A file that holds Python
    objects besides tensors, containers and plain values would run code from the file when unpickled: it is refused
    with a message naming ``opt_in`` (the flag that sets ``trust``), unless ``trust`` is set, in which case it is
    loaded with ``weights_only=False`` and a warning. ``opt_in=None`` means no flag can trust this file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFilesError(f"{what} not found: {path}. Check the path or download the file again.")
    mmap = True
    while True:
        try:
            return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
        except RuntimeError as exc:
            if mmap and "mmap can only be used" in str(exc):
                logger.info("%s is not in the zip format torch.load can memory-map; loading it into memory", path)
                mmap = False
                continue
            error = exc
        except pickle.UnpicklingError as exc:
            if "Unsupported global" in str(exc) or "Weights only load failed" in str(exc):
                if trust:
                    return _load_trusted(path, what, mmap)
                raise untrusted_file_error(path, what, exc, opt_in) from None
            error = exc
        except (OSError, EOFError, KeyError, ValueError, IndexError, AttributeError, ImportError) as exc:
            error = exc
        break
    raise ModelFilesError(
        f"{what} {path} could not be read ({type(error).__name__}: {first_line(error)}); the file is truncated or "
        f"corrupt, probably an interrupted download. Delete it and download it again.")


def _unpickler_reason(exc: BaseException) -> str:
    """What the weights-only unpickler refused, e.g. ``Unsupported global: GLOBAL posix.system``."""
    m = re.search(r"WeightsUnpickler error: ([^\n]*)", str(exc))
    reason = m.group(1) if m else first_line(exc)
    reason = reason.split(" was not an allowed global")[0]
    return reason.split(". ")[0].rstrip(".")


def untrusted_file_error(path: Path, what: str, exc: BaseException, opt_in: str | None) -> ModelFilesError:
    """Error for a torch file that a ``weights_only=True`` load refuses (it holds pickled Python objects)."""
    if opt_in is None:
        fix = "The released file holds only tensors: delete it and download it again."
    else:
        fix = (f"Released checkpoints hold only tensors; if you trust this file and where it came from, pass "
               f"{opt_in} to load it anyway (with weights_only=False, which runs that code).")
    return ModelFilesError(
        f"{what} {path} was refused: it holds pickled Python objects besides tensors ({_unpickler_reason(exc)}), and "
        f"unpickling them could run code stored in the file. It was read with weights_only=True only, so nothing in "
        f"it was executed. {fix}")


def _load_trusted(path: Path, what: str, mmap: bool) -> object:
    """``torch.load(weights_only=False)`` of a file the user explicitly trusts (this runs code from the file)."""
    logger.warning("%s holds Python objects besides tensors; loading it with weights_only=False because it is "
                   "trusted (%s): this runs code stored in the file", path, TRUST_FLAG)
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=False)
    except (RuntimeError, pickle.UnpicklingError, OSError, EOFError, KeyError, ValueError, IndexError,
            AttributeError, ImportError, TypeError) as exc:
        raise ModelFilesError(f"{what} {path} could not be read even as a trusted file ({type(exc).__name__}: "
                              f"{first_line(exc)}); it is corrupt or needs code that is not installed. Use the "
                              f"released file instead.") from None


def load_folder_state_dict(folder: Path, filename: str, what: str) -> dict:
    """The state dict in ``folder/filename`` (a torch file); ModelFilesError when missing, corrupt or not a dict."""
    weights = folder / filename
    if not weights.is_file():
        raise missing_file_error(folder, filename)
    state = load_torch_file(weights, what, opt_in=None)
    if not isinstance(state, dict):
        raise ModelFilesError(f"{weights} holds a {type(state).__name__}, not a state dict; re-download it with "
                              f"`{wan_download_command(folder, filename)}`.")
    return state

def first_line(exc: BaseException, limit: int | None = 240) -> str:
    """First line of an exception message (its first sentence when longer than ``limit``), unquoted."""
    msg = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    line = (msg.strip().splitlines() or [""])[0]
    if limit is not None and len(line) > limit:
        line = line.split(". ")[0][:limit]
    return line.rstrip(".")


def load_safetensors(path: str | os.PathLike, dtype: torch.dtype, device: str | torch.device = "cpu"
                     ) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file memory-mapped, converting each tensor straight to ``dtype`` on ``device``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        out = {}
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            for key in fh.keys():
                out[key] = fh.get_tensor(key).to(device=device, dtype=dtype)
        return out
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFilesError(
            f"{path} could not be read ({type(exc).__name__}: {first_line(exc)}); the file is truncated or corrupt, "
            f"probably an interrupted download. Delete it and download it again.") from None


def read_wan_config(model_dir: str | os.PathLike) -> WanConfig:
    """Read ``config.json`` of a Wan model folder; problems raise ModelFilesError."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise missing_file_error(Path(model_dir), CONFIG_FILE)
    try:
        cfg = WanConfig.from_json(path)
    except (ValueError, TypeError) as exc:
        raise ModelFilesError(f"{first_line(exc)}. Fix or re-download {path} "
                              f"(`{wan_download_command(Path(model_dir), CONFIG_FILE)}`).") from None
    if cfg.model_type != "t2v":
        raise ModelFilesError(f"{path}: model_type={cfg.model_type!r} is not a text-to-video Wan model; pass "
                              f"--wan_model_dir with the Wan2.1-T2V-1.3B folder.")
    return cfg


# --------------------------------------------------------------------------------------------------------------
# the generator


def generator_state_dict(checkpoint: object, path: Path, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The DiT state dict inside a Self Forcing checkpoint: ``generator`` (or ``generator_ema``), prefixes stripped.

    Keys are ``model.`` + a DiT key; an ``_fsdp_wrapped_module.`` infix (self-trained EMA weights) is removed.
    """
    name = "generator_ema" if use_ema else "generator"
    if not isinstance(checkpoint, dict):
        raise ModelFilesError(f"{path} holds a {type(checkpoint).__name__}, not a dict with '{name}'; this is not a "
                              f"Self Forcing checkpoint. Pass --checkpoint_path with one (e.g. {DEFAULT_CHECKPOINT}).")
    if name not in checkpoint:
        keys = sorted(str(k) for k in checkpoint)[:8]
        other = "generator" if use_ema else "generator_ema"
        if other in checkpoint:  # e.g. Causal Forcing files hold one entry: generator_ema, or generator (chunk-wise)
            hint = (f"it holds '{other}' weights: drop --use_ema to use them" if use_ema
                    else f"it holds '{other}' weights: pass --use_ema to use them")
        else:
            hint = ("drop --use_ema to use 'generator', or use a checkpoint saved with EMA weights" if use_ema
                    else "pass a Self Forcing checkpoint (a dict with 'generator' and 'generator_ema')")
        raise ModelFilesError(f"{path} has no '{name}' entry (its top-level keys are {keys}); {hint}.")
    state = checkpoint[name]
    if not isinstance(state, dict):
        raise ModelFilesError(f"{path}: '{name}' is a {type(state).__name__}, not a state dict; the checkpoint is not "
                              f"in the Self Forcing format.")
    out = {}
    for key, value in state.items():
        clean = key.replace("_fsdp_wrapped_module.", "")
        clean = clean[len("model."):] if clean.startswith("model.") else clean
        out[clean] = value
    return out


def build_dit(model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu") -> CausalWanModel:
    """The DiT from ``config.json`` + ``diffusion_pytorch_model.safetensors`` (memory-mapped, strict, in ``dtype``)."""
    folder = Path(model_dir)
    cfg = read_wan_config(folder)
    weights = folder / DIT_WEIGHTS_FILE
    if not weights.is_file():
        raise missing_file_error(folder, DIT_WEIGHTS_FILE)
    with torch.device("meta"):
        model = CausalWanModel(cfg)
    state = load_safetensors(weights, dtype, device)
    try:
        model.load_state_dict_strict(state, source=str(weights))
    except (KeyError, ValueError) as exc:
        raise ModelFilesError(f"{first_line(exc, None)}. {weights} and {folder / CONFIG_FILE} must come from the same "
                              f"model; re-download the folder with `{wan_download_command(folder)}`.") from None
    logger.info("loaded %s (%d tensors, %s)", weights, len(state), dtype)
    return model


def load_generator(model_dir: str | os.PathLike, checkpoint_path: str | os.PathLike, use_ema: bool = False,
                   dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                   trust_checkpoint: bool = False) -> CausalWanModel:
    """The Self Forcing generator: base Wan DiT, then the checkpoint's ``generator`` (or ``generator_ema``), strict.

    The checkpoint is loaded with ``weights_only=True``; ``trust_checkpoint`` (``--trust_checkpoint``) allows a
    file holding other Python objects (a LoRA is merged afterwards by ``wan.lora.merge_lora``). Returns an
    eval-mode :class:`CausalWanModel` in ``dtype`` on ``device`` with gradients off.
    """
    folder = resolve_path(model_dir)
    ckpt = resolve_path(checkpoint_path)
    if not folder.is_dir():
        raise missing_folder_error(folder)
    if not ckpt.is_file():
        raise missing_checkpoint_error(ckpt)
    model = build_dit(folder, dtype, device)
    state = generator_state_dict(load_torch_file(ckpt, "Self Forcing checkpoint", trust=trust_checkpoint), ckpt,
                                 use_ema)
    entry = "generator_ema" if use_ema else "generator"
    try:
        model.load_state_dict_strict(state, source=f"{ckpt} ['{entry}']")
    except KeyError as exc:
        raise ModelFilesError(f"{first_line(exc, None)}. Use a Self Forcing checkpoint trained from this Wan model "
                              f"({folder}), or the model folder it was trained from.") from None
    except ValueError as exc:
        raise ModelFilesError(f"{first_line(exc, None)} (for example a 14B checkpoint with the 1.3B folder). Pass "
                              f"--wan_model_dir with the Wan folder this checkpoint was trained from, or a "
                              f"checkpoint that matches {folder / CONFIG_FILE}.") from None
    model.eval().requires_grad_(False)
    logger.info("loaded %s ['%s'] over the base weights", ckpt, entry)
    return model
