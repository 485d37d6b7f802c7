"""The one-shot GPU script (``python -m bench.gpu``) on the CPU: every stage at tiny sizes (``--smoke``), and the
same run on an image without diffusers, av, omegaconf and ftfy (they are hidden from the import system), where
every stage must degrade and say why instead of failing. No timing assertions."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.gpu import BudgetExceeded, Context, alarm, main, parse_args
from bench.presets import MODES

REPO_ROOT = Path(__file__).resolve().parent.parent
HIDDEN = ("diffusers", "av", "omegaconf", "ftfy")
STAGES = ["environment", "attention", "equality", "fps", "baseline", "vae", "compile", "fp8", "profile",
          "low_memory", "long"]
# Makes the listed top-level packages unfindable, as if they were not installed (a bare GPU image): every finder
# on sys.meta_path is wrapped to find nothing for them, so ``import`` raises ModuleNotFoundError and
# ``importlib.util.find_spec`` returns None (diffusers probes optional packages that way).
SITECUSTOMIZE = '''
import os, sys
HIDDEN = {n for n in os.environ.get("DF_HIDE_MODULES", "").split(",") if n}
class Hiding:
    def __init__(self, inner):
        self.inner = inner
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        find = getattr(self.inner, "find_spec", None)
        return find(name, path, target) if find else None
    def __getattr__(self, attr):
        return getattr(self.inner, attr)
sys.meta_path[:] = [Hiding(f) for f in sys.meta_path]
'''


def _stages(out: Path) -> tuple[dict, dict]:
    r = json.loads((out / "results.json").read_text())
    return r, r["stages"]


def test_gpu_script_smoke_runs_every_stage(tmp_path):
    out = tmp_path / "gpu"
    assert main(["--smoke", "--out", str(out), "--log-level", "WARNING"]) == 0
    r, st = _stages(out)
    assert list(st) == STAGES
    ok = {k: s.get("error") or s.get("reason") for k, s in st.items() if s["status"] != "ok"}
    assert set(ok) == {"fp8"} and "compute capability >= 8.9" in ok["fp8"], ok  # FP8 needs a recent GPU
    env = st["environment"]["result"]
    assert env["attention_backend"]["float32"] == "sdpa" and "matmul_allow_tf32" in env["numeric"]
    assert env["optional"]["diffusers"]["importable"] and env["versions"]["torch"]
    att = st["attention"]["result"]
    assert att["chosen"] in att["seconds"] and "math" in att["seconds"] and r["runtime"]["sdpa"] == att["chosen"]
    eq = st["equality"]["result"]
    assert eq["all_equal"] and set(eq["modes"]) == set(MODES) and set(eq["release_style"]) == {"self_forcing",
                                                                                              "deep_sink"}
    fps = st["fps"]["result"]
    assert fps["post"] == "dit + vae decode + write" and not fps["skipped"]
    for mode in MODES:
        m = fps["modes"][mode]
        s = m["summary"]
        assert s["blocks"] == 8 and s["output_frames"] == 93 and m["written"]["frames_in_file"] == 93
        assert s["fill"]["blocks"] == 7 and s["steady"]["blocks"] == 1  # the 21-frame window is full at block 7
        assert s["all"]["fps_dit"] > s["all"]["fps_with_post"] > 0 and s["steady"]["fps_with_post"] > 0
        assert s["first_frame_latency_s"] >= s["first_block_latency_s"] > 0
        assert {"dit_p50_s", "dit_p90_s", "with_post_p50_s", "with_post_p90_s"} <= set(s["steady"])
        assert all("write_s" in b for b in m["blocks"]) and m["written"]["fragments"] == 8
    assert fps["vae_without_write"]["summary"]["all"]["fps_with_post"] > 0
    for mode, m in st["baseline"]["result"]["modes"].items():
        assert m["latents"]["max_abs_diff"] <= 1e-4 * max(1, m["latents"]["max_abs_value"]), mode
        assert m["ratio_steady"] > 0 and m["project"]["steady"]["blocks"] == m["release_style"]["steady"]["blocks"]
    vae = st["vae"]["result"]
    assert set(vae["variants"]) == {"eager", "channels_last"} and vae["variants"]["channels_last"][
        "max_abs_diff_vs_eager"] < 1e-4
    assert set(vae["skipped"]) == {"compiled", "channels_last_compiled"}
    comp = st["compile"]["result"]
    assert comp["backend"] == "eager" and comp["latents"]["max_abs_diff"] < 1e-4 and comp["compile_s"] > 0
    prof = st["profile"]["result"]
    assert prof["self_forcing"]["kind"] == "evict" and prof["deep_sink_pc"]["kind"] == "compress"
    assert prof["deep_sink_pc"]["top"] and (out / "profile_deep_sink_pc.txt").is_file()
    low = st["low_memory"]["result"]
    assert [s["chunk"] for s in low["switches"]] == [2] and low["switches"][0]["encode_s"] > 0 and low["under_limit"]
    long = st["long"]["result"]["modes"]
    assert long["deep_sink_pc"]["at_end"]["blocks"] == 10 and "at_30s" in long["self_forcing"]
    assert set(r["skipped"]) == {"fp8", "vae.compiled", "vae.channels_last_compiled"}
    md = (out / "results.md").read_text()
    assert "| deep_sink_pc |" in md and "project / release" in md and "Skipped:" in md


def _hidden(tmp_path, hidden, *args, timeout=300):
    """Run ``python *args`` from the repository root with the ``hidden`` packages unfindable."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": str(site), "DF_HIDE_MODULES": ",".join(hidden), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_gpu_script_degrades_without_diffusers_av_omegaconf_ftfy(tmp_path):
    """A bare GPU image: every stage ends ok or skipped (none fails), the DiT figures stand, and the missing
    figures are listed as skipped with the reason."""
    out = tmp_path / "bare"
    proc = _hidden(tmp_path, HIDDEN, "-m", "bench.gpu", "--smoke", "--out", str(out), "--log-level", "ERROR")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r, st = _stages(out)
    assert list(st) == STAGES
    assert {k for k, s in st.items() if s["status"] != "ok"} == {"vae", "fp8"}, {
        k: s.get("error") or s.get("reason") for k, s in st.items()}
    optional = st["environment"]["result"]["optional"]
    assert all(not optional[name]["importable"] and "No module named" in optional[name]["error"] for name in HIDDEN)
    fps = st["fps"]["result"]
    assert fps["post"] == "dit only"
    for mode in MODES:
        s = fps["modes"][mode]["summary"]
        assert s["steady"]["fps_dit"] > 0 and s["first_frame_latency_s"] is None and "fps_with_post" not in s["all"]
    skipped = r["skipped"]
    assert {"vae", "fp8", "fps.vae_decode", "fps.write", "low_memory.vae_decode"} <= set(skipped)
    assert "diffusers" in skipped["vae"] and "diffusers" in skipped["fps.write"]
    assert st["baseline"]["result"]["modes"]["deep_sink"]["ratio_steady"] > 0
    assert st["low_memory"]["result"]["switches"][0]["encode_s"] > 0  # the encoder needs neither ftfy nor a tokenizer
    assert "Skipped:" in (out / "results.md").read_text()


def test_the_vae_needs_only_the_diffusers_wheel(tmp_path):
    """bench/README.md's minimal carry set: with diffusers but without ftfy, importlib_metadata, omegaconf and av,
    the benchmark's VAE builds and decodes."""
    code = ("import torch; from bench.presets import get_preset; from bench.vae import BenchVAE; p = get_preset('cpu'); "
            "v = BenchVAE(p.vae, torch.float32, 'cpu'); "
            "print(tuple(v.stream_decoder().decode_chunk(torch.zeros(1, 3, *p.latent_shape)).shape))")
    proc = _hidden(tmp_path, ("ftfy", "importlib_metadata", "omegaconf", "av"), "-c", code)
    assert proc.returncode == 0 and proc.stdout.strip() == "(1, 9, 3, 16, 32)", proc.stderr[-2000:]


def test_no_write_figure_without_av(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    ctx = Context(parse_args(["--smoke"]))
    reason = ctx.writer_unavailable()
    assert reason and "PyAV" in reason


def test_stages_past_the_budget_are_skipped_with_the_reason(tmp_path):
    out = tmp_path / "budget"
    assert main(["--smoke", "--budget-s", "30", "--stages", "environment", "fps", "--out", str(out),
                 "--log-level", "ERROR"]) == 0
    r, st = _stages(out)
    assert st["environment"]["status"] == "ok"
    assert st["fps"]["status"] == "skipped" and "time budget" in st["fps"]["reason"] and "fps" in r["skipped"]


def test_the_alarm_stops_a_stage_that_overruns():
    t0 = time.perf_counter()
    with pytest.raises(BudgetExceeded):
        with alarm(0.2):
            while time.perf_counter() - t0 < 5:
                pass
    assert time.perf_counter() - t0 < 2


def test_sdpa_probe_times_the_kernels_this_device_has():
    from bench.sdpa import backend_context, probe
    r = probe("cpu", torch.float32, 6, 42, 4, 16, repeats=2)
    assert "math" in r["seconds"] and r["chosen"] in r["seconds"]
    assert set(r["seconds"]) | set(r["errors"]) == {"flash", "cudnn", "efficient", "math"}
    assert all(d < 1e-5 for d in r["max_abs_diff_vs_math"].values())
    q = torch.randn(1, 2, 5, 8)
    with backend_context(r["chosen"]):
        torch.nn.functional.scaled_dot_product_attention(q, q, q)


def test_unknown_stage_is_a_one_line_error(capsys):
    assert main(["--smoke", "--stages", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
