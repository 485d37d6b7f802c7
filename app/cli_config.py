"""Inference YAML configs (upstream key names): defaults, schema check, and ``key=value`` overrides.

A run's config is ``configs/default.yaml``, then the file given with ``--config_path`` merged over it (as upstream
merges its default config), then the command line's ``key=value`` overrides (dotted keys reach into
``model_kwargs``). Unknown keys and wrongly typed values raise ``CLIError`` naming the key, the file and the fix.
"""
from __future__ import annotations

import copy
import difflib
import logging
from pathlib import Path
from typing import Any, Callable

import yaml

from utils.paths import REPO_ROOT

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"
MODES = ("self_forcing", "deep_sink", "deep_sink_pc")
NOISE_ORDERS = ("upstream", "chunked")   # pipeline.seeded_noise: all initial noise first, or chunk by chunk


class CLIError(Exception):
    """A user-facing error: one paragraph saying what is wrong (file / key / value) and what to do."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(_is_int(x) for x in v)


def _mode(v: Any) -> bool:
    return v is None or v in MODES


# key -> (check, what the check expects). Dotted keys are nested (model_kwargs.*).
SCHEMA: dict[str, tuple[Callable[[Any], bool], str]] = {
    "denoising_step_list": (_int_list, "a non-empty list of integers, e.g. [1000, 750, 500, 250]"),
    "warp_denoising_step": (lambda v: isinstance(v, bool), "true or false"),
    "num_frame_per_block": (lambda v: _is_int(v) and v >= 1, "a positive integer (latent frames per chunk)"),
    "context_noise": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "independent_first_frame": (lambda v: v is False, "false (text-to-video only)"),
    "num_train_timesteps": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "model_kwargs.timestep_shift": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "model_kwargs.local_attn_size": (lambda v: _is_int(v) and (v == -1 or v >= 1),
                                     "-1 (global attention) or a positive number of latent frames"),
    "model_kwargs.sink_size": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (sink frames)"),
    "height": (lambda v: _is_int(v) and v > 0, "a positive integer (pixels)"),
    "width": (lambda v: _is_int(v) and v > 0, "a positive integer (pixels)"),
    "fps": (lambda v: _is_number(v) and v > 0, "a positive number (frames per second of the mp4)"),
    "mode": (_mode, "null (chosen by --is_ds_only) or one of " + ", ".join(MODES)),
    "reuse_cap": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (times a token may be re-selected; 0: no cap)"),
    "realign_topc": (lambda v: isinstance(v, bool), "true or false (the paper's re-aligned top-C variant)"),
}
SECTIONS = {"model_kwargs"}

# Keys of upstream's training configs that mean nothing at inference: accepted (so an upstream YAML still loads) and
# ignored with a log line.
UPSTREAM_TRAINING_KEYS = {
    "trainer", "distribution_loss", "real_name", "fake_name", "generator_ckpt", "generator_fsdp_wrap_strategy",
    "real_score_fsdp_wrap_strategy", "fake_score_fsdp_wrap_strategy", "text_encoder_fsdp_wrap_strategy",
    "mixed_precision", "sharding_strategy", "seed", "wandb_host", "wandb_key", "wandb_entity", "wandb_project",
    "lr", "lr_critic", "beta1", "beta2", "beta1_critic", "beta2_critic", "data_path", "batch_size", "ema_weight",
    "ema_start_step", "total_batch_size", "log_iters", "negative_prompt", "dfake_gen_update_ratio",
    "image_or_video_shape", "guidance_scale", "real_guidance_scale", "fake_guidance_scale", "num_training_frames",
    "same_step_across_blocks", "last_step_only", "gradient_checkpointing", "gc_interval", "load_raw_video",
    "max_grad_norm_generator", "max_grad_norm_critic", "logdir", "no_save", "no_visualize", "disable_wandb",
    "denoising_loss_type", "weight_decay", "ts_schedule", "ts_schedule_max", "min_score_timestep",
    "num_max_frames", "i2v", "causal", "config_name",
}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1} for the known sections; other values stay as they are."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if key in SECTIONS and isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _unknown_key_error(key: str, source: str) -> CLIError:
    """The error for a key the schema does not know, with a close match when there is one."""
    close = difflib.get_close_matches(key, list(SCHEMA), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return CLIError(f"{source}: unknown config key '{key}'.{hint} Known keys are {', '.join(SCHEMA)}. "
                    f"Fix or remove the key (sink, window and shift live under model_kwargs).")


def check_config(cfg: dict, source: str) -> None:
    """Check every key and value of a (partial) config dict against the schema; raise CLIError on the first error."""
    if not isinstance(cfg, dict):
        raise CLIError(f"{source}: a config must be a YAML mapping of keys to values, got {type(cfg).__name__}.")
    for key, value in _flatten(cfg).items():
        if key in SECTIONS:
            raise CLIError(f"{source}: '{key}' must be a mapping (e.g. {key}: {{sink_size: 10}}), got {value!r}.")
        if key not in SCHEMA:
            if key in UPSTREAM_TRAINING_KEYS:
                continue
            raise _unknown_key_error(key, source)
        ok, expected = SCHEMA[key]
        if not ok(value):
            raise CLIError(f"{source}: config key '{key}' has the value {value!r}; it must be {expected}.")


def _strip_training_keys(cfg: dict, source: str) -> dict:
    """Drop upstream training-only keys (logged), keep everything else."""
    dropped = sorted(k for k in cfg if k in UPSTREAM_TRAINING_KEYS)
    if dropped:
        logger.info("%s: ignoring training-only keys %s", source, ", ".join(dropped))
    return {k: v for k, v in cfg.items() if k not in UPSTREAM_TRAINING_KEYS}


def read_yaml(path: Path) -> dict:
    """Parse one YAML config file; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CLIError(f"Config file {path} does not exist. Pass --config_path with one of the files under "
                       f"{REPO_ROOT / 'configs'} (e.g. configs/self_forcing_dmd/self_forcing_dmd_sink10.yaml)."
                       ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"Config file {path} cannot be read ({exc}). Pass a readable UTF-8 YAML file with "
                       f"--config_path.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        msg = " ".join(str(exc).split())
        raise CLIError(f"Config file {path} is not valid YAML ({msg}). Fix the syntax or use a shipped config.") \
            from None
    return {} if data is None else data


def merge(base: dict, update: dict) -> dict:
    """Recursive merge of ``update`` into a copy of ``base`` (sections merge key by key)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(item: str) -> tuple[str, Any]:
    """``'model_kwargs.sink_size=12'`` -> ('model_kwargs.sink_size', 12); the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise CLIError(f"Unexpected argument '{item}'. Extra arguments must be config overrides written "
                       f"key=value (e.g. model_kwargs.sink_size=12); flags start with '--'.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if key not in SCHEMA:
        if key in SECTIONS:
            raise CLIError(f"Override '{item}': set the keys inside '{key}' one by one, e.g. {key}.sink_size=12.")
        raise _unknown_key_error(key, f"Override '{item}'")
    return key, value


def apply_overrides(cfg: dict, items: list[str]) -> dict:
    """Return ``cfg`` with the ``key=value`` overrides applied (values checked against the schema)."""
    out = copy.deepcopy(cfg)
    for item in items:
        key, value = parse_override(item)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
        ok, expected = SCHEMA[key]
        if not ok(value):
            raise CLIError(f"Override '{item}': '{key}' must be {expected}, got {value!r}.")
    return out


def load_config(config_path: str | Path | None, overrides: list[str] = (),
                default_path: Path = DEFAULT_CONFIG) -> dict:
    """Defaults <- ``config_path`` <- overrides; every layer checked. Returns the nested config dict."""
    defaults = read_yaml(default_path)
    check_config(defaults, str(default_path))
    cfg = defaults
    if config_path is not None:
        path = Path(config_path)
        data = read_yaml(path)
        check_config(data, str(path))
        cfg = merge(cfg, _strip_training_keys(data, str(path)))
    cfg = apply_overrides(cfg, list(overrides))
    missing = [k for k in SCHEMA if k not in _flatten(cfg)]
    if missing:
        raise CLIError(f"{default_path}: the default config lacks the keys {', '.join(missing)}; restore the "
                       f"file from the repository.")
    return cfg


def rollout_dict(cfg: dict) -> dict:
    """The flat dict ``RolloutConfig.from_dict`` takes (rollout keys + model_kwargs.timestep_shift)."""
    flat = {k: v for k, v in cfg.items() if k not in SECTIONS}
    flat["timestep_shift"] = cfg["model_kwargs"]["timestep_shift"]
    return flat
