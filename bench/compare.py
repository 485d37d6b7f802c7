"""Before/after on one machine: the rollout of a git ref (default ``main``) against the working tree, per chunk.

``python -m bench.compare [--ref main] [--rounds 3] [--out DIR]``: the ref is exported with ``git archive`` into a
temporary folder; each round runs one subprocess per tree (alternating, so both see the same machine state) that
builds the CPU preset's tiny model (same seed), runs every mode for ``--latent-frames`` and prints per-chunk seconds.
Reported: per mode, the median over rounds of the median chunk time (all chunks after the first, and the steady
chunks once the window is full), and after/before ratios (CPU figures are relative only and noisy on a shared
machine); and two timing-free figures of one steady chunk: the ATen ops dispatched, and the host<->device transfers
of the same model on the meta device.
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

from utils.paths import REPO_ROOT

from .presets import MODE_SETTINGS, TINY_DIT

REPO = REPO_ROOT

# Runs inside the tree being measured (its own wan/ and pipeline/ on sys.path); only long-stable APIs are used.
WORKER = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from wan.config import WanConfig
from wan.causal_model import CausalWanModel
from pipeline.rollout import Rollout, RolloutConfig, RolloutInputs
from pipeline.policies import build_policy
spec = json.loads(sys.argv[1])
torch.manual_seed(0)
model = CausalWanModel(WanConfig(**spec["dit"])).eval().requires_grad_(False)
cfg = model.config
h, w = spec["latent_hw"]
out = {}
for mode, params in spec["modes"].items():
    pipe = Rollout(model, RolloutConfig(), build_policy(mode, **params))
    g = torch.Generator().manual_seed(1)
    text = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    noise = torch.randn(1, spec["frames"], cfg.in_dim, h, w, generator=g)
    times, t0 = [], time.perf_counter()
    for _ in pipe.frames(RolloutInputs(text, noise, g)):
        t1 = time.perf_counter()
        times.append(t1 - t0)
        t0 = t1
    out[mode] = times
from torch.utils._python_dispatch import TorchDispatchMode
class Ops(TorchDispatchMode):
    n = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        Ops.n += 1
        return func(*args, **(kwargs or {}))
ops = {}
for mode, params in spec["modes"].items():  # ATen ops of one steady chunk: a timing-free figure
    pipe = Rollout(model, RolloutConfig(), build_policy(mode, **params))
    g = torch.Generator().manual_seed(1)
    text = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    noise = torch.randn(1, spec["frames"], cfg.in_dim, h, w, generator=g)
    it = pipe.frames(RolloutInputs(text, noise, g))
    for _ in range(spec["steady_from"]):
        next(it)
    Ops.n = 0
    with Ops():
        next(it)
    ops[mode] = Ops.n
    it.close()
from torch.utils._pytree import tree_flatten
class Transfers(TorchDispatchMode):
    n = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        devices = {t.device for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)}
        result = func(*args, **(kwargs or {}))
        outs = {t.device for t in tree_flatten(result)[0] if isinstance(t, torch.Tensor)}
        Transfers.n += len(devices) > 1 or bool(devices and outs - devices)
        return result
with torch.device("meta"):
    meta_model = CausalWanModel(WanConfig(**spec["dit"])).eval().requires_grad_(False)
transfers = {}
for mode, params in spec["modes"].items():  # host<->device copies of one steady chunk on the meta device
    pipe = Rollout(meta_model, RolloutConfig(), build_policy(mode, **params))
    text = torch.randn(1, cfg.text_len, cfg.text_dim, device="meta")
    noise = torch.randn(1, spec["frames"], cfg.in_dim, h, w, device="meta")
    it = pipe.frames(RolloutInputs(text, noise, lambda shape, dtype, dev: torch.randn(shape, dtype=dtype, device=dev)))
    for _ in range(spec["steady_from"]):
        next(it)
    Transfers.n = 0
    with Transfers():
        next(it)
    transfers[mode] = Transfers.n
    it.close()
print(json.dumps({"times": out, "ops": ops, "transfers": transfers}))
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
    return json.loads(proc.stdout.strip().splitlines()[-1])  # {"times": {mode: [s]}, "ops": {mode: n}}


def summarise(rounds: list[dict], steady_from: int) -> dict:
    """Per mode: median over rounds of the median chunk time (after the first / steady chunks), ATen ops of one
    steady chunk."""
    out = {}
    for mode in rounds[0]["times"]:
        after_first = [statistics.median(r["times"][mode][1:]) for r in rounds]
        steady = [statistics.median(r["times"][mode][steady_from:]) for r in rounds]
        out[mode] = {"chunk_ms_median": 1e3 * statistics.median(after_first),
                     "steady_chunk_ms_median": 1e3 * statistics.median(steady),
                     "rounds_chunk_ms": [round(1e3 * x, 3) for x in after_first],
                     "steady_chunk_aten_ops": rounds[0]["ops"][mode],
                     "steady_chunk_transfers_meta": rounds[0]["transfers"][mode]}
    return out


def main(argv=None) -> int:
    """CLI: before/after per-chunk times, printed as a table and written as JSON/markdown with ``--out``."""
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", default="main", help="git ref of the 'before' tree")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--latent-frames", type=int, default=30, help="multiple of 3; 30 = 10 chunks, window full at 7")
    p.add_argument("--modes", nargs="+", default=list(MODE_SETTINGS), choices=list(MODE_SETTINGS))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    steady_from = 7  # the 21-frame window is full after 7 chunks of 3
    if args.latent_frames < 3 * (steady_from + 1):
        sys.stderr.write(f"error: --latent-frames {args.latent_frames}: use at least {3 * (steady_from + 1)}\n")
        return 2
    spec = {"dit": TINY_DIT, "latent_hw": [2, 4], "frames": args.latent_frames,
            "modes": {m: MODE_SETTINGS[m] for m in args.modes},
            "steady_from": steady_from}
    with tempfile.TemporaryDirectory(prefix="bench_compare_") as tmp:
        before_root = export_ref(args.ref, Path(tmp))
        before, after = [], []
        for _ in range(args.rounds):
            before.append(measure(before_root, spec))
            after.append(measure(REPO, spec))
    b, a = summarise(before, steady_from), summarise(after, steady_from)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.ref], capture_output=True,
                            text=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    lines = [f"before: {args.ref} ({commit}); after: working tree (HEAD {head}); CPU preset tiny model "
             f"(dim {TINY_DIT['dim']}, {TINY_DIT['num_layers']} layers), {args.latent_frames} latent frames, "
             f"{args.rounds} alternating rounds, one thread", "",
             "| mode | before chunk ms | after chunk ms | after/before | before steady ms | after steady ms | "
             "ATen ops per steady chunk | host<->device transfers per steady chunk (meta) |",
             "|---|---|---|---|---|---|---|---|"]
    for mode in b:
        lines.append(f"| {mode} | {b[mode]['chunk_ms_median']:.2f} | {a[mode]['chunk_ms_median']:.2f} | "
                     f"{a[mode]['chunk_ms_median'] / b[mode]['chunk_ms_median']:.3f} | "
                     f"{b[mode]['steady_chunk_ms_median']:.2f} | {a[mode]['steady_chunk_ms_median']:.2f} | "
                     f"{b[mode]['steady_chunk_aten_ops']} -> {a[mode]['steady_chunk_aten_ops']} | "
                     f"{b[mode]['steady_chunk_transfers_meta']} -> {a[mode]['steady_chunk_transfers_meta']} |")
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
