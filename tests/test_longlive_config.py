"""LongLive's lora_ckpt + adapter keys and the re-cache choice, checked before any model is loaded."""
import pytest
import yaml

from utils.errors import CLIError
from app.cli import build_parser, flag_layers
from app.cli_config import load_config
from methods.base import LoraSettings, get_method
from methods.longlive import lora_settings
from pipeline.recache import build_recache, recache_choices

RELEASED = yaml.safe_load("""
lora_ckpt: longlive_models/models/lora.pt
adapter:
  type: lora
  rank: 256
  alpha: 256
  dropout: 0.0
  dtype: bfloat16
  verbose: false
""")


def test_released_adapter():
    got = lora_settings(RELEASED["lora_ckpt"], RELEASED["adapter"], "longlive_inference.yaml")
    assert got == LoraSettings("longlive_models/models/lora.pt", 256.0, 256)


def test_null_alpha_means_rank_and_no_adapter_takes_r_from_the_file():
    assert lora_settings("l.pt", {"type": "lora", "rank": 4, "alpha": None}, "x").alpha == 4.0
    assert lora_settings("l.pt", None, "x") == LoraSettings("l.pt", None, None)
    assert lora_settings(None, None, "x") is None


@pytest.mark.parametrize("lora,adapter,needle", [
    (None, {"rank": 4}, "lora_ckpt is not"),
    ("l.pt", {"type": "dora", "rank": 4}, "adapter.type"),
    ("l.pt", {"rank": 0}, "adapter.rank = 0"),
    ("l.pt", {"rank": 4, "alpha": -2}, "adapter.alpha = -2"),
    ("l.pt", {"rank": 4, "scale": 2}, "unknown key 'scale'"),
    ("l.pt", [4, 8], "must be a mapping"),
])
def test_bad_adapter_is_one_paragraph(lora, adapter, needle):
    with pytest.raises(CLIError) as info:
        lora_settings(lora, adapter, "configs/longlive_inference.yaml")
    msg = str(info.value)
    assert needle in msg and "configs/longlive_inference.yaml" in msg and "\n" not in msg


def _recache(*argv: str) -> str:
    """The re-cache variant a command line selects (flags and overrides, through the config and the method)."""
    args = build_parser().parse_args(["--demo", *argv])
    loaded = load_config(overrides=args.overrides, flags=flag_layers(args))
    method = get_method(loaded.cfg.method)
    return method.build_recache(loaded.cfg.recache, getattr(loaded.cfg, method.name, None)).name


def test_recache_choices():
    assert set(recache_choices()) == {"off", "ours", "longlive"}
    assert _recache("--recache", "off") == "off" and _recache() == "off"
    assert _recache("--recache_on_switch") == "ours" and _recache("--recache", "longlive") == "longlive"
    assert build_recache("off").name == "off" and build_recache("ours").name == "ours"
    assert build_recache("longlive", global_sink=True).global_sink is True
    with pytest.raises(CLIError, match="longlive"):
        _recache("recache=peft")
