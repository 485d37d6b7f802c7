"""Methods (methods/): each released YAML and checkpoint selects its method, each variant runs as released without
hand-typed keys, and a method defined in this file (its own config key, defaults and loop) runs through
``inference.main`` touching no other file."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

import inference
from app.cli_config import load_config
from methods import METHODS, Method, MethodRun, detect_method, get_method
from methods.causal_forcing import VARIANTS
from pipeline.loops import LoopStrategy, clean_pass, denoise_block
from utils.paths import CONFIGS_DIR

SHIPPED = {  # shipped YAML -> (method, variant)
    "causal_forcing/causal_forcing_dmd_chunkwise.yaml": ("causal_forcing", "chunkwise"),
    "causal_forcing/causal_forcing_dmd_framewise.yaml": ("causal_forcing", "framewise"),
    "causal_forcing/causal_forcing_dmd_framewise_2step.yaml": ("causal_forcing", "framewise-2step"),
    "causal_forcing/causal_forcing_dmd_framewise_1step.yaml": ("causal_forcing", "framewise-1step"),
    "longlive/longlive_inference.yaml": ("longlive", "normal"),
    "longlive/longlive_inference_infinity.yaml": ("longlive", "infinite"),
    "longlive/longlive_interactive_inference.yaml": ("longlive", "normal"),
    "infinite_forcing/self_forcing_dmd_vsink1.yaml": ("infinite_forcing", "vsink1"),
    "rolling_forcing/rolling_forcing_dmd.yaml": ("rolling_forcing", "dmd"),
    "causal_forcing/rolling_forcing_dmd_longvideo.yaml": ("causal_forcing", "longvideo"),
    "self_forcing_dmd/self_forcing_dmd_sink10.yaml": ("deep_forcing", "dmd"),
    "self_forcing/self_forcing_dmd.yaml": ("self_forcing", "dmd"),
    **{f"matrix_game2/inference_yaml/inference_{v}.yaml": ("matrix_game2", v)
       for v in ("universal", "gta_drive", "templerun")},
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_yaml_selects_its_method(name):
    cfg = load_config(CONFIGS_DIR / name).cfg
    assert (cfg.method, cfg.variant) == SHIPPED[name]


def test_every_shipped_family_yaml_is_listed():
    found = {str(p.relative_to(CONFIGS_DIR)) for p in CONFIGS_DIR.rglob("*.yaml") if "self_forcing_dmd/" not in str(p)}
    assert found <= set(SHIPPED)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_causal_forcing_variant_is_one_flag(variant):
    v = VARIANTS[variant]
    cfg = load_config(None, flags=_flags(method="causal_forcing", variant=variant)).cfg
    assert cfg.rollout.num_frame_per_block == v.num_frame_per_block
    assert cfg.rollout.denoising_step_list == list(v.denoising_step_list)
    assert cfg.rollout.denoising_step_list_first_chunk == (None if v.denoising_step_list_first_chunk is None
                                                   else list(v.denoising_step_list_first_chunk))
    assert cfg.use_ema == (v.file.entry == "generator_ema") and cfg.cache.mode == "self_forcing"
    assert get_method("causal_forcing").checkpoint_path(None, variant) == f"checkpoints/causal_forcing/{v.file.filename}"


@pytest.mark.parametrize("path,expected", [
    ("checkpoints/causal_forcing/framewise/causal_forcing.pt", ("causal_forcing", "framewise")),
    ("/data/cf/causal-forcing++/framewise-1step.pt", ("causal_forcing", "framewise-1step")),
    ("longlive_models/models/longlive_base.pt", ("longlive", "normal")),
    ("checkpoints/infinite_forcing/ema_model.pt", ("infinite_forcing", "vsink1")),
    ("checkpoints/self_forcing_dmd.pt", ("deep_forcing", "dmd")),
    ("my_own.pt", ("deep_forcing", None)),
])
def test_checkpoint_path_selects_the_method(path, expected):
    assert detect_method({}, path) == expected


def test_flag_and_yaml_key_win_over_detection():
    flags = _flags(method="self_forcing")
    cfg = load_config(CONFIGS_DIR / "longlive/longlive_inference.yaml", flags=flags).cfg
    assert cfg.method == "self_forcing" and cfg.cache.mode == "self_forcing"


def test_a_later_layer_overrides_the_method_defaults():
    cfg = load_config(None, overrides=["num_frame_per_block=3"], flags=_flags(method="causal_forcing",
                                                                             variant="framewise")).cfg
    assert cfg.rollout.num_frame_per_block == 3 and cfg.use_ema


@pytest.mark.parametrize("argv,needle", [
    (["--method", "causal_forcing", "--variant", "sideways"], "variant 'sideways' is not a variant of method "
                                                               "causal_forcing"),
    (["method=nope"], "method 'nope' is unknown"),
])
def test_bad_method_or_variant_is_one_paragraph(argv, needle, capsys):
    assert inference.main(["--print_config", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------------------------------------------
# a method defined here: its own section key, defaults and loop strategy; nothing else in the tree knows it


@dataclass
class MarkerSection:
    """The test method's own config key."""

    marker: int = 7


class OneStepLoop(LoopStrategy):
    """A trivial loop: every chunk gets the first step only, then the clean pass."""

    name = "test_one_step"

    def run(self, session):
        """Chunk by chunk, one denoising step each."""
        B, T = session.config.num_frame_per_block, session.noise.num_frames
        for g in range(T // B):
            f = g * B
            session.kv.begin_chunk(f, B)
            x0 = denoise_block(session, session.noise.frames(f, B).to(session.device), f, session.timesteps(g)[:1])
            clean_pass(session, x0, f)
            session.commit(f, x0)
            yield g, f, x0


@dataclass(frozen=True)
class MarkerRun(MethodRun):
    """Puts the section's marker into every video's request."""

    marker: int = 0

    def request(self, job) -> dict:
        """The marker (so the sidecar shows the method's extras)."""
        return {"marker": self.marker}


class MarkerMethod(Method):
    """A test-only method."""

    name = "test_marker"
    section = MarkerSection
    upstream_keys = ("marker",)
    loop = OneStepLoop.name

    def defaults(self, variant):
        """A small window, a 2-frame chunk and its own section value."""
        return {"mode": "self_forcing", "num_frame_per_block": 2, "num_output_frames": 6,
                "model_kwargs": {"sink_size": 0, "local_attn_size": 4}, "marker": 11}

    def resolve(self, ctx):
        """Read the section."""
        return MarkerRun(marker=ctx.section.marker)


METHODS.pop(MarkerMethod.name)  # registered by its definition; only the test below runs with it


@pytest.fixture
def marker_method():
    yield
    METHODS.pop(MarkerMethod.name, None)


def test_a_method_defined_in_a_test_runs_through_main(tmp_path, tiny_model_files, marker_method):
    METHODS[MarkerMethod.name] = MarkerMethod  # re-register (the fixture removes it after the test)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a lighthouse at dawn\n")
    model_dir, checkpoint = tiny_model_files
    rc = inference.main(["--wan_model_dir", str(model_dir), "--checkpoint_path", str(checkpoint), "--device", "cpu",
                         "--data_path", str(prompts), "--output_folder", str(tmp_path / "out"), "height=32",
                         "width=32", "method=test_marker", "marker=5"])
    assert rc == 0
    (side,) = (tmp_path / "out").glob("*.json")
    data = json.loads(side.read_text())
    assert data["request"]["marker"] == 5 and data["request"]["loop"] == "test_one_step"
    assert data["config"]["test_marker"] == {"marker": 5} and data["num_latent_frames"] == 6
    assert data["rollout"]["num_frame_per_block"] == 2 and data["cache"]["mode"] == "self_forcing"


def _flags(**values):
    from app.cli_config import Layer
    return [Layer(f"--{k} {v}", {k: v}) for k, v in values.items()]


def test_a_missing_method_checkpoint_names_its_hub_command(tmp_path, tiny_model_files, monkeypatch, capsys):
    """Offline, ``--method rolling_forcing`` without its file: one paragraph with the method's own hf command."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_dir, _ = tiny_model_files
    rc = inference.main(["--method", "rolling_forcing", "--wan_model_dir", str(model_dir), "--device", "cpu",
                         "height=32", "width=32", "--output_folder", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "hf download TencentARC/RollingForcing checkpoints/rolling_forcing_dmd.pt --local-dir ." in err[0]


def test_method_checkpoint_download_fetches_the_released_file(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []

    def fake(repo_id, filename, local_dir):
        calls.append((repo_id, filename))
        target = tmp_path / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")
        return str(target)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    assert get_method("rolling_forcing").fetch_checkpoint("checkpoints/rolling_forcing_dmd.pt", "dmd", True)
    assert calls == [("TencentARC/RollingForcing", "checkpoints/rolling_forcing_dmd.pt")]


@pytest.mark.parametrize("values,expected", [
    ({"denoising_step_list": [1000, 800, 600, 400, 200]}, "rolling_forcing"),       # rolling_forcing_dmd.yaml
    ({"denoising_step_list_first_chunk": [1000, 750, 500, 250]}, "causal_forcing"),  # CF++
    ({"model_kwargs": {"local_attn_size": 6, "sink_size": 1}}, "infinite_forcing"),  # self_forcing_dmd_vsink1.yaml
    ({"lora_ckpt": "x.pt"}, "longlive"),
    ({"denoising_step_list": [1000, 750, 500, 250], "model_kwargs": {"sink_size": 10}}, "deep_forcing"),
])
def test_released_yaml_values_select_their_method(values, expected):
    assert detect_method(values, None)[0] == expected
