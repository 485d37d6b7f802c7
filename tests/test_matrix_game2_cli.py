"""Matrix-Game 2.0 through the command line (tiny release of --demo): outputs, sidecar, resume, interactive keys and
their replay, the released YAMLs, and one-paragraph errors for bad input (exit 2)."""
from __future__ import annotations

import io
from pathlib import Path
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import inference


@pytest.fixture
def image(tmp_path):
    """A 200x300 RGB test image."""
    path = tmp_path / "start.png"
    Image.fromarray((np.random.RandomState(0).rand(200, 300, 3) * 255).astype("uint8")).save(path)
    return path


def run(tmp_path, image, *flags, stdin: str | None = None, monkeypatch=None) -> int:
    """``inference.main`` for a tiny Matrix-Game 2.0 run writing into tmp_path/out."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return inference.main(["--method", "matrix_game2", "--demo", "--image", str(image), "--output_folder",
                           str(tmp_path / "out"), "--num_output_frames", "6", "--save_latents", *flags])


def sidecar(tmp_path) -> dict:
    """The one sidecar of the run."""
    (path,) = (tmp_path / "out").glob("*.json")
    return json.loads(path.read_text())


def latents(tmp_path) -> torch.Tensor:
    """The one latents file of the run."""
    (path,) = (tmp_path / "out").glob("*.pt")
    return torch.load(path)["latents"]


def test_bench_run_writes_video_sidecar_and_resumes(tmp_path, image, capsys):
    assert run(tmp_path, image) == 0
    side = sidecar(tmp_path)
    assert side["method"]["method"] == "matrix_game2" and side["method"]["variant"] == "universal"
    assert side["method"]["actions"] == {"bench_seed": 1356145} and len(side["method"]["image_sha256"]) == 64
    assert side["num_frames"] == 21 and side["fps"] == 12.0 and side["cache"]["window_frames"] == 6
    first = latents(tmp_path)
    assert run(tmp_path, image) == 0  # finished: skipped
    assert "1 video(s) already finished" in capsys.readouterr().err
    assert run(tmp_path, image, "--seed", "3", "--overwrite") == 0
    assert not torch.equal(first, latents(tmp_path))  # another benchmark draw and noise


def test_interactive_session_replays_from_its_sidecar(tmp_path, image, monkeypatch):
    assert run(tmp_path, image, "--interactive", stdin="w i\nbad key\nd l\n", monkeypatch=monkeypatch) == 0
    side = sidecar(tmp_path)
    assert side["prompt_switches"] == [{"chunk": 0, "keys": "w i"}, {"chunk": 1, "keys": "d l"}]
    live = latents(tmp_path)
    record = tmp_path / "session.json"
    (next((tmp_path / "out").glob("*.json"))).rename(record)
    assert run(tmp_path, image, f"matrix_game2.actions={record}", "--overwrite") == 0
    assert torch.equal(live, latents(tmp_path))
    keys = tmp_path / "keys.yaml"
    keys.write_text("chunks: ['w i', 'd l']\n")
    assert run(tmp_path, image, f"matrix_game2.actions={keys}", "--overwrite") == 0
    assert torch.equal(live, latents(tmp_path))


def test_interactive_input_that_ends_stops_the_video(tmp_path, image, monkeypatch):
    assert run(tmp_path, image, "--interactive", stdin="w i\n", monkeypatch=monkeypatch) == 0
    side = sidecar(tmp_path)
    assert side["stopped_early"] and side["num_latent_frames"] == 3


def test_released_yaml_selects_method_and_variant(tmp_path, capsys):
    code = inference.main(["--config_path", "configs/matrix_game2/inference_yaml/inference_gta_drive.yaml",
                           "--print_config"])
    assert code == 0
    out = capsys.readouterr().out
    assert "method: matrix_game2" in out and "variant: gta_drive" in out and "mode: self_forcing" in out
    assert "local_attn_size: 4" in out and "model_config: configs/distilled_model/gta_drive" in out


def test_mode_flag_with_a_variant_name_selects_the_variant(tmp_path, capsys):
    # as the released YAMLs' ``mode: templerun``; a cache mode given to --mode stays a cache mode
    assert inference.main(["--mode", "templerun", "--print_config"]) == 0
    out = capsys.readouterr().out
    assert "method: matrix_game2" in out and "variant: templerun" in out and "mode: self_forcing" in out
    assert inference.main(["--method", "matrix_game2", "--mode", "deep_sink", "--print_config"]) == 0
    out = capsys.readouterr().out
    assert "variant: universal" in out and "mode: deep_sink" in out


@pytest.mark.parametrize("flags,message", [
    (["--mode", "templerun", "--method", "longlive"], "--method longlive asks for another"),
    (["--mode", "templerun", "--variant", "universal"], "--variant universal asks for another"),
    (["--image", "/nonexistent/x.png"], "does not exist"),
    (["--variant", "minecraft"], "not a variant"),
    (["--endless", "--interactive"], "--num_output_frames"),
    (["--i2v"], "drop --i2v"),
    (["--prompt_schedule", "schedule.jsonl"], "drop --prompt_schedule"),
    (["--variant", "templerun", "matrix_game2.model_config=configs/matrix_game2/distilled_model/universal"],
     "another variant's config"),
    (["--checkpoint_path", "Matrix-Game-2.0/gta_distilled_model/gta_keyboard2dim.safetensors", "--wan_model_dir",
      "Matrix-Game-2.0", "--no_download"], "gta_drive model"),
])
def test_bad_input_is_one_paragraph(tmp_path, image, capsys, flags, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "schedule.jsonl").write_text('{"start": 0, "prompt": "a road"}\n')
    code = inference.main(["--method", "matrix_game2", "--demo", "--image", str(image), "--output_folder",
                           str(tmp_path / "out"), "--num_output_frames", "6", *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1


def test_action_file_errors(tmp_path, image, capsys):
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"keyboard_condition": [[0, 0, 0, 0]] * 21, "jump": 1}))
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"keyboard_condition": [[1, 0, 0, 0]] * 9, "mouse_condition": [[0, 0]] * 9}))
    for path, message in ((unknown, "unknown top-level key"), (short, "21")):
        assert run(tmp_path, image, f"matrix_game2.actions={path}") == 2
        err = capsys.readouterr().err
        assert message in err and str(path) in err


def test_missing_release_files_are_fetched_from_the_hub(tmp_path, monkeypatch):
    """Every missing file of the variant's release is fetched into the Matrix-Game-2.0 folder (hub mocked)."""
    import huggingface_hub
    from huggingface_hub import constants
    from app.demo_world import write_tiny_world
    from methods.world_run import release_files

    tiny = write_tiny_world(tmp_path / "src", "templerun")
    calls = []

    def hf_hub_download(repo_id, filename, local_dir):
        calls.append((repo_id, filename))
        (Path(local_dir) / filename).parent.mkdir(parents=True, exist_ok=True)
        (Path(local_dir) / filename).write_bytes((tiny.model_dir / filename).read_bytes())
        return str(Path(local_dir) / filename)

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    image = tmp_path / "i.png"
    Image.new("RGB", (64, 36), (90, 120, 30)).save(image)
    target = tmp_path / "Matrix-Game-2.0"
    code = inference.main(["--method", "matrix_game2", "--variant", "templerun", "--image", str(image),
                           "--wan_model_dir", str(target), "matrix_game2.model_config=" + str(tiny.config),
                           "--output_folder", str(tmp_path / "out"), "--num_output_frames", "3", "--device", "cpu",
                           "height=64", "width=112"])
    assert code == 0
    assert calls == [("Skywork/Matrix-Game-2.0", f) for f in release_files("templerun")]
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 1


def test_missing_files_offline_name_the_command(tmp_path, image, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = inference.main(["--method", "matrix_game2", "--image", str(image), "--wan_model_dir",
                           str(tmp_path / "Matrix-Game-2.0"), "--output_folder", str(tmp_path / "out"),
                           "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "hf download Skywork/Matrix-Game-2.0 Wan2.1_VAE.pth" in err and err.count("\n") == 1


def test_replaying_a_sidecar_of_another_variant_is_refused(tmp_path, image, capsys, monkeypatch):
    assert run(tmp_path, image, "--interactive", stdin="w i\nd l\n", monkeypatch=monkeypatch) == 0
    (record,) = (tmp_path / "out").glob("*.json")
    assert run(tmp_path, image, "--variant", "gta_drive", f"matrix_game2.actions={record}") == 2
    assert "replay it with --variant universal" in capsys.readouterr().err


@pytest.mark.parametrize("released,method", [("configs/inference_yaml/inference_templerun.yaml", "matrix_game2"),
                                             ("configs/longlive_inference.yaml", "longlive"),
                                             ("configs/causal_forcing_dmd_framewise.yaml", "causal_forcing"),
                                             ("configs/self_forcing_dmd.yaml", "self_forcing")])
def test_released_config_paths_find_their_shipped_copies(tmp_path, monkeypatch, capsys, released, method):
    monkeypatch.chdir(tmp_path)  # the family's repositories' paths, relative to a checkout of theirs
    assert inference.main(["--config_path", released, "--print_config"]) == 0
    assert f"method: {method}" in capsys.readouterr().out


def test_a_bench_sidecar_is_not_a_key_record(tmp_path, image, capsys):
    assert run(tmp_path, image) == 0
    (record,) = (tmp_path / "out").glob("*.json")
    assert run(tmp_path, image, f"matrix_game2.actions={record}", "--overwrite") == 2
    assert "--actions bench --seed 1356145" in capsys.readouterr().err


def test_gta_drive_demo_with_typed_keys(tmp_path, image, monkeypatch):
    assert run(tmp_path, image, "--variant", "gta_drive", "--interactive", stdin="w a\n\nbad\ns d\n",
               monkeypatch=monkeypatch) == 0
    assert [s["keys"] for s in sidecar(tmp_path)["prompt_switches"]] == ["w a", "q"]
    assert sidecar(tmp_path)["cache"]["window_frames"] == 4


@pytest.mark.parametrize("switches", [[{"chunk": 0, "keys": 7}, {"chunk": 1, "keys": "w"}], [None, "w"],
                                      [{"chunk": 0, "keys": "w x"}, {"chunk": 1}]])
def test_a_hand_edited_sidecar_is_refused_with_the_chunk(tmp_path, image, capsys, switches):
    record = tmp_path / "edited.json"
    record.write_text(json.dumps({"method": {"method": "matrix_game2", "variant": "universal"},
                                  "prompt_switches": switches}))
    assert run(tmp_path, image, f"matrix_game2.actions={record}") == 2
    err = capsys.readouterr().err
    assert f"action file {record}, chunk" in err and "Traceback" not in err and err.count("\n") == 1
