"""UMT5 text encoder: Wan .pth mapped into transformers' UMT5EncoderModel, prompt pipeline, offload rule."""
import pytest
import torch
from transformers import UMT5Config, UMT5EncoderModel

from app.demo_model import TINY_T5, tiny_dit_config, write_tiny_model
from wan import memory
from wan.loading import T5_WEIGHTS_FILE, ModelFilesError
from wan.text_encoder import WanTextEncoder, clean_prompt

PROMPTS = ["A red fox runs through a snowy forest at sunset, cinematic wide shot.",
           "  a  dog\n\tswims &amp;amp; dives  ",
           "x"]



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny_te"), seed=1)


@pytest.fixture(scope="module")
def encoder(tiny):
    return WanTextEncoder.from_model_dir(tiny.model_dir, dtype=torch.float32, device="cpu")


def _reference_model(path) -> UMT5EncoderModel:
    """UMT5EncoderModel built from a hand-written config, loaded from the Wan file with the SPEC key table."""
    wan = torch.load(path, map_location="cpu", weights_only=True)
    d_model = tiny_dit_config().text_dim
    table = {"norm1.weight": "layer.0.layer_norm.weight", "attn.q.weight": "layer.0.SelfAttention.q.weight",
             "attn.k.weight": "layer.0.SelfAttention.k.weight", "attn.v.weight": "layer.0.SelfAttention.v.weight",
             "attn.o.weight": "layer.0.SelfAttention.o.weight",
             "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
             "norm2.weight": "layer.1.layer_norm.weight", "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
             "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
             "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight"}
    sd = {"shared.weight": wan["token_embedding.weight"], "encoder.embed_tokens.weight": wan["token_embedding.weight"],
          "encoder.final_layer_norm.weight": wan["norm.weight"]}
    for i in range(TINY_T5["num_layers"]):
        for src, dst in table.items():
            sd[f"encoder.block.{i}.{dst}"] = wan[f"blocks.{i}.{src}"]
    cfg = UMT5Config(vocab_size=wan["token_embedding.weight"].shape[0], d_model=d_model,
                     d_kv=d_model // TINY_T5["num_heads"], d_ff=TINY_T5["d_ff"], num_layers=TINY_T5["num_layers"],
                     num_heads=TINY_T5["num_heads"], relative_attention_num_buckets=32,
                     relative_attention_max_distance=128, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                     is_encoder_decoder=False)
    cfg._attn_implementation = "eager"
    model = UMT5EncoderModel(cfg)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model.eval()


def test_derived_config(encoder, tiny):
    cfg = encoder.model.config
    assert (cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff, cfg.num_layers) == (32, 2, 16, 64, 2)
    assert cfg.relative_attention_num_buckets == 32 and cfg.relative_attention_max_distance == 128
    assert cfg.is_gated_act and cfg.dense_act_fn == "gelu_new" and cfg._attn_implementation == "eager"
    assert cfg.vocab_size >= len(encoder.tokenizer)  # the embedding is padded beyond the tokenizer, as the real one
    assert encoder.model.shared.weight is encoder.model.encoder.embed_tokens.weight
    assert encoder.text_len == tiny_dit_config().text_len


def test_output_equals_directly_loaded_umt5(encoder, tiny):
    ids, mask = encoder.tokenize(PROMPTS)
    ref = _reference_model(tiny.model_dir / T5_WEIGHTS_FILE)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state * mask.unsqueeze(-1)
    out = encoder.encode(PROMPTS)
    assert out.shape == (3, encoder.text_len, 32) and out.dtype == torch.float32
    assert torch.equal(out, expected)


def test_padding_is_exactly_zero(encoder):
    ids, mask = encoder.tokenize(PROMPTS)
    out = encoder.encode(PROMPTS)
    assert (out[mask == 0] == 0).all()
    assert (out[mask == 1].abs().sum(-1) > 0).all()
    assert mask.sum(1).tolist() == [int(m) for m in (ids != 0).sum(1)]


def test_tokenization_matches_umt5_conventions(encoder):
    ids, mask = encoder.tokenize(["a cat"])
    n = int(mask.sum())
    assert ids.shape == (1, encoder.text_len)
    assert ids[0, n - 1] == encoder.tokenizer.eos_token_id == 1  # </s> appended
    assert (ids[0, n:] == 0).all() and encoder.tokenizer.pad_token_id == 0


def test_prompt_cleaning():
    assert clean_prompt("  a  dog\n\tswims &amp;amp; dives  ") == "a dog swims & dives"
    assert clean_prompt("caf\u00c3\u00a9 &lt;b&gt;") == "caf\u00e9 <b>"  # mojibake fixed by ftfy, HTML unescaped


def test_long_prompt_is_truncated_with_warning(encoder, caplog):
    prompt = " ".join(["a golden robot dances in the rain"] * 120)  # far more than text_len tokens
    n_tokens = len(encoder.tokenizer(clean_prompt(prompt))["input_ids"])
    assert n_tokens > encoder.text_len
    with caplog.at_level("WARNING", logger="wan.text_encoder"):
        out = encoder.encode([prompt, "a cat"])
    assert out.shape == (2, encoder.text_len, 32)
    assert f"{n_tokens} tokens" in caplog.text and str(encoder.text_len) in caplog.text
    ids, mask = encoder.tokenize([prompt])
    assert mask.all() and ids[0, -1] == 1


def test_text_len_argument(tiny):
    enc = WanTextEncoder.from_model_dir(tiny.model_dir, text_len=16)
    assert enc.encode(["a cat walks"]).shape == (1, 16, 32)


def test_offload_gives_identical_output(encoder, tiny):
    off = WanTextEncoder.from_model_dir(tiny.model_dir, dtype=torch.float32, device="cpu", offload=True)
    assert off.model.device.type == "cpu"
    assert torch.equal(off.encode(PROMPTS), encoder.encode(PROMPTS))


class DeviceCopies:
    """Stands in for a target device on CPU: every streamed weight move makes a real copy (a CPU->CPU ``.to`` would
    be a no-op), and at every module call and every move it counts the encoder weight elements that are not in their
    host tensors, i.e. that sit on the "device"."""

    def __init__(self, model):
        self.params = list(model.parameters())
        self.home = {id(p): p.data_ptr() for p in self.params}
        self.samples: list[int] = []
        self.moved_shapes: list[tuple] = []

    def resident(self) -> int:
        """Encoder weight elements currently pointing away from their host tensors."""
        return sum(p.numel() for p in self.params if p.data_ptr() != self.home[id(p)])

    def move(self, tensor, device):
        """The patched WeightStreamer.move: a copy, sampled before and after."""
        self.samples.append(self.resident())
        self.moved_shapes.append(tuple(tensor.shape))
        return tensor.clone()

    def sample(self, *args):
        """Module forward hook: record what is resident now."""
        self.samples.append(self.resident())


def test_offload_streams_one_block_at_a_time(encoder, tiny, monkeypatch):
    """At most one encoder block's weights are on the target device at any moment; the embedding never goes there;
    nothing stays there afterwards; the output is bit-identical to the resident encoder (fp32)."""
    from wan.offload import WeightStreamer, module_numel

    off = WanTextEncoder.from_model_dir(tiny.model_dir, dtype=torch.float32, device="cpu", offload=True)
    copies = DeviceCopies(off.model)
    monkeypatch.setattr(WeightStreamer, "move", staticmethod(copies.move))
    pre = torch.nn.modules.module.register_module_forward_pre_hook(copies.sample)
    post = torch.nn.modules.module.register_module_forward_hook(copies.sample)
    try:
        out = off.encode(PROMPTS)
    finally:
        pre.remove()
        post.remove()
    block = max(module_numel(m) for m in off.streamed_modules())
    assert block == module_numel(off.model.encoder.block[0])
    assert max(copies.samples) == block  # streaming happened, one block at a time
    assert module_numel(off.model) > 2 * block  # the bound is a real saving, even for the tiny model
    assert tuple(off.model.shared.weight.shape) not in copies.moved_shapes  # embedding looked up on the host
    assert copies.resident() == 0
    assert torch.equal(out, encoder.encode(PROMPTS))


def test_streamer_releases_weights_when_a_block_fails(encoder, monkeypatch):
    from wan.offload import WeightStreamer

    block = encoder.model.encoder.block[0]
    home = {id(p): p.data_ptr() for p in block.parameters()}
    monkeypatch.setattr(WeightStreamer, "move", staticmethod(lambda t, d: t.clone()))

    def boom(module, args):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        with WeightStreamer([block], "cpu") as streamer:
            handle = block.register_forward_pre_hook(boom)
            try:
                block(torch.zeros(1, 4, 32))
            finally:
                handle.remove()
    assert streamer.resident_numel == 0 and streamer.moves == 1
    assert all(p.data_ptr() == home[id(p)] for p in block.parameters())


def test_bf16_encoder(tiny):
    enc = WanTextEncoder.from_model_dir(tiny.model_dir, dtype=torch.bfloat16)
    out = enc.encode(PROMPTS)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_corrupt_weights_error(tiny, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny.model_dir, folder)
    weights = folder / T5_WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:3000])
    with pytest.raises(ModelFilesError) as err:
        WanTextEncoder.from_model_dir(folder)
    assert str(weights) in str(err.value) and "corrupt" in str(err.value)


def test_unknown_key_error(tiny, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny.model_dir, folder)
    weights = folder / T5_WEIGHTS_FILE
    sd = torch.load(weights, weights_only=True)
    sd["blocks.0.extra.weight"] = torch.zeros(1)
    torch.save(sd, weights)
    with pytest.raises(ModelFilesError, match="blocks.0.extra.weight"):
        WanTextEncoder.from_model_dir(folder)


# ---------------------------------------------------------------------------------------------------------- memory


def test_offload_rule(monkeypatch):
    assert memory.should_offload_text_encoder("cpu") is False
    gib = 1024 ** 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda device=None: {})
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20 * gib, 24 * gib))
    assert memory.should_offload_text_encoder("cuda") is True
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * gib, 80 * gib))
    assert memory.should_offload_text_encoder("cuda:0") is False
    # memory PyTorch reserved but does not use counts as free
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (30 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda device=None: {"reserved_bytes.all.current": 20 * gib,
                                                                         "active_bytes.all.current": 5 * gib})
    assert memory.should_offload_text_encoder("cuda") is False


def test_offload_memory_tool_smoke(capsys):
    """tools/offload_memory.py (the GPU measurement at real size) runs end to end on CPU at a tiny size."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "tools" / "offload_memory.py"
    spec = importlib.util.spec_from_file_location("offload_memory", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--device", "cpu", "--layers", "3", "--d_model", "32", "--d_ff", "64", "--heads", "2",
                      "--vocab", "300", "--text_len", "8", "--dtype", "fp32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["most_weights_on_device_params"] == out["largest_streamed_piece_params"]
    assert out["encoder_params"] > 3 * out["largest_streamed_piece_params"]
