"""Write a benchmark's results.json, results.md and latency_memory.png."""
from __future__ import annotations

import json
from pathlib import Path

MB = 1e6


def _fmt(x, scale: float = 1.0, digits: int = 2) -> str:
    """A number for the table, '-' for None."""
    return "-" if x is None else f"{x * scale:.{digits}f}"


def _kind_ms(summary: dict, kind: str, key: str = "dit") -> str:
    """Median chunk latency (ms) of one kind, with the count."""
    s = (summary["chunk_latency_by_kind"].get(kind) or {}).get(key)
    return "-" if not s else f"{s['median_s'] * 1e3:.1f} ({s['count']})"


def markdown(results: dict) -> str:
    """The results as a markdown document with one row per (mode, length)."""
    env, geo = results["environment"], results["geometry"]
    lines = [f"# Benchmark: preset `{results['preset']}` on {env['device_name']}", "",
             f"`{results['command']}`", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, diffusers {env['diffusers']}, "
             f"flash-attn {'yes' if env['flash_attn'] else 'no'} "
             f"(attention backends {env.get('attention_backend')}); dtype {results['config']['dtype']}, "
             f"{results['config']['height']}x{results['config']['width']}, {geo['num_layers']} layers, "
             f"F = {geo['tokens_per_frame']} tokens/frame, "
             f"KV cache {geo['kv_bytes_per_frame'] / MB:.3f} MB/latent frame",
             ""]
    if results.get("timing_valid") is False:
        lines += ["**Timings are not meaningful on this device (shape/path check only).**", ""]
    lines += ["| mode | length | latent T | frames | first chunk s (DiT / +VAE) | chunk ms: fill (n) | "
              "normal (n) | evict/compress (n) | FPS DiT | FPS +VAE | peak GPU MB | peak RSS MB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        s = run["summary"]
        event = "compress" if "compress" in s["chunk_latency_by_kind"] else "evict"
        lines.append(
            f"| {run['mode']} | {run['seconds']:g} s | {s['latent_frames']} | {s['output_frames']} | "
            f"{_fmt(s['first_chunk_latency_s'])} / {_fmt(s['first_chunk_latency_with_vae_s'])} | "
            f"{_kind_ms(s, 'fill')} | {_kind_ms(s, 'normal')} | {_kind_ms(s, event)} | "
            f"{_fmt(s['fps_dit_only'], digits=1)} | {_fmt(s['fps_with_vae'], digits=1)} | {_fmt(s['gpu_peak_bytes'], 1 / MB, 0)} | "
            f"{_fmt(s['rss_peak_bytes'], 1 / MB, 0)} |")
    rel = results.get("relative")
    if rel:
        lines += ["", "Deep Sink + PC vs Self Forcing window (same run, end-to-end FPS incl. VAE): "
                  + ", ".join(f"{k}: {v:+.1%}" for k, v in rel.items())]
    reload = results.get("reload")
    if reload and "reload_total_s" in reload:
        lines += ["", f"## {reload['prompts']} prompts of {reload['output_frames']} frames: one process vs "
                  "reload per prompt", "",
                  "| path | total s | per-prompt overhead s |", "|---|---|---|",
                  f"| process + DiT/VAE load per prompt (start {reload['process_start_s']:.2f} s) | "
                  f"{reload['reload_total_s']:.2f} | {reload['reload_overhead_per_prompt_s']:.2f} |",
                  f"| one process | {reload['one_process_total_s']:.2f} | "
                  f"{reload['one_process_overhead_per_prompt_s']:.2f} (amortised) |",
                  "", f"Text encoder: {reload['text_encoder']}."]
    if results.get("notes"):
        lines += [""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Per-chunk DiT latency and memory over the rollout (longest length per mode) -> PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    longest = {}
    for run in results["runs"]:
        if run["mode"] not in longest or run["seconds"] > longest[run["mode"]]["seconds"]:
            longest[run["mode"]] = run
    use_gpu = any(c["gpu_allocated_bytes"] for r in longest.values() for c in r["chunks"])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for mode, run in longest.items():
        idx = [c["index"] for c in run["chunks"]]
        ms = [(c["dit_s"]) * 1e3 for c in run["chunks"]]
        line, = ax1.plot(idx, ms, lw=1, label=f"{mode} ({run['seconds']:g} s)")
        ev = [(c["index"], c["dit_s"] * 1e3) for c in run["chunks"] if c["kind"] != "normal"]
        if ev and mode == "deep_sink_pc":
            ax1.plot(*zip(*ev), "x", ms=3, color=line.get_color(), label=f"{mode} compression chunks")
        key = "gpu_peak_bytes" if use_gpu else "rss_bytes"
        ax2.plot(idx, [c[key] / MB for c in run["chunks"]], lw=1, label=mode)
    ax1.set_ylabel("DiT latency per chunk (ms)")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    ax2.set_ylabel("peak GPU memory per chunk (MB)" if use_gpu else "host RSS (MB)")
    ax2.set_xlabel("chunk index")
    ax2.legend(fontsize=8)
    fig.suptitle(f"{results['preset']} preset on {results['environment']['device_name']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(results: dict, out: Path) -> dict:
    """results.json, results.md and latency_memory.png under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "latency_memory.png"}
    paths["json"].write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    paths["md"].write_text(markdown(results), encoding="utf-8")
    if results["runs"]:
        plot(results, paths["png"])
    return paths
