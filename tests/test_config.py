"""The typed config: family YAMLs, merge order, honoured and ignored keys, one policy built once, and a test-only
policy selected by name through the CLI."""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import inference
from app.cli_config import TRAINING_KEYS, UNSUPPORTED, CLIError, RunConfig, load_config, translate
from app.checks import build_cache_policy
from app.settings import config_from_args

REPO_ROOT = Path(__file__).resolve().parent.parent
FAMILY = Path(__file__).resolve().parent / "fixtures" / "family"


def args_for(*argv: str):
    """Parsed command line."""
    return inference.build_parser().parse_intermixed_args(list(argv))


# ---------------------------------------------------------------- family YAMLs

# file -> expected (num_frame_per_block, local_attn_size, sink_size, denoising_step_list)
LOADS = {
    "self_forcing_dmd.yaml": (3, 21, 10, [1000, 750, 500, 250]),
    "default_config.yaml": (3, 21, 10, [1000, 750, 500, 250]),
    "causal_forcing_dmd_chunkwise.yaml": (3, 21, 10, [1000, 750, 500, 250]),
    "causal_forcing_dmd_framewise.yaml": (1, 21, 10, [1000, 750, 500, 250]),
    "causal_forcing_dmd_framewise_2step.yaml": (1, 21, 0, [1000, 500]),  # CF++: its method (sink 0)
    "causal_forcing_dmd_framewise_1step.yaml": (1, 21, 0, [1000]),
    "self_forcing_dmd_vsink1.yaml": (3, 6, 1, [1000, 750, 500, 250]),
    "self_forcing_dmd _frame1.yaml": (1, 21, 10, [1000, 750, 500, 250]),
    "longlive_inference.yaml": (3, 12, 3, [1000, 750, 500, 250]),
    "longlive_interactive_inference.yaml": (3, 12, 3, [1000, 750, 500, 250]),
    "longlive_inference_infinity.yaml": (3, 12, 3, [1000, 750, 500, 250]),
}
# file -> words of the one-paragraph "not supported yet" error
def test_every_fixture_is_covered():
    """Each family fixture is in exactly one of the two tables."""
    assert sorted(p.name for p in FAMILY.glob("*.yaml")) == sorted(LOADS)


@pytest.mark.parametrize("name", sorted(LOADS))
def test_family_yaml_loads(name):
    """Self Forcing, Deep Forcing's default, Causal Forcing and Infinite-Forcing YAMLs load (training keys dropped,
    the singular num_train_timestep and top-level timestep_shift accepted) and give a valid rollout."""
    loaded = load_config(FAMILY / name)
    cfg = loaded.cfg
    B, L, S, steps = LOADS[name]
    assert (cfg.rollout.num_frame_per_block, cfg.cache.params['local_attn_size'], cfg.cache.params['sink_size']) == (B, L, S)
    assert cfg.rollout.denoising_step_list == steps and cfg.rollout.timestep_shift == 5.0
    assert loaded.cfg.rollout.num_frame_per_block == B
    raw = yaml.safe_load((FAMILY / name).read_text())
    assert not set(translate(raw)) - set(RunConfig.__dataclass_fields__) - TRAINING_KEYS  # method keys in sections


@pytest.mark.parametrize("sink", range(22))
def test_deep_forcing_sink_yamls_load(tmp_path, sink):
    """Deep Forcing's released sink0..21 files (Self Forcing's file plus the window and sink) load as Deep Sink."""
    raw = yaml.safe_load((FAMILY / "self_forcing_dmd.yaml").read_text())
    raw["model_kwargs"] = {"timestep_shift": 5.0, "local_attn_size": 21, "sink_size": sink}
    path = tmp_path / f"self_forcing_dmd_sink{sink}.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_config(path).cfg.cache.params['sink_size'] == sink
    if sink <= 18:   # S + B <= L: a valid Deep Sink cache
        loaded = config_from_args(args_for("--config_path", str(path), "--is_ds_only", "1"))
        assert build_cache_policy(loaded, 3).describe()["sink_size"] == sink


def test_released_yaml_selecting_a_missing_feature_names_it(tmp_path):
    """A released YAML whose key selects a feature this version lacks (LongLive's inference_iter) stops with one
    paragraph naming the feature, the key and the file."""
    raw = yaml.safe_load((FAMILY / "longlive_inference.yaml").read_text())
    raw["inference_iter"] = 5
    path = tmp_path / "longlive_inference_5.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(CLIError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "\n" not in msg and "does not support yet" in msg and path.name in msg and "inference_iter" in msg


@pytest.mark.parametrize("key", sorted(UNSUPPORTED))
def test_each_unsupported_key_is_named(key):
    """Every feature key's non-default value is an error naming it (never silently ignored)."""
    value = {"lora_ckpt": "x.pt", "adapter": "{rank: 4}",
             "global_sink": "true", "switch_frame_indices": "[40]", "model_kwargs.use_infinite_attention": "true",
             "inference_iter": "3", "model_name": "Wan2.1-T2V-14B"}[key]
    with pytest.raises(CLIError, match=re.escape(f"{key}=")):
        load_config(None, [f"{key}={value}"])


def test_timestep_shift_and_train_timesteps_spellings():
    """The upstream spellings are accepted when they agree and an error naming both sources when they differ."""
    assert load_config(None, ["timestep_shift=5.0", "num_train_timestep=1000"]).cfg.rollout.timestep_shift == 5
    with pytest.raises(CLIError, match=r"timestep_shift=3\.0 \(from override 'timestep_shift=3'\)"):
        load_config(None, ["timestep_shift=3"])
    with pytest.raises(CLIError, match="num_train_timestep=999"):
        load_config(None, ["num_train_timestep=999"])


def test_longlive_run_keys_are_flag_defaults(tmp_path):
    """LongLive's num_output_frames, num_samples, save_with_index, use_ema and output_folder are honoured as defaults
    (flags win); its seed is ignored like Self Forcing's training values, its data_path and generator_ckpt are
    keys of the LongLive section (read only by that method, methods/longlive.py)."""
    raw = yaml.safe_load((FAMILY / "longlive_inference.yaml").read_text())
    for key in ("lora_ckpt", "adapter", "global_sink"):
        raw.pop(key)
    path = tmp_path / "longlive_without_lora.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = config_from_args(args_for("--config_path", str(path))).cfg
    assert (cfg.num_output_frames, cfg.save_with_index, cfg.output_folder, cfg.use_ema) == (120, True, "videos/long",
                                                                                          False)
    cfg = config_from_args(args_for("--config_path", str(path), "--num_output_frames", "6", "--output_folder", "o",
                                    "--use_ema", "--num_samples", "2")).cfg
    assert (cfg.num_output_frames, cfg.output_folder, cfg.use_ema, cfg.num_samples) == (6, "o", True, 2)
    cfg = config_from_args(args_for("--config_path", str(path), "--seconds", "2")).cfg
    assert (cfg.num_output_frames, cfg.seconds) == (None, 2.0)
    assert "seed" in TRAINING_KEYS and not {"data_path", "generator_ckpt"} & TRAINING_KEYS


# ---------------------------------------------------------------- merge order and flags

def test_merge_order_defaults_file_demo_flags_overrides(tmp_path):
    """defaults <- --config_path <- --demo <- flags <- key=value; each value's origin is recorded."""
    path = tmp_path / "c.yaml"
    path.write_text("height: 96\nbudget: 12\nmodel_kwargs:\n  sink_size: 4\n")
    loaded = config_from_args(args_for("--demo", "--config_path", str(path), "--Budget", "14", "budget=15"))
    cfg = loaded.cfg
    assert cfg.height == 64 and loaded.origin("height") == "--demo"
    assert cfg.cache.params['budget'] == 15 and loaded.origin("cache.params.budget") == "override 'budget=15'"
    assert cfg.cache.params['sink_size'] == 4 and loaded.origin("cache.params.sink_size") == f"config file {path}"
    loaded = config_from_args(args_for("--config_path", str(path), "--Budget", "14"))
    assert loaded.cfg.cache.params['budget'] == 14 and loaded.origin("cache.params.budget") == "--Budget 14"


def test_mode_flags():
    """--is_ds_only 1 selects deep_sink, --mode any registered mode, nothing: deep_sink_pc."""
    assert config_from_args(args_for()).cfg.cache.mode == "deep_sink_pc"
    assert config_from_args(args_for("--is_ds_only", "1")).cfg.cache.mode == "deep_sink"
    assert config_from_args(args_for("--is_ds_only", "0", "--mode", "self_forcing")).cfg.cache.mode == "self_forcing"


def test_budget_reaches_the_policy():
    """--Budget and --Recent become the policy's budget and recent; unset, the policy's own defaults apply."""
    loaded = config_from_args(args_for("--Budget", "18", "--Recent", "5"))
    d = build_cache_policy(loaded, 3).describe()
    assert (d["budget"], d["recent"]) == (18, 5)
    d = build_cache_policy(config_from_args(args_for()), 3).describe()
    assert (d["budget"], d["recent"]) == (16, 4)


def test_print_config(capsys):
    """--print_config prints the merged config as YAML and exits 0."""
    assert inference.main(["--print_config", "--Budget", "12", "fps=24"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["cache"]["params"]["budget"] == 12 and out["fps"] == 24 and out["cache"]["params"]["sink_size"] == 10


# ---------------------------------------------------------------- a test-only policy through the CLI

@pytest.fixture
def test_policy(monkeypatch):
    """A policy defined only here, registered by subclassing (the registry is restored afterwards)."""
    from pipeline import policies
    monkeypatch.setattr(policies, "POLICIES", dict(policies.POLICIES))

    @dataclass
    class NoSinkWindow(policies.SelfForcingWindow):
        """Test-only: the Self Forcing window with the sink always off; counts its instances."""

        name = "test_no_sink_window"
        instances = []

        def __post_init__(self):
            self.sink_size = 0
            super().__post_init__()
            NoSinkWindow.instances.append(self)

    return NoSinkWindow


def test_test_only_policy_selectable_through_the_cli(test_policy, tmp_path, capsys):
    """A CachePolicy subclass defined in a test file is a --mode choice; the run builds it once and uses it."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a lighthouse in a storm\n")
    rc = inference.main(["--demo", "--mode", "test_no_sink_window", "--data_path", str(prompts), "--output_folder",
                         str(tmp_path / "out"), "--num_output_frames", "9", "height=32", "width=32"])
    assert rc == 0, capsys.readouterr().err
    [sidecar] = (tmp_path / "out").glob("*.json")
    record = json.loads(sidecar.read_text())
    assert record["mode"] == "test_no_sink_window" and record["cache"]["sink_size"] == 0
    assert len(test_policy.instances) == 1   # built once, in the settings; the runner's pipeline uses that one


def test_infinite_forcing_yaml_runs_as_self_forcing_window():
    """Infinite-Forcing's vsink1 file (window 6, sink 1) gives a valid cache with --mode self_forcing."""
    loaded = config_from_args(args_for("--config_path", str(FAMILY / "self_forcing_dmd_vsink1.yaml"), "--mode",
                                       "self_forcing"))
    d = build_cache_policy(loaded, loaded.cfg.rollout.num_frame_per_block).describe()
    assert (d["mode"], d["local_attn_size"], d["sink_size"]) == ("self_forcing", 6, 1)


def test_readme_lists_the_schema_defaults():
    """The README's table of keys is the schema's defaults (a copy for readers, checked so it cannot drift)."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("The keys and their defaults:\n\n```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block) == dataclasses.asdict(RunConfig())
