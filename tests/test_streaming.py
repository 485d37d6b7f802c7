"""Streaming output, constant memory, prompt schedules and live prompts, through the CLI on the tiny model (CPU)."""
from __future__ import annotations

import json
import queue
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import inference
from app.switching import LivePrompts
from media.video import Mp4Writer, to_uint8
from mp4_probe import fragments, frame_count, probe
from polling import wait_for
from helpers import PROMPTS, SMALL, prompt_file, runner_for, settings_for

REPO_ROOT = Path(__file__).resolve().parent.parent
# A small cache so that eviction / compression happen within a few chunks: window 9, sink 3, PC budget 6.
SMALL_CACHE = ("model_kwargs.local_attn_size=9", "model_kwargs.sink_size=3", "--Budget", "6", "--Recent", "3")


@pytest.fixture
def recorded(monkeypatch):
    """{video name: [uint8 frames handed to the mp4 writer, per append]} for every mp4 written in the test."""
    frames: dict[str, list[np.ndarray]] = {}

    class RecordingWriter(Mp4Writer):
        """Mp4Writer that keeps a copy of every batch it is handed."""

        def append(self, batch):
            """Record, then write."""
            name = self.path.name.removeprefix(".").removesuffix(".part")
            frames.setdefault(name, []).append(batch.copy())
            super().append(batch)

    monkeypatch.setattr("app.streaming.Mp4Writer", RecordingWriter)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return frames


# ---------------------------------------------------------------- streaming output

@pytest.mark.parametrize("mode", ["self_forcing", "deep_sink", "deep_sink_pc"])
def test_streaming_equals_decoding_at_the_end(mode, models, recorded, tmp_path, tiny_model_files):
    """Every prompt of a --data_path run streams chunk by chunk; the frames handed to the writer equal decoding
    all latents at the end (WanVAE.decode), and the latents equal the keep-everything rollout (generate_seeded)."""
    T = 18
    settings = settings_for(tiny_model_files, tmp_path / "out", "--data_path", str(prompt_file(tmp_path, *PROMPTS[:2])),
                            "--mode", mode, "--num_output_frames", str(T), "--num_samples", "2", "--save_latents",
                            *SMALL_CACHE)
    runner = runner_for(models, settings)
    assert inference.run(settings, runner=runner) == 0
    text_encoder, model, vae = models
    plan = inference.output_plan(settings)
    for job in settings.jobs:
        slots = plan[job.index]
        reference = runner.pipeline.generate_seeded(runner.encode(job), T, runner.latent_shape, settings.seed)
        for slot in slots:
            chunks = recorded[slot.video.name]
            assert [len(c) for c in chunks] == [9] + [12] * (T // 3 - 1)  # one append per chunk, 4T-3 in all
            saved = torch.load(slot.video.with_suffix(".pt"), weights_only=True)
            assert saved["format"] == "deep_forcing.latents.v1" and saved["latents"].shape == (T, 16, 4, 4)
            assert torch.equal(saved["latents"], reference[slot.sample])
            at_end = to_uint8(vae.decode(saved["latents"][None])[0])  # [4T-3, H, W, 3]
            assert np.array_equal(np.concatenate(chunks), at_end)
            side = json.loads(slot.sidecar.read_text())
            assert side["latents"] == slot.video.with_suffix(".pt").name and side["num_frames"] == 4 * T - 3
            assert side["mode"] == mode and side["prompt_switches"] == [] and not side["stopped_early"]
            assert frame_count(slot.video) == 4 * T - 3


def test_file_is_readable_after_every_chunk(models, tmp_path, tiny_model_files):
    """After each chunk the growing .part file already holds every frame generated so far, as a new fragment
    starting with a key frame; the final name appears only when the video is complete."""
    settings = settings_for(tiny_model_files, tmp_path / "out", "--data_path", str(prompt_file(tmp_path, PROMPTS[0])),
                            "--num_output_frames", "12")
    runner = runner_for(models, settings)
    job, slots = settings.jobs[0], inference.output_plan(settings)[0]
    seen = []

    def after_chunk(i, f, outputs, frames):
        """Check the growing file once the chunk's fragment is written."""
        (out,) = outputs
        assert out.part.name.endswith(".part") and not slots[0].video.exists()
        out.flush()  # the fragment is encoded and written in the background; wait for that
        info = probe(out.part)
        seen.append((info["frames"], settings.clock.video_frame(i + 1), len(fragments(out.part))))
        assert {settings.clock.video_frame(k) for k in range(i + 1)} <= set(info["key_frames"])
        assert info["pts"] == sorted(set(info["pts"]))  # timestamps run on across fragments

    runner.render(job, slots, on_chunk=after_chunk)
    assert seen == [(9, 9, 1), (21, 21, 2), (33, 33, 3), (45, 45, 4)]
    assert [count for count, _ in fragments(slots[0].video)] == [9, 12, 12, 12]
    assert all(flags == 0x02000000 for _, flags in fragments(slots[0].video))  # each fragment opens with a sync frame
    assert frame_count(slots[0].video) == 45


def test_mp4_writer_flushes_complete_fragments(tmp_path):
    """flush(wait=True) puts exactly the appended frames on disk, each flush one fragment opening on a key frame;
    the recorded size and SHA-256 are the file's; abort stops at once."""
    import hashlib
    from media.video import shared_pool
    frames = np.random.default_rng(0).integers(0, 256, (21, 32, 48, 3), dtype=np.uint8)
    path = tmp_path / "v.mp4"
    with Mp4Writer(path, 48, 32, 16, pool=shared_pool()) as writer:
        for a, b in ((0, 9), (9, 10), (10, 21)):
            writer.append(frames[a:b])
            assert writer.flush(wait=True) == b and frame_count(path) == b
    assert [count for count, _ in fragments(path)] == [9, 1, 11] and {0, 9, 10} <= set(probe(path)["key_frames"])
    assert all(flags == 0x02000000 for _, flags in fragments(path))  # each fragment opens with a sync frame
    assert writer.size_bytes == path.stat().st_size and writer.sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="expected uint8 frames"):
        writer = Mp4Writer(tmp_path / "bad.mp4", 48, 32, 16)
        writer.append(frames[:, :16])
    writer = Mp4Writer(tmp_path / "aborted.mp4", 48, 32, 16, pool=shared_pool())
    writer.append(frames)
    writer.flush(wait=False)
    writer.abort()
    with pytest.raises(RuntimeError, match="closed"):
        writer.append(frames)


MEMORY_DRIVER = """
import resource, sys
sys.path.insert(0, {root!r})
import inference
code = inference.main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "EXIT", code)
"""


def test_peak_host_memory_does_not_grow_with_length(tmp_path, tiny_model_files, cli_env):
    """Peak RSS of a 1203-latent-frame run (4809 frames) exceeds a 201-frame run's by less than 50 MB."""
    model_dir, checkpoint = tiny_model_files
    data = prompt_file(tmp_path, PROMPTS[0])
    procs = {}
    for T in (201, 1203):
        cmd = [sys.executable, "-c", MEMORY_DRIVER.format(root=str(REPO_ROOT)), "--wan_model_dir", str(model_dir),
               "--checkpoint_path", str(checkpoint), "--device", "cpu", "--data_path", str(data), "--output_folder",
               str(tmp_path / f"out{T}"), "--num_output_frames", str(T), "height=16", "width=16",
               "--log_level", "WARNING"]
        procs[T] = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
    peaks = {}
    for T, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0 and "EXIT 0" in out, err[-3000:]
        peaks[T] = int(out.split("MAXRSS_KB")[1].split()[0]) / 1024
        side = json.loads(next((tmp_path / f"out{T}").glob("*.json")).read_text())
        assert side["num_frames"] == 4 * T - 3
    print(f"peak RSS: {peaks[201]:.1f} MB at 201 latent frames, {peaks[1203]:.1f} MB at 1203 "
          f"(growth {peaks[1203] - peaks[201]:+.1f} MB)")
    assert peaks[1203] - peaks[201] < 50, peaks


# ---------------------------------------------------------------- prompt schedules

def test_schedule_with_two_switches(models, recorded, tmp_path, tiny_model_files, monkeypatch):
    """One continuous video; before the first switch it equals the plain run; every chunk's cross-attention uses
    keys recomputed from the prompt active at that chunk; the sidecar records both switches; a rerun skips it."""
    schedule = tmp_path / "story.jsonl"
    schedule.write_text("".join(json.dumps({"start": s, "prompt": p}) + "\n"
                                for s, p in zip((0, 0.5, 1.5), PROMPTS)), encoding="utf-8")
    T = 15  # 5 chunks starting at 0, 0.5625, 1.3125, 2.0625, 2.8125 s: switches at chunks 1 and 3
    common = ("--num_output_frames", str(T), "--mode", "deep_sink_pc", *SMALL_CACHE)
    settings = settings_for(tiny_model_files, tmp_path / "out", "--prompt_schedule", str(schedule), *common)
    runner = runner_for(models, settings)
    seen_k, recache_flags = [], []
    hook = runner.model.blocks[0].cross_attn.register_forward_pre_hook(lambda mod, args: seen_k.append(args[1][0]))
    original = runner.pipeline.frames

    def frames(inputs):
        """Record the re-cache variant the rollout runs with."""
        recache_flags.append(runner.pipeline.recache.name)
        return original(inputs)

    monkeypatch.setattr(runner.pipeline, "frames", frames)
    try:
        assert inference.run(settings, runner=runner) == 0
    finally:
        hook.remove()
    video = tmp_path / "out" / "story-0.mp4"
    assert frame_count(video) == 4 * T - 3 and len(fragments(video)) == 5
    side = json.loads(video.with_suffix(".json").read_text())
    assert side["prompt"] == PROMPTS[0] and side["num_latent_frames"] == T
    entries = [{"start": float(s), "prompt": p} for s, p in zip((0, 0.5, 1.5), PROMPTS)]
    assert side["prompt_schedule"] == {"file": str(schedule), "entries": entries}
    assert side["prompt_switches"] == [
        {"chunk": 1, "latent_frame": 3, "video_frame": 9, "time_s": 0.5625, "source": "schedule",
         "requested_start_s": 0.5, "schedule_line": 2, "prompt": PROMPTS[1]},
        {"chunk": 3, "latent_frame": 9, "video_frame": 33, "time_s": 2.0625, "source": "schedule",
         "requested_start_s": 1.5, "schedule_line": 3, "prompt": PROMPTS[2]}]
    assert side["recache_on_switch"] is False and recache_flags == ["off"]
    # the cross-attention of every call sees the keys of the prompt active at its chunk
    calls = len(runner.pipeline.timesteps) + 1
    assert len(seen_k) == 5 * calls
    active = {0: 0, 1: 1, 2: 1, 3: 2, 4: 2}
    for chunk, p in active.items():
        want = runner.model.encode_text(runner.encode_text(PROMPTS[p]))[0][0]
        assert all(torch.equal(k, want) for k in seen_k[chunk * calls:(chunk + 1) * calls]), chunk
    # frames before the first switch equal a run without a schedule; after it they differ
    plain = settings_for(tiny_model_files, tmp_path / "plain", "--data_path", str(prompt_file(tmp_path, PROMPTS[0])),
                         *common)
    assert inference.run(plain, runner=runner_for(models, plain)) == 0
    scheduled = np.concatenate(recorded["story-0.mp4"])
    unscheduled = np.concatenate(recorded[inference.output_plan(plain)[0][0].video.name])
    assert np.array_equal(scheduled[:9], unscheduled[:9]) and not np.array_equal(scheduled[9:], unscheduled[9:])
    # resumable like any video: the same command finds it finished
    monkeypatch.setattr(runner, "render", lambda *a, **k: pytest.fail("a finished schedule video was rendered"))
    assert inference.run(settings, runner=runner) == 0


def test_recache_flag_reaches_the_pipeline(models, tmp_path, tiny_model_files, monkeypatch):
    """--recache_on_switch makes the rollout re-cache at switches (pipeline-level effect: test_prompt_switch.py)."""
    schedule = tmp_path / "s.yaml"
    schedule.write_text(f"- {{start: 0, prompt: {PROMPTS[0]}}}\n- {{start: 0.5, prompt: {PROMPTS[1]}}}\n")
    settings = settings_for(tiny_model_files, tmp_path / "out", "--prompt_schedule", str(schedule),
                            "--num_output_frames", "6", "--recache_on_switch")
    runner = runner_for(models, settings)
    flags = []
    original = runner.pipeline.frames
    monkeypatch.setattr(runner.pipeline, "frames", lambda inputs: flags.append(runner.pipeline.recache.name)
                        or original(inputs))
    assert inference.run(settings, runner=runner) == 0
    side = json.loads((tmp_path / "out" / "s-0.json").read_text())
    assert flags == ["ours"] and side["recache_on_switch"] is True and side["request"]["recache_on_switch"] is True
    assert [s["chunk"] for s in side["prompt_switches"]] == [1]


# ---------------------------------------------------------------- live prompts (--interactive)

class FakeStdin:
    """A text stream fed by the test: ``readline`` blocks until a line (or '' for the end) is fed."""

    def __init__(self):
        self.lines: queue.Queue = queue.Queue()

    def feed(self, text: str) -> None:
        """Make ``text`` (one line with its newline, or '' for the end of input) readable."""
        self.lines.put(text)

    def readline(self) -> str:
        """The next fed line; the end of input when a test left it waiting (no stray reader thread after it)."""
        try:
            return self.lines.get(timeout=60)
        except queue.Empty:
            return ""


def test_interactive_switch_and_stop(models, tmp_path, tiny_model_files):
    """A line typed during chunk 0 switches the prompt at chunk 1; blank lines and the prompt in use change nothing;
    '/stop' typed during chunk 2 ends the video there, complete and playable."""
    settings = settings_for(tiny_model_files, tmp_path / "out", "--data_path", str(prompt_file(tmp_path, PROMPTS[0])),
                            "--num_output_frames", "18", "--interactive")
    runner = runner_for(models, settings)
    stdin = FakeStdin()
    live = LivePrompts(stdin)
    typed = {0: [PROMPTS[1] + "\n"], 1: ["\n", "   \n", PROMPTS[1] + "\n"], 2: ["/stop\n"]}

    def after_chunk(i, f, outputs, frames):
        """Type lines while the video renders; wait until the reader thread has queued them."""
        for line in typed.get(i, []):
            stdin.feed(line)
        wait_for(lambda: live.pending() == 1, timeout=30)

    slots = inference.output_plan(settings)[0]
    runner.render(settings.jobs[0], slots, live=live, on_chunk=after_chunk)
    side = json.loads(slots[0].sidecar.read_text())
    assert side["prompt_switches"] == [{"chunk": 1, "latent_frame": 3, "video_frame": 9, "time_s": 0.5625,
                                        "source": "stdin", "prompt": PROMPTS[1]}]
    assert side["stopped_early"] and side["num_latent_frames"] == 9 and side["num_frames"] == 33
    assert side["request"]["interactive"] is True and frame_count(slots[0].video) == 33


def test_endless_interactive_ends_with_input(models, tmp_path, tiny_model_files):
    """--endless (chunked noise) runs until stdin ends, then finishes the video at the chunk boundary."""
    settings = settings_for(tiny_model_files, tmp_path / "out", "--data_path", str(prompt_file(tmp_path, PROMPTS[0])),
                            "--interactive", "--endless")
    assert settings.endless and settings.noise_order == "chunked" and settings.num_video_frames is None
    runner = runner_for(models, settings)
    stdin = FakeStdin()
    live = LivePrompts(stdin)

    def after_chunk(i, f, outputs, frames):
        """Close stdin after chunk 3."""
        if i == 3:
            stdin.feed("")
            wait_for(lambda: live.eof, timeout=30)

    slots = inference.output_plan(settings)[0]
    runner.render(settings.jobs[0], slots, live=live, on_chunk=after_chunk)
    side = json.loads(slots[0].sidecar.read_text())
    assert side["endless"] and side["stopped_early"] and side["num_latent_frames"] == 12
    assert side["request"]["num_output_frames"] is None and side["request"]["noise_order"] == "chunked"
    assert frame_count(slots[0].video) == 45


def test_interactive_cli_reads_stdin(tmp_path, tiny_model_files, cli_env):
    """The real CLI in a subprocess: a prompt piped on stdin switches the endless video, the end of input stops it."""
    model_dir, checkpoint = tiny_model_files
    cmd = [sys.executable, str(REPO_ROOT / "inference.py"), "--wan_model_dir", str(model_dir), "--checkpoint_path",
           str(checkpoint), "--device", "cpu", "--data_path", str(prompt_file(tmp_path, PROMPTS[0])),
           "--output_folder", "out", "--interactive", "--endless", *SMALL]
    r = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), input=f"\n{PROMPTS[2]}\n", capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    side = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert [(s["source"], s["prompt"]) for s in side["prompt_switches"]] == [("stdin", PROMPTS[2])]
    assert side["stopped_early"] and side["num_latent_frames"] >= 6
    assert side["num_frames"] == 4 * side["num_latent_frames"] - 3
    assert frame_count(next((tmp_path / "out").glob("*.mp4"))) == side["num_frames"]
