"""Shared test fixtures: a tiny Wan model folder + checkpoint in the real formats, and a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread: the tiny models are dispatch-bound, and CI machines are small and shared."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory):
    """(model_dir, checkpoint) of a tiny model written once per test session."""
    from wan.fixtures import write_tiny_model
    tiny = write_tiny_model(tmp_path_factory.mktemp("tiny_model"))
    return tiny.model_dir, tiny.checkpoint


def make_cli_env(**extra) -> dict:
    """Environment for CLI subprocesses: offline, no progress bars, no torchrun variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.pop("PYTHONPATH", None)
    env.update(HF_HUB_OFFLINE="1", TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def cli_env():
    """``cli_env(**extra)`` -> environment dict for CLI subprocesses (offline, no bars, one thread)."""
    return make_cli_env


@pytest.fixture
def run_cli(tmp_path):
    """Run ``inference.py`` with arguments in ``tmp_path``; returns the CompletedProcess (text)."""
    def run(*args, cwd=None, env=None, timeout=300):
        """Run inference.py with these arguments."""
        cmd = [sys.executable, str(REPO_ROOT / "inference.py"), *map(str, args)]
        return subprocess.run(cmd, cwd=cwd or tmp_path, env=env or make_cli_env(), capture_output=True, text=True,
                              timeout=timeout)
    return run


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory, a repository root without model files, and the hub switched on (tests mock it)."""
    from huggingface_hub import constants

    from wan import loading
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(loading, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return work


def pytest_configure(config):
    """Register the markers the tests use."""
    config.addinivalue_line("markers", "slow: takes tens of seconds on a small CPU (deselect with -m 'not slow')")
