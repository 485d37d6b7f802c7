"""UMT5 text encoder: ``transformers.UMT5EncoderModel`` holding Wan's ``models_t5_umt5-xxl-enc-bf16.pth``.

No config file ships with the Wan ``.pth``, so the UMT5 config is derived from its tensor shapes; the keys are mapped
to transformers' names. Prompts are cleaned, padded to ``text_len`` tokens (the DiT's text length),
encoded with the attention mask, and the padded positions are set to exactly zero.

Low-memory (offload) mode keeps the encoder weights in host memory and streams them (``wan.offload``): the token
embedding (256384 x 4096, 2.1 GB in bf16) is looked up on the CPU and only the ``[B, text_len, d_model]`` result goes
to the device; then each of the 24 encoder blocks (about 193 M parameters, 0.39 GB in bf16) is copied to the device
just before it runs and freed right after, and the final norm likewise. So during an encode at most one block of the
11.4 GB encoder sits on the GPU next to the DiT, its KV cache and the VAE. Every operation runs on the same device
with the same weights as without offload, so the embeddings are bit-identical. The cost is the same host-to-device
traffic as copying the whole encoder once per encode (less the embedding), one block at a time.
"""
from __future__ import annotations

import html
import logging
import os
import re

import torch

from .loading import (CONFIG_FILE, T5_WEIGHTS_FILE, TOKENIZER_DIR, ModelFilesError, first_line, load_folder_state_dict,
                      missing_file_error, read_wan_config, resolve_path, tokenizer_download_command,
                      wan_download_command)
from .offload import WeightStreamer, module_numel
from .state_dict import compare_state_dicts

logger = logging.getLogger(__name__)

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_BLOCK_MAP = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_TOP_MAP = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}


def hf_umt5_key(wan_key: str) -> str | None:
    """transformers ``UMT5EncoderModel`` name of a Wan T5 encoder key (None when the key is unknown)."""
    if wan_key in _TOP_MAP:
        return _TOP_MAP[wan_key]
    m = _BLOCK_KEY.match(wan_key)
    if m and m.group(2) in _BLOCK_MAP:
        return f"encoder.block.{m.group(1)}.{_BLOCK_MAP[m.group(2)]}"
    return None


def umt5_config_from_state_dict(state: dict[str, torch.Tensor], source: str = "state dict"):
    """A ``UMT5Config`` (encoder only, eager attention) derived from the tensor shapes of a Wan T5 state dict.

    What the file does not record (relative-position max distance, RMSNorm epsilon) keeps transformers' UMT5
    defaults, which are UMT5's values.
    """
    from transformers import UMT5Config

    try:
        vocab, d_model = state["token_embedding.weight"].shape            # [vocab, d_model]
        inner = state["blocks.0.attn.q.weight"].shape[0]                  # [heads * d_kv, d_model]
        buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape  # [buckets, heads]
        d_ff = state["blocks.0.ffn.fc1.weight"].shape[0]                  # [d_ff, d_model]
    except KeyError as exc:
        raise ModelFilesError(f"{source} has no tensor {exc.args[0]!r}; it is not a Wan UMT5 encoder file "
                              f"({T5_WEIGHTS_FILE}). Re-download it.") from None
    num_layers = len({int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))})
    if inner % heads:
        raise ModelFilesError(f"{source}: attention width {inner} is not divisible by {heads} heads; the file is not "
                              f"a Wan UMT5 encoder. Re-download it.")
    cfg = UMT5Config(
        vocab_size=int(vocab), d_model=int(d_model), d_kv=int(inner // heads), d_ff=int(d_ff),
        num_layers=int(num_layers), num_heads=int(heads), relative_attention_num_buckets=int(buckets),
        feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False, use_cache=False,
        tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    return cfg


def map_wan_umt5_state_dict(state: dict[str, torch.Tensor], source: str = "state dict") -> dict[str, torch.Tensor]:
    """Rename a Wan T5 state dict to ``UMT5EncoderModel`` keys (the embedding also as ``encoder.embed_tokens``)."""
    out, unknown = {}, []
    for key, value in state.items():
        new = hf_umt5_key(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ModelFilesError(f"{source}: {len(unknown)} key(s) are not Wan UMT5 encoder keys, e.g. {unknown[:5]}; "
                              f"this is not {T5_WEIGHTS_FILE}. Re-download it.")
    if "shared.weight" in out:
        out["encoder.embed_tokens.weight"] = out["shared.weight"]
    return out


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: ``ftfy.fix_text``, HTML-unescape twice, strip, collapse whitespace."""
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def build_umt5_encoder(state: dict[str, torch.Tensor], dtype: torch.dtype, device: str | torch.device = "cpu",
                       source: str = "state dict"):
    """``UMT5EncoderModel`` (eager attention, eval, no grad) holding a Wan T5 state dict; every key must map."""
    from transformers import UMT5EncoderModel

    cfg = umt5_config_from_state_dict(state, source)
    mapped = {k: v.to(device=device, dtype=dtype) for k, v in map_wan_umt5_state_dict(state, source).items()}
    with torch.device("meta"):
        model = UMT5EncoderModel(cfg)
    diff = compare_state_dicts(model.state_dict(), mapped)
    if diff:
        raise ModelFilesError(f"{source} does not form a complete UMT5 encoder: missing {diff.missing[:5]}, "
                              f"unexpected {diff.unexpected[:5]}, wrong shapes {diff.wrong_shape[:3]}. The file is "
                              f"damaged or not "
                              f"{T5_WEIGHTS_FILE}; re-download it.")
    model.load_state_dict(mapped, strict=True, assign=True)
    model.tie_weights()  # one embedding tensor, shared by shared.weight and encoder.embed_tokens.weight
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.is_meta:
            raise RuntimeError(f"UMT5 tensor {name} was not loaded")
    return model.eval().requires_grad_(False)


class WanTextEncoder:
    """Prompt -> ``[B, text_len, d_model]`` embeddings with UMT5 (padded positions exactly zero)."""

    def __init__(self, model, tokenizer, text_len: int, device: str | torch.device = "cpu", offload: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.text_len = int(text_len)
        self.device = torch.device(device)
        self.offload = offload
        self.last_offload_peak_numel = 0  # most encoder weight elements on the device during the last offloaded encode

    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu", offload: bool = False,
                       text_len: int | None = None) -> "WanTextEncoder":
        """Load the tokenizer and the Wan UMT5 weights of a model folder.

        ``text_len`` defaults to the DiT's ``text_len`` from the folder's ``config.json``. With ``offload`` the
        weights stay on the CPU and are streamed to ``device`` one block at a time while encoding.
        """
        from transformers import AutoTokenizer

        folder = resolve_path(model_dir)
        dit_config = read_wan_config(folder)
        text_len = dit_config.text_len if text_len is None else text_len
        tok_dir = folder / TOKENIZER_DIR
        if not tok_dir.is_dir():
            raise missing_file_error(folder, TOKENIZER_DIR + "/")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelFilesError(
                f"The tokenizer in {tok_dir} could not be loaded ({first_line(exc)}). Re-download it with "
                f"`{tokenizer_download_command(folder)}`.") from None
        weights = folder / T5_WEIGHTS_FILE
        state = load_folder_state_dict(folder, T5_WEIGHTS_FILE, "UMT5 encoder weights")
        home = "cpu" if offload else device
        model = build_umt5_encoder(state, dtype, home, source=str(weights))
        if model.config.d_model != dit_config.text_dim:
            raise ModelFilesError(f"{weights} has d_model={model.config.d_model} but {folder / CONFIG_FILE} has "
                                  f"text_dim={dit_config.text_dim}; the files come from different models. "
                                  f"Re-download the folder with `{wan_download_command(folder)}`.")
        logger.info("loaded %s (UMT5 encoder d_model=%d, %d layers, %s on %s%s)", weights, model.config.d_model,
                    model.config.num_layers, dtype, home, ", offloaded: streamed to the device one block at a time"
                    if offload else "")
        return cls(model, tokenizer, text_len, device, offload)

    @property
    def dtype(self) -> torch.dtype:
        """Weight dtype of the encoder."""
        return self.model.shared.weight.dtype

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cleaned prompts -> (input_ids, attention_mask), each ``[B, text_len]``; warns when a prompt is truncated."""
        cleaned = [clean_prompt(p) for p in prompts]
        for i, text in enumerate(cleaned):
            n = len(self.tokenizer(text, add_special_tokens=True)["input_ids"])
            if n > self.text_len:
                logger.warning("prompt %d has %d tokens; only the first %d are used (text_len of the model): %.80s...",
                               i, n, self.text_len, text)
        enc = self.tokenizer(cleaned, padding="max_length", max_length=self.text_len, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    @torch.no_grad()
    def encode(self, prompts: list[str] | str) -> torch.Tensor:
        """Prompts -> embeddings ``[B, text_len, d_model]`` on ``self.device``; padded positions are exactly 0."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids, mask = self.tokenize(list(prompts))
        if self.offload:
            hidden = self._encode_offloaded(ids, mask)
            mask = mask.to(self.device)
        else:
            ids, mask = ids.to(self.device), mask.to(self.device)  # [B, text_len]
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, text_len, d_model]
        return hidden.masked_fill(~mask.bool().unsqueeze(-1), 0.0)

    def streamed_modules(self) -> list:
        """The pieces streamed to the device in offload mode: every encoder block, then the final norm."""
        return [*self.model.encoder.block, self.model.encoder.final_layer_norm]

    def _encode_offloaded(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run the host-resident encoder on ``self.device``, streaming one block's weights at a time.

        ``ids``/``mask`` are ``[B, text_len]`` on the CPU; returns ``[B, text_len, d_model]`` on ``self.device``.
        """
        embed = self.model.get_input_embeddings()
        pieces = self.streamed_modules()
        if module_numel(embed) + sum(module_numel(m) for m in pieces) != module_numel(self.model):
            raise RuntimeError("UMT5 encoder has weights outside its embedding, blocks and final norm; "
                               "offload mode cannot stream it")
        embeds = embed(ids).to(self.device)  # [B, text_len, d_model], looked up on the CPU
        with WeightStreamer(pieces, self.device) as streamer:
            hidden = self.model(inputs_embeds=embeds, attention_mask=mask.to(self.device)).last_hidden_state
        self.last_offload_peak_numel = streamer.peak_numel
        logger.debug("offloaded encode: %d pieces streamed, at most %d encoder weights on %s at once",
                     streamer.moves, streamer.peak_numel, self.device)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return hidden  # [B, text_len, d_model]
