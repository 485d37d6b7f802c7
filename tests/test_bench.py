"""Smoke tests of the benchmark harness (bench/): CPU preset end to end and the real-size path on the meta device.

No timing assertions: only that the harness runs and writes results.json / results.md / latency_memory.png with
the expected structure.
"""
import json

from bench import reload as bench_reload
from bench.presets import get_preset
from bench.run import main

MODES = ["self_forcing", "deep_sink", "deep_sink_pc"]


def _load(out):
    assert (out / "results.md").is_file() and (out / "latency_memory.png").stat().st_size > 0
    return json.loads((out / "results.json").read_text())


def test_latent_frames_follow_the_16fps_convention():
    p = get_preset("real")
    assert [p.latent_frames_for(s) for s in (30, 60, 300)] == [120, 240, 1200]
    assert [p.pixel_frames(t) for t in (120, 240, 1200)] == [477, 957, 4797]
    assert p.latent_frames_for(1) % 3 == 0


def test_cpu_preset_all_modes_writes_json_md_png(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_reload, "process_start_seconds", lambda device: 0.0)  # no interpreter start in tests
    out = tmp_path / "cpu"
    # 30 latent frames = 10 chunks: the window fills at chunk 7, so evictions and two PC compressions happen.
    assert main(["--preset", "cpu", "--latent-frames", "30", "--reload-prompts", "1",
                 "--reload-seconds", "1", "--warmup-chunks", "0", "--out", str(out),
                 "--log-level", "WARNING"]) == 0
    r = _load(out)
    assert r["preset"] == "cpu" and r["timing_valid"] is True
    assert {"device_name", "torch", "cuda", "diffusers", "flash_attn"} <= set(r["environment"])
    assert r["command"].endswith("--log-level WARNING") and "bench.run --preset cpu" in r["command"]
    assert [run["mode"] for run in r["runs"]] == MODES
    for run in r["runs"]:
        s = run["summary"]
        assert s["latent_frames"] == 30 and s["output_frames"] == 117 and s["chunks"] == len(run["chunks"]) == 10
        for key in ("first_chunk_latency_s", "first_chunk_latency_with_vae_s", "fps_dit_only", "fps_with_vae",
                    "gpu_peak_bytes", "rss_peak_bytes", "chunk_latency_by_kind"):
            assert key in s
        kinds = [c["kind"] for c in run["chunks"]]
        expected = ["fill"] * 7 + (["compress", "normal", "compress"] if run["mode"] == "deep_sink_pc"
                                     else ["evict"] * 3)
        assert kinds == expected
        assert "fill" in s["chunk_latency_by_kind"] and len(s["chunk_latency_by_kind"]) >= 2
    assert set(r["modes"]) == set(MODES) and "fallback" not in r["modes"]["deep_sink_pc"]["policy"]
    reload = r["reload"]
    assert reload["prompts"] == 1 and reload["reload_runs"][0]["dit_load_s"] > 0
    assert set(r["relative"]) == {"7.5 s"}  # 30 latent frames = 7.5 s at 4 latent frames per second
    assert "| deep_sink_pc |" in (out / "results.md").read_text()


def test_real_preset_builds_1_3b_on_meta_and_kv_geometry_matches_spec(tmp_path):
    out = tmp_path / "meta"
    assert main(["--preset", "real", "--device", "meta", "--modes", "deep_sink_pc", "--latent-frames", "3",
                 "--warmup-chunks", "0", "--out", str(out), "--log-level", "WARNING"]) == 0
    r = _load(out)
    g = r["geometry"]
    assert r["timing_valid"] is False
    assert g["num_layers"] == 30 and g["tokens_per_frame"] == 1560 and g["dim"] == 1536
    assert g["kv_bytes_per_frame"] == 30 * 2 * 1560 * 1536 * 2  # SPEC 6: 287.5 MB per latent frame in bf16
    assert round(g["kv_bytes_per_frame"] / 1e6, 1) == 287.5
    assert 1.3e9 < g["parameters"] < 1.5e9
    # 21-frame window (the chunk is staged into freed slots) x 287.5 MB of k/v, plus int64 positions and frames
    assert 21 * g["kv_bytes_per_frame"] <= g["cache_storage_bytes"]["deep_sink_pc"] < 22 * g["kv_bytes_per_frame"]
    assert r["runs"][0]["summary"]["output_frames"] == 9


def test_bad_options_are_one_line_errors(capsys):
    assert main(["--preset", "cpu", "--latent-frames", "4", "--out", "unused"]) == 2
    assert "multiples of 3" in capsys.readouterr().err
    if not __import__("torch").cuda.is_available():
        assert main(["--preset", "real", "--out", "unused"]) == 2
        assert "sees no GPU" in capsys.readouterr().err


def test_a_policy_defined_here_is_selectable_by_name(tmp_path):
    """A new cache mode is one class plus its registration: the bench runs it without any other file knowing it."""
    from dataclasses import dataclass

    import torch

    from pipeline.kv_cache import Plan
    from pipeline.policies import POLICIES, CachePolicy

    @dataclass
    class KeepLastFrame(CachePolicy):
        """Test-only policy: before each chunk, keep only the last committed frame."""

        name = "test_keep_last_frame"

        def plan(self, kv, layer):
            n, F = kv.layers[layer].n, kv.tokens_per_frame
            return None if n <= F else Plan("evict", torch.arange(n - F, n))

    try:
        out = tmp_path / "custom"
        assert main(["--preset", "cpu", "--modes", "test_keep_last_frame", "--latent-frames", "9",
                     "--reload-prompts", "0", "--no-vae", "--warmup-chunks", "0", "--out", str(out),
                     "--log-level", "WARNING"]) == 0
        r = json.loads((out / "results.json").read_text())
        assert r["modes"]["test_keep_last_frame"]["policy"] == "KeepLastFrame"
        assert r["modes"]["test_keep_last_frame"]["settings"]["mode"] == "test_keep_last_frame"
        run, = r["runs"]
        assert [c["kind"] for c in run["chunks"]] == ["fill", "evict", "evict"]
        assert [c["context_frames"] for c in run["chunks"]] == [0, 1, 1]  # its plan was applied
    finally:
        POLICIES.pop("test_keep_last_frame", None)
