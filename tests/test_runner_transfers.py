"""Host transfers per steady block through the CLI runner, re-cache on and off, on the meta device (issue 21, item 4).

``VideoRunner.render`` runs its whole per-block path with the CLI's tiny DiT and VAE moved to the meta device: the
prompt switch callback (a schedule), the rollout block (with the re-cache store when re-caching), the streaming VAE
decode, the uint8 conversion, the host copy of the finished frames and the hand-over to the mp4 writer. The writer
is a stub (meta tensors hold no data to encode) and the text encoder returns meta embeddings; everything else is the
CLI's code. On the meta device a host read (``.item()``, ``.tolist()``, ``unique()``, ``nonzero()``) fails outright,
and ``bench.transfers``' counter sees every op that mixes devices; with ``host_copies=True`` the copy of a meta tensor
to the host is counted and yields uninitialised host memory instead of failing. Transfers are cut per block at the
runner's ``on_chunk`` hook.

What a block may transfer: exactly one device->host copy per output, the one the runner exists for, of the block's
finished uint8 frames into the host buffer (``copy_``; pinned and ``non_blocking`` on CUDA, where it is queued on
the decode stream and waited for by an event one block later); with ``--save_latents`` one more, the latents.
Nothing else: no host read in the re-cache store, the re-cache at a switch included (whole-frame modes), and the
runner's ``_sync`` (``torch.cuda.synchronize`` on CUDA) runs after the text encoder and at a switch only, never per
block. Participative Compression keeps single tokens of any frame, so its re-cache at a switch needs the number of
referenced frames on the host (one ``unique``, which the meta device cannot run): it is run here without a switch.
The CUDA branch itself (side stream, events, pinned memory) needs a GPU; off CUDA the runner takes the same
steps in order, which is what runs here.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import inference
from app.runner import VideoRunner
from app.streaming import ChunkDecoder, device_uint8
from bench.measure import noise_source
from bench.transfers import CountTransfers
from media.video import to_uint8
from pipeline.noise import TensorNoise
from pipeline.recache import CleanLatentStore, referenced_frames_bound
from pipeline.rollout import Rollout

from helpers import PROMPTS, settings_for

META = torch.device("meta")
T = 30  # latent frames: 10 blocks of 3; the 9-frame window is full from block 3 on (evictions / compressions)
SMALL_CACHE = ("model_kwargs.local_attn_size=9", "model_kwargs.sink_size=3")
PC = ("--Budget", "7", "--Recent", "3")  # one frame of candidate tokens (C = 4)


class StubWriter:
    """``media.video.Mp4Writer``'s interface without encoding (an empty file, so the rename at the end works)."""

    def __init__(self, path, **kwargs):
        Path(path).write_bytes(b"")
        self.frames = 0
        self.size_bytes = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def append(self, frames: np.ndarray) -> None:
        assert frames.dtype == np.uint8 and frames.ndim == 4
        self.frames += len(frames)

    def flush(self, wait: bool = True) -> int:
        return self.frames

    def close(self) -> None:
        return None

    def abort(self) -> None:
        return None

    def sha256(self) -> str:
        return "0" * 64


class MetaTextEncoder:
    """Prompt embeddings [1, text_len, text_dim] on the meta device, whatever the text."""

    def __init__(self, config):
        self.config = config

    def encode(self, texts):
        return torch.zeros(len(texts), self.config.text_len, self.config.text_dim, device=META)


@pytest.fixture(scope="module")
def meta_models(models):
    """The CLI's tiny DiT and VAE (``models``), copied to the meta device."""
    _, model, vae = models
    model = copy.deepcopy(model).to(META)
    vae = copy.deepcopy(vae)
    vae.model.to(META)
    return model, vae


def meta_runner(meta_models, settings) -> VideoRunner:
    """A runner for ``settings`` on the meta device (noise drawn there too: a meta generator does not exist)."""
    model, vae = meta_models
    settings = dataclasses.replace(settings, device=META)
    pipe = Rollout(model, settings.rollout, settings.policy, loop=settings.loop, recache=settings.recache)

    def seeded_noise(batch, frames, latent_shape, seed, order="upstream", channels_first=False):
        return TensorNoise(torch.randn(batch, frames, *latent_shape, device=META)), noise_source(META, seed)

    pipe.seeded_noise = seeded_noise
    return VideoRunner(settings, MetaTextEncoder(model.config), model, vae, pipe, progress=False)


def block_transfers(runner, settings):
    """Render the run's first job through ``runner`` -> (transfer logs per block, the render's timings)."""
    marks = []
    with CountTransfers(host_copies=True) as mode:
        def on_chunk(i, f, outputs, frames):
            """Cut the count at the end of every block."""
            marks.append((mode.log.count, mode.log.ops.copy()))
        result = runner.render(settings.jobs[0], inference.output_plan(settings)[0], on_chunk=on_chunk)
    per_block, before = [], (0, None)
    for count, ops in marks:
        per_block.append((count - before[0], dict(ops - before[1]) if before[1] is not None else dict(ops)))
        before = (count, ops)
    return per_block, result.timings


def schedule_file(tmp_path: Path, switch: bool) -> Path:
    """A prompt schedule: the opening prompt only (the switch callback never switches), or a switch at 0.5 s
    (chunk 1, before the window is full)."""
    entries = [(0, PROMPTS[0])] + ([(0.5, PROMPTS[1])] if switch else [])
    path = tmp_path / "schedule.jsonl"
    path.write_text("".join(json.dumps({"start": s, "prompt": p}) + "\n" for s, p in entries), encoding="utf-8")
    return path


CASES = [  # (mode, re-cache, switch once, extra flags, host copies per block)
    ("deep_sink_pc", "off", False, (), 1),
    ("deep_sink_pc", "off", True, (), 1),
    ("deep_sink_pc", "ours", False, (), 1),
    ("self_forcing", "ours", True, (), 1),
    ("deep_sink", "ours", True, ("--num_samples", "2"), 2),   # one copy per output
    ("deep_sink", "ours", True, ("--save_latents",), 2),      # the kept latents are copied too
]


@pytest.mark.parametrize("mode, recache, switch, flags, copies", CASES)
def test_runner_blocks_make_only_the_frame_copy(meta_models, tiny_model_files, tmp_path, monkeypatch, mode, recache,
                                                switch, flags, copies):
    monkeypatch.setattr("app.streaming.Mp4Writer", StubWriter)
    schedule = schedule_file(tmp_path, switch)
    settings = settings_for(tiny_model_files, tmp_path / "out", "--prompt_schedule", str(schedule),
                            "--num_output_frames", str(T), "--mode", mode, "--recache", recache, *SMALL_CACHE,
                            *(PC if mode == "deep_sink_pc" else ()), *flags)
    runner = meta_runner(meta_models, settings)
    syncs = []
    monkeypatch.setattr(runner, "_sync", lambda: syncs.append(1))  # torch.cuda.synchronize on CUDA
    per_block, timings = block_transfers(runner, settings)
    assert len(per_block) == T // 3
    assert len(syncs) == 1 + switch  # after the text encoder, and once at the switch (its encoder): never per block
    # every block after the first (it copies lookup tables to the device once), the switch block included
    assert [count for count, _ in per_block[1:]] == [copies] * (T // 3 - 1), per_block
    assert all(ops == {"copy_": copies} for _, ops in per_block[1:]), per_block
    store = runner.pipeline.recache.name != "off"
    assert store == (recache == "ours")
    assert {"text_encoder", "rollout", "decode", "write", "first_chunk", "total"} <= set(timings)


def test_store_stays_within_the_bound_of_the_cache(meta_models, tiny_model_files, tmp_path, monkeypatch):
    """The re-cache store's slots never exceed what the cache can reference plus one chunk (no host read to prune)."""
    monkeypatch.setattr("app.streaming.Mp4Writer", StubWriter)
    sizes = []
    original = CleanLatentStore.add

    def add(self, start_frame, x0):
        original(self, start_frame, x0)
        sizes.append(len(self))

    monkeypatch.setattr(CleanLatentStore, "add", add)
    for mode in ("deep_sink", "deep_sink_pc"):
        sizes.clear()
        settings = settings_for(tiny_model_files, tmp_path / mode, "--prompt_schedule",
                                str(schedule_file(tmp_path, False)), "--num_output_frames", "30", "--mode", mode,
                                "--recache", "ours", *SMALL_CACHE, *(PC if mode == "deep_sink_pc" else ()))
        runner = meta_runner(meta_models, settings)
        block_transfers(runner, settings)
        bound = referenced_frames_bound(runner.pipeline.kv)
        assert len(sizes) == 10 and max(sizes) <= bound + 3, (mode, sizes, bound)
        assert bound == (9 if mode == "deep_sink" else 9 + 4)  # the window (+ PC's candidate tokens)


def test_device_uint8_is_to_uint8_without_the_host_copy():
    frames = torch.linspace(-1.2, 1.2, 5 * 3 * 16 * 16).reshape(5, 3, 16, 16)
    assert np.array_equal(device_uint8(frames).numpy(), to_uint8(frames))


def test_chunk_decoder_hands_blocks_over_at_once_off_cuda():
    class Output:
        sample, keep_latents = 0, False
        written = []

        def decode(self, x0):
            return device_uint8(x0[0, :, :3])

        def write(self, frames, latents=None):
            self.written.append(frames)
            return 0.0

    out = Output()
    decoder = ChunkDecoder([out], torch.device("cpu"))
    assert decoder.in_flight == 0 and decoder.stream is None
    decoder.submit(0, 0, torch.zeros(1, 2, 4, 2, 2))
    (chunk,) = list(decoder.ready(decoder.in_flight))
    assert chunk.index == 0 and chunk.num_latents == 2 and chunk.copied is None
    _, written = decoder.write(chunk)
    assert written[0].shape == (2, 2, 2, 3) and list(decoder.drain()) == []
