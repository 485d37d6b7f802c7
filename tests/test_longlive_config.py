"""LongLive's lora_ckpt + adapter keys and the re-cache choice, checked before any model is loaded."""
import pytest
import yaml

from utils.errors import CLIError
from app.longlive_config import LoraSettings, lora_settings, recache_variant

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


def test_recache_choices():
    assert recache_variant("off") is False and recache_variant(None) is False
    assert recache_variant(True) == "ours" and recache_variant("longlive") == "longlive"
    with pytest.raises(CLIError, match="longlive"):
        recache_variant("peft")
