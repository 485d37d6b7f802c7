"""The released-style shell scripts: the inference.py command line each one runs (with a fake interpreter)."""
import os
import stat
import subprocess
from pathlib import Path

import pytest

from inference import build_parser

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "DS_inference.sh": {"config": "self_forcing_dmd_sink14.yaml", "is_ds_only": "1", "output": "output/DS",
                        "extra": []},
    "DS_PC_inference.sh": {"config": "self_forcing_dmd_sink10.yaml", "is_ds_only": "0", "output": "output/DS_PC",
                           "extra": ["--Budget", "16", "--Recent", "4"]},
}


@pytest.fixture
def fake_python(tmp_path):
    """An interpreter stand-in that prints each argument it gets on its own line."""
    path = tmp_path / "fake_python"
    path.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def script_argv(name: str, fake_python: Path, *args: str, nproc: int = 1) -> list[str]:
    """The arguments the script passes to the interpreter."""
    env = {**os.environ, "PYTHON": str(fake_python), "NPROC": str(nproc)}
    r = subprocess.run(["bash", str(REPO_ROOT / name), *args], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_command_line_uses_ema_weights(name, fake_python):
    want = SCRIPTS[name]
    argv = script_argv(name, fake_python, "--num_output_frames", "240")
    assert argv[0] == str(REPO_ROOT / "inference.py")
    args = build_parser().parse_intermixed_args(argv[1:])  # a command line inference.py accepts
    assert args.use_ema, "the released scripts render with the EMA generator (--use_ema)"
    assert Path(args.config_path).name == want["config"] and str(args.is_ds_only) == want["is_ds_only"]
    assert args.output_folder == want["output"] and args.num_output_frames == 240  # extra flags pass through
    assert all(a in argv for a in want["extra"])
    assert argv.index("--num_output_frames") > argv.index("--use_ema")  # user flags come last and win


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_torchrun_command_line_uses_ema_weights(name, fake_python):
    argv = script_argv(name, fake_python, nproc=2)
    assert argv[:4] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert "--use_ema" in argv[argv.index(str(REPO_ROOT / "inference.py")):]
