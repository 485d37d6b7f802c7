"""Matrix-Game 2.0 actions (methods/world_actions.py): benchmark draw, key parsing, chunk writes and action files."""
from __future__ import annotations

import json
import logging
import random

import pytest
import torch

from methods.world_actions import (VARIANT_ACTIONS, ActionInputError, ActionTensors, ChunkAction, actions_from_chunks,
                                   bench_actions, chunk_pixel_range, describe_chunk, load_action_file, parse_keys,
                                   pixel_frames, write_chunk)
from utils.errors import CLIError

# ---------------------------------------------------------------------------------------------------------------------
# Benchmark draw

# Index sequences of mg2_pipeline.md §3.2 item 8 (a plain-Python re-implementation of upstream's draw).
NOTES_SEQUENCES = [
    ("universal", 0, [26, 16, 25, 30, 37, 32]),
    ("universal", 42, [1, 15, 8, 43, 37, 2]),
    ("gta_drive", 0, [6, 4, 6, 7, 9, 8]),
    ("gta_drive", 42, [0, 3, 2, 10, 9, 0]),
    ("templerun", 0, [6, 0, 4, 3, 3, 4]),
    ("templerun", 42, [0, 1, 1, 5, 4, 0]),
]


def drawn(variant, num_latent_frames, indices):
    """(keyboard, mouse) of the draw's first len(indices) segments: frame 0, then 12 frames each (the last cut)."""
    segments, n = VARIANT_ACTIONS[variant].bench_segments, pixel_frames(num_latent_frames)
    spans = [(0, 1)] + [(start, min(start + 12, n)) for start in range(1, n, 12)]
    rows = [(segments[i], stop - start) for i, (start, stop) in zip(indices, spans)]
    keyboard = torch.tensor([seg.keyboard for seg, count in rows for _ in range(count)])
    mouse = None if rows[0][0].mouse is None else torch.tensor([seg.mouse for seg, count in rows for _ in range(count)])
    return keyboard, mouse


def upstream_indices(variant, num_latent_frames, seed):
    """Upstream's draw: global random.seed(seed), then randint(0, 0) and a candidate index per segment."""
    state = random.getstate()
    random.seed(seed)
    indices = []
    for _ in range(1 + -(-(num_latent_frames - 1) // 3)):
        random.randint(0, 0)
        indices.append(random.randint(0, len(VARIANT_ACTIONS[variant].bench_segments) - 1))
    random.setstate(state)
    return indices


def assert_draw(tensors, variant, num_latent_frames, indices):
    keyboard, mouse = drawn(variant, num_latent_frames, indices)
    assert torch.equal(tensors.keyboard[:len(keyboard)], keyboard)
    assert (tensors.mouse is None) == (mouse is None)
    if mouse is not None:
        assert torch.equal(tensors.mouse[:len(mouse)], mouse)


@pytest.mark.parametrize("variant,seed,expected", NOTES_SEQUENCES)
def test_bench_indices_t15(variant, seed, expected):
    assert upstream_indices(variant, 15, seed) == expected
    assert_draw(bench_actions(variant, 15, seed), variant, 15, expected)


def test_bench_indices_t150_universal():
    indices = upstream_indices("universal", 150, 0)
    assert len(indices) == 51  # 1 + T/3 iterations
    assert indices[:10] == [26, 16, 25, 30, 37, 32, 18, 6, 34, 19] and indices[-1] == 31
    tensors = bench_actions("universal", 150, 0)
    assert tensors.num_pixel_frames == 597
    assert_draw(tensors, "universal", 150, indices)
    row = VARIANT_ACTIONS["universal"].bench_segments[31]  # the 51st (last) segment: 8 frames
    assert torch.equal(tensors.keyboard[589:597], torch.tensor([row.keyboard] * 8))
    assert torch.equal(tensors.mouse[589:597], torch.tensor([row.mouse] * 8))


def test_candidate_tables():
    uni = VARIANT_ACTIONS["universal"].bench_segments
    gta = VARIANT_ACTIONS["gta_drive"].bench_segments
    tr = VARIANT_ACTIONS["templerun"].bench_segments
    assert (len(uni), len(gta), len(tr)) == (45, 12, 7)
    assert [s.name for s in uni[:2]] == ["forward_left", "forward_right"]
    assert uni[10].mouse == (0.0, -0.1) and uni[11].mouse == (0.0, 0.1) and uni[10].keyboard == (0, 0, 0, 0)
    assert [uni[i].name for i in (20, 21, 22, 32, 33, 34)] == ["forward", "left", "right"] * 2
    assert uni[35].name == "forward_camera_l" and uni[35].keyboard == (1, 0, 0, 0) and uni[35].mouse == (0, -0.1)
    assert uni[44].name == "forward_right_camera_r" and uni[44].keyboard == (1, 0, 0, 1) and uni[44].mouse == (0, 0.1)
    assert all(s.keyboard[1] == 0 for s in uni)  # "back" is never drawn for universal
    assert [s.name for s in gta] == ["camera_l", "camera_r"] * 2 + ["forward", "back"] * 2 + [
        "forward_camera_l", "forward_camera_r", "back_camera_l", "back_camera_r"]
    assert gta[10].keyboard == (0, 1) and gta[10].mouse == (0, -0.1)
    assert [s.keyboard.index(1.0) for s in tr] == [1, 2, 5, 6, 3, 4, 0]  # nomove is column 0, not all-zero
    assert all(s.mouse is None for s in tr)


@pytest.mark.parametrize("variant", list(VARIANT_ACTIONS))
@pytest.mark.parametrize("seed", [0, 42, 7])
@pytest.mark.parametrize("num_latent_frames", [1, 3, 15, 30])
def test_bench_tensors_follow_upstream_draw(variant, seed, num_latent_frames):
    spec = VARIANT_ACTIONS[variant]
    tensors = bench_actions(variant, num_latent_frames, seed)
    n = 4 * (num_latent_frames - 1) + 1
    assert tensors.keyboard.dtype == torch.float32 and tuple(tensors.keyboard.shape) == (n, spec.keyboard_dim)
    if spec.has_mouse:
        assert tensors.mouse.dtype == torch.float32 and tuple(tensors.mouse.shape) == (n, 2)
    else:
        assert tensors.mouse is None
    indices = upstream_indices(variant, num_latent_frames, seed)
    assert len(indices) == 1 + num_latent_frames // 3
    keyboard, _ = drawn(variant, num_latent_frames, indices)
    assert len(keyboard) == n  # the spans tile all N frames
    assert num_latent_frames == 1 or n - 1 - 12 * (len(indices) - 2) == 8  # the last segment has 8 frames
    assert_draw(tensors, variant, num_latent_frames, indices)


def test_bench_is_deterministic_and_leaves_global_random_alone():
    state = random.getstate()
    a = bench_actions("universal", 15, 3)
    assert random.getstate() == state
    b = bench_actions("universal", 15, 3)
    assert a.sha256() == b.sha256() and torch.equal(a.keyboard, b.keyboard)
    assert bench_actions("universal", 15, 4).sha256() != a.sha256()


def test_bench_single_latent_frame_and_unknown_variant():
    single = bench_actions("templerun", 1, 0)
    assert single.num_pixel_frames == 1
    assert_draw(single, "templerun", 1, [6])
    with pytest.raises(ActionInputError, match="unknown Matrix-Game 2.0 variant 'gta'"):
        bench_actions("gta", 15, 0)


# ---------------------------------------------------------------------------------------------------------------------
# ActionTensors


def test_action_tensors_basics():
    t = bench_actions("universal", 15, 0)
    changed = t.clone()
    assert changed.sha256() == t.sha256()
    changed.mouse[5, 1] += 1
    assert changed.sha256() != t.sha256() and t.mouse[5, 1] != changed.mouse[5, 1]  # a copy, not a view
    assert pixel_frames(15) == 57 and pixel_frames(150) == 597
    z = ActionTensors.zeros("templerun", 3)
    assert tuple(z.keyboard.shape) == (9, 7) and z.mouse is None and z.num_pixel_frames == 9


# ---------------------------------------------------------------------------------------------------------------------
# Chunks


def test_chunk_pixel_ranges():
    assert chunk_pixel_range(0) == (0, 9)
    assert chunk_pixel_range(1) == (9, 21)
    assert chunk_pixel_range(2) == (21, 33)
    for g in range(1, 60):
        f0 = 3 * g
        assert chunk_pixel_range(g) == (12 * g - 3, 12 * g + 9) == (4 * (f0 - 1) + 1, 4 * (f0 + 2) + 1)


def test_write_chunk_ranges_and_windows():
    t = ActionTensors.zeros("universal", 30)
    written = torch.zeros(t.num_pixel_frames, dtype=torch.bool)
    for g in range(10):
        marker = ChunkAction((float(g + 1), 0.0, 0.0, 0.0), (0.0, float(g + 1)), None)
        write_chunk(t, g, marker)
        start, stop = chunk_pixel_range(g)
        hit = (t.keyboard[:, 0] == g + 1).nonzero().flatten().tolist()
        assert hit == list(range(start, stop))
        assert (t.mouse[:, 1] == g + 1).nonzero().flatten().tolist() == hit
        if g == 0:
            assert hit == list(range(0, 9))
        if g == 1:
            assert hit == list(range(9, 21))
        assert not written[start:stop].any()  # no overlap
        written[start:stop] = True
        # latent frame j reads pixel frames 4j-12 .. 4j-1 (clamped to 0): all already written, by this chunk or before
        f0 = 3 * g
        for j in range(f0, f0 + 3):
            window = [max(0, p) for p in range(4 * j - 12, 4 * j)]
            assert all(written[p] for p in window)
            assert max(window) < stop
    assert written.all()  # the chunks tile all N frames


UNIVERSAL_OK = [
    ("w i", (1, 0, 0, 0), (0.1, 0), "w i"),
    ("i w", (1, 0, 0, 0), (0.1, 0), "i w"),
    ("U Q", (0, 0, 0, 0), (0, 0), "u q"),
    ("  s   k ", (0, 1, 0, 0), (-0.1, 0), "s k"),
    ("a j", (0, 0, 1, 0), (0, -0.1), "a j"),
    ("d\tl", (0, 0, 0, 1), (0, 0.1), "d l"),
    ("w", (1, 0, 0, 0), (0, 0), "w"),  # a move key alone: camera u
    ("L", (0, 0, 0, 0), (0, 0.1), "l"),  # a camera key alone: move q
]


@pytest.mark.parametrize("text,keyboard,mouse,keys", UNIVERSAL_OK)
def test_parse_keys_universal(text, keyboard, mouse, keys):
    action = parse_keys("universal", text)
    assert action.keyboard == keyboard and action.mouse == mouse and action.keys == keys
    assert all(isinstance(v, float) for v in action.keyboard + action.mouse)


GTA_OK = [
    ("w a", (1, 0), (0, -0.1)),
    ("A W", (1, 0), (0, -0.1)),
    ("s d", (0, 1), (0, 0.1)),
    ("w", (1, 0), (0, 0)),
    ("d", (0, 0), (0, 0.1)),
    ("q", (0, 0), (0, 0)),
    ("", (0, 0), (0, 0)),
    ("w q", (1, 0), (0, 0)),
]


@pytest.mark.parametrize("text,keyboard,mouse", GTA_OK)
def test_parse_keys_gta(text, keyboard, mouse):
    action = parse_keys("gta_drive", text)
    assert action.keyboard == keyboard and action.mouse == mouse
    assert parse_keys("gta_drive", action.keys) == action  # the stored key line parses back


TEMPLERUN = {"w": 1, "s": 2, "a": 5, "d": 6, "z": 3, "c": 4, "q": 0}


@pytest.mark.parametrize("key,column", sorted(TEMPLERUN.items()))
def test_parse_keys_templerun(key, column):
    for text in (key, key.upper(), f" {key} "):
        action = parse_keys("templerun", text)
        assert action.mouse is None and action.keys == key
        assert action.keyboard == tuple(1.0 if i == column else 0.0 for i in range(7))


@pytest.mark.parametrize("variant,text,reason", [
    ("universal", "", "no key"),
    ("universal", "w s", "more than one move key"),
    ("universal", "i k", "more than one camera key"),
    ("universal", "w i j", "more than one camera key"),
    ("universal", "x", "unknown key 'x'"),
    ("universal", "wi", "unknown key 'wi'"),
    ("universal", "w z", "unknown key 'z'"),
    ("gta_drive", "w s", "more than one drive key"),
    ("gta_drive", "a d", "more than one steer key"),
    ("gta_drive", "q q", "more than one steer key"),
    ("gta_drive", "a q", "more than one steer key"),
    ("gta_drive", "w i", "unknown key 'i'"),
    ("templerun", "", "no key"),
    ("templerun", "w s", "more than one key"),
    ("templerun", "i", "unknown key 'i'"),
    ("templerun", "wz", "unknown key 'wz'"),
])
def test_parse_keys_invalid(variant, text, reason):
    with pytest.raises(ActionInputError) as info:
        parse_keys(variant, text)
    message = str(info.value)
    assert repr(text) in message and variant in message and reason in message
    assert VARIANT_ACTIONS[variant].key_help in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, CLIError)


def test_variant_key_maps():
    uni = VARIANT_ACTIONS["universal"]
    assert (uni.keyboard_dim, uni.has_mouse) == (4, True)
    assert dict(uni.camera_keys) == {"i": (0.1, 0), "k": (-0.1, 0), "j": (0, -0.1), "l": (0, 0.1), "u": (0, 0)}
    assert uni.move_keys["s"] == (0, 1, 0, 0) and uni.move_keys["q"] == (0, 0, 0, 0)
    gta = VARIANT_ACTIONS["gta_drive"]
    assert (gta.keyboard_dim, gta.has_mouse) == (2, True)
    assert dict(gta.camera_keys) == {"a": (0, -0.1), "d": (0, 0.1), "q": (0, 0)}
    assert dict(gta.move_keys) == {"w": (1, 0), "s": (0, 1), "q": (0, 0)}
    tr = VARIANT_ACTIONS["templerun"]
    assert (tr.keyboard_dim, tr.has_mouse, len(tr.camera_keys)) == (7, False, 0)


def test_actions_from_chunks_matches_write_chunk_sequence():
    keys = ["w i", "q", "d l", "s", "k a"]
    tensors = actions_from_chunks("universal", keys, 15)
    manual = ActionTensors.zeros("universal", 15)
    for g, text in enumerate(keys):
        write_chunk(manual, g, parse_keys("universal", text))
    assert torch.equal(tensors.keyboard, manual.keyboard) and torch.equal(tensors.mouse, manual.mouse)
    parsed = actions_from_chunks("universal", [parse_keys("universal", k) for k in keys], 15)
    assert parsed.sha256() == tensors.sha256()
    assert torch.equal(tensors.keyboard[0:9], torch.tensor([[1.0, 0, 0, 0]] * 9))
    assert torch.equal(tensors.mouse[45:57], torch.tensor([[-0.1, 0.0]] * 12))


def test_actions_from_chunks_errors(caplog):
    with pytest.raises(ActionInputError, match="15 latent frames need 5 chunk actions.*got 3; give 2 more"):
        actions_from_chunks("templerun", ["w", "s", "a"], 15)
    with pytest.raises(ActionInputError, match="multiple of 3"):
        actions_from_chunks("templerun", ["w"] * 5, 14)
    with pytest.raises(ActionInputError, match="does not fit the templerun layout"):
        actions_from_chunks("templerun", [parse_keys("universal", "w")], 3)
    with caplog.at_level(logging.WARNING, logger="methods.world_actions"):
        t = actions_from_chunks("templerun", ["w", "s"], 3)
    assert "ignored" in caplog.text and t.num_pixel_frames == 9


def test_raw_chunk_action_and_describe():
    raw = ChunkAction.from_vectors("universal", [0.5, 0, 0, 0], [0.0, 0.25])
    assert raw.keys is None and raw.keyboard == (0.5, 0.0, 0.0, 0.0)
    assert describe_chunk(raw) == {"keyboard": [0.5, 0.0, 0.0, 0.0], "mouse": [0.0, 0.25]}
    assert describe_chunk(parse_keys("universal", "W  I")) == "w i"
    assert describe_chunk(ChunkAction.from_vectors("templerun", [1, 0, 0, 0, 0, 0, 0])) == {
        "keyboard": [1.0, 0, 0, 0, 0, 0, 0]}
    json.dumps(describe_chunk(raw))
    with pytest.raises(ActionInputError, match="needs a mouse"):
        ChunkAction.from_vectors("gta_drive", [1, 0])
    with pytest.raises(ActionInputError, match="has no mouse"):
        ChunkAction.from_vectors("templerun", [1, 0, 0, 0, 0, 0, 0], [0, 0])
    with pytest.raises(ActionInputError, match="must have 2 values"):
        ChunkAction.from_vectors("gta_drive", [1, 0, 0], [0, 0])
    with pytest.raises(ActionInputError, match="finite"):
        ChunkAction.from_vectors("gta_drive", [float("nan"), 0], [0, 0])


# ---------------------------------------------------------------------------------------------------------------------
# Action files


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_frame_file_json_and_yaml(tmp_path):
    bench = bench_actions("universal", 6, 1)
    data = {"keyboard_condition": bench.keyboard.tolist(), "mouse_condition": bench.mouse.tolist()}
    tensors, chunks = load_action_file(_write(tmp_path, "a.json", data), "universal", 6)
    assert chunks is None and tensors.sha256() == bench.sha256()
    import yaml
    tensors, chunks = load_action_file(_write(tmp_path, "a.yaml", yaml.safe_dump(data)), "universal", 6)
    assert chunks is None and tensors.sha256() == bench.sha256()
    tr = bench_actions("templerun", 3, 0)
    tensors, _ = load_action_file(_write(tmp_path, "t.json", {"keyboard_condition": tr.keyboard.tolist()}),
                                  "templerun", 3)
    assert tensors.mouse is None and torch.equal(tensors.keyboard, tr.keyboard)


def test_frame_file_extra_frames_cut(tmp_path, caplog):
    long = bench_actions("gta_drive", 9, 5)
    data = {"keyboard_condition": long.keyboard.tolist() + [[1, 0]], "mouse_condition": long.mouse.tolist() + [[0, 0]]}
    with caplog.at_level(logging.WARNING, logger="methods.world_actions"):
        tensors, _ = load_action_file(_write(tmp_path, "g.json", data), "gta_drive", 6)
    assert "first 21" in caplog.text
    assert tensors.sha256() == ActionTensors(long.keyboard[:21], long.mouse[:21]).sha256()


def _frames(n, k, mouse=True):
    data = {"keyboard_condition": [[0] * k for _ in range(n)]}
    if mouse:
        data["mouse_condition"] = [[0, 0] for _ in range(n)]
    return data


@pytest.mark.parametrize("variant,data,pattern", [
    ("universal", _frames(20, 4), r"N' = 20 pixel frames.*need N = 4\(T-1\)\+1 = 21"),
    ("universal", _frames(21, 3), r"keyboard_condition row 0 must have 4 values"),
    ("universal", {**_frames(21, 4), "keyboard_condition": [[0, 0, 0, "x"]] * 21}, r"row 0 must hold numbers"),
    ("universal", {**_frames(21, 4), "keyboard_condition": [[0, 0, 0, True]] * 21}, r"row 0 must hold numbers"),
    ("universal", {**_frames(21, 4), "keyboard_condition": 5}, r"must be a list of rows"),
    ("universal", {**_frames(21, 4), "keyboard_condition": [5] * 21}, r"row 0 must be a list of 4 numbers"),
    ("universal", {**_frames(21, 4), "mouse_condition": [[0, 0]] * 20}, r"21 keyboard_condition rows but 20"),
    ("universal", {**_frames(21, 4), "mouse_condition": [[0, 0, 0]] * 21}, r"mouse_condition row 0 must have 2"),
    ("universal", _frames(21, 4, mouse=False), r"no mouse_condition, which universal needs"),
    ("gta_drive", _frames(21, 2, mouse=False), r"no mouse_condition, which gta_drive needs"),
    ("templerun", _frames(21, 7, mouse=True), r"templerun has no mouse; remove it"),
    ("universal", {**_frames(21, 4), "fps": 12}, r"unknown top-level key\(s\) 'fps'; the known keys are "
                                                 r"keyboard_condition, mouse_condition, chunks"),
    ("universal", {"mouse_condition": [[0, 0]] * 21}, r"no keyboard_condition"),
    ("universal", {}, r"empty mapping"),
    ("universal", {**_frames(21, 4), "chunks": ["w"] * 2}, r"mixes chunks"),
    ("universal", 7, r"holds a int"),
])
def test_frame_file_errors(tmp_path, variant, data, pattern):
    path = _write(tmp_path, "bad.json", data)
    with pytest.raises(ActionInputError, match=pattern) as info:
        load_action_file(path, variant, 6)
    assert str(path) in str(info.value)


def test_frame_file_nan_and_inf(tmp_path):
    data = _frames(21, 4)
    data["mouse_condition"][3] = [float("nan"), 0]
    path = _write(tmp_path, "nan.json", json.dumps(data))  # json writes NaN, which json.loads accepts
    with pytest.raises(ActionInputError, match="mouse_condition row 3 must hold finite numbers"):
        load_action_file(path, "universal", 6)
    rows = "\n".join("  - [0, 0, 0, 0]" for _ in range(20))
    mouse = "\n".join("  - [0, 0]" for _ in range(21))
    text = f"keyboard_condition:\n  - [0, .inf, 0, 0]\n{rows}\nmouse_condition:\n{mouse}\n"
    path = _write(tmp_path, "inf.yaml", text)
    with pytest.raises(ActionInputError, match="keyboard_condition row 0 must hold finite numbers"):
        load_action_file(path, "universal", 6)


def test_chunk_file_equals_interactive_path(tmp_path):
    keys = ["w i", "a j", "q", "s k", "d l"]
    expected = actions_from_chunks("universal", keys, 15)
    manual = ActionTensors.zeros("universal", 15)
    for g, text in enumerate(keys):
        write_chunk(manual, g, parse_keys("universal", text))
    assert manual.sha256() == expected.sha256()
    import yaml
    sources = {
        "list.json": keys,
        "map.json": {"chunks": keys},
        "list.yaml": "".join(f"- {k}\n" for k in keys),
        "map.yaml": yaml.safe_dump({"chunks": keys}),
        "upper.yaml": "chunks: [W I, A J, Q, S K, D L]\n",
    }
    for name, content in sources.items():
        tensors, chunks = load_action_file(_write(tmp_path, name, content), "universal", 15)
        assert tensors.sha256() == expected.sha256(), name
        assert [c.keys for c in chunks] == keys


def test_chunk_file_raw_vectors_and_sidecar_roundtrip(tmp_path):
    entries = ["w", {"keyboard": [0, 1], "mouse": [0.0, 0.05]}, "", "s d"]
    tensors, chunks = load_action_file(_write(tmp_path, "g.json", entries), "gta_drive", 12)
    assert chunks[1].keys is None and chunks[1].mouse == (0.0, 0.05) and chunks[2].keys == "q"
    assert torch.equal(tensors.mouse[9:21], torch.tensor([[0.0, 0.05]] * 12))
    assert torch.equal(tensors.keyboard[21:33], torch.zeros(12, 2))
    sidecar = [describe_chunk(c) for c in chunks]
    again, chunks_again = load_action_file(_write(tmp_path, "sidecar.json", {"chunks": sidecar}), "gta_drive", 12)
    assert again.sha256() == tensors.sha256() and chunks_again == chunks
    tr, tr_chunks = load_action_file(_write(tmp_path, "t.yaml", "- z\n- keyboard: [1, 0, 0, 0, 0, 0, 0]\n"),
                                     "templerun", 6)
    assert tr.mouse is None and tr_chunks[1].keyboard[0] == 1.0
    assert torch.equal(tr.keyboard[:9], torch.tensor([[0.0, 0, 0, 1, 0, 0, 0]] * 9))


def test_chunk_file_extra_entries_ignored(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="methods.world_actions"):
        tensors, chunks = load_action_file(_write(tmp_path, "x.json", ["w", "s", "a"]), "templerun", 6)
    assert len(chunks) == 2 and "3 chunk actions" in caplog.text
    assert tensors.sha256() == actions_from_chunks("templerun", ["w", "s"], 6).sha256()


@pytest.mark.parametrize("variant,data,pattern", [
    ("templerun", ["w", "s"], r"has 2 chunk actions, but 15 latent frames need 5 .*add 3"),
    ("universal", {"chunks": ["w"] * 4}, r"has 4 chunk actions, but 15 latent frames need 5"),
    ("universal", ["w", "w", "x", "w", "w"], r"chunk 2: 'x' is not a valid universal action"),
    ("gta_drive", ["w", "w s", "w", "w", "w"], r"chunk 1: 'w s' is not a valid gta_drive action"),
    ("universal", ["w", 3, "w", "w", "w"], r"chunk 1: 3 is neither a key line"),
    ("universal", ["w", None, "w", "w", "w"], r"chunk 1: None is neither a key line"),
    ("universal", ["w", {"keyboard": [1, 0, 0, 0]}, "w", "w", "w"], r"chunk 1: .*needs a mouse"),
    ("universal", ["w", {"mouse": [0, 0]}, "w", "w", "w"], r"chunk 1: a raw entry needs keyboard"),
    ("universal", ["w", {"keyboard": [1, 0], "mouse": [0, 0]}, "w", "w", "w"], r"chunk 1: .*must have 4 values"),
    ("universal", ["w", {"keyboard": [1, 0, 0, 0], "mouse": [0, 0], "keys": "w"}, "w", "w", "w"],
     r"chunk 1: unknown key 'keys'"),
    ("templerun", ["w", {"keyboard": [1, 0, 0, 0, 0, 0, 0], "mouse": [0, 0]}, "w", "w", "w"],
     r"chunk 1: .*has no mouse"),
    ("universal", {"chunks": "w i"}, r"chunks must be a list"),
    ("universal", {"chunks": ["w"] * 5, "seed": 1}, r"unknown top-level key\(s\) 'seed'"),
])
def test_chunk_file_errors(tmp_path, variant, data, pattern):
    path = _write(tmp_path, "bad.json", data)
    with pytest.raises(ActionInputError, match=pattern) as info:
        load_action_file(path, variant, 15)
    assert str(path) in str(info.value)


def test_chunk_file_needs_whole_chunks(tmp_path):
    with pytest.raises(ActionInputError, match="multiple of 3"):
        load_action_file(_write(tmp_path, "c.json", ["w"] * 5), "templerun", 14)


def test_file_read_errors(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ActionInputError, match=f"{missing} does not exist"):
        load_action_file(missing, "universal", 3)
    with pytest.raises(ActionInputError, match="cannot be read"):
        load_action_file(tmp_path, "universal", 3)  # a directory
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ActionInputError, match="cannot be read as UTF-8"):
        load_action_file(binary, "universal", 3)
    with pytest.raises(ActionInputError, match="neither valid JSON nor valid YAML at line"):
        load_action_file(_write(tmp_path, "broken.yaml", "chunks: [w, s\n  - : ]\n"), "universal", 3)
    with pytest.raises(ActionInputError, match="is empty"):
        load_action_file(_write(tmp_path, "empty.yaml", "\n# nothing\n"), "universal", 3)
    with pytest.raises(ActionInputError, match="holds a str"):
        load_action_file(_write(tmp_path, "scalar.yaml", "w i\n"), "universal", 3)


def test_yaml_tags_are_never_executed(tmp_path):
    marker = tmp_path / "executed"
    path = _write(tmp_path, "evil.yaml", f"chunks: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ActionInputError, match="uses a YAML tag at line 1 that safe loading refuses"):
        load_action_file(path, "universal", 3)
    assert not marker.exists()
