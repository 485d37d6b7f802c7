"""Infinite-Forcing's checkpoint download and tools/download_checkpoints.py: the repository's one .pt file is fetched
(the network call mocked); offline or unreachable, one paragraph with the manual `hf download` command."""
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants

from methods import infinite_forcing
from wan.loading import ModelFilesError

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def fake_snapshot(names, calls, error=None):
    def snapshot_download(repo_id, local_dir, allow_patterns):
        calls.append((repo_id, allow_patterns))
        if error is not None:
            raise error
        for name in names:
            (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(local_dir) / name).write_bytes(b"x")
        return local_dir
    return snapshot_download


def test_infinite_forcing_download_returns_the_one_checkpoint(tmp_path, online, monkeypatch):
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot(["ema_model.pt"], calls))
    got = infinite_forcing.download(tmp_path / "if")
    assert got == (tmp_path / "if" / "ema_model.pt").absolute()
    assert calls == [("SOTAMak1r/Infinite-Forcing", ["*.pt"])]


def test_infinite_forcing_download_with_several_files_asks_which(tmp_path, online, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot(["a.pt", "b/c.pt"], []))
    with pytest.raises(ModelFilesError, match=r"2 \.pt files .*a\.pt, c\.pt.*--checkpoint_path"):
        infinite_forcing.download(tmp_path / "if")


def test_infinite_forcing_unreachable_gives_the_manual_command(tmp_path, online, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot([], [], OSError("no route to host")))
    with pytest.raises(ModelFilesError, match="hf download SOTAMak1r/Infinite-Forcing --include '\\*.pt'"):
        infinite_forcing.download(tmp_path / "if")


def test_tool_offline_exits_2_with_one_paragraph(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    for args in (["infinite_forcing"], ["longlive"], ["self_forcing"], ["causal_forcing", "--variant", "framewise"],
                 ["matrix_game2", "--variant", "gta_drive"]):
        r = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "download_checkpoints.py"), *args, "--root",
                            str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("error: ") and "hf download" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
