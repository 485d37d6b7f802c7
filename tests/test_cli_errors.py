"""Bad inputs: each stops the CLI before any model is loaded (and before anything is created in the output folder),
with exit status 2, a one-paragraph message naming the flag, override or file, and no traceback.

The cases run ``inference.main`` in-process (fast); two tests run the real script to check the process exit.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import inference

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "configs" / "self_forcing_dmd"
DEMO_PROMPTS = REPO_ROOT / "prompts" / "demo.txt"


def _prompt_file(tmp: Path, content: bytes | str, name: str = "p.txt") -> Path:
    path = tmp / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def _config(tmp: Path, body: str) -> Path:
    path = tmp / "my_config.yaml"
    path.write_text(body)
    return path


def _checkpoint_without_ema(tmp: Path) -> Path:
    from app.demo_model import write_checkpoint
    return write_checkpoint(tmp / "no_ema.pt", include_ema=False)


def run_main(capsys, *args) -> tuple[int, str]:
    """(exit status, stderr) of ``inference.main`` with these arguments."""
    capsys.readouterr()
    rc = inference.main([str(a) for a in args])
    return rc, capsys.readouterr().err


# name -> (builder(tmp) -> extra CLI args, words the message must contain)
CASES = {
    "unknown_config_key": (lambda t: ["--config_path", _config(t, "model_kwargs:\n  sink_sise: 12\n")],
                           ["model_kwargs.sink_sise", "my_config.yaml", "Did you mean 'model_kwargs.sink_size'"]),
    "unknown_override_key": (lambda t: ["sink=12"], ["unknown config key 'sink'", "override 'sink=12'"]),
    "stray_argument": (lambda t: ["oops"], ["Unexpected argument 'oops'", "key=value"]),
    "sink_not_below_window": (lambda t: ["--is_ds_only", "1", "model_kwargs.sink_size=21"],
                              ["sink_size=21", "local_attn_size=21", "override 'model_kwargs.sink_size=21'"]),
    "budget_below_sink_plus_recent": (lambda t: ["--config_path", CONFIGS / "self_forcing_dmd_sink14.yaml"],
                                      ["sink_size=14", "--Budget=16", "self_forcing_dmd_sink14.yaml"]),
    "budget_flag_named": (lambda t: ["--Budget", "6"], ["--Budget=6", "budget=6 (from --Budget 6)"]),
    "recent_flag_named": (lambda t: ["--Recent", "20"], ["recent=20 (from --Recent 20)"]),
    "frames_not_multiple_of_chunk": (lambda t: ["--num_output_frames", "7"],
                                     ["--num_output_frames 7", "num_frame_per_block=3", "Use 6 or 9"]),
    "frames_zero": (lambda t: ["--num_output_frames", "0"], ["--num_output_frames 0", "Use 3 (9 video frames)"]),
    "frames_absurd": (lambda t: ["--num_output_frames", "999999999"],
                      ["--num_output_frames 999999999", "GiB", "--noise_order chunked"]),
    "seconds_absurd": (lambda t: ["--seconds", "1e15"], ["--seconds 1000000000000000.0", "--noise_order chunked"]),
    "seconds_inf": (lambda t: ["--seconds", "inf"], ["--seconds inf", "not a finite number"]),
    "seconds_and_frames": (lambda t: ["--seconds", "3", "--num_output_frames", "6"], ["pass only one"]),
    "fps_inf": (lambda t: ["fps=.inf"], ["override 'fps=.inf'", "fps=inf is not a finite number"]),
    "fps_out_of_range": (lambda t: ["fps=1000"], ["fps=1000", "1 to 240"]),
    "context_noise_inf": (lambda t: ["--config_path", _config(t, "context_noise: .inf\n")],
                          ["my_config.yaml", "context_noise=inf"]),
    "timestep_shift_inf": (lambda t: ["model_kwargs.timestep_shift=.nan"], ["model_kwargs.timestep_shift=nan"]),
    "timestep_shift_twice": (lambda t: ["--config_path", _config(t, "timestep_shift: 3.0\nmodel_kwargs:\n  "
                                                                 "timestep_shift: 5.0\n")],
                             ["timestep_shift=3.0", "model_kwargs.timestep_shift=5.0", "my_config.yaml"]),
    "unknown_mode": (lambda t: ["mode=nonsense"], ["cache mode 'nonsense' is unknown", "mode='nonsense'"]),
    "conflicting_mode": (lambda t: ["--is_ds_only", "1", "--mode", "self_forcing"], ["--is_ds_only"]),
    "unsupported_feature": (lambda t: ["model_name=Wan2.1-T2V-14B"], ["a base model other than", "model_name"]),
    "bad_resolution": (lambda t: ["height=100"], ["height=100", "multiple of 16", "override 'height=100'"]),
    "zero_width": (lambda t: ["width=0"], ["width=0 is not a positive multiple of 16", "use 16"]),
    "missing_prompt_file": (lambda t: ["--data_path", t / "nowhere.txt"], ["nowhere.txt", "does not exist"]),
    "prompt_path_is_a_device": (lambda t: ["--data_path", "/dev/zero"], ["/dev/zero", "not a regular file"]),
    "empty_prompt_file": (lambda t: ["--data_path", _prompt_file(t, "\n\n")], ["p.txt", "empty"]),
    "binary_prompt_file": (lambda t: ["--data_path", _prompt_file(t, b"\x89PNG\r\n\x1a\n\xff\xd8\x00")],
                           ["p.txt", "binary"]),
    "latin1_prompt_file": (lambda t: ["--data_path", _prompt_file(t, b"caf\xe9\n")], ["not valid UTF-8"]),
    "prompt_with_slash_and_line_break": (lambda t: ["--data_path", _prompt_file(t, "a cat / a dog\u2028on a boat\n")],
                                         ["line 1", "U+2028", "one prompt per line"]),
    "extended_prompt_line_count": (lambda t: ["--data_path", _prompt_file(t, "a\nb\n"), "--extended_prompt_path",
                                              _prompt_file(t, "only one\n", "ext.txt")],
                                   ["ext.txt", "1 lines", "has 2"]),
    "unwritable_output_folder": (lambda t: ["--output_folder", _prompt_file(t, "x", "a_file") / "sub"],
                                 ["a_file/sub", "not writable"]),
    "missing_model_folder": (lambda t: ["--wan_model_dir", t / "no_such_model"],
                             ["no_such_model", "hf download"]),
    "missing_checkpoint": (lambda t: ["--checkpoint_path", t / "missing.pt"], ["missing.pt", "not found"]),
    "use_ema_without_ema": (lambda t: ["--use_ema", "--checkpoint_path", _checkpoint_without_ema(t)],
                            ["no_ema.pt", "generator_ema", "drop --use_ema"]),
    "negative_samples": (lambda t: ["--num_samples", "0"], ["--num_samples 0"]),
    "variant_named_by_its_layer": (lambda t: ["variant=chunkwise"], ["override 'variant=chunkwise'", "not a variant"]),
    "adapter_named_by_its_layer": (lambda t: ["--method", "longlive", "adapter=3"],
                                   ["override 'adapter=3'", "must be a mapping"]),
    "config_with_a_python_tag": (lambda t: ["--config_path", _config(t, "!!python/object/apply:os.system ['true']\n")],
                                 ["my_config.yaml", "nothing in the file is executed"]),
    "bad_seed": (lambda t: ["--seed", "-1"], ["--seed -1"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_cleanly(case, capsys, tmp_path, tiny_model_files, monkeypatch):
    """A bad input exits 2 with one 'error:' line naming the problem, no traceback, no model loaded, no output
    folder created."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    build, words = CASES[case]
    model_dir, checkpoint = tiny_model_files
    base = ["--wan_model_dir", model_dir, "--checkpoint_path", checkpoint, "--device", "cpu",
            "--data_path", DEMO_PROMPTS, "--output_folder", tmp_path / "out", "height=32", "width=32"]
    rc, err = run_main(capsys, *base, *build(tmp_path))  # later flags win
    assert rc == 2, err
    assert "Traceback" not in err and "loading models" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, err
    for word in words:
        assert word in errors[0], errors[0]
    assert "default.yaml" not in errors[0]
    assert not (tmp_path / "out").exists()


def test_demo_checks_inputs_before_writing_its_model(capsys, monkeypatch, tmp_path):
    """--demo with a bad value fails before the tiny model is written."""
    import app.demo_model
    written = []
    monkeypatch.setattr(app.demo_model, "write_tiny_model", lambda *a, **k: written.append(a))
    rc, err = run_main(capsys, "--demo", "--num_output_frames", "7", "--output_folder", tmp_path / "out")
    assert rc == 2 and "--num_output_frames 7" in err and written == []
    assert not (tmp_path / "out").exists()


def test_process_exit_status_and_one_paragraph(run_cli, tmp_path):
    """The real script exits 2 and prints one 'error:' line for a bad flag value."""
    r = run_cli("--demo", "--output_folder", tmp_path / "out", "fps=.inf")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")] == [
        "error: override 'fps=.inf': fps=inf is not a finite number; give a finite value."]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_no_cuda_hints_at_demo(capsys, tmp_path):
    """Without CUDA the default device fails early and points at --demo and --device cpu."""
    rc, err = run_main(capsys, "--data_path", DEMO_PROMPTS, "--output_folder", tmp_path / "out")
    assert rc == 2 and "Traceback" not in err
    assert "CUDA is not available" in err and "--demo" in err and "--device cpu" in err


@pytest.mark.skipif((REPO_ROOT / "wan_models" / "Wan2.1-T2V-1.3B").exists(), reason="real model folder present")
def test_default_model_files_missing_offline(run_cli, tmp_path):
    """Missing default model files with HF_HUB_OFFLINE=1 are reported up front with the download commands."""
    r = run_cli("--device", "cpu", "--data_path", REPO_ROOT / "prompts" / "demo.txt", "--output_folder", "out",
                "height=32", "width=32", cwd=tmp_path)  # HF_HUB_OFFLINE=1 in the test environment
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "hf download Wan-AI/Wan2.1-T2V-1.3B" in r.stderr and "HF_HUB_OFFLINE=1" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_length_needing_more_than_half_the_free_memory_is_refused(capsys, monkeypatch, tmp_path):
    """Upstream's initial noise may take at most half the free memory: the models and decoding need the rest."""
    import app.checks
    noise = 2 * 16 * (64 // 8) * (112 // 8) * 4 * 300  # 2 samples, 16 channels, the demo's latent, fp32, 300 frames
    monkeypatch.setattr(app.checks, "free_bytes", lambda device: int(1.5 * noise))
    rc, err = run_main(capsys, "--demo", "--num_samples", 2, "--num_output_frames", 300, "--output_folder",
                       tmp_path / "out")
    assert rc == 2 and "more than half" in err and "--noise_order chunked" in err
    monkeypatch.setattr(app.checks, "free_bytes", lambda device: int(2.5 * noise))
    rc, err = run_main(capsys, "--demo", "--num_samples", 2, "--num_output_frames", 300, "--output_folder",
                       tmp_path / "out", "--print_config")
    assert rc == 0


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 21504000000 bytes")])
def test_out_of_memory_while_rendering_is_one_message(capsys, monkeypatch, tmp_path, error):
    """An allocation failure during a video: exit 1, one message with what to change, no traceback, no file left."""
    import app.runner

    def render(self, job, slots, live=None, on_chunk=None):
        raise error
    monkeypatch.setattr(app.runner.VideoRunner, "render", render)
    rc, err = run_main(capsys, "--demo", "--num_output_frames", 6, "--output_folder", tmp_path / "out")
    assert rc == 1 and "out of memory while rendering" in err and "--noise_order chunked" in err
    assert "Traceback" not in err
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_other_runtime_errors_are_not_taken_for_out_of_memory(monkeypatch, tmp_path):
    import app.runner

    def render(self, job, slots, live=None, on_chunk=None):
        raise RuntimeError("shape mismatch")
    monkeypatch.setattr(app.runner.VideoRunner, "render", render)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        inference.main(["--demo", "--num_output_frames", "6", "--output_folder", str(tmp_path / "out")])
