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
import difflib
import logging
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from pipeline.rollout import RolloutConfig
from utils.errors import CLIError
from utils.paths import CONFIGS_DIR

logger = logging.getLogger(__name__)

FPS_RANGE = (1.0, 240.0)                 # frame rates the mp4 writer is asked to support
DEFAULT_SOURCE = "default"               # origin label of a schema default


@dataclass
class CacheConfig:
    """``cache``: the mode and its policy's parameters, passed as they are to ``build_policy(mode, **params)``."""

    mode: str = "deep_sink_pc"           # a registered cache mode (pipeline.policies); --mode, --is_ds_only 1
    # the policy's parameters (its dataclass fields: local_attn_size, sink_size, budget, recent, reuse_cap, ...);
    # a parameter left out takes the policy class's default. Deep Forcing's window and sink:
    params: Dict[str, Any] = field(default_factory=lambda: {"local_attn_size": 21, "sink_size": 10})


@dataclass
class BaseRunConfig:
    """Every common config key with its one default, in sections: ``rollout``, ``cache``, then video and outputs.

    The methods' own sections (``methods.base.Method.section``) are added as fields named after them
    (``run_config_class``). Released YAMLs write these keys flat (``num_frame_per_block``, ``model_kwargs.sink_size``,
    ``budget``...): ``UPSTREAM_KEYS`` moves them into their sections.
    """

    # the method (methods/): its checkpoint family and recipe; None: detected from the YAML / checkpoint
    method: Optional[str] = None
    variant: Optional[str] = None        # the method's variant (e.g. Causal Forcing's framewise); None: its default
    recache: Optional[str] = None        # re-cache at prompt switches (pipeline.recache); None: the method's own
    rollout: RolloutConfig = field(default_factory=RolloutConfig)   # the loop's settings (pipeline.rollout)
    cache: CacheConfig = field(default_factory=CacheConfig)
    # upstream spellings: must agree with rollout.num_train_timesteps / rollout.timestep_shift when given
    num_train_timestep: Optional[int] = None
    timestep_shift: Optional[float] = None
    # video
    height: int = 480                    # pixels
    width: int = 832
    fps: float = 16.0
    num_output_frames: Optional[int] = 126   # latent frames T (4T-3 video frames); null with --endless / seconds
    seconds: Optional[float] = None      # video length in seconds instead (wins over num_output_frames)
    # outputs (some released YAMLs carry these; the flags of the same name win)
    num_samples: int = 1
    save_with_index: bool = False
    use_ema: bool = False
    output_folder: str = "output"
    i2v: bool = False                    # image-to-video (--i2v --image PATH; frame-wise models only)
    inference_iter: int = -1
    model_name: str = "Wan2.1-T2V-1.3B"


# Flat keys of the released YAMLs (and of command-line overrides) -> our sectioned keys. One table: a method adds its
# own keys (``Method.upstream_keys``, into its section).
UPSTREAM_KEYS = {
    **{k: f"rollout.{k}" for k in ("denoising_step_list", "denoising_step_list_first_chunk", "warp_denoising_step",
                                    "num_frame_per_block", "context_noise", "independent_first_frame",
                                    "num_train_timesteps")},
    "model_kwargs.timestep_shift": "rollout.timestep_shift",
    "model_kwargs.local_attn_size": "cache.params.local_attn_size",
    "model_kwargs.sink_size": "cache.params.sink_size",
    "mode": "cache.mode",
    **{k: f"cache.params.{k}" for k in ("budget", "recent", "reuse_cap", "realign_topc", "sink_gap")},
}


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
    """The schema's nested sections (dotted): rollout, cache, cache.params and every method section."""
    from methods.base import section_fields
    return ("rollout", "cache", "cache.params", *(name for name, _, _ in section_fields()))


def key_table() -> dict[str, str]:
    """``UPSTREAM_KEYS`` plus every registered method's upstream keys."""
    from methods.base import upstream_key_table
    return {**UPSTREAM_KEYS, **upstream_key_table()}


def translate(values: dict) -> dict:
    """A layer with its flat upstream keys moved into their sections (``key_table``); other keys as they are."""
    out = _copy(values)
    for upstream, ours in key_table().items():
        head, _, leaf = upstream.rpartition(".")
        source = out.get(head) if head else out
        if not isinstance(source, dict) or leaf not in source:
            continue
        value = source.pop(leaf)
        node = out
        *parents, last = ours.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[last] = value
    if isinstance(out.get("model_kwargs"), dict) and not out["model_kwargs"]:
        del out["model_kwargs"]  # every model_kwargs key found its section
    return out


def _copy(values: dict) -> dict:
    """A copy of nested dicts (leaves shared)."""
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in values.items()}


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

    cfg: Any                             # the merged RunConfig (run_config_class())
    origins: dict                        # dotted key -> label of the layer that set it (absent: the default)
    spelling: dict = field(default_factory=dict)  # dotted key -> the key as that layer wrote it (model_kwargs.x)

    def origin(self, key: str) -> str:
        """Label of the layer that set ``key`` ('default' when none did); released spellings are understood."""
        return self.origins.get(key_table().get(key, key), DEFAULT_SOURCE)

    def spell(self, key: str) -> str:
        """``key`` as the layer that set it wrote it (the released spelling where it used one)."""
        return self.spelling.get(key, key)

    def blame(self, *keys: str) -> str:
        """'key=value (from X)' for each key, for messages."""
        return ", ".join(f"{self.spell(k)}={get(self.cfg, k)!r} (from {self.origin(k)})" for k in keys)

    def to_dict(self) -> dict:
        """The merged config as plain data (for sidecars)."""
        return dataclasses.asdict(self.cfg)


def get(cfg, key: str) -> Any:
    """The value of a dotted key (our spelling or the released one)."""
    node = cfg
    for part in key_table().get(key, key).split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def _flatten(values: dict, prefix: str = "", nest: tuple = ()) -> dict:
    """{'cache': {'mode': 'x'}} -> {'cache.mode': 'x'} (only the schema's sections, and ``nest``, nest)."""
    out = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if (key in sections() or key in nest) and isinstance(v, dict):
            out.update(_flatten(v, key + ".", nest))
        else:
            out[key] = v
    return out


def known_keys() -> list[str]:
    """Every dotted key a layer may set: the schema's and the upstream spellings of ``key_table``."""
    def walk(cls, prefix: str) -> list[str]:
        out = []
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            out += walk(hint, f"{prefix}{f.name}.") if dataclasses.is_dataclass(hint) else [prefix + f.name]
        return out
    return [*walk(run_config_class(), ""), *key_table()]


def unknown_key_error(key: str, label: str) -> CLIError:
    """One paragraph for an unknown key, with the closest known key."""
    close = difflib.get_close_matches(key, known_keys(), n=1, cutoff=0.6)
    if not close:  # a known leaf under another parent, e.g. sink_size -> model_kwargs.sink_size
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in known_keys() if k.rsplit(".", 1)[-1] == leaf][:1]
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return CLIError(f"{label}: unknown config key '{key}'.{hint} Fix or remove it; the keys are listed in README "
                    f"'Configs' (released spellings such as model_kwargs.sink_size or num_frame_per_block work too).")


def _omegaconf_error(exc: OmegaConfBaseException, label: str, spelling: dict) -> CLIError:
    """One paragraph for an OmegaConf merge error of the layer ``label`` (keys as that layer spelled them)."""
    key = getattr(exc, "full_key", None) or "?"
    key = spelling.get(key, key)
    if isinstance(exc, ConfigKeyError):
        return unknown_key_error(key, label)
    msg = str(exc).strip().splitlines()[0]
    return CLIError(f"{label}: config key '{key}' has a value of the wrong type ({msg}); see README 'Configs'.")


def _check_layer(layer: Layer) -> None:
    """Shape errors OmegaConf reports badly: a section given as a scalar; keys left in model_kwargs."""
    for key in ("model_kwargs", *sections()):
        head, _, leaf = key.rpartition(".")
        node = layer.values.get(head, {}) if head else layer.values
        if isinstance(node, dict) and leaf in node and not isinstance(node[leaf], dict):
            raise CLIError(f"{layer.label}: '{key}' must be a mapping (e.g. {key}: {{sink_size: 10}} in a YAML, or "
                           f"{key}.sink_size=10 on the command line), got {node[leaf]!r}.")


def shipped_copy(path: Path) -> Path:
    """``path``, or the shipped copy of a released config given by its path in the family's repository
    (``configs/inference_yaml/inference_universal.yaml`` -> ``configs/matrix_game2/inference_yaml/...``)."""
    parts = path.parts
    if path.exists() or len(parts) < 2 or parts[0] != "configs":
        return path
    rest = parts[1:]
    found = [f for f in CONFIGS_DIR.rglob(rest[-1]) if f.parts[-len(rest):] == rest]
    if len(found) != 1:
        return path
    logger.info("%s is shipped as %s", path, found[0])
    return found[0]


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
    except yaml.constructor.ConstructorError as exc:
        raise CLIError(f"Config file {path} uses a YAML tag that safe loading refuses ({exc.problem}; only plain "
                       f"data is read, nothing in the file is executed). Remove the tag.") from None
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
    """``layer`` with its upstream keys moved into their sections (what the merge sees); a key left in
    ``model_kwargs`` is unknown."""
    _check_layer(layer)
    values = translate(layer.values)
    for key in values.get("model_kwargs") or {}:
        raise unknown_key_error(f"model_kwargs.{key}", layer.label)
    return Layer(layer.label, values)


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
    origins, spelling, table = {}, {}, key_table()
    for raw in layers:
        layer = schema_layer(raw)
        spelled = {table.get(key, key): key for key in _flatten(raw.values, nest=("model_kwargs",))}
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(layer.values))
        except OmegaConfBaseException as exc:
            raise _omegaconf_error(exc, layer.label, spelled) from None
        origins.update({k: layer.label for k in _flatten(layer.values)})
        spelling.update(spelled)
    try:
        return LoadedConfig(OmegaConf.to_object(cfg), origins, spelling)
    except (ValueError, OmegaConfBaseException) as exc:  # a section's own checks (RolloutConfig.__post_init__)
        msg = " ".join(str(getattr(exc, "__cause__", None) or exc).split())
        named = [k for k in origins if k.rsplit(".", 1)[-1].lower() in msg.lower()]
        where = ", ".join(f"{spelling.get(k, k)}={OmegaConf.select(cfg, k)!r} (from {origins[k]})" for k in named)
        raise CLIError(f"{msg}." + (f" Set by: {where}." if where else "")) from None


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
            raise CLIError(f"{loaded.origin(key)}: {loaded.spell(key)}={v} is not a finite number; give a finite "
                           f"value.")
    unsupported = [(k, *UNSUPPORTED[k]) for k in UNSUPPORTED if get(cfg, k) != get(run_config_class()(), k)]
    if unsupported:
        what = "; ".join(f"{feature} ({k}={get(cfg, k)!r} from {loaded.origin(k)}: {fix})"
                         for k, feature, fix in unsupported)
        raise CLIError(f"This version does not support yet: {what}. Nothing was ignored silently: change these "
                       f"keys or use a config of the Self Forcing / Deep Forcing family.")
    from pipeline.recache import recache_choices
    if cfg.recache is not None and cfg.recache not in recache_choices():
        raise CLIError(f"{loaded.origin('recache')}: recache={cfg.recache!r} is not a re-cache variant; use one of "
                       f"{', '.join(recache_choices())} (off: keep the cache at a prompt switch, ours: recompute every "
                       f"cached frame at its position; README 'Long videos').")
    lo, hi = FPS_RANGE
    if not lo <= cfg.fps <= hi:
        raise CLIError(f"{loaded.origin('fps')}: fps={cfg.fps:g} is outside the supported range {lo:g} to {hi:g} "
                       f"frames per second; use e.g. fps=16 (the models' training rate).")
    ro = cfg.rollout
    if not 0 <= ro.context_noise <= ro.num_train_timesteps:
        raise CLIError(f"{loaded.origin('rollout.context_noise')}: context_noise={ro.context_noise:g} must be a "
                       f"timestep between 0 and num_train_timesteps={ro.num_train_timesteps} (0 as released).")
    if cfg.num_samples < 1:
        raise CLIError(f"{loaded.origin('num_samples')}: num_samples={cfg.num_samples} must be at least 1.")
    if cfg.seconds is not None and cfg.seconds <= 0:
        raise CLIError(f"{loaded.origin('seconds')}: seconds={cfg.seconds:g} must be a positive number of seconds, "
                       f"e.g. --seconds 60.")
    for alias, key in (("num_train_timestep", "rollout.num_train_timesteps"),
                       ("timestep_shift", "rollout.timestep_shift")):
        if get(cfg, alias) is not None and get(cfg, alias) != get(cfg, key):
            raise CLIError(f"Two different values for the same setting: {loaded.blame(alias, key)}. The rollout uses "
                           f"{loaded.spell(key)}; make them equal or remove {alias}.")


def select_method(layers: list[Layer], checkpoint: str | None) -> tuple[str, str | None, str, str]:
    """(method, variant, method label, variant label): the last layer that names each, else what the YAML or
    checkpoint path stands for."""
    from methods.base import detect_method
    method = variant = None
    label = variant_label = "default"
    for layer in layers:
        if layer.values.get("method") is not None:
            method, label = layer.values["method"], layer.label
        if layer.values.get("variant") is not None:
            variant, variant_label = layer.values["variant"], layer.label
    if method is None:
        yaml_values = next((layer.values for layer in layers if layer.label.startswith("config file")), {})
        method, detected = detect_method(yaml_values, checkpoint)
        variant = variant or detected
        label = "detected from the config / checkpoint" if detected or method != "deep_forcing" else "default"
    return method, variant, label, label if variant_label == "default" else variant_label


def method_layer(layers: list[Layer], checkpoint: str | None) -> Layer:
    """The selected method's defaults for its variant, as the layer under every other one."""
    from methods.base import get_method
    name, variant, label, variant_label = select_method(layers, checkpoint)
    try:
        method = get_method(name)
    except CLIError as exc:
        raise CLIError(f"{label}: {exc}") from None
    variant = method.check_variant(variant, variant_label)
    values = translate(method.defaults(variant))
    values.update(method=name, variant=variant)
    return Layer(f"method {name}" + (f" ({variant})" if variant else ""), values)


def load_config(config_path: str | Path | None = None, overrides: list[str] = (), flags: list[Layer] = (),
                demo: Layer | None = None, checkpoint: str | None = None) -> LoadedConfig:
    """Method defaults <- ``config_path`` <- ``demo`` <- ``flags`` <- ``overrides``, merged and checked."""
    from methods.base import get_method
    layers = [read_yaml(shipped_copy(Path(config_path)))] if config_path is not None else []
    layers += [demo] if demo is not None else []
    layers += list(flags) + [override_layer(item) for item in overrides]
    base = method_layer(layers, checkpoint)
    method = get_method(base.values["method"])  # a released YAML's keys may mean something else in its method
    layers = [Layer(x.label, method.release_values(x.values)) if x.label.startswith("config file") else x
              for x in layers]
    loaded = merge_layers([base, *layers])
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
