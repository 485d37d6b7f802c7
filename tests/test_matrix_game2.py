"""Matrix-Game 2.0 against an independent naive reference (tests/world_reference.py): latents and the three caches'
slot contents and positions after every chunk, for the three variants' layouts; Deep Sink / PC over the action
caches; the action windows' timing; strict loading of the released file layout."""
from __future__ import annotations

import pytest
import torch

from app.demo_world import tiny_world_config, world_state_dict
from methods.world_actions import bench_actions
from methods.world_run import ActionTrack
from pipeline.noise import TensorNoise
from pipeline.policies import build_policy
from pipeline.rollout import Rollout, RolloutConfig
from tests.world_reference import random_state, reference_rollout
from wan.action_module import action_windows
from wan.world_model import CausalWorldModel, WorldConditioning, WorldModelConfig, load_world_model

H = W = 8  # latent size: 16 tokens per frame
STEPS = {"universal": [1000, 666, 333], "gta_drive": [1000, 666, 333], "templerun": [1000, 750, 500, 250]}


def world_case(variant: str, T: int = 12, seed: int = 0, window: int | None = None):
    """A tiny model of ``variant``'s layout, its reference weights, conditioning, actions and noise."""
    config = tiny_world_config(variant, window)
    state = random_state(config, config["clip_dim"], seed)
    model = CausalWorldModel(WorldModelConfig.from_dict(config))
    model.load_state_dict_strict(state)
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randn(1, 257, config["clip_dim"], generator=g)
    cond = torch.randn(1, 20, T, H, W, generator=g)
    actions = bench_actions(variant, T, seed)
    noise = torch.randn(1, 16, T, H, W, generator=g)
    steps = STEPS[variant]
    draws = [torch.randn(3, 16, H, W, generator=g) for _ in range(T // 3 * (len(steps) - 1))]
    return dict(config=config, state=state, model=model, tokens=tokens, cond=cond, actions=actions, noise=noise,
                draws=draws, steps=steps, T=T)


def ours(case, mode: str = "self_forcing", record: list | None = None, **params):
    """Our rollout of ``case`` (the released FIFO by default); ``record`` gets each chunk's cache layout."""
    cfg = case["config"]
    params = {"local_attn_size": cfg["local_attn_size"], "sink_size": 0, **params}
    rollout = Rollout(case["model"], RolloutConfig(denoising_step_list=case["steps"]), build_policy(mode, **params))
    draws = iter(case["draws"])
    track = ActionTrack(case["actions"], 1, "cpu")
    cond = WorldConditioning(case["tokens"], case["cond"].transpose(1, 2), track)
    from pipeline.rollout import RolloutInputs
    inputs = RolloutInputs(cond, TensorNoise(case["noise"].transpose(1, 2)), lambda shape, dtype, dev: next(draws))
    out = torch.empty(1, case["T"], 16, H, W)
    for _, f, x0 in rollout.frames(inputs):
        out[:, f:f + 3] = x0
        if record is not None:
            record.append((f, layout(rollout.kv, case["model"])))
    return out


def layout(kv, model) -> dict:
    """Per layer after a chunk: frames and positions held by the self-attention and the action caches."""
    out = {}
    for i, blk in enumerate(model.blocks):
        cache = kv.layers[i]
        slots = cache.order()
        entry = {"self_frames": sorted(set(cache.frame[0, slots].tolist())), "whole": kv.whole_frames(i)}
        if blk.action_model is not None:
            for name in ("mouse", "keyboard"):
                fc = kv.frame_caches.get((i, name))
                if fc is not None and fc.frames:
                    entry[name] = (list(fc.frames), fc.pos.tolist(), blk.action_model.rope.apply(fc.k, fc.pos))
        out[i] = entry
    return out


def reference(case, record=None):
    """The naive released-style rollout of ``case``."""
    draws = iter(case["draws"])
    mouse = None if case["actions"].mouse is None else case["actions"].mouse[None]
    return reference_rollout(case["state"], case["config"], case["tokens"], case["cond"], case["actions"].keyboard[None],
                             mouse, case["noise"], lambda: next(draws), case["steps"], record=record).transpose(1, 2)


@pytest.mark.parametrize("variant,window", [("universal", None), ("gta_drive", None), ("templerun", None),
                                            ("universal", 3)])
def test_latents_and_caches_match_the_reference(variant, window):
    case = world_case(variant, window=window)
    ref_record, our_record = [], []
    expected = reference(case, ref_record)
    got = ours(case, record=our_record)
    assert (got - expected).abs().max() < 1e-4
    clean = {r["chunk_start"]: r for r in ref_record if r["call"] == len(case["steps"])}
    L = case["config"]["local_attn_size"]
    for f, layers in our_record:
        ref_layers = clean[f]["layers"]
        held = list(range(max(0, f + 3 - L), f + 3))
        for i, entry in layers.items():
            assert entry["self_frames"] == held == sorted(set(ref_layers[i]["self_frames"]))
            if "mouse" not in entry and "keyboard" not in entry:
                continue
            for name in ("mouse", "keyboard"):
                if case["actions"].mouse is None and name == "mouse":
                    assert name not in entry
                    continue
                frames, pos, keys = entry[name]
                assert frames == held == ref_layers[i][f"{name}_frames"]
                assert pos == held  # the released FIFO: every key at its absolute frame
                ref_keys = ref_layers[i][f"{name}_k"]
                keys = keys[0] if name == "keyboard" else keys
                assert (keys - ref_keys).abs().max() < 1e-4


def test_deep_sink_moves_the_sink_in_all_three_caches():
    case = world_case("universal", T=18)
    record = []
    ours(case, "deep_sink", record, local_attn_size=9, sink_size=3)
    for f, layers in record:
        for i, entry in layers.items():
            if "mouse" not in entry:
                continue
            for name in ("mouse", "keyboard"):
                frames, pos, _ = entry[name]
                assert frames == sorted(entry["whole"])  # the same frames as the self-attention cache
                assert pos == [entry["whole"][fr] for fr in frames]  # at its (moved) positions
            if f >= 9:  # once the window is full, sink frames 0..2 sit at f - L .. f - L + 2 (gap = chunk size)
                assert entry["mouse"][0][:3] == entry["keyboard"][0][:3] == [0, 1, 2]
                assert entry["mouse"][1][:3] == entry["keyboard"][1][:3] == [f - 9, f - 8, f - 7]


def test_pc_keeps_only_whole_frames_in_the_action_caches():
    case = world_case("universal", T=18)
    record = []
    ours(case, "deep_sink_pc", record, local_attn_size=12, sink_size=3, budget=9, recent=3)
    compressed = False
    for f, layers in record:
        for i, entry in layers.items():
            if "mouse" not in entry:
                continue
            frames = entry["mouse"][0]
            compressed |= len(frames) < len(entry["self_frames"])
            assert set(frames) == set(entry["whole"]) and entry["keyboard"][0] == frames
    assert compressed  # some frames were only partly kept by the compression, and dropped from the action caches


def test_action_windows_read_the_released_pixel_frames():
    actions = torch.arange(4 * 8 + 1, dtype=torch.float32)[None, :, None]  # pixel frame index as the value
    win = action_windows(actions, 3, 3, 4, 12)[0, :, :, 0]
    for i, f in enumerate(range(3, 6)):
        assert win[i].tolist() == [max(0, p) for p in range(4 * f - 12, 4 * f)]
    assert action_windows(actions, 0, 1, 4, 12)[0, 0, :, 0].tolist() == [0.0] * 12
    with pytest.raises(ValueError, match="pixel frames"):
        action_windows(actions, 9, 3, 4, 12)


def test_an_action_changes_only_the_chunks_that_read_it():
    case = world_case("universal", T=12)
    base = ours(case)
    p = 21  # read by latent frames 6..8 (windows 4f-12 .. 4f-1), first by chunk 2
    case["actions"].keyboard[p] += 1.0
    changed = ours(case)
    assert torch.equal(base[:, :6], changed[:, :6])
    assert not torch.equal(base[:, 6:], changed[:, 6:])
    last = pixel = 4 * (case["T"] - 1)  # never read
    case["actions"].keyboard[pixel] += 5.0
    assert torch.equal(changed, ours(case)) and last == pixel


def test_strict_loading_of_the_released_file(tmp_path):
    from safetensors.torch import save_file
    from wan.loading import ModelFilesError
    import json
    config = tiny_world_config("gta_drive")
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = world_state_dict(config)
    assert all(k.startswith("model.") for k in state) and any(".action_model.mouse_mlp." in k for k in state)
    save_file(state, str(tmp_path / "ok.safetensors"))
    model = load_world_model(tmp_path / "config.json", tmp_path / "ok.safetensors")
    assert model.world.action.keyboard_dim_in == 2 and not hasattr(model, "text_embedding")
    bad = dict(state)
    bad.pop("model.blocks.0.action_model.t_qkv.weight")
    save_file(bad, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelFilesError, match="t_qkv"):
        load_world_model(tmp_path / "config.json", tmp_path / "missing.safetensors")
    other = world_state_dict(tiny_world_config("universal"))  # 4 keys instead of 2
    save_file(other, str(tmp_path / "universal.safetensors"))
    with pytest.raises(ModelFilesError, match="keyboard_embed"):
        load_world_model(tmp_path / "config.json", tmp_path / "universal.safetensors")
    with pytest.raises(ModelFilesError, match="does not exist"):
        load_world_model(tmp_path / "config.json", tmp_path / "absent.safetensors")


def test_conditioning_past_the_encoded_length_repeats_an_exact_frame(tmp_path):
    """The grey frames' encodings converge: frames past CONDITION_FRAMES repeat the last encoded one exactly (float32,
    the test VAE reaches equality after about 30 latent frames; the method encodes up to 120)."""
    from app.demo_model import write_vae
    from methods.matrix_game2 import CONDITION_FRAMES
    from wan.vae import WanVAE
    write_vae(tmp_path)
    vae = WanVAE.from_model_dir(tmp_path)
    image = torch.rand(1, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def encode(T):
        return vae.encode(torch.cat([image, torch.zeros(1, 4 * (T - 1), 3, 32, 32)], 1))  # [1, T, 16, 4, 4]

    full, short = encode(42), encode(36)
    assert torch.equal(full[:, :36], short)  # causal: a shorter encode is a prefix of a longer one
    cond = WorldConditioning(torch.zeros(1, 1, 8), short, None)
    assert torch.equal(cond.frame_inputs(33, 9), full[:, 33:42])
    assert CONDITION_FRAMES >= 36
