"""Before/after on one machine: the rollout of a git ref (default ``main``) against the working tree, per chunk.

``python -m bench.compare [--ref main] [--rounds 3] [--out DIR]``: the ref is exported with ``git archive`` into a
temporary folder; each round runs one subprocess per tree (alternating, so both see the same machine state) that
builds the CPU preset's tiny model (same seed), runs every mode for ``--latent-frames`` and prints per-chunk seconds.
Reported: per mode, the median over rounds of the median chunk time (all chunks after the first, and the steady
chunks once the window is full), and after/before ratios. CPU figures are relative only.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from .presets import MODE_SETTINGS, TINY_DIT

REPO = Path(__file__).resolve().parent.parent

# Runs inside the tree being measured (its own wan/ and pipeline/ on sys.path); only long-stable APIs are used.
WORKER = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from wan.config import WanConfig
from wan.causal_model import CausalWanModel
from pipeline.causal_inference import CausalInferencePipeline, RolloutConfig
from pipeline.policies import build_policy
spec = json.loads(sys.argv[1])
torch.manual_seed(0)
model = CausalWanModel(WanConfig(**spec["dit"])).eval().requires_grad_(False)
cfg = model.config
h, w = spec["latent_hw"]
out = {}
for mode, params in spec["modes"].items():
    pipe = CausalInferencePipeline(model, RolloutConfig(), build_policy(mode, **params))
    g = torch.Generator().manual_seed(1)
    text = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    noise = torch.randn(1, spec["frames"], cfg.in_dim, h, w, generator=g)
    times, t0 = [], time.perf_counter()
    for _ in pipe.iter_chunks(text, noise, g):
        t1 = time.perf_counter()
        times.append(t1 - t0)
        t0 = t1
    out[mode] = times
print(json.dumps(out))
"""


def export_ref(ref: str, dest: Path) -> Path:
    """Extract the tree of git ``ref`` into ``dest`` (``git archive``); returns ``dest``."""
    archive = dest / "tree.tar"
    with open(archive, "wb") as fh:
        subprocess.run(["git", "-C", str(REPO), "archive", ref], stdout=fh, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest / "tree", filter="data")
    return dest / "tree"


def measure(root: Path, spec: dict) -> dict:
    """Per-mode per-chunk seconds of the tree at ``root`` (one subprocess, one thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], cwd=root, capture_output=True, text=True,
                          env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(rounds: list[dict], steady_from: int) -> dict:
    """Per mode: median over rounds of the median chunk time (after the first / steady chunks)."""
    out = {}
    for mode in rounds[0]:
        after_first = [statistics.median(r[mode][1:]) for r in rounds]
        steady = [statistics.median(r[mode][steady_from:]) for r in rounds]
        out[mode] = {"chunk_ms_median": 1e3 * statistics.median(after_first),
                     "steady_chunk_ms_median": 1e3 * statistics.median(steady),
                     "rounds_chunk_ms": [round(1e3 * x, 3) for x in after_first]}
    return out


def main(argv=None) -> int:
    """CLI: before/after per-chunk times, printed as a table and written as JSON/markdown with ``--out``."""
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", default="main", help="git ref of the 'before' tree")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--latent-frames", type=int, default=30, help="multiple of 3; 30 = 10 chunks, window full at 7")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    spec = {"dit": TINY_DIT, "latent_hw": [2, 4], "frames": args.latent_frames, "modes": MODE_SETTINGS}
    with tempfile.TemporaryDirectory(prefix="bench_compare_") as tmp:
        before_root = export_ref(args.ref, Path(tmp))
        before, after = [], []
        for _ in range(args.rounds):
            before.append(measure(before_root, spec))
            after.append(measure(REPO, spec))
    steady_from = 7
    b, a = summarise(before, steady_from), summarise(after, steady_from)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.ref], capture_output=True,
                            text=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    lines = [f"before: {args.ref} ({commit}); after: working tree (HEAD {head}); CPU preset tiny model "
             f"(dim {TINY_DIT['dim']}, {TINY_DIT['num_layers']} layers), {args.latent_frames} latent frames, "
             f"{args.rounds} alternating rounds, one thread", "",
             "| mode | before chunk ms | after chunk ms | after/before | before steady ms | after steady ms |",
             "|---|---|---|---|---|---|"]
    for mode in b:
        lines.append(f"| {mode} | {b[mode]['chunk_ms_median']:.2f} | {a[mode]['chunk_ms_median']:.2f} | "
                     f"{a[mode]['chunk_ms_median'] / b[mode]['chunk_ms_median']:.3f} | "
                     f"{b[mode]['steady_chunk_ms_median']:.2f} | {a[mode]['steady_chunk_ms_median']:.2f} |")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "before_after.md").write_text(text, encoding="utf-8")
        (args.out / "before_after.json").write_text(json.dumps(
            {"ref": args.ref, "ref_commit": commit, "head": head, "spec": spec, "before": b, "after": a,
             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
