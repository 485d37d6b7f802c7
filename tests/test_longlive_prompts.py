"""LongLive's interactive input: JSONL videos of prompt segments + switch_frame_indices, with LongLive's timing."""
import json
import logging

import pytest
import torch

from methods.longlive import LongLiveRecache
from pipeline.policies import SelfForcingWindow
from pipeline.rollout import Rollout, RolloutConfig, RolloutInputs
import yaml

from utils.errors import CLIError
from methods.longlive_prompts import load_longlive_prompts, parse_switch_frame_indices, switch_chunks
from app.schedule import ChunkClock
from app.switching import PromptSwitcher

from tiny import text_embeds, tiny_model

CLOCK = ChunkClock(3, 4, 16.0)


def _jsonl(tmp_path, videos, name="interactive.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps({"prompts": v}) for v in videos) + "\n", encoding="utf-8")
    return path


def _six(tag):
    return [f"{tag} segment {k}" for k in range(6)]


def test_released_timing_example(tmp_path):
    path = _jsonl(tmp_path, [_six("a"), _six("b")])
    ll = load_longlive_prompts(path, "40, 80, 120, 160, 200", 3, 240)
    assert [c * 3 for c in ll.chunks] == [42, 81, 120, 162, 201]
    sched = ll.schedule(1, CLOCK)
    assert {c: e.prompt for c, e in sched.chunks.items()} == {0: "b segment 0", 14: "b segment 1", 27: "b segment 2",
                                                            40: "b segment 3", 54: "b segment 4", 67: "b segment 5"}
    assert [j.text for j in ll.jobs()] == ["a segment 0", "b segment 0"]
    assert sched.chunks[14].start == CLOCK.seconds(14)


@pytest.mark.parametrize("text", ["switch_frame_indices: 40, 80, 120", "switch_frame_indices: [40, 80, 120]",
                                  "switch_frame_indices: '40,80,120'"])
def test_yaml_forms(text):
    assert parse_switch_frame_indices(yaml.safe_load(text)["switch_frame_indices"]) == (40, 80, 120)


def test_single_int_and_empty():
    assert parse_switch_frame_indices(yaml.safe_load("x: 40")["x"]) == (40,)
    assert parse_switch_frame_indices(None) == ()


@pytest.mark.parametrize("value,needle", [("80, 40", "not sorted"), ([40, -1], "-1"), ("40, x", "'x'"),
                                          (True, "True"), ([40.5], "40.5")])
def test_bad_indices_are_one_paragraph(value, needle):
    with pytest.raises(CLIError) as info:
        parse_switch_frame_indices(value, "configs/longlive_interactive_inference.yaml")
    msg = str(info.value)
    assert "\n" not in msg and needle in msg and "configs/longlive_interactive_inference.yaml" in msg


def test_two_indices_in_one_chunk_wait_a_chunk_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert switch_chunks((40, 41, 41), 3, 240) == (14, 15, 16)
    assert "waits one chunk" in caplog.text


def test_index_beyond_the_video_never_fires(caplog):
    with caplog.at_level(logging.WARNING):
        assert switch_chunks((40, 240, 300), 3, 240) == (14, None, None)
    assert "never fires" in caplog.text
    with caplog.at_level(logging.WARNING):
        assert switch_chunks((40, 237), 3, 240) == (14, 79)  # the last chunk starts at 237
    assert switch_chunks((40, 5000), 3, None) == (14, 1667)  # endless: everything fires


def test_jsonl_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompts": ["a", "b"]}\n{"prompts": ["a"]}\n', encoding="utf-8")
    with pytest.raises(CLIError, match="line 2, has 1 prompt segments but line 1 has 2"):
        load_longlive_prompts(bad, 40, 3, 120)
    bad.write_text('{"prompt": ["a"]}\n', encoding="utf-8")
    with pytest.raises(CLIError, match="no \"prompts\" list"):
        load_longlive_prompts(bad, None, 3, 120)
    bad.write_text('{"prompts": ["a", "b"]\n', encoding="utf-8")
    with pytest.raises(CLIError, match="not valid JSON"):
        load_longlive_prompts(bad, 40, 3, 120)
    with pytest.raises(CLIError, match="2 entries .* 2 prompt segments"):
        load_longlive_prompts(_jsonl(tmp_path, [["a", "b"]]), "40, 80", 3, 120)
    with pytest.raises(CLIError, match="does not exist"):
        load_longlive_prompts(tmp_path / "none.jsonl", 40, 3, 120)


def test_switcher_follows_the_schedule_in_a_rollout(tmp_path):
    ll = load_longlive_prompts(_jsonl(tmp_path, [["p0", "p1", "p2"]]), "4, 5", 3, 15)
    assert ll.chunks == (2, 3)
    model = tiny_model(seed=2)
    embeds = {f"p{k}": text_embeds(1, model.config, seed=k + 1) for k in range(3)}
    fired = []

    def encode(text):
        fired.append(text)
        return embeds[text]

    switcher = PromptSwitcher(CLOCK, encode, ll.jobs()[0].text, schedule=ll.schedule(0, CLOCK))
    pipe = Rollout(model, RolloutConfig(), SelfForcingWindow(local_attn_size=12, sink_size=3),
                   recache=LongLiveRecache(global_sink=True))
    noise = torch.randn(1, 15, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    list(pipe.frames(RolloutInputs(embeds["p0"], noise, torch.Generator().manual_seed(1), prompt_switch=switcher)))
    assert fired == ["p1", "p2"]
    assert [(s["chunk"], s["latent_frame"], s["prompt"]) for s in switcher.switches] == [(2, 6, "p1"), (3, 9, "p2")]
