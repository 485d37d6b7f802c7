"""LongLive: the Self Forcing network fine-tuned for long and interactive video, with a LoRA and its own re-cache.

Files (hub ``Efficient-Large-Model/LongLive``, into ``longlive_models/``): ``models/longlive_base.pt`` (weights entry
``generator``) and the LoRA ``models/lora.pt`` merged at load time (``adapter``: rank, alpha; scale alpha / r).
Released configs: ``longlive_inference.yaml`` (normal mode: a 12-frame window with a 3-frame sink, the
``self_forcing`` cache), ``longlive_inference_infinity.yaml`` (``use_infinite_attention``: the sink right before the
window, the ``infinite_forcing`` cache) and ``longlive_interactive_inference.yaml`` (a JSONL of prompt segments
switched at ``switch_frame_indices``, with LongLive's re-cache at every switch; ``global_sink`` keeps the first
sink's keys/values). The JSONL format and the switch timing: ``methods/longlive_prompts.py``.

LongLive's re-cache (``--recache longlive``): before the chunk at f, with L the window (frames, chunk included) and S
the sink, one clean pass with no mask runs over the clean latents of the last m = min(L, f) frames:

- f <= L: frames 0 .. f-1 are recomputed together and replace their cached keys/values (sink included).
- f > L, ``global_sink`` true (as released): frames f-(L-S) .. f-1 are recomputed with the sink's cached keys/values
  as extra frozen keys; the sink is never rewritten (it keeps the first prompt's keys/values for ever).
- f > L, ``global_sink`` false: frames f-L .. f-1 are recomputed together and replace the whole cache, so the sink
  becomes frames f-L .. f-L+S-1 at their own positions.

The pass's frames sit at consecutive time positions ending at the current position of frame f-1.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from pipeline.kv_cache import SLOT, KVCache, Rewrite
from pipeline.recache import CleanLatentStore, Recache, clean_pass_kv, frame_positions, holds_whole_frames
from utils.errors import CLIError
from wan.hub import fail_download, fetch_file
from wan.loading import ModelFilesError, display_path, resolve_path

from .base import CheckpointFile, LoraSettings, Method, MethodContext, MethodRun
from .longlive_prompts import LongLivePrompts, load_longlive_prompts

logger = logging.getLogger(__name__)

REPO_ID = "Efficient-Large-Model/LongLive"
LOCAL_DIR = "longlive_models"
BASE_FILE = "models/longlive_base.pt"
LORA_FILE = "models/lora.pt"
JSONL_SUFFIXES = (".jsonl", ".ndjson")
ADAPTER_KEYS = ("type", "rank", "alpha", "dropout", "dtype", "verbose")


@dataclass
class LongLiveSection:
    """LongLive's config keys (flat in its YAMLs, ``longlive.<key>`` here)."""

    lora_ckpt: Optional[str] = None           # the LoRA merged at load time
    adapter: Optional[Any] = None             # {type: lora, rank, alpha, dropout, dtype, verbose}; alpha null = rank
    global_sink: bool = False                 # LongLive's re-cache keeps the first sink (true, as released) or not
    switch_frame_indices: Optional[Any] = None  # latent frames: int, "40, 80" or a list; needs a .jsonl data_path
    generator_ckpt: Optional[str] = None      # the checkpoint (--checkpoint_path wins)
    data_path: Optional[str] = None           # the prompts (--data_path wins)
    use_infinite_attention: bool = False      # the infinite mode (variant "infinite")


def lora_settings(lora_ckpt: str | None, adapter: object, source: str) -> LoraSettings | None:
    """Check ``lora_ckpt`` and ``adapter`` together; None when no LoRA is configured."""
    if lora_ckpt is None and adapter is None:
        return None
    if lora_ckpt is None:
        raise CLIError(f"{source}: adapter is set but lora_ckpt is not; the adapter describes the LoRA file to merge. "
                       f"Set lora_ckpt to it (LongLive: longlive_models/models/lora.pt), or remove adapter.")
    if adapter is None:
        return LoraSettings(str(lora_ckpt), None, None)
    if not isinstance(adapter, dict):
        raise CLIError(f"{source}: adapter = {adapter!r} must be a mapping like {{type: lora, rank: 256, alpha: 256}}.")
    unknown = sorted(str(k) for k in adapter if k not in ADAPTER_KEYS)
    if unknown:
        raise CLIError(f"{source}: adapter has the unknown key '{unknown[0]}'; an adapter has only "
                       f"{', '.join(ADAPTER_KEYS)} (LongLive's LoRA settings).")
    kind = adapter.get("type", "lora")
    if kind != "lora":
        raise CLIError(f"{source}: adapter.type = {kind!r}; only 'lora' adapters can be merged. Set type: lora.")
    rank = adapter.get("rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise CLIError(f"{source}: adapter.rank = {rank!r} must be a positive integer (the LoRA's r, 256 for "
                       f"LongLive), or null to take it from the file.")
    alpha = adapter.get("alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or not math.isfinite(alpha) or alpha <= 0):
        raise CLIError(f"{source}: adapter.alpha = {alpha!r} must be a positive number, or null for alpha = rank "
                       f"(LongLive: 256).")
    if alpha is None and rank is not None:
        alpha = rank  # null means alpha = rank (the configured one; it must equal the file's r anyway)
    dropout = adapter.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise CLIError(f"{source}: adapter.dropout = {dropout!r} must be a number in [0, 1) (it does not act at "
                       f"inference).")
    return LoraSettings(str(lora_ckpt), None if alpha is None else float(alpha), rank)


# --------------------------------------------------------------------------------------------------------------
# hub files


def repo_file(path: Path) -> str | None:
    """The repository file a local path stands for (``models/…``), when it ends like one; else None."""
    posix = Path(path).as_posix()
    return next((name for name in (BASE_FILE, LORA_FILE) if posix.endswith("/" + name)), None)


def download_command(paths: list[Path]) -> str:
    """The ``hf download`` command that puts the given LongLive files where ``paths`` say."""
    names = [repo_file(p) for p in paths]
    known = [p for p, n in zip(paths, names) if n is not None]
    local_dir = Path(known[0]).absolute().parent.parent if known else Path.cwd() / LOCAL_DIR
    files = " ".join(dict.fromkeys(n for n in names if n is not None)) or f"{BASE_FILE} {LORA_FILE}"
    return f"hf download {REPO_ID} {files} --local-dir {display_path(local_dir)}"


def _fail(reason: str, missing: list[Path]) -> ModelFilesError:
    """The error raised when LongLive files are missing and cannot be downloaded; gives the manual command."""
    return fail_download(f"the LongLive file(s) {' and '.join(str(p) for p in missing)}", reason,
                         f"`{download_command(missing)}`")


def ensure_files(checkpoint: str, lora: str | None = None, download: bool = True) -> tuple[Path, Path | None]:
    """Resolve LongLive's checkpoint and LoRA paths; fetch missing ones from the hub when allowed (default layout)."""
    paths = [resolve_path(checkpoint)] + ([resolve_path(lora)] if lora is not None else [])
    missing = [p for p in paths if not p.is_file()]
    if missing:
        odd = [p for p in missing if repo_file(p) is None]
        if odd:
            raise ModelFilesError(f"LongLive file not found: {odd[0]}. Only paths ending in {BASE_FILE} or "
                                  f"{LORA_FILE} are downloaded automatically; fix the path, or fetch the files with "
                                  f"`{download_command([])}` and point generator_ckpt / lora_ckpt at them.")
        if not download:
            raise _fail("downloads are switched off", missing)
        for path in (p.absolute() for p in missing):
            fetch_file(REPO_ID, repo_file(path), path.parent.parent, lambda reason: _fail(reason, missing))
    return paths[0], (paths[1] if lora is not None else None)


# --------------------------------------------------------------------------------------------------------------
# re-cache


class WindowStore(CleanLatentStore):
    """Clean latents of the last ``window`` frames, for a cache with a ``sink``-frame sink."""

    def __init__(self, window: int, sink: int):
        super().__init__(keep_last=window)
        self.window, self.sink = window, sink


@dataclass
class LongLiveRecache(Recache):
    """LongLive's re-cache (module docstring); ``global_sink`` true keeps the sink's keys/values."""

    global_sink: bool = False

    name = "longlive"

    def new_store(self, policy) -> WindowStore:
        """Remember the last window's clean latents (frames the cache has evicted may be recomputed)."""
        return WindowStore(policy.window_frames, policy.sink_size)

    def rewrites(self, model, kv: KVCache, text_kv: list, store: WindowStore, context_noise: float) -> list[Rewrite]:
        """The pass over the last frames (sink frozen or not) as per-layer plans.

        Host-side sizes only (frame range, token counts) with a FIFO cache; a policy that keeps single tokens makes
        the frozen set's size data-dependent, one sync at the switch (``nonzero``).
        """
        f, window, sink = store.next_frame, store.window, store.sink
        if f == 0 or not any(cache.n for cache in kv.layers):
            return []
        keep_sink = self.global_sink and f > window
        first = f - (window - sink) if keep_sink else f - min(window, f)
        R = f - first
        device = kv.layers[0].k.device
        wanted = torch.arange(first, f, device=device)  # [R], made on the device
        last = frame_positions(kv, wanted[-1:])[0]  # a 0-d device tensor, never read on the host
        positions = last - R + 1 + torch.arange(R, device=device)  # [R]
        F = kv.tokens_per_frame
        whole = holds_whole_frames(kv.policy)
        frozen = []
        for cache in kv.layers:
            n = cache.n
            if not keep_sink:
                idx = torch.zeros(0, dtype=torch.long, device=device)
            elif whole:  # every wanted frame is held whole: the n - R*F others (the sink), in slot order
                inside = torch.isin(cache.frame[0, :n], wanted)
                idx = torch.sort(inside.to(torch.int8), stable=True).indices[:n - R * F]
            else:
                idx = (~torch.isin(cache.frame[0, :n], wanted)).nonzero().flatten()
            # tokens that stay as they are (the sink), used as frozen keys
            frozen.append((cache.k[:, idx], cache.v[:, idx], cache.t_pos[:, idx]))
        rec = clean_pass_kv(model, kv, text_kv, store.stack(wanted), positions, context_noise, frozen)
        if not (keep_sink or f <= window):  # the pass replaces the whole cache (its first S frames become the sink)
            return [Rewrite(k, v, t_pos=positions.repeat_interleave(F), frame=wanted.repeat_interleave(F),
                            replace=True) for k, v in zip(rec.keys, rec.values)]
        rank = torch.full((f,), -1, dtype=torch.long, device=device)
        rank[wanted] = torch.arange(R, device=device)
        out = []
        for cache, k_new, v_new in zip(kv.layers, rec.keys, rec.values):
            n = cache.n
            fr = cache.frame[:, :n]
            row = rank[fr].clamp(min=0)
            idx = row * F + cache.aux_field(SLOT)[:, :n]  # [B, n] rows of the pass
            g = idx[:, :, None, None].expand(-1, -1, *cache.k.shape[2:])
            out.append(Rewrite(torch.gather(k_new, 1, g), torch.gather(v_new, 1, g), where=torch.isin(fr, wanted),
                               t_pos=positions[row]))
        return out


# --------------------------------------------------------------------------------------------------------------
# the method


@dataclass(frozen=True)
class LongLiveRun(MethodRun):
    """LongLive's part of a run: LoRA (or None), interactive prompts (or None), global_sink."""

    prompts: LongLivePrompts | None
    global_sink: bool
    checkpoint: str | None
    lora: LoraSettings | None = None

    def jobs(self) -> list | None:
        """One job per JSONL video (None without interactive prompts)."""
        return None if self.prompts is None else self.prompts.jobs()

    def schedule(self, job, clock):
        """The prompt schedule of ``job`` (its video's segments), or None without interactive prompts."""
        return None if self.prompts is None else self.prompts.schedule(job.index, clock)

    def request(self, job) -> dict:
        """What LongLive adds to a video's identity (the resume check): LoRA, segments, switch indices, re-cache."""
        out = {}
        if self.lora is not None:
            out["lora"] = {"file": Path(self.lora.path).name, "alpha": self.lora.alpha, "rank": self.lora.rank}
        if self.prompts is not None:
            out["longlive_prompts"] = list(self.prompts.videos[job.index])
            out["switch_frame_indices"] = list(self.prompts.indices)
            out["global_sink"] = self.global_sink
        return out

    def fetch(self, download: bool) -> None:
        """The checkpoint and LoRA, fetched now when missing and allowed."""
        if self.lora is not None and self.checkpoint is not None:
            ensure_files(self.checkpoint, self.lora.path, download=download)


class LongLive(Method):
    """LongLive's checkpoint with its LoRA, in its normal or infinite mode, with its interactive prompts."""

    name = "longlive"
    summary = "LongLive (LoRA over its base checkpoint; normal / infinite mode; JSONL prompt switches, re-cache)"
    section = LongLiveSection
    upstream_keys = ("lora_ckpt", "adapter", "global_sink", "switch_frame_indices", "generator_ckpt", "data_path",
                     "model_kwargs.use_infinite_attention")
    checkpoints = {"normal": CheckpointFile(REPO_ID, BASE_FILE, LOCAL_DIR),
                   "infinite": CheckpointFile(REPO_ID, BASE_FILE, LOCAL_DIR)}
    default_variant = "normal"
    recache = "longlive"

    def defaults(self, variant: str | None) -> dict:
        """``longlive_inference.yaml`` (normal) or ``longlive_inference_infinity.yaml`` (infinite) as released."""
        infinite = variant == "infinite"
        return {"mode": "infinite_forcing" if infinite else "self_forcing", "num_output_frames": 120,
                "model_kwargs": {"local_attn_size": 12, "sink_size": 3},
                "longlive": {"lora_ckpt": f"{LOCAL_DIR}/{LORA_FILE}", "adapter": {"type": "lora", "rank": 256,
                                                                                  "alpha": 256},
                             "generator_ckpt": f"{LOCAL_DIR}/{BASE_FILE}", "global_sink": True,
                             "use_infinite_attention": infinite}}

    def claims(self, values: dict) -> bool:
        """A YAML that sets ``lora_ckpt`` or ``switch_frame_indices`` is LongLive's."""
        return values.get("lora_ckpt") is not None or values.get("switch_frame_indices") is not None

    def variant_for(self, values: dict, checkpoint: str | None) -> str | None:
        """``use_infinite_attention: true`` is the infinite variant; any other LongLive YAML or file the normal one."""
        kwargs = values.get("model_kwargs")
        if isinstance(kwargs, dict) and kwargs.get("use_infinite_attention"):
            return "infinite"
        if self.claims(values) or (checkpoint is not None and repo_file(Path(checkpoint)) == BASE_FILE):
            return "normal"
        return None

    def build_recache(self, choice: str | None, section: LongLiveSection) -> Recache:
        """The re-cache: ``longlive`` with the section's ``global_sink`` unless another variant is chosen."""
        from pipeline.recache import build_recache
        return build_recache(choice or self.recache, global_sink=bool(section.global_sink))

    def resolve(self, ctx: MethodContext) -> LongLiveRun:
        """Check LoRA, adapter and the interactive prompts before any model is loaded."""
        sec, origin = ctx.section, ctx.origin
        lora = lora_settings(sec.lora_ckpt, sec.adapter,  # what is checked is the adapter (and its lora_ckpt)
                             origin("longlive.adapter" if sec.adapter is not None else "longlive.lora_ckpt"))
        if ctx.demo and lora is not None and not resolve_path(lora.path).is_file():
            logger.info("--demo: the LoRA %s is not merged (the demo's tiny random model has none)", lora.path)
            lora = None
        prompts = None
        if sec.switch_frame_indices is not None:
            source = origin("longlive.switch_frame_indices")
            if Path(ctx.data_path).suffix.lower() not in JSONL_SUFFIXES:
                raise CLIError(f"{source}: switch_frame_indices needs LongLive's interactive prompts, a .jsonl file "
                               f"with one {{\"prompts\": [...]}} per video, but the prompts come from "
                               f"{ctx.data_path}. Pass --data_path with the .jsonl file (LongLive: "
                               f"longlive_models/prompts/interactive_example.jsonl), or remove switch_frame_indices.")
            prompts = load_longlive_prompts(ctx.data_path, sec.switch_frame_indices, ctx.clock.chunk_latents,
                                            ctx.num_frames, source)
        return LongLiveRun(prompts, bool(sec.global_sink), sec.generator_ckpt, lora)

    def checkpoint_path(self, section: LongLiveSection, variant: str | None = None) -> str | None:
        """``generator_ckpt`` of the config (used when --checkpoint_path is not given)."""
        return section.generator_ckpt

    def prompt_source(self, section: LongLiveSection) -> str | None:
        """``data_path`` of the config (used when --data_path is not given)."""
        return section.data_path
