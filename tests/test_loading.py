"""Loading the Wan model folder + Self Forcing checkpoint through the functions users call, and every file error."""
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from app.demo_model import tiny_dit_config, write_checkpoint, write_config, write_tiny_model
from wan import loading
from wan.loading import (ModelFilesError, check_model_files, load_generator, load_torch_file, resolve_path)



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture
def folder_copy(tiny, tmp_path):
    """A private copy of the tiny model folder that a test may damage."""
    dst = tmp_path / "model"
    shutil.copytree(tiny.model_dir, dst)
    return dst


def _expected(checkpoint: Path, entry: str) -> dict:
    sd = torch.load(checkpoint, map_location="cpu", weights_only=True)[entry]
    return {k.replace("_fsdp_wrapped_module.", "")[len("model."):]: v for k, v in sd.items()}


def _assert_weights_equal(model, expected: dict):
    own = model.state_dict()
    assert set(own) == set(expected)
    for k, v in own.items():
        assert torch.equal(v, expected[k].to(v.dtype)), k


def _one_paragraph(exc: ModelFilesError) -> str:
    msg = str(exc)
    assert "\n" not in msg and len(msg) > 40
    assert exc.__cause__ is None  # raised "from None": the CLI prints str(e) alone
    return msg


@pytest.mark.parametrize("use_ema,entry", [(False, "generator"), (True, "generator_ema")])
def test_generator_weights_equal_checkpoint_entry(tiny, use_ema, entry):
    model = load_generator(tiny.model_dir, tiny.checkpoint, use_ema=use_ema)
    _assert_weights_equal(model, _expected(tiny.checkpoint, entry))
    assert model.dtype == torch.float32 and not model.training
    assert all(not p.requires_grad for p in model.parameters())


def test_generator_and_ema_differ_and_override_base(tiny):
    plain = load_generator(tiny.model_dir, tiny.checkpoint).state_dict()
    ema = load_generator(tiny.model_dir, tiny.checkpoint, use_ema=True).state_dict()
    base = loading.build_dit(tiny.model_dir).state_dict()
    key = "blocks.0.self_attn.q.weight"
    assert not torch.equal(plain[key], ema[key]) and not torch.equal(plain[key], base[key])


def test_base_weights_load_strict_in_dtype(tiny):
    from safetensors.torch import load_file

    model = loading.build_dit(tiny.model_dir, dtype=torch.bfloat16)
    ref = load_file(str(tiny.model_dir / loading.DIT_WEIGHTS_FILE))
    _assert_weights_equal(model, ref)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_loaded_model_runs(tiny):
    cfg = tiny_dit_config()
    model = load_generator(tiny.model_dir, tiny.checkpoint, dtype=torch.bfloat16)
    text_kv = model.encode_text(torch.zeros(1, cfg.text_len, cfg.text_dim))
    out = model(torch.randn(1, 2, cfg.in_dim, 4, 4), torch.full((1, 2), 500.0), text_kv)
    assert out.shape == (1, 2, cfg.out_dim, 4, 4) and torch.isfinite(out.float()).all()


def test_fsdp_infix_is_stripped(tiny, tmp_path):
    ckpt = write_checkpoint(tmp_path / "fsdp.pt", seed=0, fsdp_infix=True)
    model = load_generator(tiny.model_dir, ckpt, use_ema=True)
    _assert_weights_equal(model, _expected(ckpt, "generator_ema"))


def test_resolve_path_cwd_first_then_repo_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path("wan/loading.py") == loading.REPO_ROOT / "wan" / "loading.py"  # only in the repository
    (tmp_path / "wan").mkdir()
    (tmp_path / "wan" / "loading.py").write_text("")
    assert resolve_path("wan/loading.py") == tmp_path / "wan" / "loading.py"  # the working directory wins
    assert resolve_path("nowhere/x.pt") == tmp_path / "nowhere" / "x.pt"  # missing: working directory
    assert resolve_path(tmp_path / "abs") == tmp_path / "abs"


def test_check_model_files_accepts_complete_folder(tiny):
    check_model_files(tiny.model_dir, tiny.checkpoint)


# ---------------------------------------------------------------------------------------------------------- errors


def test_missing_folder(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFilesError) as err:
        load_generator("wan_models/Wan2.1-T2V-1.3B", tiny.checkpoint)
    msg = _one_paragraph(err.value)
    assert str(tmp_path / "wan_models" / "Wan2.1-T2V-1.3B") in msg
    assert "hf download Wan-AI/Wan2.1-T2V-1.3B --local-dir wan_models/Wan2.1-T2V-1.3B" in msg
    with pytest.raises(ModelFilesError):
        check_model_files("wan_models/Wan2.1-T2V-1.3B", tiny.checkpoint)


@pytest.mark.parametrize("name", [loading.CONFIG_FILE, loading.DIT_WEIGHTS_FILE, loading.T5_WEIGHTS_FILE,
                                  loading.VAE_WEIGHTS_FILE, loading.TOKENIZER_DIR])
def test_missing_single_file(tiny, folder_copy, name):
    target = folder_copy / name
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ModelFilesError) as err:
        check_model_files(folder_copy, tiny.checkpoint)
    msg = _one_paragraph(err.value)
    assert str(target) in msg and "hf download Wan-AI/Wan2.1-T2V-1.3B" in msg and name in msg


def test_empty_file_counts_as_missing(tiny, folder_copy):
    (folder_copy / loading.VAE_WEIGHTS_FILE).write_bytes(b"")
    with pytest.raises(ModelFilesError, match="empty"):
        check_model_files(folder_copy, tiny.checkpoint)


def test_missing_checkpoint(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFilesError) as err:
        load_generator(tiny.model_dir, "checkpoints/self_forcing_dmd.pt")
    msg = _one_paragraph(err.value)
    assert str(tmp_path / "checkpoints" / "self_forcing_dmd.pt") in msg
    assert "hf download gdhe17/Self-Forcing checkpoints/self_forcing_dmd.pt --local-dir ." in msg


@pytest.mark.parametrize("cut", [0.5, 0.05])
def test_truncated_checkpoint(tiny, tmp_path, cut):
    data = tiny.checkpoint.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ModelFilesError) as err:
        load_generator(tiny.model_dir, bad)
    msg = _one_paragraph(err.value)
    assert str(bad) in msg and "corrupt" in msg


def test_garbage_checkpoint(tiny, tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a checkpoint" * 100)
    with pytest.raises(ModelFilesError, match="corrupt"):
        load_generator(tiny.model_dir, bad)


def test_truncated_safetensors(tiny, folder_copy):
    weights = folder_copy / loading.DIT_WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(ModelFilesError) as err:
        load_generator(folder_copy, tiny.checkpoint)
    msg = _one_paragraph(err.value)
    assert str(weights) in msg and "corrupt" in msg


def test_checkpoint_without_ema(tiny, tmp_path):
    ckpt = write_checkpoint(tmp_path / "no_ema.pt", include_ema=False)
    load_generator(tiny.model_dir, ckpt)  # fine without --use_ema
    with pytest.raises(ModelFilesError) as err:
        load_generator(tiny.model_dir, ckpt, use_ema=True)
    msg = _one_paragraph(err.value)
    assert str(ckpt) in msg and "'generator_ema'" in msg and "--use_ema" in msg


def test_checkpoint_not_a_dict(tiny, tmp_path):
    ckpt = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), ckpt)
    with pytest.raises(ModelFilesError, match="not a dict"):
        load_generator(tiny.model_dir, ckpt)


@pytest.mark.parametrize("layers,word,key", [(3, "unexpected", "blocks.2."), (1, "missing", "blocks.1.")])
def test_checkpoint_key_mismatch(tiny, tmp_path, layers, word, key):
    ckpt = write_checkpoint(tmp_path / "layers.pt", tiny_dit_config(num_layers=layers))
    with pytest.raises(ModelFilesError) as err:
        load_generator(tiny.model_dir, ckpt)
    msg = _one_paragraph(err.value)
    assert str(ckpt) in msg and word in msg and key in msg


def test_checkpoint_shape_mismatch(tiny, tmp_path):
    # Same key names, wider model: what a 14B checkpoint given to the 1.3B folder looks like.
    ckpt = write_checkpoint(tmp_path / "wide.pt", tiny_dit_config(dim=48, num_heads=3, ffn_dim=96))
    with pytest.raises(ModelFilesError) as err:
        load_generator(tiny.model_dir, ckpt)
    msg = _one_paragraph(err.value)
    assert str(ckpt) in msg and "wrong shape" in msg and "(48" in msg and "--wan_model_dir" in msg


def test_config_does_not_match_base_weights(tiny, folder_copy):
    write_config(folder_copy, tiny_dit_config(dim=48, num_heads=3))
    with pytest.raises(ModelFilesError) as err:
        load_generator(folder_copy, tiny.checkpoint)
    msg = _one_paragraph(err.value)
    assert str(folder_copy / loading.DIT_WEIGHTS_FILE) in msg and "config.json" in msg


def test_invalid_config_json(tiny, folder_copy):
    (folder_copy / loading.CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelFilesError, match="not valid JSON"):
        load_generator(folder_copy, tiny.checkpoint)


# ---------------------------------------------------------------------------------------------------------- torch.load


def test_load_torch_file_legacy_format(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"a": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_torch_file(path)["a"], torch.ones(2))


class TouchOnLoad:
    """Pickles into "call Path.touch(marker)": unpickling it with weights_only=False creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def write_payload_checkpoint(src: Path, dst: Path, marker: Path) -> Path:
    """A valid Self Forcing checkpoint (the weights of ``src``) that also carries a code-running pickle."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt["extra"] = TouchOnLoad(marker)
    torch.save(ckpt, dst)
    return dst


def test_load_torch_file_refuses_pickled_code(tiny, tmp_path):
    marker = tmp_path / "marker"
    path = write_payload_checkpoint(tiny.checkpoint, tmp_path / "payload.pt", marker)
    with pytest.raises(ModelFilesError) as err:
        load_torch_file(path, "Self Forcing checkpoint")
    msg = _one_paragraph(err.value)
    assert str(path) in msg and "--trust_checkpoint" in msg and "weights_only=True" in msg
    assert not marker.exists()


def test_load_generator_refuses_pickled_code_unless_trusted(tiny, tmp_path):
    marker = tmp_path / "marker"
    path = write_payload_checkpoint(tiny.checkpoint, tmp_path / "payload.pt", marker)
    with pytest.raises(ModelFilesError, match="--trust_checkpoint"):
        load_generator(tiny.model_dir, path)
    assert not marker.exists()
    model = load_generator(tiny.model_dir, path, trust_checkpoint=True)  # the user's explicit opt-in
    assert marker.exists()
    _assert_weights_equal(model, _expected(tiny.checkpoint, "generator"))


def test_trusted_load_warns(tmp_path, caplog):
    path = tmp_path / "objects.pt"
    torch.save({"generator": {"model.x": torch.ones(1)}, "step": TouchOnLoad(tmp_path / "m")}, path,
               pickle_module=pickle)
    with caplog.at_level("WARNING", logger="wan.loading"):
        out = load_torch_file(path, trust=True)
    assert out["step"] is None and torch.equal(out["generator"]["model.x"], torch.ones(1))
    assert "weights_only=False" in caplog.text and str(path) in caplog.text


def test_model_folder_file_with_pickled_code_is_refused_without_opt_in(folder_copy, tmp_path):
    marker = tmp_path / "marker"
    vae = folder_copy / loading.VAE_WEIGHTS_FILE
    state = torch.load(vae, weights_only=True)
    state["extra"] = TouchOnLoad(marker)
    torch.save(state, vae)
    with pytest.raises(ModelFilesError) as err:
        loading.load_folder_state_dict(folder_copy, loading.VAE_WEIGHTS_FILE, "Wan VAE weights")
    msg = _one_paragraph(err.value)
    assert str(vae) in msg and "download it again" in msg and "--trust_checkpoint" not in msg
    assert not marker.exists()


@pytest.mark.parametrize("text, kind", [("[1, 2]", "array"), ('"dim"', "string"), ("null", "null")])
def test_config_json_must_be_an_object(tiny, folder_copy, text, kind):
    path = folder_copy / loading.CONFIG_FILE
    path.write_text(text)
    with pytest.raises(ModelFilesError) as err:
        loading.read_wan_config(folder_copy)
    msg = _one_paragraph(err.value)
    assert str(path) in msg and f"JSON {kind}" in msg and "object" in msg
    with pytest.raises(ModelFilesError):
        load_generator(folder_copy, tiny.checkpoint)


def _cli_model_args(tiny, checkpoint: Path, tmp_path: Path) -> list:
    """CLI flags: the tiny model on CPU, one prompt, one chunk of 32x32 frames."""
    prompts = tmp_path / "one.txt"
    prompts.write_text("a lighthouse in a storm\n", encoding="utf-8")
    return ["--wan_model_dir", tiny.model_dir, "--checkpoint_path", checkpoint, "--device", "cpu",
            "--data_path", prompts, "--output_folder", tmp_path / "out", "--num_output_frames", 3,
            "height=32", "width=32"]


def test_cli_refuses_pickled_code_and_runs_it_only_when_trusted(run_cli, tiny, tmp_path):
    marker = tmp_path / "marker"
    path = write_payload_checkpoint(tiny.checkpoint, tmp_path / "payload.pt", marker)
    r = run_cli(*_cli_model_args(tiny, path, tmp_path))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "loading models" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and str(path) in errors[0] and "--trust_checkpoint" in errors[0], r.stderr
    assert not marker.exists()
    r = run_cli(*_cli_model_args(tiny, path, tmp_path), "--trust_checkpoint")
    assert r.returncode == 0, r.stderr
    assert marker.exists() and len(list((tmp_path / "out").glob("*.mp4"))) == 1
