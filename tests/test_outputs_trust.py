"""Outputs you can trust: any fps, verified resume, per-video locks, robust sidecars, text that UTF-8 can hold."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

import inference
from app.locks import VideoLock, lock_path
from app.outputs import (OutputSlot, claim_slots, file_record, json_bytes, pending_slots, plan_outputs, sanitize,
                         write_json_atomic)
from app.prompts import PromptJob
from app.switching import LivePrompts
from media.video import WRITER_THREADS, Mp4Writer, encoder_threads, shared_pool
from mp4_probe import fragments, probe
from polling import wait_for
from helpers import PROMPTS, SMALL, prompt_file, runner_for, settings_for

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_FLAGS = ("--device", "cpu", *SMALL)


def model_args(tiny_model_files) -> list[str]:
    """Flags pointing the CLI at the tiny model on CPU."""
    model_dir, checkpoint = tiny_model_files
    return ["--wan_model_dir", str(model_dir), "--checkpoint_path", str(checkpoint), *MODEL_FLAGS]


def videos_and_sidecars_agree(folder: Path) -> dict[str, int]:
    """{video name: decoded frames} of every mp4 under ``folder``; each has a sidecar recording its frame count,
    size and SHA-256."""
    out = {}
    for video in sorted(folder.rglob("*.mp4")):
        side = json.loads(video.with_suffix(".json").read_text(encoding="utf-8"))
        frames = probe(video)["frames"]
        assert frames == side["num_frames"], video
        assert side["mp4"] == file_record(video), video
        out[video.name] = frames
    return out


def leftovers(folder: Path) -> list[Path]:
    """Temporary and lock files under ``folder``."""
    return [p for p in folder.rglob("*") if p.name.endswith((".part", ".lock"))]


# ---------------------------------------------------------------- the writer at any fps, bounded resources

def writer_chunks(end: int) -> list[int]:
    """First frames of the chunks written up to frame ``end`` (9 frames, then 12)."""
    return [start for start in (0, 9, 21) if start < end]


@pytest.mark.parametrize("fps", [8, 16, 24, 30, 60, 120, 29.97])
def test_any_fps_writes_a_playable_growing_file(fps, tmp_path):
    """Chunks of 9 then 12 frames: after each flush the file decodes to exactly the frames so far, one fragment per
    chunk opening on a key frame, at the requested frame rate (fps >= 101 used to hang)."""
    frames = np.random.default_rng(int(fps)).integers(0, 256, (33, 32, 32, 3), dtype=np.uint8)
    path = tmp_path / "v.mp4"
    with Mp4Writer(path, 32, 32, fps, pool=shared_pool()) as writer:
        for a, b in ((0, 9), (9, 21), (21, 33)):
            writer.append(frames[a:b])
            assert writer.flush(wait=True) == b
            info = probe(path)
            assert info["frames"] == b and len(fragments(path)) == len(writer_chunks(b))
            assert set(writer_chunks(b)) <= set(info["key_frames"])         # each fragment opens on a key frame
    info = probe(path)
    assert info["frames"] == 33 and abs(info["fps"] - fps) < 1e-3 and info["codec"] == "h264"
    assert [n for n, _ in fragments(path)] == [9, 12, 12]


def test_cli_at_120_fps(run_cli, tmp_path, tiny_model_files):
    """The CLI at fps=120 finishes with a playable 120 fps video of 4T-3 frames."""
    r = run_cli(*model_args(tiny_model_files), "--data_path", prompt_file(tmp_path, PROMPTS[0]), "--output_folder",
                "out", "--num_output_frames", 6, "fps=120", timeout=300)
    assert r.returncode == 0, r.stderr
    video = next((tmp_path / "out").glob("*.mp4"))
    info = probe(video)
    assert info["frames"] == 21 and info["fps"] == 120
    assert videos_and_sidecars_agree(tmp_path / "out") == {video.name: 21}


def test_sixteen_samples_bounded_threads_and_files(models, tmp_path, tiny_model_files):
    """--num_samples 16 writes 16 videos in-process: no child process, at most the writer pool plus each file's
    encoder and scaler threads, and two open files per video (the mp4 and its lock)."""
    settings = settings_for(tiny_model_files, tmp_path / "out", "--data_path", str(prompt_file(tmp_path, PROMPTS[0])),
                            "--num_output_frames", "6", "--num_samples", "16")
    runner = runner_for(models, settings)
    me = psutil.Process()
    shared_pool()
    before = (me.num_threads(), me.num_fds())
    seen = []
    original = runner.render

    def render(job, slots, **kwargs):
        """Render, counting threads, open files and children after every chunk."""
        def after_chunk(i, f, outputs, frames):
            """Resources while 16 files are open."""
            seen.append((me.num_threads(), me.num_fds(), len(me.children(recursive=True))))
        return original(job, slots, on_chunk=after_chunk, **kwargs)

    runner.render = render
    assert inference.run(settings, runner=runner) == 0
    assert len(seen) == 2
    threads, fds, children = max(seen)
    print(f"16 samples: {threads - before[0]:+d} threads, {fds - before[1]:+d} open files, {children} children")
    assert children == 0
    assert threads - before[0] <= WRITER_THREADS + 2 * 16 * encoder_threads(16), (before, seen)
    assert fds - before[1] <= 2 * 16 + 2, (before, seen)
    assert len(videos_and_sidecars_agree(tmp_path / "out")) == 16 and not leftovers(tmp_path / "out")


# ---------------------------------------------------------------- verified resume, robust sidecars

def test_damaged_videos_and_foreign_sidecars_are_redone(models, tmp_path, tiny_model_files, caplog):
    """A truncated, a replaced and a damaged mp4, and sidecars that are a list, a string, have "request": null or
    no record of the mp4, each count as unfinished (with a warning) and are made again; the untouched one is not."""
    settings = settings_for(tiny_model_files, tmp_path / "out", "--data_path",
                            str(prompt_file(tmp_path, *PROMPTS[:2])), "--num_output_frames", "3", "--num_samples", "4")
    runner = runner_for(models, settings)
    assert inference.run(settings, runner=runner) == 0
    plan = inference.output_plan(settings)
    (a0, a1, a2, a3), (b0, b1, b2, b3) = plan[0], plan[1]
    data = a0.video.read_bytes()
    a0.video.write_bytes(data[:len(data) // 2])                              # truncated
    shutil.copyfile(b0.video, a1.video)                                      # replaced by another video
    damaged = bytearray(a2.video.read_bytes())
    damaged[-10] ^= 0xFF
    a2.video.write_bytes(bytes(damaged))                                     # same size, other bytes
    a3.sidecar.write_text("[1, 2]")                                          # a list
    b0.sidecar.write_text(json.dumps({**json.loads(b0.sidecar.read_text()), "request": None}))
    b1.sidecar.write_text('"done"')                                          # a string
    side = json.loads(b3.sidecar.read_text())
    del side["mp4"]
    b3.sidecar.write_text(json.dumps(side))                                  # no record of the video
    untouched = b2.video.stat().st_mtime_ns
    for overwrite in (True, False):                                          # never a crash, either way
        todo, finished = pending_slots(settings.jobs, plan, settings.request, overwrite=overwrite)
    assert finished == 1 and [len(slots) for _, slots in todo] == [4, 3]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "redoing" in r.getMessage()]
    assert len(set(warned)) == 7                                              # the same 7 in both scans
    assert any("truncated" in w for w in warned) and any("JSON list" in w for w in warned)
    assert any("SHA-256" in w for w in warned) and any("\"request\"" in w for w in warned)
    rendered = []
    original = runner.render
    runner.render = lambda job, slots, **kw: rendered.extend(slots) or original(job, slots, **kw)
    assert inference.run(settings, runner=runner) == 0
    assert sorted(rendered, key=str) == sorted([a0, a1, a2, a3, b0, b1, b3], key=str)
    assert b2.video.stat().st_mtime_ns == untouched
    assert videos_and_sidecars_agree(tmp_path / "out") == {s.video.name: 9 for s in plan[0] + plan[1]}
    runner.render = lambda *a, **k: pytest.fail("a finished video was rendered again")
    assert inference.run(settings, runner=runner) == 0


# ---------------------------------------------------------------- per-video locks

HOLD_LOCK = """
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from app.locks import VideoLock
lock = VideoLock(Path(sys.argv[1]))
assert lock.acquire()
print("LOCKED", flush=True)
time.sleep(120)
"""


def test_lock_held_by_a_live_process_then_freed_by_its_death(tmp_path):
    """A video locked by another live process is skipped and its .part kept; once that process is SIGKILLed the
    lock is free, the stale .part is removed and the video is claimed; the lock file goes with the release."""
    slot = OutputSlot(tmp_path / "a-0.mp4", 0)
    job = PromptJob(0, 0, "a", None, Path("p.txt"), "")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK.format(root=str(REPO_ROOT)), str(slot.video)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        part = slot.parts()[0]
        part.write_bytes(b"half a video")
        todo, finished = pending_slots([job], {0: [slot]}, lambda j, s: {})
        assert todo == [(job, [slot])] and finished == 0 and part.exists()   # listed, but its .part is kept
        with claim_slots(job, [slot], lambda j, s: {}) as claimed:
            assert claimed == [] and part.exists()
        assert not VideoLock(slot.video).acquire()
        assert f"pid {holder.pid}" in lock_path(slot.video).read_text()
    finally:
        holder.kill()
        holder.wait()
    with claim_slots(job, [slot], lambda j, s: {}) as claimed:
        assert claimed == [slot] and not part.exists() and lock_path(slot.video).exists()
        assert not VideoLock(slot.video).acquire()                           # held by this claim
    assert not lock_path(slot.video).exists() and VideoLock(slot.video).acquire()


def test_lock_file_deleted_under_a_waiting_opener(tmp_path, monkeypatch):
    """A run that opened the lock file just before its holder deleted it does not end up holding a dead file."""
    video = tmp_path / "a-0.mp4"
    first = VideoLock(video)
    assert first.acquire()
    second = VideoLock(video)
    real_flock = __import__("fcntl").flock
    calls = []

    def flock(fd, op):
        """The holder releases (deleting the file) between the second run's open and its flock."""
        if not calls:
            first.release()
        calls.append(fd)
        return real_flock(fd, op)

    monkeypatch.setattr("app.locks.fcntl.flock", flock)
    assert second.acquire() and len(calls) == 2                              # retried on the new file
    assert os.path.samestat(os.fstat(second._fd), os.stat(lock_path(video)))
    second.release()


def _lock_owner_pids(out: Path) -> dict[int, Path]:
    """{pid: video} of every lock file under ``out`` whose holder wrote its pid."""
    found = {}
    for p in out.rglob(".*.lock"):
        try:
            text = p.read_text()
        except OSError:
            continue
        if " pid " in text:
            found[int(text.split(" pid ")[1])] = p
    return found


def test_two_runs_share_a_folder_one_killed(tmp_path, tiny_model_files, cli_env):
    """Two CLI runs over 4 prompts into one folder split the work; the second is SIGKILLed mid-video; a rerun
    leaves exactly 4 videos whose decoded frame counts equal their sidecars, and no .part or lock file."""
    data = prompt_file(tmp_path, "a red fox in snow", "a city at night", "waves on rocks", "a candle flame")
    out = tmp_path / "out"
    args = [sys.executable, str(REPO_ROOT / "inference.py"), *model_args(tiny_model_files), "--data_path", str(data),
            "--output_folder", str(out), "--num_output_frames", "3"]
    slow = cli_env(DEEP_FORCING_DEBUG_FRAME_DELAY="0.6")                    # ~5.4 s to write each 9-frame video
    first, second = (subprocess.Popen(args, cwd=tmp_path, env=slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for _ in range(2))
    try:
        def both_writing():
            """The second run's locked video when both runs hold a video and the second is writing its .part."""
            owners = _lock_owner_pids(out)
            if not {first.pid, second.pid} <= set(owners):
                return None
            lock = owners[second.pid]
            return lock if lock.with_name(lock.name.removesuffix(".lock") + ".part").exists() else None

        # both runs hold a video at the same moment, so the later one has passed the other's video (skipped it)
        wait_for(both_writing, timeout=240)
        second.send_signal(signal.SIGKILL)
        _, second_err = second.communicate(timeout=60)
        _, first_err = first.communicate(timeout=300)
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
    assert second.returncode == -signal.SIGKILL and first.returncode == 0, first_err
    # the runs split the list: the one that lost the race for a video skipped it instead of writing it too
    assert "skipping" in first_err + second_err and "another run" in first_err + second_err
    written = [line.split("wrote ")[1].split(" (")[0] for line in (first_err + second_err).splitlines()
               if " wrote " in line]
    assert len(written) == len(set(written))
    r = subprocess.run(args, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert videos_and_sidecars_agree(out) == {f"{p}-0.mp4": 9 for p in ("a red fox in snow", "a city at night",
                                                                        "waves on rocks", "a candle flame")}
    assert not leftovers(out)


# ---------------------------------------------------------------- text UTF-8 cannot hold

def test_lone_surrogate_in_a_schedule_is_an_error_before_loading(run_cli, tmp_path, tiny_model_files):
    """A schedule prompt with a lone surrogate escape stops the CLI before any model loads: no mp4, no sidecar."""
    schedule = tmp_path / "story.jsonl"
    schedule.write_text('{"start": 0, "prompt": "a fox"}\n{"start": 0.5, "prompt": "a \\ud800 owl"}\n')
    r = run_cli(*model_args(tiny_model_files), "--prompt_schedule", schedule, "--output_folder", "out",
                "--num_output_frames", 6)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "story.jsonl, line 2" in r.stderr and "U+D800" in r.stderr and "loading models" not in r.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_non_utf8_interactive_line_and_file_name(tmp_path, tiny_model_files, cli_env):
    """A line typed in another encoding, and a prompt file whose name is not UTF-8 (it names the sub-folder): the
    run finishes, every mp4 has its sidecar, undecodable bytes appear as U+FFFD."""
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    Path(os.fsdecode(os.fsencode(prompts) + b"/caf\xe9.txt")).write_text("a quiet street\n", encoding="utf-8")
    cmd = [sys.executable, str(REPO_ROOT / "inference.py"), *model_args(tiny_model_files), "--data_path",
           str(prompts), "--output_folder", "out", "--interactive", "--endless"]
    r = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), input=b"un caf\xe9 noir\n", capture_output=True,
                       timeout=300)
    stderr = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 0, stderr
    videos = list((tmp_path / "out").rglob("*.mp4"))
    assert [v.relative_to(tmp_path / "out").as_posix() for v in videos] == ["caf\ufffd/a quiet street-0.mp4"]
    side = json.loads(videos[0].with_suffix(".json").read_text(encoding="utf-8"))
    assert [s["prompt"] for s in side["prompt_switches"]] == ["un caf\ufffd noir"]
    assert probe(videos[0])["frames"] == side["num_frames"] and side["mp4"] == file_record(videos[0])
    assert not leftovers(tmp_path / "out")


def test_live_prompts_replace_undecodable_bytes(caplog):
    """LivePrompts turns surrogate-escaped bytes into U+FFFD, with a warning, and keeps reading."""
    import io
    stream = io.TextIOWrapper(io.BytesIO(b"caf\xe9\nnext\n"), encoding="utf-8", errors="surrogateescape")
    live = LivePrompts(stream)
    wait_for(lambda: live.eof or live.pending() == 2)
    assert [live._lines.get_nowait() for _ in range(2)] == ["caf\ufffd", "next"]
    assert any("not valid UTF-8" in r.getMessage() for r in caplog.records)


def test_names_and_sidecars_never_fail_on_text(tmp_path, caplog):
    """Names replace lone surrogates by U+FFFD; a record holding one is still written (with \\u escapes)."""
    bad = "caf" + os.fsdecode(b"\xe9")
    assert sanitize(bad) == "caf\ufffd"
    job = PromptJob(0, 0, bad, None, Path(bad + ".txt"), bad)
    (slot,) = plan_outputs([job], tmp_path, 1, False, False)[0]
    assert slot.video == tmp_path / "caf\ufffd" / "caf\ufffd-0.mp4"
    assert json_bytes({"a": "caf\u00e9"}).decode("utf-8") == '{\n  "a": "caf\u00e9"\n}\n'
    write_json_atomic(tmp_path / "x.json", {"file": bad})
    assert json.loads((tmp_path / "x.json").read_text(encoding="utf-8"))["file"] == bad
    assert any("not valid Unicode" in r.getMessage() for r in caplog.records)


def test_a_key_frame_inside_a_chunk_does_not_split_its_fragment(tmp_path):
    """x264 may place a key frame of its own at a scene cut; the chunk is still written as one fragment."""
    from scenes import scene
    cut = 255 - scene(20, 128, 128, seed=1)[:, ::-1]                        # another scene from frame 20 on
    cut[..., 0] = np.roll(cut[..., 0], 40, axis=1)
    frames = np.concatenate([scene(20, 128, 128, seed=0), cut])
    path = tmp_path / "v.mp4"
    with Mp4Writer(path, 128, 128, 16) as writer:
        writer.append(frames)
    info = probe(path)
    assert len(info["key_frames"]) > 1 and info["frames"] == 40             # x264 did add key frames ...
    assert [n for n, _ in fragments(path)] == [40]                           # ... inside the one fragment
