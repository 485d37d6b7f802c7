"""The run configuration: one typed schema (OmegaConf structured config), merged in layers, every value checked.

Layers, later wins: the schema defaults (``RunConfig`` below, the only place a default is written) -> the
``--config_path`` YAML -> ``--demo``'s small size -> the flags that map onto keys (``--Budget`` -> ``budget``, ...)
-> the command line's dotted ``key=value`` overrides. Upstream key names are kept, so every inference YAML of Self
Forcing, Deep Forcing and the other methods of the family loads: their training-only keys are dropped
(``TRAINING_KEYS``), and a key that selects a feature this version does not have yet is an error naming the feature
(``UNSUPPORTED``). Every error is a ``CLIError``: one paragraph naming the file, flag or override and the fix.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from utils.errors import CLIError
from utils.paths import CONFIGS_DIR, REPO_ROOT

logger = logging.getLogger(__name__)

NOISE_ORDERS = ("upstream", "chunked")   # pipeline.seeded_noise: all initial noise first, or chunk by chunk
FPS_RANGE = (1.0, 240.0)                 # frame rates the mp4 writer is asked to support
DEFAULT_SOURCE = "default"               # origin label of a schema default


@dataclass
class ModelKwargs:
    """``model_kwargs``: the DiT's attention window and sink, and the scheduler shift (upstream names)."""

    timestep_shift: float = 5.0
    local_attn_size: int = 21            # cache window L in latent frames (-1: global, capped at 21)
    sink_size: int = 10                  # sink frames S


@dataclass
class BaseRunConfig:
    """Every common config key with its one default. ``None`` for a cache parameter means the policy class's default.

    The methods' own sections (``methods.base.Method.section``) are added as fields named after them
    (``run_config_class``).
    """

    # the method (methods/): its checkpoint family and recipe; None: detected from the YAML / checkpoint
    method: Optional[str] = None
    variant: Optional[str] = None        # the method's variant (e.g. Causal Forcing's framewise); None: its default
    recache: Optional[str] = None        # re-cache at prompt switches (pipeline.recache); None: the method's own

    # Self Forcing rollout (few-step, chunk-wise)
    denoising_step_list: List[int] = field(default_factory=lambda: [1000, 750, 500, 250])
    warp_denoising_step: bool = True
    num_frame_per_block: int = 3         # latent frames per chunk (B)
    context_noise: float = 0.0           # timestep of the clean pass that writes the chunk into the KV cache
    independent_first_frame: bool = False
    num_train_timesteps: int = 1000
    model_kwargs: ModelKwargs = field(default_factory=ModelKwargs)
    # upstream spellings: must agree with num_train_timesteps / model_kwargs.timestep_shift when given
    num_train_timestep: Optional[int] = None
    timestep_shift: Optional[float] = None
    # video
    height: int = 480                    # pixels
    width: int = 832
    fps: float = 16.0
    num_output_frames: Optional[int] = 126   # latent frames T (4T-3 video frames); null with --endless / seconds
    seconds: Optional[float] = None      # video length in seconds instead (wins over num_output_frames)
    # cache: the mode and the parameters of its policy (pipeline.policies); --is_ds_only 1 / --mode set the mode
    mode: str = "deep_sink_pc"
    budget: Optional[int] = None         # --Budget: Participative Compression budget N (frames)
    recent: Optional[int] = None         # --Recent: PC recent frames R
    reuse_cap: Optional[int] = None      # PC: times a token may be re-selected (0: no cap)
    realign_topc: Optional[bool] = None  # PC: the paper's variant that also re-aligns the kept top-C tokens
    sink_gap: Optional[int] = None       # Deep Sink: unused time indices between sink and tail (None: the chunk size)
    # outputs (some released YAMLs carry these; the flags of the same name win)
    num_samples: int = 1
    save_with_index: bool = False
    use_ema: bool = False
    output_folder: str = "output"
    # Causal Forcing++: the first generated chunk's step list (None: denoising_step_list); image-to-video
    # (--i2v --image PATH; frame-wise models only)
    denoising_step_list_first_chunk: Optional[List[int]] = None
    i2v: bool = False
    inference_iter: int = -1
    model_name: str = "Wan2.1-T2V-1.3B"


def run_config_class() -> type:
    """The schema: ``BaseRunConfig`` plus one section per registered method that declares one."""
    from methods.base import section_fields
    fields_ = section_fields()
    key = tuple((name, cls) for name, cls, _ in fields_)
    if _SCHEMA.get("key") != key:
        _SCHEMA.update(key=key, cls=dataclasses.make_dataclass("RunConfig", fields_, bases=(BaseRunConfig,)))
    return _SCHEMA["cls"]


_SCHEMA: dict = {}


def sections() -> tuple[str, ...]:
    """The schema's nested sections: model_kwargs and every method section."""
    from methods.base import section_fields
    return ("model_kwargs", *(name for name, _, _ in section_fields()))


def translate(values: dict) -> dict:
    """A layer with the flat upstream keys of method sections moved into them (``Method.upstream_keys``)."""
    from methods.base import upstream_key_table
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for upstream, ours in upstream_key_table().items():
        head, _, leaf = upstream.rpartition(".")
        source = out.get(head) if head else out
        if not isinstance(source, dict) or leaf not in source:
            continue
        section, _, key = ours.partition(".")
        target = out.setdefault(section, {})
        if isinstance(target, dict):
            target[key] = source.pop(leaf)
    return out

# RunConfig key -> policy parameter (build_policy(mode, **params)); None values are left to the policy's default.
CACHE_KEYS = {"model_kwargs.local_attn_size": "local_attn_size", "model_kwargs.sink_size": "sink_size",
              "budget": "budget", "recent": "recent", "reuse_cap": "reuse_cap", "realign_topc": "realign_topc",
              "sink_gap": "sink_gap"}

# Keys of upstream YAMLs (training, or values the released inference scripts take from flags: seed) that mean
# nothing here: dropped when a file is read, logged at debug level. (data_path and generator_ckpt are schema keys read
# only by the methods whose sections hold them.)
TRAINING_KEYS = frozenset({
    "trainer", "distribution_loss", "real_name", "fake_name", "generator_fsdp_wrap_strategy",
    "real_score_fsdp_wrap_strategy", "fake_score_fsdp_wrap_strategy", "text_encoder_fsdp_wrap_strategy",
    "mixed_precision", "sharding_strategy", "seed", "wandb_host", "wandb_key", "wandb_entity", "wandb_project",
    "lr", "lr_critic", "beta1", "beta2", "beta1_critic", "beta2_critic", "batch_size", "ema_weight",
    "ema_start_step", "total_batch_size", "log_iters", "negative_prompt", "dfake_gen_update_ratio",
    "image_or_video_shape", "guidance_scale", "real_guidance_scale", "fake_guidance_scale", "num_training_frames",
    "same_step_across_blocks", "last_step_only", "gradient_checkpointing", "gc_interval", "load_raw_video",
    "max_grad_norm_generator", "max_grad_norm_critic", "logdir", "no_save", "no_visualize", "disable_wandb",
    "denoising_loss_type", "weight_decay", "ts_schedule", "ts_schedule_max", "min_score_timestep",
    "num_max_frames", "causal", "config_name", "discriminator_lr_multiplier", "gradient_accumulation_steps",
})

# Feature keys not wired yet: key -> (the feature, what to do). A value other than the schema default is an error.
# Each entry is removed by the change that wires its feature.
UNSUPPORTED = {
    "inference_iter": ("a limit on the number of prompts (inference_iter)", "pass a shorter prompt "
                       "file"),
    "model_name": ("a base model other than Wan2.1-T2V-1.3B", "use a Wan2.1-T2V-1.3B model"),
}


@dataclass
class Layer:
    """One source of config values: a label for messages (file, flag, override) and its nested dict."""

    label: str
    values: dict


@dataclass
class LoadedConfig:
    """The merged, checked config and where each key's value came from."""

    cfg: RunConfig
    origins: dict                        # dotted key -> label of the layer that set it (absent: the default)

    def origin(self, key: str) -> str:
        """Label of the layer that set ``key`` ('default' when none did)."""
        return self.origins.get(key, DEFAULT_SOURCE)

    def blame(self, *keys: str) -> str:
        """'key=value (from X)' for each key, for messages."""
        return ", ".join(f"{k}={get(self.cfg, k)!r} (from {self.origin(k)})" for k in keys)

    def to_dict(self) -> dict:
        """The merged config as plain data (for sidecars)."""
        return dataclasses.asdict(self.cfg)


def get(cfg: RunConfig, key: str) -> Any:
    """The value of a dotted key."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _flatten(values: dict, prefix: str = "") -> dict:
    """{'model_kwargs': {'sink_size': 1}} -> {'model_kwargs.sink_size': 1} (only the schema's sections nest)."""
    out = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if key in sections() and isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _omegaconf_error(exc: OmegaConfBaseException, label: str) -> CLIError:
    """One paragraph for an OmegaConf merge error of the layer ``label``."""
    key = getattr(exc, "full_key", None) or "?"
    if isinstance(exc, ConfigKeyError):
        leaf = key.rsplit(".", 1)[-1]
        close = re.search(r"Did you mean: '([^']+)'", str(exc))
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        in_section = leaf in ModelKwargs.__dataclass_fields__ and not parent
        guess = parent + close.group(1) if close else (f"model_kwargs.{leaf}" if in_section else None)
        hint = f" Did you mean '{guess}'?" if guess else ""
        return CLIError(f"{label}: unknown config key '{key}'.{hint} Fix or remove it; the keys are listed in "
                        f"README 'Configs' (sink, window and shift live under model_kwargs).")
    msg = str(exc).strip().splitlines()[0]
    return CLIError(f"{label}: config key '{key}' has a value of the wrong type ({msg}); see README 'Configs'.")


def _check_layer(layer: Layer) -> None:
    """Shape errors OmegaConf reports badly: a section given as a scalar."""
    for key in sections():
        if key in layer.values and not isinstance(layer.values[key], dict):
            raise CLIError(f"{layer.label}: '{key}' must be a mapping (e.g. {key}: {{sink_size: 10}} in a YAML, or "
                           f"{key}.sink_size=10 on the command line), got {layer.values[key]!r}.")


def read_yaml(path: Path) -> Layer:
    """A config file as a layer, training-only keys dropped; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CLIError(f"Config file {path} does not exist. Pass --config_path with one of the files under "
                       f"{CONFIGS_DIR} (e.g. configs/self_forcing_dmd/self_forcing_dmd_sink10.yaml)."
                       ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"Config file {path} cannot be read ({exc}). Pass a readable UTF-8 YAML file with "
                       f"--config_path.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CLIError(f"Config file {path} is not valid YAML ({' '.join(str(exc).split())}). Fix the syntax or "
                       f"use a shipped config.") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise CLIError(f"Config file {path}: a config must be a YAML mapping of keys to values, got "
                       f"{type(data).__name__}.")
    dropped = sorted(k for k in data if k in TRAINING_KEYS)
    if dropped:
        logger.debug("%s: ignoring training-only keys %s", path, ", ".join(dropped))
    return Layer(f"config file {path}", {k: v for k, v in data.items() if k not in TRAINING_KEYS})


def schema_layer(layer: Layer) -> Layer:
    """``layer`` with its upstream method keys moved into their sections (what the merge sees)."""
    return Layer(layer.label, translate(layer.values))


def override_layer(item: str) -> Layer:
    """A command-line ``key=value`` override as a layer (the value is parsed as YAML)."""
    key, sep, _ = item.partition("=")
    if not sep or not key.strip():
        raise CLIError(f"Unexpected argument '{item}'. Extra arguments must be config overrides written "
                       f"key=value (e.g. model_kwargs.sink_size=12); flags start with '--'.")
    label = f"override '{item}'"
    try:
        values = OmegaConf.to_container(OmegaConf.from_dotlist([item]))
    except OmegaConfBaseException as exc:
        raise CLIError(f"{label}: cannot be parsed ({' '.join(str(exc).split())}); write key=value.") from None
    return Layer(label, values)


def merge_layers(layers: list[Layer]) -> LoadedConfig:
    """Schema defaults <- each layer in order; type errors and unknown keys name their layer."""
    cfg = OmegaConf.structured(run_config_class())
    origins = {}
    for layer in map(schema_layer, layers):
        _check_layer(layer)
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(layer.values))
        except OmegaConfBaseException as exc:
            raise _omegaconf_error(exc, layer.label) from None
        origins.update({k: layer.label for k in _flatten(layer.values)})
    return LoadedConfig(OmegaConf.to_object(cfg), origins)


def _float_keys(cls=None, prefix: str = "") -> list[str]:
    """Dotted keys of every float field of the schema."""
    cls = cls or run_config_class()
    out = []
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            out += _float_keys(hint, f"{prefix}{name}.")
        elif hint is float or hint == Optional[float]:
            out.append(prefix + name)
    return out


def check_values(loaded: LoadedConfig) -> None:
    """Checks of the keys no other component owns (the policy and the rollout check theirs); CLIError naming the
    source of the value."""
    cfg = loaded.cfg
    for key in _float_keys():
        v = get(cfg, key)
        if v is not None and not math.isfinite(v):
            raise CLIError(f"{loaded.origin(key)}: {key}={v} is not a finite number; give a finite value.")
    unsupported = [(k, *UNSUPPORTED[k]) for k in UNSUPPORTED if get(cfg, k) != get(run_config_class()(), k)]
    if unsupported:
        what = "; ".join(f"{feature} ({k}={get(cfg, k)!r} from {loaded.origin(k)}: {fix})"
                         for k, feature, fix in unsupported)
        raise CLIError(f"This version does not support yet: {what}. Nothing was ignored silently: change these "
                       f"keys or use a config of the Self Forcing / Deep Forcing family.")
    lo, hi = FPS_RANGE
    if not lo <= cfg.fps <= hi:
        raise CLIError(f"{loaded.origin('fps')}: fps={cfg.fps:g} is outside the supported range {lo:g} to {hi:g} "
                       f"frames per second; use e.g. fps=16 (the models' training rate).")
    if not 0 <= cfg.context_noise <= cfg.num_train_timesteps:
        raise CLIError(f"{loaded.origin('context_noise')}: context_noise={cfg.context_noise:g} must be a timestep "
                       f"between 0 and num_train_timesteps={cfg.num_train_timesteps} (0 as released).")
    if cfg.num_samples < 1:
        raise CLIError(f"{loaded.origin('num_samples')}: num_samples={cfg.num_samples} must be at least 1.")
    if cfg.seconds is not None and cfg.seconds <= 0:
        raise CLIError(f"{loaded.origin('seconds')}: seconds={cfg.seconds:g} must be a positive number of seconds, "
                       f"e.g. --seconds 60.")
    for alias, key in (("num_train_timestep", "num_train_timesteps"),
                       ("timestep_shift", "model_kwargs.timestep_shift")):
        if get(cfg, alias) is not None and get(cfg, alias) != get(cfg, key):
            raise CLIError(f"Two different values for the same setting: {loaded.blame(alias, key)}. The rollout uses "
                           f"{key}; make them equal or remove {alias}.")


def select_method(layers: list[Layer], checkpoint: str | None) -> tuple[str, str | None, str]:
    """(method, variant, label): the last layer that names them, else what the YAML or checkpoint path stands for."""
    from methods.base import detect_method
    method = variant = None
    label = "default"
    for layer in layers:
        if layer.values.get("method") is not None:
            method, label = layer.values["method"], layer.label
        if layer.values.get("variant") is not None:
            variant = layer.values["variant"]
    if method is None:
        yaml_values = next((layer.values for layer in layers if layer.label.startswith("config file")), {})
        method, detected = detect_method(yaml_values, checkpoint)
        variant = variant or detected
        label = "detected from the config / checkpoint" if detected or method != "deep_forcing" else "default"
    return method, variant, label


def method_layer(layers: list[Layer], checkpoint: str | None) -> Layer:
    """The selected method's defaults for its variant, as the layer under every other one."""
    from methods.base import get_method
    name, variant, label = select_method(layers, checkpoint)
    try:
        method = get_method(name)
    except CLIError as exc:
        raise CLIError(f"{label}: {exc}") from None
    variant = method.check_variant(variant, label)
    values = translate(method.defaults(variant))
    values.update(method=name, variant=variant)
    return Layer(f"method {name}" + (f" ({variant})" if variant else ""), values)


def load_config(config_path: str | Path | None = None, overrides: list[str] = (), flags: list[Layer] = (),
                demo: Layer | None = None, checkpoint: str | None = None) -> LoadedConfig:
    """Method defaults <- ``config_path`` <- ``demo`` <- ``flags`` <- ``overrides``, merged and checked."""
    layers = [read_yaml(Path(config_path))] if config_path is not None else []
    layers += [demo] if demo is not None else []
    layers += list(flags) + [override_layer(item) for item in overrides]
    loaded = merge_layers([method_layer(layers, checkpoint), *layers])
    check_values(loaded)
    return loaded


def policy_default(param: str) -> Any:
    """The default of a cache parameter, from the first registered policy class that declares it (for help texts)."""
    from pipeline.policies import POLICIES
    return next(f.default for cls in POLICIES.values() for f in dataclasses.fields(cls) if f.name == param)


def __getattr__(name: str):
    """``RunConfig``: the schema class with the registered methods' sections (built on first use)."""
    if name == "RunConfig":
        return run_config_class()
    raise AttributeError(name)


def rollout_params(cfg) -> dict:
    """The keys of ``RolloutConfig`` (the shift comes from model_kwargs, as upstream inference does)."""
    return dict(denoising_step_list=list(cfg.denoising_step_list), warp_denoising_step=cfg.warp_denoising_step,
                num_frame_per_block=cfg.num_frame_per_block, context_noise=cfg.context_noise,
                timestep_shift=cfg.model_kwargs.timestep_shift, independent_first_frame=cfg.independent_first_frame,
                num_train_timesteps=cfg.num_train_timesteps,
                denoising_step_list_first_chunk=(None if cfg.denoising_step_list_first_chunk is None
                                                 else list(cfg.denoising_step_list_first_chunk)))
