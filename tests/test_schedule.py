"""Prompt schedules and --seconds: parsing, timing rules, and bad inputs stopping the CLI before any model loads."""
from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytest

import inference
from app.cli_config import CLIError
from app.schedule import ChunkClock, latent_frames_for_seconds, load_schedule, read_schedule

CLOCK = ChunkClock(chunk_latents=3, temporal=4, fps=16)   # the shipped configs: chunks start at frames 0, 9, 21, ...


@pytest.fixture
def cli_in_process(monkeypatch):
    """Run ``inference.main`` in this process; model loading fails the test; logging and SIGTERM are restored."""
    from app.runner import VideoRunner

    def no_load(*args, **kwargs):
        """Stand-in for VideoRunner.load."""
        raise AssertionError("a model was loaded although the input is bad")

    monkeypatch.setattr(VideoRunner, "load", classmethod(no_load))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sigterm = signal.getsignal(signal.SIGTERM)
    yield inference.main
    root.handlers[:] = handlers
    root.setLevel(level)
    signal.signal(signal.SIGTERM, sigterm)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    """Write a UTF-8 file under tmp_path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- timing rules

def test_chunk_clock_follows_the_causal_vae():
    """Chunk i >= 1 starts at video frame 4iB-3; a switch at s applies from the first chunk starting at or after s."""
    assert [CLOCK.video_frame(i) for i in range(5)] == [0, 9, 21, 33, 45]
    assert CLOCK.seconds(1) == 9 / 16
    cases = {0: 0, 0.01: 1, 9 / 16: 1, 9 / 16 + 1e-6: 2, 21 / 16: 2, 1.4: 3, 60.0: 81}
    assert {s: CLOCK.chunk_at(s) for s in cases} == cases
    assert CLOCK.video_frame(81) >= 60 * 16 > CLOCK.video_frame(80)


@pytest.mark.parametrize("seconds, latents, frames", [(30, 123, 489), (60, 243, 969), (300, 1203, 4809),
                                                      (0.1, 3, 9), (501 / 16, 126, 501)])
def test_seconds_mapping(seconds, latents, frames):
    """--seconds S -> smallest multiple T of the chunk size with 4T-3 >= S * fps (README examples)."""
    T = latent_frames_for_seconds(seconds, CLOCK)
    assert (T, 4 * T - 3) == (latents, frames)
    assert T % 3 == 0 and 4 * T - 3 >= seconds * 16 and 4 * (T - 3) - 3 < seconds * 16


def test_jsonl_and_yaml_schedules_agree(tmp_path):
    """The same schedule as JSONL and YAML gives the same entries and switch chunks; lines are remembered."""
    jsonl = _write(tmp_path, "s.jsonl", '{"start": 0, "prompt": "a fox"}\n\n{"start": 1.5, "prompt": "  a  wolf "}\n')
    yml = _write(tmp_path, "s.yaml", "# story\n- start: 0\n  prompt: a fox\n- {start: 1.5, prompt: a wolf}\n")
    a, b = load_schedule(jsonl, CLOCK, 12), load_schedule(yml, CLOCK, 12)
    assert a.to_list() == b.to_list() == [{"start": 0.0, "prompt": "a fox"}, {"start": 1.5, "prompt": "a wolf"}]
    assert [e.line for e in a.entries] == [1, 3] and [e.line for e in b.entries] == [2, 4]
    assert a.chunks.keys() == b.chunks.keys() == {0, 3}


# ---------------------------------------------------------------- bad schedules

BAD = {
    "unsorted": ("s.jsonl", '{"start": 0, "prompt": "a"}\n{"start": 2, "prompt": "b"}\n{"start": 1, "prompt": "c"}\n',
                 ["line 3", "1 s", "line 2", "sorted"]),
    "same_time": ("s.jsonl", '{"start": 0, "prompt": "a"}\n{"start": 1, "prompt": "b"}\n{"start": 1, "prompt": "c"}\n',
                  ["line 3", "strictly increasing"]),
    "negative": ("s.yaml", "- {start: 0, prompt: a}\n- {start: -2, prompt: b}\n", ["line 2", "negative start -2"]),
    "beyond_video": ("s.jsonl", '{"start": 0, "prompt": "a"}\n{"start": 2.5, "prompt": "b"}\n',
                     ["line 2", "2.5 s", "beyond the video", "2.81 s long", "last at 2.062 s", "--seconds"]),
    "empty_prompt": ("s.jsonl", '{"start": 0, "prompt": "a"}\n{"start": 1, "prompt": "   "}\n',
                     ["line 2", "empty prompt"]),
    "missing_start": ("s.jsonl", '{"prompt": "a"}\n', ["line 1", 'no "start"']),
    "missing_prompt": ("s.yaml", "- start: 0\n", ["line 1", 'no "prompt"']),
    "unknown_key": ("s.jsonl", '{"start": 0, "prompt": "a", "time": 3}\n', ['unknown key "time"']),
    "not_a_number": ("s.jsonl", '{"start": "soon", "prompt": "a"}\n', ["line 1", "'soon'", "number of seconds"]),
    "first_not_zero": ("s.jsonl", '{"start": 1, "prompt": "a"}\n', ["line 1", "must start at 0"]),
    "same_chunk": ("s.jsonl", '{"start": 0, "prompt": "a"}\n{"start": 0.6, "prompt": "b"}\n'
                   '{"start": 0.7, "prompt": "c"}\n',
                   ["line 2 (0.6 s) and line 3 (0.7 s)", "chunk 2", "never be seen"]),
    "invalid_json": ("s.jsonl", '{"start": 0, "prompt": "a"}\n{"start": 1, "prompt": "b"\n',
                     ["s.jsonl, line 2", "not valid JSON"]),
    "invalid_yaml": ("s.yaml", "- start: 0\n  prompt: [a\n", ["s.yaml, line 3", "not valid YAML"]),
    "jsonl_named_json": ("s.json", '{"start": 0, "prompt": "a"}\n{"start": 1, "prompt": "b"}\n',
                         ["s.json, line 2", "name the file .jsonl"]),
    "yaml_not_a_list": ("s.yaml", "start: 0\nprompt: a\n", ["list of {start, prompt}"]),
    "empty": ("s.jsonl", "\n  \n", ["is empty"]),
    "wrong_extension": ("s.txt", "0 a\n", ["extension '.txt'", ".jsonl"]),
    "missing_file": (None, None, ["nowhere.jsonl", "does not exist"]),
    "not_utf8": ("s.jsonl", None, ["not valid UTF-8"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_schedule_stops_the_cli(case, tmp_path, tiny_model_files, cli_in_process, capsys):
    """A bad schedule exits 2 with one 'error:' paragraph naming the file (and line), no traceback, no model."""
    name, text, words = BAD[case]
    if name is None:
        path = tmp_path / "nowhere.jsonl"
    elif text is None:
        path = tmp_path / name
        path.write_bytes(b'{"start": 0, "prompt": "caf\xe9"}\n')
    else:
        path = _write(tmp_path, name, text)
    model_dir, checkpoint = tiny_model_files
    code = cli_in_process(["--wan_model_dir", str(model_dir), "--checkpoint_path", str(checkpoint), "--device", "cpu",
                           "--output_folder", str(tmp_path / "out"), "--num_output_frames", "12",
                           "--prompt_schedule", str(path), "height=32", "width=32"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, err
    assert str(path.name) in errors[0]
    for word in words:
        assert word in errors[0], errors[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_read_schedule_names_the_problem_without_a_video_length(tmp_path):
    """read_schedule alone (no video yet) already rejects malformed entries."""
    with pytest.raises(CLIError, match="empty prompt"):
        read_schedule(_write(tmp_path, "s.jsonl", '{"start": 0, "prompt": ""}\n'))


# ---------------------------------------------------------------- flag combinations

FLAG_CASES = {
    "seconds_and_frames": (["--seconds", "30", "--num_output_frames", "126"], ["--seconds 30", "only one"]),
    "bad_seconds": (["--seconds", "-4"], ["--seconds -4.0", "positive"]),
    "schedule_and_data_path": (["--prompt_schedule", "{schedule}", "--data_path", "{schedule}"],
                               ["cannot be combined with --data_path"]),
    "schedule_and_interactive": (["--prompt_schedule", "{schedule}", "--interactive"],
                                 ["cannot be combined with --interactive"]),
    "endless_without_interactive": (["--endless"], ["needs --interactive"]),
    "endless_with_length": (["--endless", "--interactive", "--seconds", "10"], ["no fixed length"]),
    "endless_upstream_noise": (["--endless", "--interactive", "--noise_order", "upstream"],
                               ["--noise_order chunked"]),
    "endless_many_prompts": (["--endless", "--interactive", "--data_path", "{two_prompts}"],
                             ["renders one video", "2 prompts"]),
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_conflicting_flags(case, tmp_path, tiny_model_files, cli_in_process, capsys):
    """Flags that cannot go together exit 2 with one clear line, before any model loads."""
    flags, words = FLAG_CASES[case]
    schedule = _write(tmp_path, "s.jsonl", '{"start": 0, "prompt": "a"}\n')
    two = _write(tmp_path, "two.txt", "a\nb\n")
    flags = [f.format(schedule=schedule, two_prompts=two) for f in flags]
    model_dir, checkpoint = tiny_model_files
    code = cli_in_process(["--wan_model_dir", str(model_dir), "--checkpoint_path", str(checkpoint), "--device", "cpu",
                           "--output_folder", str(tmp_path / "out"), *flags, "height=32", "width=32"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    line = next(ln for ln in err.splitlines() if ln.startswith("error: "))
    for word in words:
        assert word in line, line


def test_torchrun_interactive_is_refused(monkeypatch, capsys, cli_in_process, tmp_path):
    """--interactive under torchrun (WORLD_SIZE > 1) is refused: stdin belongs to one process."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code = cli_in_process(["--interactive", "--output_folder", str(tmp_path / "out")])
    assert code == 2 and "WORLD_SIZE=2" in capsys.readouterr().err
