"""LongLive through the CLI on the tiny model: a LongLive-style YAML (generator_ckpt, lora_ckpt + adapter, global_sink,
switch_frame_indices, a JSONL data_path) renders every JSONL video with the LoRA merged and LongLive's switches."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

import inference
from app.demo_model import tiny_dit_config
from lora_fixtures import write_lora_file

DROP = object()  # a key left out of the YAML
SEGMENTS = [["a paper boat drifts down a gutter", "the boat reaches a river", "the river meets the sea"],
            ["a lighthouse in a winter storm", "the storm clears at dawn", "gulls circle the lamp"]]


def _setup(tmp_path, tiny_model_files, **changes):
    """A LongLive interactive YAML pointing at the tiny model, a rank-4 LoRA and a two-video JSONL."""
    model_dir, checkpoint = tiny_model_files
    lora = write_lora_file(tmp_path / "models" / "lora.pt", tiny_dit_config(), rank=4, seed=3)
    data = tmp_path / "interactive.jsonl"
    data.write_text("".join(json.dumps({"prompts": s}) + "\n" for s in SEGMENTS), encoding="utf-8")
    cfg = {"denoising_step_list": [1000, 750, 500, 250], "warp_denoising_step": True, "num_frame_per_block": 3,
           "model_kwargs": {"local_attn_size": 12, "timestep_shift": 5.0, "sink_size": 3},
           "data_path": str(data), "output_folder": str(tmp_path / "out"), "inference_iter": -1,
           "num_output_frames": 15, "use_ema": False, "seed": 1, "num_samples": 1, "save_with_index": True,
           "switch_frame_indices": "4, 9", "global_sink": True, "context_noise": 0,
           "generator_ckpt": str(checkpoint), "lora_ckpt": str(lora),
           "adapter": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.0, "dtype": "bfloat16",
                       "verbose": False}, "mode": "self_forcing"}
    cfg.update(changes)
    cfg = {k: v for k, v in cfg.items() if v is not DROP}
    path = tmp_path / "longlive_interactive_inference.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path, model_dir


def _main(capsys, *args):
    capsys.readouterr()
    rc = inference.main([str(a) for a in args])
    return rc, capsys.readouterr().err


def test_longlive_interactive_yaml_runs(tmp_path, tiny_model_files, capsys):
    config, model_dir = _setup(tmp_path, tiny_model_files)
    common = ["--config_path", config, "--wan_model_dir", model_dir, "--device", "cpu", "--save_latents",
              "height=32", "width=32"]
    rc, err = _main(capsys, *common)
    assert rc == 0, err
    sidecars = sorted((tmp_path / "out").glob("*.json"))
    assert [s.name for s in sidecars] == ["0-0_regular.json", "1-0_regular.json"]
    for n, side in enumerate(sidecars):
        record = json.loads(side.read_text())
        assert record["prompt"] == SEGMENTS[n][0]
        assert [(s["chunk"], s["latent_frame"], s["prompt"]) for s in record["prompt_switches"]] == [
            (2, 6, SEGMENTS[n][1]), (3, 9, SEGMENTS[n][2])]
        assert record["method"] == {"method": "longlive", "variant": "normal",
                                    "lora": {"file": "lora.pt", "alpha": 8.0, "rank": 4},
                                    "longlive_prompts": SEGMENTS[n], "switch_frame_indices": [4, 9],
                                    "global_sink": True}
        assert record["request"]["recache"] == "longlive"
        assert record["cache"]["mode"] == "self_forcing" and record["cache"]["local_attn_size"] == 12
    with_lora = torch.load(tmp_path / "out" / "0-0_regular.pt", weights_only=True)["latents"]

    # the same run without the LoRA: the same switches, other latents (the adapter was merged)
    rc, err = _main(capsys, *common, "lora_ckpt=null", "adapter=null", "--output_folder", tmp_path / "plain",
                    "--checkpoint_path", tiny_model_files[1])
    assert rc == 0, err
    plain = torch.load(tmp_path / "plain" / "0-0_regular.pt", weights_only=True)["latents"]
    assert (with_lora - plain).abs().max() > 1e-3


def test_longlive_lora_rank_mismatch_is_one_paragraph(tmp_path, tiny_model_files, capsys):
    config, model_dir = _setup(tmp_path, tiny_model_files, adapter={"type": "lora", "rank": 256, "alpha": 256})
    rc, err = _main(capsys, "--config_path", config, "--wan_model_dir", model_dir, "--device", "cpu", "height=32",
                    "width=32")
    last = err.strip().splitlines()[-1]  # log lines come first; the error is one paragraph on one line
    assert rc == 2 and last.startswith("error: ")
    assert "adapter.rank = 256" in last and "lora.pt" in last


def test_switch_indices_need_a_jsonl(tmp_path, tiny_model_files, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    config, model_dir = _setup(tmp_path, tiny_model_files, data_path=str(prompts))
    rc, err = _main(capsys, "--config_path", config, "--wan_model_dir", model_dir, "--device", "cpu", "height=32",
                    "width=32")
    assert rc == 2 and "switch_frame_indices" in err and ".jsonl" in err


@pytest.mark.parametrize("flag,variant", [("--recache_variant=ours", "ours"), ("--recache_variant=off", "off")])
def test_recache_variant_flag(tmp_path, tiny_model_files, capsys, flag, variant):
    config, model_dir = _setup(tmp_path, tiny_model_files, lora_ckpt=None, adapter=None,
                               generator_ckpt=None, global_sink=False)
    rc, err = _main(capsys, "--config_path", config, "--wan_model_dir", model_dir, "--checkpoint_path",
                    tiny_model_files[1], "--device", "cpu", flag, "height=32", "width=32")
    assert rc == 0, err
    record = json.loads((tmp_path / "out" / "0-0_regular.json").read_text())
    # the request names the re-cache only when it is not off / ours (recache_on_switch tells those apart)
    assert record["request"].get("recache", variant) == variant and "lora" not in record["method"]
    assert record["method"]["method"] == "longlive"
    assert record["recache_on_switch"] is (variant != "off")


def test_released_interactive_yaml_asks_for_longlive_files(tmp_path, tiny_model_files, capsys, monkeypatch):
    """LongLive's own interactive YAML as released: normal mode by default, its 5 switches checked against the JSONL,
    and the LongLive files (missing, offline) named with the command that fetches them."""
    from pathlib import Path
    family = Path(__file__).resolve().parent / "fixtures" / "family" / "longlive_interactive_inference.yaml"
    data = tmp_path / "interactive_example.jsonl"
    data.write_text(json.dumps({"prompts": [f"segment {k}" for k in range(6)]}) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, err = _main(capsys, "--config_path", family, "--data_path", data, "--wan_model_dir", tiny_model_files[0],
                    "--device", "cpu", "height=32", "width=32")
    last = err.strip().splitlines()[-1]
    assert rc == 2 and "hf download Efficient-Large-Model/LongLive models/longlive_base.pt models/lora.pt" in last
    assert "HF_HUB_OFFLINE" in last or "switched off" in last


@pytest.mark.parametrize("name,flags,mode", [
    ("longlive_inference.yaml", [], "self_forcing"),
    ("longlive_interactive_inference.yaml", [], "self_forcing"),
    ("longlive_inference_infinity.yaml", [], "infinite_forcing"),
    ("longlive_inference.yaml", ["--mode", "deep_sink_pc", "--Budget", "12", "--Recent", "3"], "deep_sink_pc"),
])
def test_longlive_yamls_choose_their_cache_mode(name, flags, mode):
    """LongLive's three YAMLs, as released, run its normal mode (Self Forcing window 12, sink 3) or, with
    use_infinite_attention, its infinite mode; an explicit mode puts Deep Sink / PC on top."""
    from pathlib import Path
    from app.checks import build_cache_policy
    from app.settings import config_from_args
    family = Path(__file__).resolve().parent / "fixtures" / "family" / name
    loaded = config_from_args(inference.build_parser().parse_intermixed_args(["--config_path", str(family), *flags]))
    assert loaded.cfg.method == "longlive"  # load_config puts LongLive's defaults (its mode) under the YAML
    d = build_cache_policy(loaded, loaded.cfg.rollout.num_frame_per_block).describe()
    assert (d["mode"], d["local_attn_size"], d["sink_size"]) == (mode, 12, 3)


def test_longlive_infinite_mode_runs_through_the_cli(tmp_path, tiny_model_files, capsys):
    config, model_dir = _setup(tmp_path, tiny_model_files, mode=DROP,
                               model_kwargs={"local_attn_size": 12, "timestep_shift": 5.0, "sink_size": 3,
                                             "use_infinite_attention": True}, num_output_frames=18)
    rc, err = _main(capsys, "--config_path", config, "--wan_model_dir", model_dir, "--device", "cpu", "height=32",
                    "width=32")
    assert rc == 0, err
    record = json.loads((tmp_path / "out" / "0-0_regular.json").read_text())
    assert record["cache"]["mode"] == "infinite_forcing" and record["request"]["recache"] == "longlive"
    assert record["method"]["variant"] == "infinite"
