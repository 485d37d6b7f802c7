"""One Matrix-Game 2.0 run: its image jobs, actions, model files, and the conditioning of every video.

``resolve_world_run`` checks everything before a model loads (the image, the action source, the files); the runner
then asks the run for its models (``load_models``) and, per video, for the conditioning (``WorldConditioner``):
CLIP tokens of the image, the mask + VAE latent of the image followed by grey frames, and the actions
(``ActionTrack``), which ``--interactive`` fills chunk by chunk from stdin (``KeySwitcher``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.errors import CLIError

from .base import MethodRun
from .matrix_game2 import CLIP_FILE, CONDITION_FRAMES, MODEL_DIR, REPO_ID, VAE_FILE, VARIANTS, shipped_config
from .world_actions import (ActionInputError, ActionTensors, actions_from_chunks, bench_actions, chunk_entry,
                            describe_chunk, get_variant, load_action_file, parse_keys, pixel_frames, write_chunk)

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class WorldImage:
    """An input image and the SHA-256 of its bytes (part of the video's identity: resume notices a new image)."""

    path: Path
    sha256: str


class ActionTrack:
    """Per-pixel-frame actions of one video (``ActionTensors``), served to the model on its device, batch-expanded."""

    def __init__(self, actions: ActionTensors, batch: int, device):
        self.actions, self.batch, self.device = actions, batch, torch.device(device)
        self._served = None

    def write(self, chunk: int, action) -> None:
        """Hold ``action`` over chunk ``chunk``'s pixel frames (interactive keys)."""
        write_chunk(self.actions, chunk, action)
        self._served = None

    def upto(self, num_latent_frames: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(mouse [B, N, 2] or None, keyboard [B, N, K]) on the device, for calls up to ``num_latent_frames`` (the
        model's ``action_windows`` checks that N covers them)."""
        if self._served is None:
            self._served = tuple(None if x is None else x.to(self.device)[None].expand(self.batch, -1, -1)
                                 for x in (self.actions.mouse, self.actions.keyboard))
        return self._served


class KeySwitcher:
    """``--interactive``: before every chunk, one line of keys from stdin is held over the chunk (runner's switcher).

    Records every chunk's keys (``switches``, written to the sidecar) so the session replays with ``--actions
    SIDECAR``; the end of input or ``n`` ends the video after the last finished chunk (``stopped``).
    """

    def __init__(self, track: ActionTrack, ask):
        self.track, self.ask = track, ask
        self.switches: list[dict] = []
        self.stopped = False

    def prepare(self, chunk: int) -> bool:
        """Read chunk ``chunk``'s keys; False when the video should end before it."""
        action = self.ask(chunk)
        if action is None:
            self.stopped = True
            return False
        self.track.write(chunk, action)
        self.switches.append({"chunk": chunk, "keys": describe_chunk(action)})
        return True

    def __call__(self, chunk: int, latent_frame: int) -> None:
        """No prompt switch (the rollout's prompt-switch hook)."""


class WorldConditioner:
    """Encodes an image job into ``WorldConditioning`` with the CLIP tower and the VAE encoder."""

    def __init__(self, run: "MatrixGame2Run", clip, vae, device, dtype, batch: int):
        self.run, self.clip, self.vae, self.device, self.dtype, self.batch = run, clip, vae, device, dtype, batch
        self.track: ActionTrack | None = None

    @torch.no_grad()
    def encode(self, job):
        """The conditioning of one video: image tokens, mask + latent per frame, actions."""
        from media.image import load_world_image
        from wan.world_model import WorldConditioning
        image = self.run.images[job.index]
        if hashlib.sha256(image.path.read_bytes()).hexdigest() != image.sha256:
            raise CLIError(f"image {image.path} changed while the run was going on; restore it or start again.")
        pixels = load_world_image(image.path, self.run.height, self.run.width).to(self.device, self.dtype)  # [1,3,H,W]
        T = min(self.run.num_frames, CONDITION_FRAMES)
        video = torch.cat([pixels[:, None], pixels.new_zeros(1, pixel_frames(T) - 1, *pixels.shape[1:])], dim=1)
        latent = self.vae.encode(video)  # [1, T, 16, h, w]
        mask = torch.zeros(1, T, 4, *latent.shape[-2:], dtype=latent.dtype, device=latent.device)
        mask[:, 0] = 1
        frames = torch.cat([mask, latent], dim=2).expand(self.batch, -1, -1, -1, -1)  # [B, T, 20, h, w]
        tokens = self.clip(pixels).expand(self.batch, -1, -1)  # [B, 257, clip_dim]
        self.track = ActionTrack(self.run.actions_for(job), self.batch, self.device)
        logger.info("conditioning of %s: %d latent frames, image tokens %s", image.path, T, tuple(tokens.shape[1:]))
        return WorldConditioning(tokens, frames, self.track)

    def switcher(self, job, live) -> KeySwitcher | None:
        """The per-chunk key reader of an interactive video (after ``encode``); asks for chunk 0 now."""
        if live is None:
            return None
        switcher = KeySwitcher(self.track, live)
        if not switcher.prepare(0):
            raise CLIError("--interactive: the input ended before the first chunk's keys; type one line of keys per "
                           "chunk (e.g. 'w i').")
        return switcher


class MatrixGame2Run(MethodRun):
    """A resolved Matrix-Game 2.0 run: variant, images, action source, video length and the files it loads."""

    interactive_input = True

    def __init__(self, variant: str, images: list[WorldImage], actions: str, seed: int, num_frames: int,
                 height: int, width: int, interactive: bool, model_config: Path):
        self.variant, self.images, self.actions, self.seed = variant, images, actions, seed
        self.num_frames, self.height, self.width, self.interactive = num_frames, height, width, interactive
        self.model_config = model_config
        self._file_actions = None if actions == "bench" or interactive else self._read_actions(actions)

    def _read_actions(self, path: str):
        """An actions file, or the recorded keys of a sidecar (a replay)."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8")) if p.suffix == ".json" else None
        except (OSError, ValueError):
            data = None
        method = data.get("method") if isinstance(data, dict) else None
        if isinstance(method, dict) and isinstance(data.get("prompt_switches"), list):
            recorded = method.get("variant")
            if recorded != self.variant:
                raise ActionInputError(f"sidecar {p} records a {recorded} session; replay it with --variant "
                                       f"{recorded} (this run is {self.variant})")
            if len(self.images) == 1 and method.get("image_sha256") not in (None, self.images[0].sha256):
                logger.warning("sidecar %s was made from another image than %s; its keys are applied to this one",
                               p, self.images[0].path)
            keys = [s.get("keys") if isinstance(s, dict) else s for s in data["prompt_switches"]]
            if not keys:
                raise ActionInputError(f"sidecar {p} records no keys: it is not of an --interactive session; its "
                                       f"actions were {method.get('actions', {})!r} (replay a benchmark draw with "
                                       f"--actions bench --seed {data.get('seed')})")
            if len(keys) * 3 < self.num_frames:
                raise ActionInputError(f"sidecar {p} records {len(keys)} chunks of keys; {self.num_frames} latent "
                                       f"frames need {-(-self.num_frames // 3)}; pass --num_output_frames "
                                       f"{len(keys) * 3} to replay it")
            spec = get_variant(self.variant)
            chunks = [chunk_entry(p, i, k, spec) for i, k in enumerate(keys[:-(-self.num_frames // 3)])]
            return actions_from_chunks(self.variant, chunks, self.num_frames)
        return load_action_file(p, self.variant, self.num_frames)[0]

    def actions_for(self, job) -> ActionTensors:
        """A fresh copy of the video's actions (interactive: all zero until typed)."""
        if self.interactive:
            return ActionTensors.zeros(self.variant, self.num_frames)
        if self._file_actions is not None:
            return self._file_actions.clone()
        return bench_actions(self.variant, self.num_frames, self.seed)

    def jobs(self) -> list:
        """One job per image, named by the image's file name."""
        from app.prompts import PromptJob
        return [PromptJob(i, 0, img.path.stem, None, img.path, "") for i, img in enumerate(self.images)]

    def request(self, job) -> dict:
        """The video's identity beyond the common keys: variant, image, actions."""
        img = self.images[job.index]
        if self.interactive:
            actions = "interactive"
        elif self._file_actions is not None:
            actions = {"file": self.actions, "sha256": self._file_actions.sha256()}
        else:
            actions = {"bench_seed": self.seed}
        return {"image": str(img.path), "image_sha256": img.sha256, "actions": actions}

    def live_input(self, stdin):
        """The key reader of ``--interactive``: a chunk's keys per stdin line (None at its end or on 'n' / '/stop')."""
        def ask(chunk: int):
            while True:
                sys.stderr.write(f"chunk {chunk} [{self.variant}: {get_variant(self.variant).key_help}; n ends the "
                                 f"video]> ")
                sys.stderr.flush()
                line = (stdin or sys.stdin).readline()
                if not line or line.strip().lower() in ("n", "/stop"):
                    return None
                try:
                    return parse_keys(self.variant, line)
                except ActionInputError as exc:
                    sys.stderr.write(f"{exc}\n")
        return ask

    def load_models(self, settings) -> tuple:
        """(conditioner, world model, VAE) in the run's dtype on its device."""
        from wan.clip_vision import load_clip_vision
        from wan.loading import ModelFilesError
        from wan.vae import WanVAE
        from wan.world_model import load_world_model
        device, dtype = settings.device, settings.dtype
        if settings.compile:
            logger.warning("--compile is not available for matrix_game2 (its action caches are updated inside the "
                           "blocks); running eager")
        model = load_world_model(self.model_config, settings.checkpoint, dtype, device)
        try:
            clip = load_clip_vision(settings.model_dir / CLIP_FILE, dtype, device)
        except (OSError, ValueError) as exc:
            raise ModelFilesError(str(exc)) from None
        if clip.config.dim != model.world.clip_dim:
            raise ModelFilesError(f"{settings.model_dir / CLIP_FILE} gives image tokens of width {clip.config.dim}, the "
                                  f"model's img_emb takes {model.world.clip_dim}; use the files of one release.")
        # as released in bf16: the VAE's weights and mean/std pass through fp16 on their way (fp32 -> fp16 -> bf16)
        release = torch.float16 if dtype == torch.bfloat16 else dtype
        vae = WanVAE.from_model_dir(settings.model_dir, dtype=release, device=device)
        if release != dtype:
            vae.model.to(dtype)
            vae.latents_mean, vae.latents_std = (t.half().float() for t in (vae.latents_mean, vae.latents_std))
        return WorldConditioner(self, clip, vae, device, dtype, settings.num_samples), model, vae

    def model_files(self, args, download: bool, stack) -> tuple:
        """(model folder, checkpoint, False): --demo's tiny release, or the released files, fetched when allowed."""
        import tempfile
        from wan.loading import quoted_path, resolve_path
        if args.demo and not (args.wan_model_dir and args.checkpoint_path):
            from app.demo_world import write_tiny_world
            tiny = write_tiny_world(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="deep_forcing_demo_"))),
                                    self.variant)
            self.model_config = tiny.config
            return tiny.model_dir, tiny.checkpoint, False
        model_dir = resolve_path(args.wan_model_dir or MODEL_DIR)
        own = VARIANTS[self.variant].file
        checkpoint = resolve_path(args.checkpoint_path) if args.checkpoint_path else model_dir / own
        for name, v in VARIANTS.items():
            if name != self.variant and checkpoint.as_posix().endswith("/" + v.file):
                raise CLIError(f"--checkpoint_path {checkpoint} is the {name} model, but the run is variant "
                               f"{self.variant}; pass --variant {name} (or the {self.variant} file {own}).")
        wanted = release_files(self.variant)[:2 if args.checkpoint_path else 3]  # VAE, CLIP (, generator)
        missing = [f for f in wanted if not (model_dir / f).is_file()]
        if missing and download:
            fetch_release(model_dir, missing)
            missing = [f for f in wanted if not (model_dir / f).is_file()]
        if missing:
            raise CLIError(f"Matrix-Game 2.0 files missing in {model_dir}: {', '.join(missing)}; downloads are off "
                           f"(--no_download or HF_HUB_OFFLINE=1). Fetch them with `hf download {REPO_ID} "
                           f"{' '.join(missing)} --local-dir {quoted_path(model_dir)}`, or pass --wan_model_dir with "
                           f"the Matrix-Game-2.0 folder.")
        if not checkpoint.is_file():
            raise CLIError(f"--checkpoint_path {checkpoint} does not exist; pass the variant's .safetensors file "
                           f"({own}).")
        return model_dir, checkpoint, False


def world_images(path: str) -> list[WorldImage]:
    """The images of ``--image``: one file, or every image file of a folder (sorted); each checked and hashed."""
    from media.image import ImageInputError, image_sha256, load_world_image
    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p]
    if not files:
        raise CLIError(f"--image {p} is a folder without image files ({', '.join(IMAGE_SUFFIXES)}); pass an image "
                       f"or a folder of images.")
    out = []
    for f in files:
        try:
            load_world_image(f, 16, 16)
            out.append(WorldImage(f, image_sha256(f)))
        except ImageInputError as exc:
            raise CLIError(str(exc)) from None
    return out


def model_config_path(section, variant: str) -> Path:
    """The variant's ``config.json``: ``matrix_game2.model_config`` (a file or its folder; a released relative
    path such as configs/distilled_model/universal maps to the shipped copy), else the shipped one."""
    from wan.loading import resolve_path
    given = section.model_config
    if given is None:
        return shipped_config(variant)
    p = resolve_path(given)
    p = p / "config.json" if p.is_dir() or not p.suffix else p
    if not p.is_file() and Path(given).parts[:2] == ("configs", "distilled_model"):
        p = shipped_config(Path(given).name)
    if not p.is_file():
        raise CLIError(f"matrix_game2.model_config={given!r}: {p} does not exist; pass the variant's config.json "
                       f"(configs/matrix_game2/distilled_model/<variant>/config.json) or leave it unset.")
    return p


def resolve_world_run(method, ctx) -> MatrixGame2Run:
    """Check the image(s), the action source, the variant's config and the length; -> the run."""
    cfg, section = ctx.cfg, ctx.section
    variant = cfg.variant or method.default_variant
    if ctx.num_frames is None:
        raise CLIError("matrix_game2 renders a fixed number of latent frames (its actions and conditioning are made "
                       "for the whole video): pass --num_output_frames (or --seconds) instead of --endless.")
    if ctx.image is None:
        raise CLIError("matrix_game2 generates a video from an image: pass --image PATH (an image file, or a folder "
                       "of images for one video each).")
    if cfg.i2v:
        raise CLIError(f"i2v (from {ctx.origin('i2v')}) is the image-to-video mode of frame-wise text models; "
                       f"matrix_game2 is always conditioned on --image: drop --i2v.")
    if ctx.interactive and section.actions != "bench":
        raise CLIError(f"--interactive reads the actions from stdin, but matrix_game2.actions={section.actions!r} "
                       f"(from {ctx.origin('matrix_game2.actions')}) names a file too; use one of them.")
    config = model_config_path(section, variant)
    try:  # the config's action layout must be the variant's (K keys, mouse or not)
        data = json.loads(config.read_text(encoding="utf-8"))
        action = data["action_config"]
        k, mouse = int(action["keyboard_dim_in"]), bool(action.get("enable_mouse", True))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"{config} is not a Matrix-Game 2.0 config.json ({type(exc).__name__}: {exc}); use the "
                       f"shipped configs/matrix_game2/distilled_model/<variant>/config.json.") from None
    spec = get_variant(variant)
    if (k, mouse) != (spec.keyboard_dim, spec.has_mouse):
        raise CLIError(f"variant {variant} has {spec.keyboard_dim} keys and {'a' if spec.has_mouse else 'no'} mouse, "
                       f"but {config} describes a model with {k} keys and {'a' if mouse else 'no'} mouse: it is "
                       f"another variant's config. Pass the --variant of this config, or its own config.")
    trained = data.get("local_attn_size")
    window = cfg.cache.params.get("local_attn_size")
    if trained not in (None, -1) and window != trained:
        logger.warning("cache window local_attn_size=%s differs from the %s model's trained window %s (%s; set "
                       "model_kwargs.local_attn_size=%s for the released window)", window, variant, trained, config,
                       trained)
    images = world_images(ctx.image)
    try:
        return MatrixGame2Run(variant, images, section.actions, ctx.seed, ctx.num_frames, cfg.height, cfg.width,
                              ctx.interactive, config)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None


def release_files(variant: str) -> list[str]:
    """The files of ``variant``'s release inside the Matrix-Game-2.0 folder: VAE, CLIP, generator."""
    return [VAE_FILE, CLIP_FILE, VARIANTS[variant].file]


def fetch_release(model_dir: Path, names: list[str]) -> list[Path]:
    """Fetch ``names`` of the hub repository into ``model_dir`` (ModelFilesError with the manual command)."""
    from wan.hub import fail_download, fetch_file
    from wan.loading import quoted_path
    return [fetch_file(REPO_ID, name, model_dir, lambda reason, n=name: fail_download(
        f"the Matrix-Game 2.0 file {model_dir / n}", reason,
        f"`hf download {REPO_ID} {n} --local-dir {quoted_path(model_dir)}`")) for name in names]
