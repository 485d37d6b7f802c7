"""Smoke run of the one-shot GPU script (``python -m bench.gpu --smoke``): tiny sizes on the CPU, every stage."""
import json

from bench.gpu import main
from bench.presets import MODES


def test_gpu_script_smoke_runs_every_stage(tmp_path):
    out = tmp_path / "gpu"
    assert main(["--smoke", "--out", str(out), "--log-level", "WARNING"]) == 0
    r = json.loads((out / "results.json").read_text())
    st = r["stages"]
    assert list(st) == ["environment", "equality", "fps", "profile", "low_memory", "long"]
    assert all(s["status"] == "ok" for s in st.values()), {k: s.get("error") for k, s in st.items()}
    assert st["environment"]["result"]["attention_backend"]["float32"] == "sdpa"
    assert st["equality"]["result"]["all_equal"] and set(st["equality"]["result"]["modes"]) == set(MODES)
    fps = st["fps"]["result"]["modes"]
    for mode in MODES:
        s = fps[mode]["summary"]
        assert s["chunks"] == 8 and s["fps_dit_only"] > s["fps_dit_vae_write"] > 0
        assert fps[mode]["write_error"] is None
        for key in ("first_chunk_latency_s", "chunk_dit_p50_s", "chunk_dit_p90_s", "peak_reserved_bytes"):
            assert key in s
    prof = st["profile"]["result"]
    assert prof["self_forcing"]["kind"] == "evict" and prof["deep_sink_pc"]["kind"] == "compress"
    assert prof["deep_sink_pc"]["top"] and (out / "profile_deep_sink_pc.txt").is_file()
    low = st["low_memory"]["result"]
    assert low["switches"] == [{"chunk": 2, "encode_s": low["switches"][0]["encode_s"]}] and low["under_limit"]
    long = st["long"]["result"]["modes"]
    assert long["deep_sink_pc"]["at_end"]["chunks"] == 10 and "at_30s" in long["self_forcing"]
    assert "| deep_sink_pc |" in (out / "results.md").read_text()


def test_unknown_stage_is_a_one_line_error(capsys):
    assert main(["--smoke", "--stages", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_before_after_compare_runs_both_trees(tmp_path, capsys):
    from bench.compare import main as compare
    assert compare(["--ref", "HEAD", "--rounds", "1", "--latent-frames", "24", "--modes", "deep_sink_pc",
                    "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "before_after.json").read_text())
    before, after = r["before"]["deep_sink_pc"], r["after"]["deep_sink_pc"]
    assert set(r["before"]) == set(r["after"]) == {"deep_sink_pc"} and after["steady_chunk_ms_median"] > 0
    assert before["steady_chunk_transfers_meta"] == after["steady_chunk_transfers_meta"] == 0  # HEAD: this branch
    assert before["steady_chunk_aten_ops"] == after["steady_chunk_aten_ops"] > 0
    assert "| deep_sink_pc |" in capsys.readouterr().out
