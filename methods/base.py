"""What a method is: a checkpoint family with its recipe (config section, files, defaults, loop, re-cache, extras).

A method is a class with its own ``name``; defining it registers it (``METHODS``), so a method is one file under
``methods/`` (or, in a test, one class). The application only asks the selected method:

- ``section``: its typed config section (a dataclass, under the key ``<name>:``) and ``upstream_keys``, the flat keys
  of its released YAMLs that belong in that section (``lora_ckpt`` -> ``longlive.lora_ckpt``);
- ``checkpoints``: the released files per variant (hub repository, file, weights entry, hence the EMA default);
- ``defaults(variant)``: the config values of a variant (chunk size, step lists, cache mode, window), merged under
  every YAML, flag and override;
- ``claims(values)`` / ``variant_for(values, checkpoint)``: whether a released YAML or checkpoint path is this
  method's, and which variant it is;
- ``loop`` / ``recache``: the loop strategy and the re-cache variant it runs with;
- ``resolve(ctx)``: the run's method extras (``MethodRun``: jobs, prompt schedules, LoRA, sidecar keys), checked
  before any model loads.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, ClassVar

from utils.errors import CLIError

logger = logging.getLogger(__name__)

METHODS: dict[str, type["Method"]] = {}
DEFAULT_METHOD = "deep_forcing"


@dataclass(frozen=True)
class CheckpointFile:
    """A released checkpoint: hub repository, file inside it, local folder it lands in, and its weights entry."""

    repo_id: str
    filename: str                 # path inside the repository, e.g. "framewise/causal_forcing.pt"
    local_dir: str                # folder the repository's files land in, e.g. "checkpoints/causal_forcing"
    entry: str = "generator"      # "generator_ema": the method runs with --use_ema by default

    @property
    def local_path(self) -> str:
        """Where the file lies once downloaded (relative: the working directory, then the repository root)."""
        return str(PurePosixPath(self.local_dir) / self.filename)

    @property
    def use_ema(self) -> bool:
        """Whether the weights are the ``generator_ema`` entry."""
        return self.entry == "generator_ema"

    def matches(self, path) -> bool:
        """Whether a local path ends with this file's repository path (``.../framewise/causal_forcing.pt``)."""
        posix = "/" + str(path).replace("\\", "/").lstrip("/")
        return posix.endswith("/" + self.filename)


@dataclass
class MethodContext:
    """What ``Method.resolve`` may read: the merged config, where each key came from, and the run's inputs."""

    cfg: Any                                   # the merged RunConfig
    origin: Callable[[str], str]               # dotted key -> label of the layer that set it
    data_path: str                             # the prompt source of the run
    clock: Any                                 # app.schedule.ChunkClock
    num_frames: int | None                     # latent frames (None: endless)
    section: Any = None                        # the method's own section (cfg.<name>), or None
    demo: bool = False                         # --demo: a tiny random model instead of the method's files
    image: str | None = None                   # --image (an image-conditioned method's input)
    interactive: bool = False                  # --interactive
    seed: int = 0                              # --seed


@dataclass
class LoraSettings:
    """A LoRA merged over the checkpoint at load time: the file, alpha (None: alpha = r) and the expected rank."""

    path: str
    alpha: float | None
    rank: int | None


class MethodRun:
    """A method's resolved part of a run (the base: nothing beyond the common pipeline)."""

    lora = None  # LoraSettings of a LoRA merged at load time, or None
    interactive_input = False  # --interactive feeds the method's own per-chunk input (``live_input(stdin)``)

    def jobs(self) -> list | None:
        """The run's prompt jobs when the method reads its own prompt format (None: the common prompt files)."""
        return None

    def schedule(self, job, clock):
        """The prompt schedule of ``job`` (None: the run's ``--prompt_schedule`` or none)."""
        return None

    def request(self, job) -> dict:
        """Keys the method adds to a video's identity (the resume check) and sidecar."""
        return {}

    def fetch(self, download: bool) -> None:
        """Make the method's extra files present (download when allowed) or raise a ModelFilesError."""

    def model_files(self, args, download: bool, stack) -> tuple | None:
        """(model folder, checkpoint, download needed) when the method finds its own files (None: the Wan folder and
        a Self Forcing-format checkpoint, found by the application)."""
        return None

    def load_models(self, settings) -> tuple | None:
        """(conditioner, model, VAE) when the method loads its own models (None: text encoder, DiT, VAE)."""
        return None


class Method:
    """Base method: the common chunk loop, no section, no files; subclasses set ``name`` and what differs."""

    name: ClassVar[str] = "base"
    summary: ClassVar[str] = ""
    section: ClassVar[type | None] = None
    upstream_keys: ClassVar[tuple[str, ...]] = ()
    checkpoints: ClassVar[dict[str, CheckpointFile]] = {}
    default_variant: ClassVar[str | None] = None
    loop: ClassVar[str] = "chunk"
    recache: ClassVar[str] = "off"
    conditioning: ClassVar[str] = "text"
    noise_channels_first: ClassVar[bool] = False  # the released code draws its noise as [B, C, T, H, W]
    variant_key: ClassVar[str | None] = None  # the flat key its released YAMLs (and --mode) name the variant with

    def __init_subclass__(cls, **kwargs):
        """Register a subclass under its own ``name``."""
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            METHODS[cls.name] = cls

    @property
    def variants(self) -> tuple[str, ...]:
        """The method's variants (one per released checkpoint; empty: no variants)."""
        return tuple(self.checkpoints)

    def checkpoint(self, variant: str | None) -> CheckpointFile | None:
        """The released file of ``variant`` (None without one)."""
        return self.checkpoints.get(variant or self.default_variant) if self.checkpoints else None

    def defaults(self, variant: str | None) -> dict:
        """Config values of ``variant`` (schema key names), merged under every other layer."""
        ckpt = self.checkpoint(variant)
        return {"use_ema": True} if ckpt is not None and ckpt.use_ema else {}

    def claims(self, values: dict) -> bool:
        """Whether a released YAML's values (flat upstream keys) belong to this method."""
        return False

    def release_values(self, values: dict) -> dict:
        """A released YAML's values with ``variant_key`` (when it names a variant) renamed to ``variant``."""
        key = self.variant_key
        if key is None or values.get(key) not in self.variants:
            return values
        return {**{k: v for k, v in values.items() if k != key}, "variant": values[key]}

    def variant_for(self, values: dict, checkpoint: str | None) -> str | None:
        """The variant a YAML's values or a checkpoint path stands for (None: not recognised)."""
        for variant, ckpt in self.checkpoints.items():
            if checkpoint is not None and ckpt.matches(checkpoint):
                return variant
        return None

    def check_variant(self, variant: str | None, source: str) -> str | None:
        """``variant`` checked against this method's variants (None: the default one)."""
        if variant is None:
            return self.default_variant
        if variant not in self.variants:
            have = ", ".join(self.variants) or "none"
            raise CLIError(f"{source}: variant {variant!r} is not a variant of method {self.name} (its variants: "
                           f"{have}). Use --variant with one of them, or drop it.")
        return variant

    def checkpoint_path(self, section, variant: str | None) -> str | None:
        """The checkpoint to use when ``--checkpoint_path`` is not given (None: the project default)."""
        ckpt = self.checkpoint(variant)
        return None if ckpt is None or "*" in ckpt.filename else ckpt.local_path

    def fetch_checkpoint(self, path: str, variant: str | None, download: bool) -> bool:
        """Make the method's released checkpoint present at ``path`` (fetched when missing and allowed).

        Returns whether the file is there now; a path that is not the released file's is left to the caller.
        """
        from wan.loading import resolve_path
        local = resolve_path(path)
        ckpt = self.checkpoint(variant)
        if local.is_file() or ckpt is None or not download or not ckpt.matches(path):
            return local.is_file()
        from wan.hub import fail_download, fetch_file
        manual = f"`{self.download_command(path, variant)}`"
        fetch_file(ckpt.repo_id, ckpt.filename, Path(str(local.absolute())[:-len(ckpt.filename)]),
                   lambda reason: fail_download(f"the {self.name} checkpoint {local}", reason, manual))
        return local.is_file()

    def download_command(self, path: str, variant: str | None) -> str | None:
        """The ``hf download`` command that puts the released checkpoint of ``variant`` at ``path`` (None: none)."""
        from wan.loading import quoted_path, resolve_path
        ckpt = self.checkpoint(variant)
        if ckpt is None or "*" in ckpt.filename or not ckpt.matches(path):
            return None
        local_dir = Path(str(resolve_path(path).absolute())[:-len(ckpt.filename)])
        return f"hf download {ckpt.repo_id} {ckpt.filename} --local-dir {quoted_path(local_dir)}"

    def prompt_source(self, section) -> str | None:
        """The prompt source the config names for this method (None: the project default)."""
        return None

    def build_loop(self, section, variant: str | None):
        """The loop strategy of ``variant`` (``loop`` by name)."""
        from pipeline.loops import build_loop
        return build_loop(self.loop)

    def build_recache(self, choice: str | None, section):
        """The re-cache at prompt switches: ``choice`` (``--recache``) or the method's own."""
        from pipeline.recache import build_recache
        return build_recache(choice or self.recache)

    def resolve(self, ctx: MethodContext) -> MethodRun:
        """The run's method extras, checked (CLIError naming the key and its source)."""
        return MethodRun()

    def describe(self, variant: str | None) -> dict:
        """The method and variant, for sidecars."""
        return {"method": self.name, "variant": variant}


def method_names() -> tuple[str, ...]:
    """The registered methods, in registration order."""
    return tuple(METHODS)


def mode_variants() -> dict[str, str]:
    """Variant -> method, for the methods whose released YAMLs name the variant ``mode`` (``--mode universal``)."""
    return {variant: name for name, cls in METHODS.items() if cls.variant_key == "mode" for variant in cls.checkpoints}


def get_method(name: str) -> Method:
    """The registered method ``name``; CLIError naming the registered ones otherwise."""
    try:
        return METHODS[name]()
    except KeyError:
        raise CLIError(f"method {name!r} is unknown; use one of {', '.join(METHODS)} (--method).") from None


def detect_method(values: dict, checkpoint: str | None) -> tuple[str, str | None]:
    """(method, variant) a YAML's values or a checkpoint path stand for; the default method when none claims them."""
    for name, cls in METHODS.items():
        method = cls()
        variant = method.variant_for(values, checkpoint)
        if method.claims(values) or variant is not None:
            return name, variant
    return DEFAULT_METHOD, None


def section_fields() -> list[tuple[str, type, dataclasses.Field]]:
    """``make_dataclass`` fields of every registered method's section (``<name>: Section``)."""
    return [(name, cls.section, dataclasses.field(default_factory=cls.section))
            for name, cls in METHODS.items() if cls.section is not None]


def upstream_key_table() -> dict[str, str]:
    """Flat released key -> our dotted key, from every registered method's ``upstream_keys``."""
    out = {}
    for name, cls in METHODS.items():
        for key in cls.upstream_keys:
            out[key] = f"{name}.{key.rsplit('.', 1)[-1]}"
    return out
