"""Many prompts in one process versus upstream's process-and-reload per prompt.

The reload path uses the project's own loaders on files in the released formats (``load_generator`` on a model
folder + Self Forcing checkpoint, ``WanVAE.from_model_dir``), written once from the benchmark's random weights.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from utils.paths import REPO_ROOT

from .clock import Clock
from .measure import RunSettings, run_video
from .presets import Preset

REPO = REPO_ROOT
CHECKPOINT_NAME = "bench_checkpoint.pt"


def process_start_seconds(device: torch.device) -> float:
    """Wall seconds of a fresh interpreter importing torch, diffusers, transformers and this project (and
    creating the CUDA context on CUDA): what every per-prompt process pays before it loads a weight."""
    code = ("import torch, diffusers, transformers\nimport wan.causal_model, wan.vae, pipeline.rollout\n"
            + ("torch.zeros(1, device='cuda'); torch.cuda.synchronize()\n" if device.type == "cuda" else ""))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    return time.perf_counter() - t0


def write_model_files(root: Path, model, vae) -> tuple[Path, Path]:
    """A model folder (config.json, base DiT safetensors, Wan2.1_VAE.pth) and a Self Forcing checkpoint."""
    from safetensors.torch import save_file

    from app.demo_model import wan_vae_state_dict, write_config
    from wan.loading import DIT_WEIGHTS_FILE, VAE_WEIGHTS_FILE
    folder = root / "model"
    folder.mkdir(parents=True)
    write_config(folder, model.config)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / DIT_WEIGHTS_FILE), metadata={"format": "pt"})
    torch.save({"generator": {f"model.{k}": v for k, v in state.items()}}, root / CHECKPOINT_NAME)
    if vae is not None:
        vae_state = {k: v.detach().cpu() for k, v in vae.autoencoder.state_dict().items()}
        torch.save(wan_vae_state_dict(vae_state), folder / VAE_WEIGHTS_FILE)
    return folder, root / CHECKPOINT_NAME


def load_models(preset: Preset, folder: Path, checkpoint: Path, with_vae: bool) -> tuple[object, object, dict]:
    """(DiT, WanVAE or None, timings) through the CLI's loaders, as a fresh process would."""
    from wan.loading import load_generator
    from wan.vae import WanVAE
    device = torch.device(preset.device)
    clock = Clock(device)
    t0 = time.perf_counter()
    model = load_generator(folder, checkpoint, dtype=preset.torch_dtype, device=device)
    clock.sync()
    t1 = time.perf_counter()
    vae = WanVAE.from_model_dir(folder, dtype=preset.torch_dtype, device=device) if with_vae else None
    clock.sync()
    return model, vae, {"dit_load_s": t1 - t0, "vae_load_s": time.perf_counter() - t1}


def measure_reload(preset: Preset, model, vae, make_pipeline, prompts: int, latent_frames: int,
                   settings: RunSettings) -> dict:
    """Time ``prompts`` videos generated in this process against a fresh process + reload for each one.

    ``make_pipeline(model)`` builds a rollout pipeline; ``vae`` is a BenchVAE or None. The text encoder is not part
    of either path (no weights are available); upstream reloads it per prompt too, so the reload figures are a
    lower bound of what upstream's per-prompt processes cost.
    """
    device = model.device
    shape = preset.latent_shape
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp:
        folder, checkpoint = write_model_files(Path(tmp), model, vae)
        files_bytes = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
        start_s = process_start_seconds(device)
        reload_runs = []
        for _ in range(prompts):
            m, v, times = load_models(preset, folder, checkpoint, vae is not None)
            times["generate_s"] = run_video(make_pipeline(m), v, shape, latent_frames, settings)
            reload_runs.append(times)
            del m, v
            if device.type == "cuda":
                torch.cuda.empty_cache()
    pipe = make_pipeline(model)
    one_runs = [run_video(pipe, vae, shape, latent_frames, settings) for _ in range(prompts)]
    load = [r["dit_load_s"] + r["vae_load_s"] for r in reload_runs]
    reload_total = sum(start_s + l + r["generate_s"] for l, r in zip(load, reload_runs))
    one_total = start_s + load[0] + sum(one_runs)
    return {
        "prompts": prompts, "latent_frames": latent_frames, "output_frames": preset.pixel_frames(latent_frames),
        "process_start_s": start_s, "weight_files_bytes": files_bytes, "reload_runs": reload_runs,
        "one_process_generate_s": one_runs, "reload_total_s": reload_total, "one_process_total_s": one_total,
        "reload_overhead_per_prompt_s": start_s + sum(load) / len(load),
        "one_process_overhead_per_prompt_s": (start_s + load[0]) / prompts,
        "text_encoder": "not included (no weights); upstream reloads it per prompt as well",
    }
