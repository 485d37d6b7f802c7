"""No host<->device transfer and no host read in a steady chunk, in every cache mode (issue: speed, item 1), with
the re-cache's store kept and at a re-cache (issue 21, item 4; the runner's own path: tests/test_runner_transfers.py).

The tiny model runs on the meta device: a host read (``.item()``, ``bool(t)``) fails there, and the dispatch mode of
``bench.transfers`` counts every op that mixes devices or copies between them (each is a blocking sync on CUDA).
"""
import pytest
import torch

from bench.presets import MODES, get_preset
from bench.transfers import CountTransfers, count_transfers, decode_transfers, meta_rollout_transfers
from pipeline.scheduler import FlowMatchScheduler
from wan.rope import WanRope


def test_counter_sees_host_to_device_copies_and_host_index_lookups():
    x = torch.zeros(4, device="meta")
    host = torch.arange(4)
    _, log = count_transfers(lambda: (host.to("meta"), x[torch.tensor([0, 1])], x + 1))
    assert log.count == 2 and set(log.ops) == {"_to_copy", "index"}


def test_meta_device_rejects_host_reads():
    with pytest.raises(Exception):
        torch.zeros(1, device="meta").item()


@pytest.mark.parametrize("mode", MODES)
def test_steady_chunks_make_no_transfers(mode):
    # 30 latent frames = 10 chunks: the 21-frame window is full from chunk 7 on, so the steady chunks include
    # evictions (self_forcing, deep_sink) and Participative Compression rebuilds (deep_sink_pc).
    logs = meta_rollout_transfers(mode, latent_frames=30, layers=1)  # every layer runs the same code
    assert len(logs) == 10
    assert [log.count for log in logs[1:]] == [0] * 9, [dict(log.ops) for log in logs]


@pytest.mark.parametrize("mode", MODES)
def test_steady_chunks_with_the_recache_store_make_no_transfers(mode):
    # A switch callback that never switches: the re-cache's store remembers and prunes every chunk on the device.
    logs = meta_rollout_transfers(mode, latent_frames=30, layers=1, recache="ours")
    assert [log.count for log in logs[1:]] == [0] * 9, [dict(log.ops) for log in logs]


@pytest.mark.parametrize("mode", ["self_forcing", "deep_sink"])
@pytest.mark.parametrize("recache, switch_at, params", [
    ("ours", 2, {}), ("ours", 8, {}),
    ("longlive", 2, {"global_sink": True}), ("longlive", 8, {"global_sink": True}),  # f = 24 > 21: the sink frozen
    ("longlive", 8, {"global_sink": False})])                                       # the whole cache replaced
def test_a_recache_in_a_whole_frame_mode_makes_no_transfers(mode, recache, switch_at, params):
    # FIFO modes hold whole frames: the pass's sizes are known on the host, so even the switch chunk reads nothing.
    logs = meta_rollout_transfers(mode, latent_frames=30, layers=1, recache=recache, switch_at=switch_at, **params)
    assert len(logs) == 10
    assert [log.count for log in logs[1:]] == [0] * 9, [dict(log.ops) for log in logs]


def test_counter_fakes_copies_from_the_meta_device_to_the_host():
    x = torch.zeros(2, 3, dtype=torch.uint8, device="meta")
    host = torch.empty(2, 3, dtype=torch.uint8)
    with CountTransfers(host_copies=True) as mode:
        assert host.copy_(x) is host
        assert x.to("cpu").shape == (2, 3) and x.cpu().device.type == "cpu"
        x + 1
    assert mode.log.count == 3 and dict(mode.log.ops) == {"copy_": 1, "_to_copy": 2}
    with pytest.raises(NotImplementedError), CountTransfers():
        host.copy_(x)


def test_streaming_vae_decode_makes_no_transfers_after_the_first():
    from bench.vae import BenchVAE
    preset = get_preset("cpu")
    vae = BenchVAE(preset.vae, torch.float32, "meta")
    latents = torch.randn(1, 3, *preset.latent_shape, device="meta")
    assert [log.count for log in decode_transfers(vae.vae, latents, 3)[1:]] == [0, 0]


def test_lookup_tables_are_copied_to_a_device_once():
    rope, sched = WanRope(12), FlowMatchScheduler()
    pos, t = torch.arange(6, device="meta"), torch.zeros(3, device="meta")
    rope.time_angles(pos)
    sched.sigma_at(t)
    with CountTransfers() as mode:
        rope.time_angles(pos)
        rope.spatial_angles(2, 3, "meta")
        sched.sigma_at(t)
    assert mode.log.count == 0


def test_tables_on_the_cpu_give_the_same_values():
    rope, sched = WanRope(12), FlowMatchScheduler()
    pos = torch.arange(5)
    assert torch.equal(rope.time_angles(pos), pos.double()[:, None] * rope.inv_freq_t)
    t = sched.warp([1000, 750, 500, 250])
    assert torch.equal(sched.sigma_at(t), sched.sigmas[torch.tensor([0, 250, 500, 750])])


def test_rolling_windows_copy_only_their_slot_indices_after_the_first_block():
    """The rolling loop's steady windows (Rolling Forcing, 5 blocks) make no host read and no other transfer than the
    host-to-device copies of the slot indices each window's plan resolves to (``KVCache.begin_window``: at most 8 per
    block, issued before the block's kernels); building them on the device is left to do."""
    from bench.measure import noise_source
    from bench.presets import build_random_model
    from bench.transfers import chunk_transfers
    from pipeline.loops import build_loop
    from pipeline.policies import SelfForcingWindow
    from pipeline.rollout import Rollout, RolloutConfig
    preset = get_preset("cpu").with_overrides(device="meta", layers=1)
    model = build_random_model(preset)
    pipe = Rollout(model, RolloutConfig(denoising_step_list=[1000, 800, 600, 400, 200]),
                   SelfForcingWindow(local_attn_size=-1, sink_size=0), loop=build_loop("rolling"))
    cfg = model.config
    text = torch.randn(1, cfg.text_len, cfg.text_dim, device="meta")
    noise = torch.randn(1, 30, *preset.latent_shape, device="meta")
    logs = chunk_transfers(pipe, text, noise, noise_source(torch.device("meta"), 0), where=True)
    assert len(logs) == 10
    steady = logs[1:]
    assert all(set(log.ops) == {"_to_copy"} for log in steady), [dict(log.ops) for log in steady]
    assert all(len(log.sites) == 1 and next(iter(log.sites)).startswith("pipeline/kv_cache.py") for log in steady)
    assert all(log.count <= 8 for log in steady), [log.count for log in steady]  # 7 full windows, 5 in the tail
