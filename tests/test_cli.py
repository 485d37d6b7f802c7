"""End-to-end tests of the real CLI (subprocesses) on the tiny fixture model, on CPU."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from polling import wait_for
from helpers import frames_of, model_args, read_video

REPO_ROOT = Path(__file__).resolve().parent.parent

SMALL = ("height=32", "width=32")   # latent 4x4: 4 tokens per frame
FRAMES = 3                          # one chunk -> 4*3-3 = 9 video frames


def outputs(folder: Path) -> dict[str, list[str]]:
    """{sub-folder relative path: sorted file names} of every folder with files under ``folder``."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        if files:
            out[str(Path(dirpath).relative_to(folder))] = sorted(files)
    return out


def line_files(folder: Path, prompts: list[str]) -> Path:
    """Write prompts as line_XXXX.txt files (one per file)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(prompts):
        (folder / f"line_{i:04d}.txt").write_text(p + "\n", encoding="utf-8")
    return folder


PROMPTS = ["a paper boat drifts down a rain gutter", "sunrise over a foggy harbour / fishing boats leave",
           "a hummingbird hovers at a red flower"]


def test_demo_writes_playable_videos(run_cli, tmp_path):
    """--demo writes playable 16 fps mp4s with 4T-3 frames at the asked size, plus sidecars."""
    r = run_cli("--demo", "--output_folder", "out", "--num_output_frames", 6, "--report_timing", *SMALL)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("timing of prompt") == 2 and "rollout" in r.stderr  # --report_timing: one line per prompt
    files = outputs(tmp_path / "out")["."]
    videos = [f for f in files if f.endswith(".mp4")]
    assert len(videos) == 2 and len(files) == 4
    assert not any("/" in v for v in videos) and any("fish_noodle" in v for v in videos)
    for v in videos:
        n, fps, size, codec = read_video(tmp_path / "out" / v)
        assert (n, fps, size, codec) == (4 * 6 - 3, 16.0, (32, 32), "h264")
        side = json.loads((tmp_path / "out" / v).with_suffix(".json").read_text(encoding="utf-8"))
        assert side["video"] == v and side["num_frames"] == 21 and side["num_latent_frames"] == 6
        assert side["fps"] == 16 and (side["height"], side["width"]) == (32, 32) and side["seed"] == 1356145
        assert side["mode"] == "deep_sink_pc" and side["cache"]["sink_size"] == 10 and side["cache"]["budget"] == 16
        assert {"rollout", "text_encoder", "decode", "write", "total"} <= set(side["timings_s"])
        assert "torch" in side["versions"] and side["prompt"] and side["request"]["prompt"] == side["prompt"]


def test_directory_run_rerun_skips(run_cli, tmp_path, tiny_model_files):
    """A folder of 3 prompt files renders in one process; a rerun skips them; changed settings redo."""
    data = line_files(tmp_path / "prompts", PROMPTS)
    args = [*model_args(tiny_model_files), "--data_path", data, "--output_folder", "out",
            "--num_output_frames", FRAMES, *SMALL]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("models ready") == 1  # one process, models loaded once for the 3 prompts
    tree = outputs(tmp_path / "out")
    assert sorted(tree) == ["line_0000", "line_0001", "line_0002"]
    assert all(len(files) == 2 for files in tree.values())
    assert tree["line_0001"] == ["sunrise over a foggy harbour _ fishing boats leave-0.json",
                                 "sunrise over a foggy harbour _ fishing boats leave-0.mp4"]
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")}
    # the third prompt rendered alone in a fresh process gives the same video (reseeded per prompt, cache reset)
    alone = tmp_path / "alone.txt"
    alone.write_text(PROMPTS[2] + "\n")
    r = run_cli(*args, "--data_path", alone, "--output_folder", "alone")
    assert r.returncode == 0, r.stderr
    third = next((tmp_path / "out" / "line_0002").glob("*.mp4"))
    assert (frames_of(third) == frames_of(tmp_path / "alone" / third.name)).all()
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "3 video(s) already finished, 0 prompt(s) to render" in r.stderr and "loading models" not in r.stderr
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")} == mtimes
    # a changed setting makes the same file names stale: they are redone, not skipped
    r = run_cli(*args, "--seed", 7, "--save_with_index")
    assert r.returncode == 0, r.stderr
    assert outputs(tmp_path / "out")["line_0000"][:2] == ["0-0_regular.json", "0-0_regular.mp4"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_kill_mid_video_then_resume(tmp_path, tiny_model_files, cli_env, sig):
    """Killing a run while the 2nd video is written, then rerunning, leaves exactly the complete set."""
    data = line_files(tmp_path / "prompts", PROMPTS)
    out = tmp_path / "out"
    args = [sys.executable, str(REPO_ROOT / "inference.py"), *model_args(tiny_model_files), "--data_path", data,
            "--output_folder", out, "--num_output_frames", FRAMES, *SMALL]
    args = [str(a) for a in args]
    slow = cli_env(DEEP_FORCING_DEBUG_FRAME_DELAY="0.5")  # ~4.5 s to write each 9-frame video
    proc = subprocess.Popen(args, cwd=tmp_path, env=slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = wait_for(lambda: (out / "line_0000").is_dir() and list((out / "line_0000").glob("*.json")))
        part = wait_for(lambda: list(out.rglob("*.part")))
        assert "line_0001" in str(part[0])  # the second video is being written right now
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert "interrupted: 1 video(s) finished in this run" in stderr and "Traceback" not in stderr
        assert not list(out.rglob("*.part"))  # cleaned up on the way out
    else:
        assert proc.returncode == -signal.SIGKILL
    first_mtime = first[0].stat().st_mtime_ns
    r = subprocess.run(args, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "1 video(s) already finished, 2 prompt(s) to render" in r.stderr
    tree = outputs(out)
    assert sorted(tree) == ["line_0000", "line_0001", "line_0002"]
    assert all(len(files) == 2 and not any(f.endswith(".part") for f in files) for files in tree.values())
    assert first[0].stat().st_mtime_ns == first_mtime
    for folder in tree:
        video = next((out / folder).glob("*.mp4"))
        assert read_video(video)[0] == 4 * FRAMES - 3


def test_torchrun_two_ranks_write_each_prompt_once(tmp_path, tiny_model_files, cli_env):
    """torchrun with 2 ranks (CPU) writes each of 5 prompts exactly once, round robin."""
    prompts = tmp_path / "five.txt"
    prompts.write_text("".join(f"prompt number {i} with a lighthouse\n" for i in range(5)), encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO_ROOT / "inference.py"), *model_args(tiny_model_files), "--data_path", prompts,
           "--output_folder", "out", "--num_output_frames", FRAMES, *SMALL]
    r = subprocess.run([str(c) for c in cmd], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    files = outputs(tmp_path / "out")["."]
    assert len(files) == 10
    sides = [json.loads((tmp_path / "out" / f).read_text()) for f in files if f.endswith(".json")]
    assert sorted(s["source"]["index"] for s in sides) == [0, 1, 2, 3, 4]
    assert all(s["rank"] == s["source"]["index"] % 2 and s["world_size"] == 2 for s in sides)
    assert r.stderr.count("INFO [rank 0/2] inference: wrote") == 3
    assert r.stderr.count("INFO [rank 1/2] inference: wrote") == 2


@pytest.mark.parametrize("script, folder, mode, sink", [("DS_inference.sh", "DS", "deep_sink", 14),
                                                         ("DS_PC_inference.sh", "DS_PC", "deep_sink_pc", 10)])
def test_shell_scripts_end_to_end(tmp_path, tiny_model_files, cli_env, script, folder, mode, sink):
    """DS_inference.sh and DS_PC_inference.sh run end to end on the tiny model with extra arguments."""
    data = line_files(tmp_path / "prompts", PROMPTS[:2])
    cmd = ["bash", str(REPO_ROOT / script), *model_args(tiny_model_files), "--data_path", data,
           "--num_output_frames", FRAMES, *SMALL]
    r = subprocess.run([str(c) for c in cmd], cwd=tmp_path, env=cli_env(PYTHON=sys.executable), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    tree = outputs(tmp_path / "output" / folder)
    assert sorted(tree) == ["line_0000", "line_0001"] and all(len(f) == 2 for f in tree.values())
    side = json.loads(next((tmp_path / "output" / folder / "line_0000").glob("*.json")).read_text())
    assert side["mode"] == mode and side["cache"]["sink_size"] == sink and side["num_frames"] == 4 * FRAMES - 3
