"""Unit tests of the CLI's building blocks: configs, prompt sources, output names, atomic files, sharding, docs."""
from __future__ import annotations

import dataclasses

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from app.cli_config import TRAINING_KEYS, CLIError, load_config, run_config_class
from utils.paths import REPO_ROOT
from app.outputs import (MAX_NAME_BYTES, OutputSlot, atomic_path, base_name, check_finished, file_record,
                           part_path,
                           plan_outputs, remove_parts, sanitize, write_json_atomic)
from app.prompts import PromptJob, load_prompt_jobs, read_lines, shard
from app.runtime import DistEnv
from media.video import to_uint8, write_mp4

CONFIGS = REPO_ROOT / "configs" / "self_forcing_dmd"


def job(prompt: str, line: int = 0, index: int = 0, group: str = "") -> PromptJob:
    """A prompt job from nowhere."""
    return PromptJob(index, line, prompt, None, Path("p.txt"), group)


# ---------------------------------------------------------------- configs

def test_sink_configs_differ_only_in_sink_size():
    """The 22 shipped configs are identical except model_kwargs.sink_size."""
    base = yaml.safe_load((CONFIGS / "self_forcing_dmd_sink0.yaml").read_text())
    for s in range(22):
        cfg = yaml.safe_load((CONFIGS / f"self_forcing_dmd_sink{s}.yaml").read_text())
        assert cfg["model_kwargs"] == {"timestep_shift": 5.0, "local_attn_size": 21, "sink_size": s}
        assert {k: v for k, v in cfg.items() if k != "model_kwargs"} == \
            {k: v for k, v in base.items() if k != "model_kwargs"}
        assert cfg["denoising_step_list"] == [1000, 750, 500, 250] and cfg["num_frame_per_block"] == 3


def test_load_config_merges_and_overrides():
    """Defaults <- config file <- key=value overrides, dotted keys into model_kwargs; origins recorded."""
    loaded = load_config(CONFIGS / "self_forcing_dmd_sink14.yaml", ["model_kwargs.sink_size=12", "height=96",
                                                                     "denoising_step_list=[1000, 500]"])
    cfg = loaded.cfg
    assert (cfg.rollout.timestep_shift, cfg.cache.params['local_attn_size'], cfg.cache.params['sink_size']) == \
        (5.0, 21, 12)
    assert cfg.height == 96 and cfg.width == 832 and cfg.rollout.denoising_step_list == [1000, 500]
    assert cfg.fps == 16 and cfg.cache.mode == "deep_sink_pc" and cfg.cache.params.get('budget') is None
    assert loaded.origin("cache.params.sink_size") == "override 'model_kwargs.sink_size=12'"
    assert loaded.origin("model_kwargs.local_attn_size").endswith("self_forcing_dmd_sink14.yaml")
    assert loaded.origin("fps") == "default"


@pytest.mark.parametrize("body, needle", [
    ("sink_size: 3\n", "unknown config key 'sink_size'. Did you mean 'model_kwargs.sink_size'"),
    ("model_kwargs:\n  sinksize: 3\n", "Did you mean 'model_kwargs.sink_size'"),
    ("num_frame_per_block: three\n", "'num_frame_per_block' has a value of the wrong type"),
    ("fps: .inf\n", "fps=inf is not a finite number"),
    ("context_noise: .nan\n", "context_noise=nan is not a finite number"),
    ("model_kwargs:\n  timestep_shift: .inf\n", "model_kwargs.timestep_shift=inf"),
    ("fps: 1000\n", "fps=1000 is outside the supported range"),
    ("model_kwargs: 3\n", "'model_kwargs' must be a mapping"),
    ("height: [1\n", "not valid YAML"),
    ("- a\n- b\n", "YAML mapping"),
    ("!!python/object/apply:os.system ['touch pwned']\n", "nothing in the file is executed"),
])
def test_bad_config_files(tmp_path, body, needle):
    """Bad config files raise one-line CLIErrors naming the file and key."""
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(CLIError, match=re.escape(needle)) as exc:
        load_config(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_upstream_training_keys_are_ignored(tmp_path):
    """Upstream training-only keys load and are dropped (they are in one list)."""
    path = tmp_path / "upstream.yaml"
    path.write_text("trainer: score_distillation\nlr: 2.0e-06\nseed: 0\nmodel_kwargs:\n  timestep_shift: 5.0\n")
    assert {"trainer", "lr", "seed"} <= TRAINING_KEYS
    assert not hasattr(load_config(path).cfg, "trainer")


def test_overrides_parse_yaml_values_and_reject_unknown_keys():
    """Override values are YAML; unknown keys and non key=value items fail naming the override."""
    assert load_config(None, ["model_kwargs.sink_size=12"]).cfg.cache.params['sink_size'] == 12
    assert load_config(None, ["warp_denoising_step=false"]).cfg.rollout.warp_denoising_step is False
    for bad, needle in (("sink_size=3", "override 'sink_size=3'"), ("model_kwargs=1", "must be a mapping"),
                        ("nonsense", "Unexpected argument 'nonsense'"), ("fps=fast", "could not be converted to Float"),
                        ("fps=.inf", "override 'fps=.inf': fps=inf is not a finite number")):
        with pytest.raises(CLIError, match=re.escape(needle)):
            load_config(None, [bad])


def test_every_schema_key_has_one_default():
    """The schema is the one home of the defaults: no default config file repeats them."""
    assert not (REPO_ROOT / "configs" / "default.yaml").exists()
    # the defaults are the schema's, plus the method the run resolved to
    # (the schema class of now: a method registered by another test adds its section)
    assert load_config(None).cfg == dataclasses.replace(run_config_class()(), method="deep_forcing", variant="dmd")


# ---------------------------------------------------------------- prompts

def test_prompt_file_lines(tmp_path):
    """Prompt files: BOM and CRLF handled, blank lines skipped, line numbers kept."""
    f = tmp_path / "p.txt"
    f.write_bytes("\ufeffa cat\r\n\r\nthe dog / wolf\n  spaced  \n".encode())
    jobs = load_prompt_jobs(str(f))
    assert [(j.line, j.prompt, j.group) for j in jobs] == [(0, "a cat", ""), (2, "the dog / wolf", ""),
                                                          (3, "spaced", "")]
    assert [j.index for j in jobs] == [0, 1, 2]


def test_prompt_directory_and_glob(tmp_path):
    """Folders and globs: natural order, one output sub-folder per file, hidden files ignored."""
    d = tmp_path / "lines"
    d.mkdir()
    for i in (10, 2, 0):
        (d / f"line_{i}.txt").write_text(f"prompt {i}\n")
    (d / ".hidden.txt").write_text("no\n")
    jobs = load_prompt_jobs(str(d))
    assert [(j.group, j.prompt, j.line) for j in jobs] == [("line_0", "prompt 0", 0), ("line_2", "prompt 2", 0),
                                                          ("line_10", "prompt 10", 0)]
    assert [j.group for j in load_prompt_jobs(str(d / "line_1*.txt"))] == ["line_10"]


def test_extended_prompts(tmp_path):
    """Extended prompts are encoded, the short prompt names the file; line counts must match."""
    f, e = tmp_path / "p.txt", tmp_path / "e.txt"
    f.write_text("a\nb\n")
    e.write_text("a long\nb long\n")
    assert [j.text for j in load_prompt_jobs(str(f), str(e))] == ["a long", "b long"]
    assert [j.prompt for j in load_prompt_jobs(str(f), str(e))] == ["a", "b"]
    e.write_text("only one\n")
    with pytest.raises(CLIError, match="1 lines but .* has 2"):
        load_prompt_jobs(str(f), str(e))


@pytest.mark.parametrize("content, needle", [
    (b"", "empty"),
    (b"\n  \n", "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "binary"),
    (b"caf\xe9 au lait\n", "not valid UTF-8"),
    ("a prompt\u2028with a line separator\n".encode(), "U+2028"),
    (b"a prompt\x0bwith a vertical tab\n", "U+000B"),
])
def test_bad_prompt_files(tmp_path, content, needle):
    """Empty, binary, non-UTF-8 and line-break-in-prompt files raise CLIError."""
    f = tmp_path / "p.txt"
    f.write_bytes(content)
    with pytest.raises(CLIError, match=re.escape(needle)):
        read_lines(f)


def test_missing_prompt_paths(tmp_path):
    """Missing paths, empty globs and folders without .txt files raise CLIError (with the MovieGen hint)."""
    with pytest.raises(CLIError, match="does not exist"):
        load_prompt_jobs(str(tmp_path / "nope.txt"))
    with pytest.raises(CLIError, match="MovieGenBench"):
        load_prompt_jobs(str(tmp_path / "prompts" / "MovieGenVideoBench_txt"))
    with pytest.raises(CLIError, match="matches no file"):
        load_prompt_jobs(str(tmp_path / "*.txt"))
    with pytest.raises(CLIError, match="no .txt files"):
        load_prompt_jobs(str(tmp_path))


def test_shard_round_robin_covers_everything_once():
    """Round-robin sharding covers every prompt exactly once for any world size."""
    jobs = [job(f"p{i}", i, i) for i in range(11)]
    for world in (1, 2, 3, 5, 16):
        parts = [shard(jobs, r, world) for r in range(world)]
        seen = sorted(j.index for p in parts for j in p)
        assert seen == list(range(11))
        assert all(j.index % world == r for r, p in enumerate(parts) for j in p)


def test_dist_env():
    """torchrun variables are read and checked."""
    assert DistEnv.from_env({}) == DistEnv(0, 1, 0)
    assert DistEnv.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistEnv(3, 4, 1)
    for bad in ({"RANK": "x"}, {"RANK": "4", "WORLD_SIZE": "4"}):
        with pytest.raises(CLIError):
            DistEnv.from_env(bad)


# ---------------------------------------------------------------- names

def test_upstream_names():
    """Ordinary prompts get upstream's names."""
    assert base_name(job("A cat sits on a mat."), 0, False, False) == "A cat sits on a mat-0"
    p = "x" * 150
    assert base_name(job(p), 1, False, False) == "x" * 100 + "-1"
    assert base_name(job(p, line=7), 0, True, False) == "7-0_regular"
    assert base_name(job(p, line=7), 2, True, True) == "7-2_ema"


@pytest.mark.parametrize("prompt", [
    "a/b\\c", "line one\nline two\r\tend", "..", ".hidden", "con", "CON.txt", "NUL", "what? <yes> | \"no\" :*",
    "\x00\x1b[31mred", "trailing dots...", "\u202egnp.exe", "猫" * 100, "🎬" * 100, "é" * 100,
])
def test_names_are_safe(prompt):
    """Any prompt gives a safe name: no separators or controls, no reserved names, <= 255 bytes, valid UTF-8."""
    for sample in (0, 12):
        name = base_name(job(prompt), sample, False, False) + ".mp4"
        for derived in (name, part_path(Path(name)).name, part_path(Path(name).with_suffix(".json")).name):
            assert len(derived.encode("utf-8")) <= MAX_NAME_BYTES
        assert not set(name) & set('/\\<>:"|?*') and name.isprintable()
        stem = name.split(".")[0].upper()
        assert stem not in {"CON", "NUL", "PRN", "AUX"} and not name.startswith(".")
        assert name.encode("utf-8").decode("utf-8") == name


def test_sanitize_keeps_ordinary_prompts():
    """Ordinary punctuation survives sanitizing."""
    s = "A dog's day, at 5 p.m. (golden hour) - 100% joy!"
    assert sanitize(s) == s


def test_plan_disambiguates_collisions(tmp_path):
    """Prompts sharing their first 100 characters in one folder get distinct names."""
    jobs = [job("Same start " + "x" * 100 + " one", 0, 0), job("same START " + "x" * 100 + " two", 1, 1),
            job("Other", 2, 2), job("Other", 0, 3, group="line_0003")]
    plan = plan_outputs(jobs, tmp_path, 2, False, False)
    names = [s.video.name for i in range(4) for s in plan[i]]
    assert names[0] == "Same start " + "x" * 89 + "-0.mp4"
    assert names[2] == "same START " + "x" * 89 + "~1-0.mp4"
    assert plan[3][0].video == tmp_path / "line_0003" / "Other-0.mp4"
    assert len({n.casefold() for n in names[:6]}) == 6


# ---------------------------------------------------------------- atomic files and resume

def test_atomic_path_removes_partial_file_on_error(tmp_path):
    """atomic_path leaves either the complete file or nothing."""
    final = tmp_path / "sub" / "v.mp4"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(final) as part:
            part.write_bytes(b"half")
            assert part.name == ".v.mp4.part"
            raise KeyboardInterrupt
    assert not final.exists() and not part_path(final).exists()
    with atomic_path(final) as part:
        part.write_bytes(b"whole")
    assert final.read_bytes() == b"whole" and list(final.parent.iterdir()) == [final]


def test_check_finished(tmp_path):
    """Finished = video + sidecar with the same request; stale .part files are removed."""
    slot = OutputSlot(tmp_path / "a-0.mp4", 0)
    request = {"prompt": "a", "seed": 1, "cache": {"sink_size": 10}}
    assert not check_finished(slot, request)[0]
    slot.video.write_bytes(b"mp4")
    done, why = check_finished(slot, request)
    assert not done and "sidecar" in why
    write_json_atomic(slot.sidecar, {"request": request, "mp4": file_record(slot.video)})
    assert check_finished(slot, request) == (True, "")
    done, why = check_finished(slot, {**request, "seed": 2})
    assert not done and "seed" in why
    for p in slot.parts():
        p.write_bytes(b"x")
    assert len(remove_parts(slot)) == 2 and not any(p.exists() for p in slot.parts())


def test_sidecar_json_is_utf8(tmp_path):
    """Sidecars are UTF-8 JSON."""
    path = tmp_path / "x.json"
    write_json_atomic(path, {"prompt": "猫 / é"})
    assert json.loads(path.read_text(encoding="utf-8"))["prompt"] == "猫 / é"


def test_mp4_writer_round_trip(tmp_path):
    """Mp4Writer writes H.264 mp4s that read back with the right frame count, fps and size."""
    import torch
    from mp4_probe import probe
    frames = to_uint8(torch.linspace(-1, 1, 5 * 3 * 32 * 48).reshape(5, 3, 32, 48))
    assert frames.shape == (5, 32, 48, 3) and frames.dtype == np.uint8
    with atomic_path(tmp_path / "v.mp4") as part:
        write_mp4(part, frames, fps=16)
    info = probe(tmp_path / "v.mp4")
    assert info["fps"] == 16 and info["size"] == (48, 32) and info["codec"] == "h264"
    assert info["frames"] == 5


# ---------------------------------------------------------------- tools and docs

def test_split_prompts_tool(tmp_path):
    """tools/split_prompts.py writes line_XXXX.txt files, is idempotent, refuses silent overwrites."""
    src = tmp_path / "list.txt"
    src.write_text("first\n\nthird\n")
    out = tmp_path / "split"
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "split_prompts.py"), str(src), str(out)]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["line_0000.txt", "line_0002.txt"]
    assert (out / "line_0002.txt").read_text() == "third\n"
    assert subprocess.run(cmd, capture_output=True).returncode == 0  # idempotent
    src.write_text("changed\n")
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "--overwrite" in r.stderr and "Traceback" not in r.stderr


def test_example_prompt_folder_matches_examples():
    """prompts/examples_txt is prompts/examples.txt split into line files."""
    lines = read_lines(REPO_ROOT / "prompts" / "examples.txt")
    assert len(lines) >= 10 and all(len(ln) > 200 for ln in lines)
    files = sorted((REPO_ROOT / "prompts" / "examples_txt").glob("line_*.txt"))
    assert [f.read_text().strip() for f in files] == lines
    assert [f.name for f in files] == [f"line_{i:04d}.txt" for i in range(len(lines))]


def test_ci_runs_the_readme_commands():
    """.ci/run runs the README's Quick-start install and test commands verbatim."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    install = 'pip install torch==2.13.0 && pip install -e ".[test]"'
    test = "python -m pytest -q tests"
    assert f"{install} && {test}" in readme
    assert "pip install torch==2.13.0 && pip install -e . && bash DS_PC_inference.sh" in readme
    assert install in ci.splitlines() and test in ci.splitlines()
