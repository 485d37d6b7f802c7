"""Micro-benchmarks of per-layer cache operations at the real 1.3B geometry (one layer, CPU by default).

``python -m bench.micro`` times, on keys of one layer's full window (21 + 3 frames of F tokens, H heads x D), the
current time rotation against candidate replacements, and the compaction gather against a slice copy. The
candidates live here only (the model and cache files belong to others); equality with the current code is checked.
``--cache`` times instead the real ``KVCache`` over steady chunks (one layer): per-chunk cache maintenance (the
eviction event, staging, key rotation) of FIFO eviction by gather (the cache before slot reuse) against slot reuse,
each with and without the rotated-key buffer.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from pipeline.kv_cache import KVCache
from pipeline.policies import build_policy
from wan.config import WanConfig
from wan.rope import WanRope

from .presets import MODE_SETTINGS, get_preset


def time_it(fn, repeat: int = 5) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


class TableRope:
    """Time rotation from a precomputed float32 cos/sin table over relative positions; touches only time channels."""

    def __init__(self, rope: WanRope, min_pos: int, max_pos: int, device=None):
        self.offset, self.pairs = -min_pos, rope.time_pairs
        angles = rope.time_angles(torch.arange(min_pos, max_pos + 1, device=device))  # float64 [R, P]
        self.cos, self.sin = torch.cos(angles).float(), torch.sin(angles).float()

    def rotate(self, x: torch.Tensor, rel_pos: torch.Tensor) -> torch.Tensor:
        """x [B, n, H, D], rel_pos [B, n] -> rotated copy (time pairs rotated, other channels concatenated)."""
        idx = rel_pos + self.offset
        c, s = self.cos[idx].unsqueeze(2), self.sin[idx].unsqueeze(2)  # [B, n, 1, P]
        t = x[..., :2 * self.pairs].unflatten(-1, (self.pairs, 2)).float()
        a, b = t[..., 0], t[..., 1]
        rot = torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2).to(x.dtype)
        return torch.cat([rot, x[..., 2 * self.pairs:]], dim=-1)


def rotate_time_channels_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                              pairs: int) -> None:
    """Write the time-rotated time channels of x [B, n, H, D] into ``out`` (whose other channels are already right).

    cos/sin [B, n, 1, pairs] float32. No copy of the untouched height/width channels.
    """
    t = x[..., :2 * pairs].unflatten(-1, (pairs, 2)).float()
    a, b = t[..., 0], t[..., 1]
    o = out[..., :2 * pairs].unflatten(-1, (pairs, 2))
    o[..., 0] = a * cos - b * sin
    o[..., 1] = a * sin + b * cos


def run(cfg: WanConfig, tokens_per_frame: int, window: int, chunk: int, dtype: torch.dtype, repeat: int) -> dict:
    """Timings (seconds) of the candidates for one layer at this geometry."""
    torch.manual_seed(0)
    F, H, D = tokens_per_frame, cfg.num_heads, cfg.head_dim
    n_all, n_chunk = (window + chunk) * F, chunk * F
    rope = WanRope(D, cfg.rope_theta)
    k = torch.randn(1, n_all, H, D).to(dtype)
    pos = torch.arange(window + chunk).repeat_interleave(F).unsqueeze(0) - window  # relative to the chunk start
    table = TableRope(rope, -4 * window, chunk)
    r = {}
    r["rotate_time_current_full"] = time_it(lambda: rope.rotate_time(k, pos), repeat)
    r["rotate_time_table_full"] = time_it(lambda: table.rotate(k, pos), repeat)
    r["rotate_time_current_chunk_only"] = time_it(lambda: rope.rotate_time(k[:, -n_chunk:], pos[:, -n_chunk:]),
                                                  repeat)
    r["rotate_time_table_chunk_only"] = time_it(lambda: table.rotate(k[:, -n_chunk:], pos[:, -n_chunk:]), repeat)
    same = torch.equal(rope.rotate_time(k, pos), table.rotate(k, pos))
    rotated = rope.rotate_time(k, pos)  # a persistent rotated-key buffer: spatial channels already in place
    cos, sin = table.cos[pos + table.offset].unsqueeze(2), table.sin[pos + table.offset].unsqueeze(2)
    r["rotate_time_channels_in_place_full"] = time_it(
        lambda: rotate_time_channels_into(rotated, k, cos, sin, rope.time_pairs), repeat)
    check = k.clone()
    rotate_time_channels_into(check, k, cos, sin, rope.time_pairs)
    same_in_place = torch.equal(check, rope.rotate_time(k, pos))
    # compaction after a FIFO eviction of one chunk (sink 0): gather of the kept tokens vs one slice copy
    n_keep = (window - chunk) * F
    idx = torch.arange(n_all - n_keep, n_all)
    gk = idx[None, :, None, None].expand(1, -1, H, D)
    buf = k.clone()
    r["keep_gather"] = time_it(lambda: buf[:, :n_keep].copy_(torch.gather(buf[:, :n_all], 1, gk)), repeat)
    r["keep_slice_copy"] = time_it(lambda: buf[:, :n_keep].copy_(buf[:, n_all - n_keep:n_all].clone()), repeat)
    calls = 5
    per_chunk = {
        "current: rotate all keys on every call": calls * r["rotate_time_current_full"],
        "table rotation, all keys every call": calls * r["rotate_time_table_full"],
        "rotate committed keys once per chunk + the chunk per call (current kernel)":
            r["rotate_time_current_full"] + calls * r["rotate_time_current_chunk_only"],
        "same with the table kernel": r["rotate_time_table_full"] + calls * r["rotate_time_table_chunk_only"],
        "persistent rotated buffer, time channels rewritten once per chunk + the chunk per call":
            r["rotate_time_channels_in_place_full"] + calls * r["rotate_time_current_chunk_only"],
    }
    return {"geometry": {"tokens_per_frame": F, "heads": H, "head_dim": D, "keys": n_all, "chunk_tokens": n_chunk,
                         "dtype": str(dtype).replace("torch.", "")},
            "seconds": r, "rotation_seconds_per_layer_per_chunk": per_chunk, "table_equals_current": same,
            "in_place_equals_current": same_in_place,
            "key_bytes": k.numel() * k.element_size()}


class GatherKVCache(KVCache):
    """The cache as it was before slot reuse: a FIFO eviction gathers the kept tokens to the front."""

    def apply(self, layer: int, plan) -> None:
        """Turn the plan's freed slots into a keep index (compaction), then apply it."""
        if plan.evict is not None:
            live = torch.ones(self.layers[layer].n, dtype=torch.bool)
            live[plan.evict] = False
            plan.keep, plan.evict = live.nonzero().flatten(), None
        super().apply(layer, plan)


def cache_maintenance(cfg: WanConfig, tokens_per_frame: int, mode: str, chunk: int, dtype: torch.dtype,
                      chunks: int, calls: int = 5) -> dict:
    """Median seconds per steady chunk of one layer's cache work (events + staging + key rotation, no attention)."""
    torch.manual_seed(0)
    F, H, D = tokens_per_frame, cfg.num_heads, cfg.head_dim
    rope = WanRope(D, cfg.rope_theta)
    policy = build_policy(mode, **MODE_SETTINGS[mode])
    L = policy.window_frames
    k_new, v_new, q = (torch.randn(1, chunk * F, H, D).to(dtype) for _ in range(3))
    out = {}
    for variant, cls, cap in [("gather", GatherKVCache, L + chunk), ("slot_reuse", KVCache, L)]:
        for buffer in (True, False):
            kv = cls(1, 1, cap * F, H, D, dtype, "cpu", policy, F, rope.rotate_time, rotated_key_buffer=buffer)
            kv.reset()
            layer = kv.layers[0]  # a full window, as after L frames
            layer.k[:, :L * F] = torch.randn(1, L * F, H, D).to(dtype)
            layer.v[:, :L * F] = torch.randn(1, L * F, H, D).to(dtype)
            layer.frame[:, :L * F] = torch.arange(L).repeat_interleave(F)
            layer.t_pos.copy_(layer.frame)
            layer.n = L * F
            events, totals = [], []
            spent: list = []

            def timed_events(layer_index, run=kv.chunk_events):
                """The cache event alone (eviction: gather or freeing the slots), timed."""
                t = time.perf_counter()
                run(layer_index)
                spent.append(time.perf_counter() - t)
            kv.chunk_events = timed_events
            for i in range(chunks + 1):  # the first is a warm-up
                f = L + i * chunk
                kv.begin_chunk(f, chunk)
                pos = torch.arange(f, f + chunk).repeat_interleave(F)
                rotation = rope.time_rotation(pos - kv.base, dtype)
                spent.clear()
                t0 = time.perf_counter()
                for _ in range(calls):
                    kv.update(0, q, k_new, v_new, pos, rotation)
                total = time.perf_counter() - t0
                kv.commit()
                if i:
                    events.append(spent[0])
                    totals.append(total)
            name = f"{variant}, {'rotated-key buffer' if buffer else 'rotate on read'}"
            out[name] = {"event_s": sorted(events)[len(events) // 2], "chunk_total_s": sorted(totals)[len(totals) // 2]}
    return {"mode": mode, "window_frames": L, "sink_frames": policy.sink_size, "chunk_frames": chunk, "calls": calls,
            "chunks_timed": chunks, "tokens_per_frame": F, "heads": H, "head_dim": D,
            "dtype": str(dtype).replace("torch.", ""), "seconds_per_chunk": out}


def main(argv=None) -> int:
    """CLI: print the micro-benchmark JSON."""
    p = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.split("\n\n")[0])
    p.add_argument("--window", type=int, default=MODE_SETTINGS["self_forcing"]["local_attn_size"],
                   help="cached frames (local_attn_size)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", action="store_true", help="time the KVCache per steady chunk: gather vs slot reuse, "
                   "with and without the rotated-key buffer")
    p.add_argument("--mode", default="deep_sink", choices=["self_forcing", "deep_sink"], help="FIFO mode (--cache)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = get_preset("real")  # geometry of the 1.3B model at 480x832
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if args.cache:
        out = cache_maintenance(preset.model, preset.tokens_per_frame, args.mode, preset.chunk_frames, dtype,
                                args.repeat)
        sys.stdout.write(json.dumps(out, indent=1) + "\n")
        return 0
    out = run(preset.model, preset.tokens_per_frame, args.window, preset.chunk_frames, dtype, args.repeat)
    sys.stdout.write(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
