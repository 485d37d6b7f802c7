"""Bad inputs: each stops the real CLI before any model is loaded, with a one-paragraph message and no traceback."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "configs" / "self_forcing_dmd"


def _prompt_file(tmp: Path, content: bytes | str, name: str = "p.txt") -> Path:
    path = tmp / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def _config(tmp: Path, body: str) -> Path:
    path = tmp / "my_config.yaml"
    path.write_text(body)
    return path


def _checkpoint_without_ema(tmp: Path) -> Path:
    from wan.fixtures import write_checkpoint
    return write_checkpoint(tmp / "no_ema.pt", include_ema=False)


# name -> (builder(tmp) -> extra CLI args, words the message must contain)
CASES = {
    "unknown_config_key": (lambda t: ["--config_path", _config(t, "model_kwargs:\n  sink_sise: 12\n")],
                           ["model_kwargs.sink_sise", "my_config.yaml", "Did you mean 'model_kwargs.sink_size'"]),
    "unknown_override_key": (lambda t: ["sink=12"], ["unknown config key 'sink'"]),
    "stray_argument": (lambda t: ["oops"], ["Unexpected argument 'oops'", "key=value"]),
    "sink_not_below_window": (lambda t: ["--is_ds_only", "1", "model_kwargs.sink_size=21"],
                              ["sink_size=21", "local_attn_size=21"]),
    "budget_below_sink_plus_recent": (lambda t: ["--config_path", CONFIGS / "self_forcing_dmd_sink14.yaml"],
                                      ["--Budget 16", "sink_size 14", "--Recent 4", "--is_ds_only 1"]),
    "frames_not_multiple_of_chunk": (lambda t: ["--num_output_frames", "7"],
                                     ["--num_output_frames 7", "num_frame_per_block=3", "Use 6 or 9"]),
    "conflicting_mode": (lambda t: ["--is_ds_only", "1", "--mode", "self_forcing"], ["--is_ds_only"]),
    "bad_resolution": (lambda t: ["height=100"], ["height=100", "multiple of 16"]),
    "missing_prompt_file": (lambda t: ["--data_path", t / "nowhere.txt"], ["nowhere.txt", "does not exist"]),
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
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_cleanly(case, run_cli, tmp_path, tiny_model_files):
    """A bad input exits 2 with one 'error:' line naming the problem, no traceback, no model loaded."""
    build, words = CASES[case]
    model_dir, checkpoint = tiny_model_files
    base = ["--wan_model_dir", model_dir, "--checkpoint_path", checkpoint, "--device", "cpu",
            "--data_path", Path(__file__).resolve().parent.parent / "prompts" / "demo.txt",
            "--output_folder", tmp_path / "out", "height=32", "width=32"]
    r = run_cli(*base, *build(tmp_path))  # later flags win
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "loading models" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    for word in words:
        assert word in errors[0], errors[0]
    assert not list((tmp_path / "out").rglob("*.mp4")) if (tmp_path / "out").exists() else True


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_no_cuda_hints_at_demo(run_cli, tmp_path):
    """Without CUDA the default device fails early and points at --demo and --device cpu."""
    r = run_cli("--data_path", Path(__file__).resolve().parent.parent / "prompts" / "demo.txt")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "CUDA is not available" in r.stderr and "--demo" in r.stderr and "--device cpu" in r.stderr


@pytest.mark.skipif((REPO_ROOT / "wan_models" / "Wan2.1-T2V-1.3B").exists(), reason="real model folder present")
def test_default_model_files_missing_offline(run_cli, tmp_path):
    """Missing default model files with HF_HUB_OFFLINE=1 are reported up front with the download commands."""
    r = run_cli("--device", "cpu", "--data_path", REPO_ROOT / "prompts" / "demo.txt", "--output_folder", "out",
                "height=32", "width=32", cwd=tmp_path)  # HF_HUB_OFFLINE=1 in the test environment
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "hf download Wan-AI/Wan2.1-T2V-1.3B" in r.stderr and "HF_HUB_OFFLINE=1" in r.stderr
