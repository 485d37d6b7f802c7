"""The rolling loop through the CLI (methods rolling_forcing and causal_forcing --variant longvideo): streaming mp4,
latents equal to the rollout run directly, sidecar and resume, --seconds, prompt schedules, Deep Sink on top, and the
one-paragraph errors."""
from __future__ import annotations

import json

import pytest
import torch

import inference
from helpers import SMALL, model_args, read_video


def _run(tmp_path, tiny_model_files, capsys, *extra):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red fox trots through fresh snow\n")
    data = [] if "--prompt_schedule" in extra else ["--data_path", str(prompts)]
    rc = inference.main([*map(str, model_args(tiny_model_files)), *data, *SMALL, *extra])
    return rc, capsys.readouterr().err


def _sidecar(folder):
    (path,) = sorted(folder.glob("*.json"))
    return json.loads(path.read_text())


def test_rolling_forcing_streams_resumes_and_equals_the_rollout(tmp_path, tiny_model_files, capsys):
    out = tmp_path / "rf"
    args = ("--method", "rolling_forcing", "--num_output_frames", "18", "--save_latents", "--output_folder", str(out))
    rc, err = _run(tmp_path, tiny_model_files, capsys, *args)
    assert rc == 0, err
    (video,) = out.glob("*.mp4")
    assert read_video(video)[0] == 4 * 18 - 3
    side = _sidecar(out)
    assert side["request"]["loop"] == "rolling" and side["method"]["method"] == "rolling_forcing"
    assert side["request"]["rollout"]["denoising_step_list"] == [1000, 800, 600, 400, 200] and side["use_ema"]
    latents = torch.load(video.with_suffix(".pt"), weights_only=True)["latents"]  # [T, C, h, w]

    # the same rollout run directly, from the same settings and seed
    from app.settings import resolve_settings
    from app.runner import VideoRunner
    from app.runtime import DistEnv
    cli = inference.build_parser().parse_intermixed_args([*map(str, model_args(tiny_model_files)), *SMALL, *args])
    settings = resolve_settings(cli, DistEnv())
    runner = VideoRunner.load(settings, progress=False)
    embeds = runner.encode_text("a red fox trots through fresh snow")
    direct = runner.pipeline.generate_seeded(embeds, 18, runner.latent_shape, settings.seed)[0]
    assert torch.equal(direct.to(latents.dtype), latents)

    rc, err = _run(tmp_path, tiny_model_files, capsys, *args)
    assert rc == 0 and "1 video(s) already finished" in err


def test_rolling_with_seconds_schedule_and_deep_sink(tmp_path, tiny_model_files, capsys):
    schedule = tmp_path / "s.jsonl"
    schedule.write_text('{"start": 0, "prompt": "a fox"}\n{"start": 2, "prompt": "a wolf"}\n')
    out = tmp_path / "sched"
    rc, err = _run(tmp_path, tiny_model_files, capsys, "--method", "causal_forcing", "--variant", "longvideo",
                   "--num_output_frames", "12", "--output_folder", str(tmp_path / "cf"), "rolling_forcing.sink_frames=6")
    assert rc == 0 and "belong to method rolling_forcing" in err  # another method's section: ignored, with a warning
    assert "loop_params" in _sidecar(tmp_path / "cf")["request"] and _sidecar(tmp_path / "cf")["num_latent_frames"] == 12
    rc, err = _run(tmp_path, tiny_model_files, capsys, "--method", "rolling_forcing", "--prompt_schedule",
                   str(schedule), "--seconds", "4", "--output_folder", str(out), "rolling_forcing.sink_frames=6",
                   "rolling_forcing.clean_pass_sees_anchor=true")
    assert rc == 0, err
    side = _sidecar(out)
    assert side["num_latent_frames"] == 18  # 4 s at 16 fps: 4T-3 >= 64 frames -> T = 18 (multiple of 3)
    assert [s["prompt"] for s in side["prompt_switches"]] == ["a wolf"]
    assert side["request"]["loop_params"]["sink_frames"] == 6


@pytest.mark.parametrize("extra,needle", [
    (("--num_output_frames", "12"), "15"),                      # fewer than W*B = 15 frames
    (("--mode", "deep_sink"), "self_forcing"),                  # the loop keeps its own cache
    (("rolling_forcing.sink_frames=4",), "multiple of num_frame_per_block"),
    (("--recache", "ours", "--num_output_frames", "18"), "re-cache"),
])
def test_rolling_errors_are_one_paragraph(tmp_path, tiny_model_files, capsys, extra, needle):
    rc, err = _run(tmp_path, tiny_model_files, capsys, "--method", "rolling_forcing", "--output_folder",
                   str(tmp_path / "x"), *extra)
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert rc == 2 and len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "x").exists()
