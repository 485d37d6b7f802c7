"""LoRA merge at load time (LongLive's lora.pt): equals the unmerged adapter computed at run time; strict keys."""
import argparse
import copy

import pytest
import torch

from app.demo_model import tiny_dit_config
from wan.loading import ModelFilesError, load_generator
from wan.lora import lora_targets, merge_lora
from lora_fixtures import random_lora, write_lora_file

from tiny import text_embeds, tiny_config, tiny_model, tiny_pipeline

LATENT = (16, 4, 6)
PREFIX = "base_model.model."


def _unmerged(model, lora, scale):
    """A copy of ``model`` whose adapted linears add ``scale * B(A x)`` at run time (forward hooks, as peft does)."""
    ref = copy.deepcopy(model)
    modules = dict(ref.named_modules())
    adapted = 0
    for key, a in lora.items():
        if not key.endswith(".lora_A.weight"):
            continue
        name = key.removeprefix(PREFIX).removesuffix(".lora_A.weight")
        b = lora[key.replace("lora_A", "lora_B")]

        def hook(mod, args, out, a=a, b=b):
            return out + scale * ((args[0] @ a.T) @ b.T)
        modules[name].register_forward_hook(hook)
        adapted += 1
    assert adapted == 10 * model.config.num_layers
    return ref


def _save(tmp_path, tensors, name="lora.pt", entry=True):
    path = tmp_path / name
    torch.save({"generator_lora": tensors, "critic_lora": {}, "step": 3} if entry else tensors, path)
    return path


@pytest.mark.parametrize("alpha,scale", [(8.0, 2.0), (None, 1.0)])
def test_merged_model_equals_lora_computed_at_run_time(tmp_path, alpha, scale):
    model = tiny_model(seed=3)
    lora = random_lora(model.config, rank=4, seed=1)
    ref = _unmerged(model, lora, scale)
    merged = copy.deepcopy(model)
    assert merge_lora(merged, _save(tmp_path, lora), alpha) == scale
    text = text_embeds(1, model.config)
    outs = [tiny_pipeline(m, local_attn_size=12, sink_size=3).generate_seeded(text, 9, LATENT, seed=2)
            for m in (model, ref, merged)]
    assert (outs[2] - outs[1]).abs().max().item() < 1e-5
    assert (outs[0] - outs[1]).abs().max().item() > 1e-2  # the adapter matters


def test_merge_changes_weights_only_and_keeps_biases(tmp_path):
    model = tiny_model(seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merge_lora(model, _save(tmp_path, random_lora(model.config, rank=2, seed=1)), 4.0)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {t.name + ".weight" for t in lora_targets(model)}
    assert len(changed) == 20


def test_targets_are_the_ten_linears_of_every_block():
    names = [t.name for t in lora_targets(tiny_model())]
    per_block = [n.removeprefix("blocks.0.") for n in names if n.startswith("blocks.0.")]
    assert sorted(per_block) == sorted(["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q",
                                        "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"])
    assert len(names) == 20


def test_whole_dict_without_generator_lora_entry_is_accepted(tmp_path):
    model, other = tiny_model(seed=3), tiny_model(seed=3)
    lora = random_lora(model.config, rank=4, seed=1)
    merge_lora(model, _save(tmp_path, lora, "a.pt"), 8)
    merge_lora(other, _save(tmp_path, lora, "b.pt", entry=False), 8)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_lora_merges_over_the_loaded_checkpoint(tmp_path, tiny_model_files):
    model_dir, ckpt = tiny_model_files
    lora_path = write_lora_file(tmp_path / "models" / "lora.pt", tiny_dit_config(), rank=4, seed=5)
    plain = load_generator(model_dir, ckpt)
    merged = load_generator(model_dir, ckpt)
    merge_lora(merged, lora_path, 8, 4)
    by_hand = copy.deepcopy(plain)
    merge_lora(by_hand, lora_path, 8)
    for (k, a), b in zip(merged.state_dict().items(), by_hand.state_dict().values()):
        assert torch.equal(a, b), k
    assert not torch.equal(merged.blocks[0].ffn[0].weight, plain.blocks[0].ffn[0].weight)
    assert not merged.blocks[0].ffn[0].weight.requires_grad
    with pytest.raises(ModelFilesError, match="adapter.rank = 8"):
        merge_lora(load_generator(model_dir, ckpt), lora_path, 8, 8)


def _error(tmp_path, tensors, **kw):
    with pytest.raises(ModelFilesError) as info:
        merge_lora(tiny_model(seed=3), _save(tmp_path, tensors), **kw)
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path / "lora.pt") in msg
    return msg


def test_missing_key_is_one_paragraph(tmp_path):
    lora = random_lora(tiny_config(), 4)
    del lora[PREFIX + "blocks.1.ffn.2.lora_B.weight"]
    msg = _error(tmp_path, lora, alpha=8)
    assert "lacks the key 'base_model.model.blocks.1.ffn.2.lora_B.weight'" in msg and "lora_ckpt" in msg


def test_wrong_key_is_one_paragraph(tmp_path):
    lora = random_lora(tiny_config(), 4)
    lora[PREFIX + "blocks.0.self_attn.qq.lora_A.weight"] = lora.pop(PREFIX + "blocks.0.self_attn.q.lora_A.weight")
    msg = _error(tmp_path, lora, alpha=8)
    assert "unexpected key 'base_model.model.blocks.0.self_attn.qq.lora_A.weight'" in msg


@pytest.mark.parametrize("extra", ["head.head.lora_A.weight", "blocks.0.ffn.0.lora_B.bias",
                                   "blocks.2.ffn.0.lora_A.weight"])
def test_extra_key_is_one_paragraph(tmp_path, extra):
    lora = random_lora(tiny_config(), 4)
    lora[PREFIX + extra] = torch.zeros(4, 32)
    assert f"unexpected key '{PREFIX}{extra}'" in _error(tmp_path, lora, alpha=8)


def test_misshaped_key_is_one_paragraph(tmp_path):
    lora = random_lora(tiny_config(), 4)
    lora[PREFIX + "blocks.0.ffn.0.lora_B.weight"] = torch.zeros(32, 4)  # ffn.0 maps 32 -> 64
    msg = _error(tmp_path, lora, alpha=8)
    assert "'base_model.model.blocks.0.ffn.0.lora_B.weight' has shape [32, 4], expected [64, 4]" in msg


def test_inconsistent_rank_and_config_rank_mismatch(tmp_path):
    lora = random_lora(tiny_config(), 4)
    lora[PREFIX + "blocks.1.ffn.0.lora_A.weight"] = torch.zeros(2, 32)
    assert "has rank 2 but" in _error(tmp_path, lora, alpha=8)
    msg = _error(tmp_path, random_lora(tiny_config(), 4), alpha=8, rank=256)
    assert "rank 4" in msg and "adapter.rank = 256" in msg


def test_bad_alpha_and_unreadable_files(tmp_path):
    assert "adapter.alpha" in _error(tmp_path, random_lora(tiny_config(), 4), alpha=-1)
    with pytest.raises(ModelFilesError, match="not found"):
        merge_lora(tiny_model(), tmp_path / "nope.pt", 8)
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelFilesError, match="could not be read"):
        merge_lora(tiny_model(), tmp_path / "bad.pt", 8)
    torch.save({"generator_lora": {"x": argparse.Namespace(a=1)}}, tmp_path / "obj.pt")
    with pytest.raises(ModelFilesError, match="could not be read"):  # weights_only: no Python objects
        merge_lora(tiny_model(), tmp_path / "obj.pt", 8)
    torch.save({"generator_lora": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(ModelFilesError, match="not a dict"):
        merge_lora(tiny_model(), tmp_path / "list.pt", 8)
