"""Side by side: the in-process PyAV mp4 writer against the ffmpeg-subprocess writer it replaced.

    python -m bench.writer                      # 480x832, 6 chunks per writer, 3 rounds (about a minute)
    python -m bench.writer --chunks 4 --rounds 1 --out bench/results/writer

The old writer (ffmpeg binary of imageio-ffmpeg + FLV demuxer + hand-written fragmented-mp4 boxes) is loaded from
git (``--old_commit``) into a temporary package, so both run in one process on the same frames. Each writer is
driven as a video is written: the first chunk of 9 frames, then chunks of 12; before a chunk is handed over the
previous fragment must be on disk, and the next chunk is handed over right away (the generator would be working in
between). Per writer: wall-clock seconds per chunk (append + waiting for the previous fragment), throughput in
frames per second, and CPU seconds per chunk of this process and its children (the old writer's ffmpeg). Frames
are a synthetic moving scene (smooth gradients, moving discs, mild noise), more like a video than pure noise.
Results go to ``--out`` as writer.json and writer.md.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from utils.paths import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

logger = logging.getLogger("bench.writer")

OLD_COMMIT = "b3ab20d"              # the last commit with the ffmpeg-subprocess writer
OLD_FILES = ("video.py", "flv.py", "fmp4.py")
FIRST_CHUNK, CHUNK = 9, 12           # video frames per chunk (4B-3, then 4B with B = 3)
FPS = 16
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "writer"


def scene(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A synthetic moving scene: uint8 [T, H, W, 3] (drifting gradients, moving discs, mild noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)                  # [H, W] each
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        base = np.stack([128 + 100 * np.sin((x + 3 * t) / 90), 128 + 100 * np.sin((y - 2 * t) / 70),
                         128 + 100 * np.sin((x + y + 5 * t) / 130)], axis=-1)  # [H, W, 3]
        for k in range(3):
            cy, cx = height * (0.3 + 0.2 * k), (width * (0.2 + 0.3 * k) + 7 * t * (k + 1)) % width
            disc = ((y - cy) ** 2 + (x - cx) ** 2) < (40 + 10 * k) ** 2    # [H, W]
            base[disc] = (60 * k, 220 - 60 * k, 120)
        base += rng.normal(0, 4, base.shape)
        frames[t] = np.clip(base, 0, 255).astype(np.uint8)
    return frames


def load_old_writer(commit: str, folder: Path):
    """The old ``media.video`` module from git ``commit``, imported as a temporary package ``old_media``."""
    package = folder / "old_media"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in OLD_FILES:
        source = subprocess.run(["git", "-C", str(REPO_ROOT), "show", f"{commit}:media/{name}"], check=True,
                                capture_output=True, text=True).stdout
        (package / name).write_text(source)
    sys.path.insert(0, str(folder))
    return importlib.import_module("old_media.video")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children so far."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def drive(make_writer, frames: np.ndarray, path: Path) -> dict:
    """Write ``frames`` chunk by chunk as a video is written; wall and CPU seconds, frames/s."""
    bounds = [0, FIRST_CHUNK, *range(FIRST_CHUNK + CHUNK, len(frames) + 1, CHUNK)]
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    writer = make_writer(path)
    handover = []
    for a, b in zip(bounds, bounds[1:]):
        h0 = time.perf_counter()
        writer.flush(wait=True)            # the previous chunk's fragment is on disk
        writer.append(frames[a:b])
        writer.flush(wait=False)
        handover.append(time.perf_counter() - h0)
    writer.close()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    chunks = len(bounds) - 1
    return {"chunks": chunks, "frames": bounds[-1], "wall_s": round(wall, 4),
            "frames_per_s": round(bounds[-1] / wall, 2), "wall_s_per_chunk": round(wall / chunks, 4),
            "cpu_s_per_chunk": round(cpu / chunks, 4), "frames_per_cpu_s": round(bounds[-1] / cpu, 2),
            "handover_s_per_chunk": round(sum(handover) / chunks, 4),
            "bytes": path.stat().st_size}


def decoded_frames(path: Path) -> int:
    """Frames PyAV decodes from ``path`` (a check that each writer wrote a whole video)."""
    import av
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def median(rows: list[dict], key: str) -> float:
    """Median of ``key`` over rounds."""
    return float(np.median([r[key] for r in rows]))


def markdown(results: dict) -> str:
    """The results as a short markdown table."""
    cfg = results["config"]
    lines = [f"# mp4 writer: PyAV in-process vs ffmpeg subprocess ({cfg['height']}x{cfg['width']})", "",
             f"`{results['command']}`", "",
             f"{results['environment']['cpu']} ({results['environment']['cpu_count']} cores), PyAV "
             f"{results['environment']['av']}; {cfg['chunks']} chunks per video ({FIRST_CHUNK} frames, then "
             f"{CHUNK}), {cfg['rounds']} round(s), medians; CPU includes ffmpeg's for the old writer.", "",
             "| writer | frames/s | wall s/chunk | CPU s/chunk | frames per CPU s | hand-over s/chunk | MB/video |",
             "|---|---|---|---|---|---|---|"]
    for name, row in results["summary"].items():
        lines.append(f"| {name} | {row['frames_per_s']:.1f} | {row['wall_s_per_chunk']:.3f} | "
                     f"{row['cpu_s_per_chunk']:.3f} | {row['frames_per_cpu_s']:.1f} | "
                     f"{row['handover_s_per_chunk']:.3f} | {row['bytes'] / 1e6:.2f} |")
    ratio = results["summary"]["new (PyAV)"]["frames_per_s"] / results["summary"]["old (ffmpeg subprocess)"][
        "frames_per_s"]
    cpu_ratio = results["summary"]["old (ffmpeg subprocess)"]["cpu_s_per_chunk"] / results["summary"]["new (PyAV)"][
        "cpu_s_per_chunk"]
    lines += ["", f"New/old: throughput {ratio:.2f}x, CPU efficiency {cpu_ratio:.2f}x (wall-clock figures depend on "
              f"what else runs on the machine; load average {results['environment']['load_average']}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both writers on the same frames, alternating, and write writer.json / writer.md."""
    p = argparse.ArgumentParser(description="Benchmark the mp4 writer against the one it replaced.")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--chunks", type=int, default=6, help="chunks per video (default 6 = 69 frames)")
    p.add_argument("--rounds", type=int, default=3, help="videos per writer, alternating (default 3)")
    p.add_argument("--old_commit", default=OLD_COMMIT)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.chunks < 1 or args.rounds < 1:
        sys.stderr.write("error: --chunks and --rounds must be at least 1\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import av
    from media.video import Mp4Writer, shared_pool
    frames = scene(FIRST_CHUNK + CHUNK * (args.chunks - 1), args.height, args.width)
    with tempfile.TemporaryDirectory(prefix="bench_writer_") as tmp:
        tmp = Path(tmp)
        try:
            old = load_old_writer(args.old_commit, tmp)
        except (subprocess.CalledProcessError, ImportError) as exc:
            sys.stderr.write(f"error: cannot load the old writer from git {args.old_commit} ({exc}); run from a "
                             f"git checkout that has this commit, or pass --old_commit\n")
            return 2
        writers = {
            "old (ffmpeg subprocess)": lambda path: old.Mp4Writer(
                path, args.width, args.height, FPS, keyframes=old.chunk_keyframes(FIRST_CHUNK, CHUNK)),
            "new (PyAV)": lambda path: Mp4Writer(path, args.width, args.height, FPS, pool=shared_pool()),
        }
        rows: dict[str, list[dict]] = {name: [] for name in writers}
        for r in range(args.rounds):
            for name, make in writers.items():
                path = tmp / f"{r}-{len(rows[name])}-{name.split()[0]}.mp4"
                row = drive(make, frames, path)
                if decoded_frames(path) != len(frames):
                    raise RuntimeError(f"{name} wrote {decoded_frames(path)} of {len(frames)} frames")
                rows[name].append(row)
                logger.info("round %d %-24s %6.1f frames/s, %.3f CPU s/chunk", r + 1, name, row["frames_per_s"],
                            row["cpu_s_per_chunk"])
    summary = {name: {key: median(rs, key) for key in ("frames_per_s", "wall_s_per_chunk", "cpu_s_per_chunk",
                                                         "frames_per_cpu_s", "handover_s_per_chunk", "bytes")}
               for name, rs in rows.items()}
    results = {"command": " ".join(["python -m bench.writer", *(argv if argv is not None else sys.argv[1:])]),
               "config": {"height": args.height, "width": args.width, "chunks": args.chunks, "rounds": args.rounds,
                          "fps": FPS, "old_commit": args.old_commit},
               "environment": {"cpu": platform.processor() or platform.machine(), "cpu_count": _cpu_count(),
                               "av": av.__version__, "python": platform.python_version(),
                               "load_average": [round(x, 2) for x in os.getloadavg()]},
               "summary": summary, "rounds": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "writer.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "writer.md").write_text(markdown(results))
    logger.info("%s", markdown(results))
    return 0


def _cpu_count() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    sys.exit(main())
