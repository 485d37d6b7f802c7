"""The CLI with Causal Forcing features on the tiny model: the first-chunk step list, image-to-video (--i2v --image)
with resume keyed on the image's hash, streaming, schedules and re-cache, and its one-paragraph errors."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from media.image import load_image
from wan.vae import WanVAE
from helpers import model_args, read_video

SMALL = ("height=32", "width=32")  # latent 4 x 4
FRAMEWISE = "num_frame_per_block=1"
CF_1STEP = ("denoising_step_list=[1000]", "denoising_step_list_first_chunk=[1000,750,500,250]")


def _prompt(tmp_path, text="a red fox runs through fresh snow"):
    path = tmp_path / "prompt.txt"
    path.write_text(text + "\n")
    return path


def _image(tmp_path, name="first.png", color=(200, 40, 90)):
    path = tmp_path / name
    Image.new("RGB", (50, 30), color).save(path)
    return path


def _sidecar(folder):
    (path,) = sorted(folder.glob("*.json"))
    return json.loads(path.read_text())


def test_first_chunk_step_list_runs_and_is_part_of_the_request(run_cli, tmp_path, tiny_model_files):
    base = (*model_args(tiny_model_files), "--data_path", _prompt(tmp_path), "--num_output_frames", 4, *SMALL,
            FRAMEWISE)
    r = run_cli(*base, *CF_1STEP, "--output_folder", "cf")
    assert r.returncode == 0, r.stderr
    side = _sidecar(tmp_path / "cf")
    assert side["request"]["rollout"]["denoising_step_list_first_chunk"] == [1000, 750, 500, 250]
    assert side["request"]["rollout"]["denoising_step_list"] == [1000]
    r = run_cli(*base, "--output_folder", "plain")
    assert r.returncode == 0, r.stderr
    # without the key the request is what earlier versions wrote (finished videos stay finished)
    assert "denoising_step_list_first_chunk" not in _sidecar(tmp_path / "plain")["request"]["rollout"]


def test_i2v_video_starts_with_the_image_and_resumes_by_image_hash(run_cli, tmp_path, tiny_model_files):
    image = _image(tmp_path)
    args = (*model_args(tiny_model_files), "--data_path", _prompt(tmp_path), "--num_output_frames", 5, *SMALL,
            FRAMEWISE, "--i2v", "--image", image, "--save_latents", "--mode", "deep_sink",
            "model_kwargs.sink_size=2", "model_kwargs.local_attn_size=4", "--output_folder", "out")
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    (video,) = out.glob("*.mp4")
    assert read_video(video)[0] == 4 * 5 - 3  # the image's frame + 4 per generated latent frame
    side = _sidecar(out)
    import hashlib
    assert side["request"]["image_sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    latents = torch.load(video.with_suffix(".pt"), weights_only=True)["latents"]  # [T, C, h, w]
    vae = WanVAE.from_model_dir(tiny_model_files[0])
    want = vae.encode(load_image(image, 32, 32))[0, 0]
    assert latents.shape[0] == 5 and torch.allclose(latents[0], want, atol=1e-6)  # frame 0 is the encoded image

    r = run_cli(*args)  # same image: already finished
    assert r.returncode == 0 and "1 video(s) already finished, 0 prompt(s) to render" in r.stderr
    _image(tmp_path, color=(10, 220, 30))  # a different image under the same name: rendered again
    r = run_cli(*args)
    assert r.returncode == 0 and "1 video(s) written" in r.stderr, r.stderr


def test_i2v_with_a_prompt_schedule_and_recache(run_cli, tmp_path, tiny_model_files):
    schedule = tmp_path / "s.jsonl"
    schedule.write_text('{"start": 0, "prompt": "a fox"}\n{"start": 0.5, "prompt": "a wolf"}\n')
    r = run_cli(*model_args(tiny_model_files), "--prompt_schedule", schedule, "--num_output_frames", 6, *SMALL,
                FRAMEWISE, *CF_1STEP, "--i2v", "--image", _image(tmp_path), "--recache_on_switch",
                "--output_folder", "sched")
    assert r.returncode == 0, r.stderr
    side = _sidecar(tmp_path / "sched")
    assert [s["prompt"] for s in side["prompt_switches"]] == ["a wolf"] and side["num_latent_frames"] == 6


@pytest.mark.parametrize("case", ["no_image", "image_without_i2v", "chunkwise", "missing", "not_an_image"])
def test_i2v_errors_are_one_paragraph(run_cli, tmp_path, tiny_model_files, case):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    extra = {"no_image": ["--i2v", FRAMEWISE],
             "image_without_i2v": ["--image", _image(tmp_path), FRAMEWISE],
             "chunkwise": ["--i2v", "--image", _image(tmp_path)],
             "missing": ["--i2v", "--image", tmp_path / "missing.png", FRAMEWISE],
             "not_an_image": ["--i2v", "--image", text, FRAMEWISE]}[case]
    r = run_cli(*model_args(tiny_model_files), "--data_path", _prompt(tmp_path), "--num_output_frames", 3, *SMALL,
                *extra)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    want = {"no_image": "--image PATH", "image_without_i2v": "add --i2v", "chunkwise": "num_frame_per_block",
            "missing": "missing.png does not exist", "not_an_image": "notes.png could not be read"}[case]
    assert want in lines[0]


@pytest.mark.parametrize("name,steps", [("causal_forcing_dmd_framewise_2step.yaml", [1000, 500]),
                                        ("causal_forcing_dmd_framewise_1step.yaml", [1000])])
def test_causal_forcing_plus_plus_yamls_give_the_first_chunk_list(name, steps):
    from pathlib import Path
    from app.cli_config import load_config
    rollout = load_config(Path(__file__).parent / "fixtures" / "family" / name).cfg.rollout
    assert rollout.num_frame_per_block == 1 and rollout.denoising_step_list == steps
    assert rollout.denoising_step_list_first_chunk == [1000, 750, 500, 250]
