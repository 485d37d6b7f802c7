#!/usr/bin/env python
"""Peak device memory of one offloaded UMT5 encode at real size, with random weights (no download needed).

    python tools/offload_memory.py                      # UMT5-XXL (24 blocks, d_model 4096), bf16, cuda
    python tools/offload_memory.py --resident           # also the encoder fully on the GPU, for comparison
    python tools/offload_memory.py --layers 2 --d_model 64 --d_ff 128 --heads 4 --vocab 1000 --device cpu  # smoke

The encoder is built in host memory (about 11.4 GB for the real size in bf16), then one prompt batch of ``text_len``
tokens is encoded the way offload mode does it (``WanTextEncoder._encode_offloaded``: embedding on the CPU, blocks
streamed). Prints one JSON line: the most encoder weight elements on the device at once, and on CUDA
``torch.cuda.max_memory_allocated`` during the encode (nothing else is resident, so this is the encode's own peak).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from app.runtime import DTYPES  # noqa: E402
from wan.offload import module_numel  # noqa: E402
from wan.text_encoder import WanTextEncoder  # noqa: E402

_GIB = 2 ** 30


def random_umt5(vocab: int, d_model: int, heads: int, d_ff: int, layers: int, dtype: torch.dtype):
    """A UMT5 encoder of the given size with random weights in host memory (eval, no grad)."""
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(vocab_size=vocab, d_model=d_model, d_kv=d_model // heads, d_ff=d_ff, num_layers=layers,
                     num_heads=heads, relative_attention_num_buckets=32, feed_forward_proj="gated-gelu",
                     dropout_rate=0.0, is_encoder_decoder=False, use_cache=False, tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    with torch.device("meta"):
        model = UMT5EncoderModel(cfg)
    model = model.to_empty(device="cpu").to(dtype)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(0.02))
    model.tie_weights()
    return model.eval().requires_grad_(False)


def measure(args) -> dict:
    """Encode one random batch offloaded (and optionally resident); return the peak figures."""
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    model = random_umt5(args.vocab, args.d_model, args.heads, args.d_ff, args.layers, dtype)
    enc = WanTextEncoder(model, tokenizer=None, text_len=args.text_len, device=device, offload=True)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.text_len), generator=gen)  # [B, text_len]
    mask = torch.ones_like(ids)
    mask[:, args.text_len // 4:] = 0  # a short prompt, as usual
    block = max(module_numel(m) for m in enc.streamed_modules())
    out = {"layers": args.layers, "d_model": args.d_model, "dtype": args.dtype, "device": str(device),
           "encoder_params": module_numel(model), "largest_streamed_piece_params": block,
           "encoder_gib": round(module_numel(model) * torch.finfo(dtype).bits / 8 / _GIB, 3)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with torch.no_grad():
        enc._encode_offloaded(ids, mask)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["offloaded_peak_gib"] = round((torch.cuda.max_memory_allocated(device) - base) / _GIB, 3)
    out["most_weights_on_device_params"] = enc.last_offload_peak_numel
    if args.resident and device.type == "cuda":
        model.to(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
        torch.cuda.synchronize(device)
        out["resident_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / _GIB, 3)
    return out


def main(argv=None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--d_model", type=int, default=4096)
    p.add_argument("--d_ff", type=int, default=10240)
    p.add_argument("--heads", type=int, default=64)
    p.add_argument("--vocab", type=int, default=256384)
    p.add_argument("--text_len", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--resident", action="store_true", help="also measure the encoder fully on the device")
    args = p.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("error: CUDA is not available; pass --device cpu for a smoke run (no memory figures).\n")
        return 2
    sys.stdout.write(json.dumps(measure(args)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
