"""Hub download of missing files: offline / unreachable stops with the manual commands; online (network call
mocked, everything around it real) fetches the right repositories and files, which then load."""
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError

from app.demo_model import write_checkpoint, write_model_folder
from wan.hub import ensure_model_files
from wan.loading import (DEFAULT_CHECKPOINT, DEFAULT_WAN_MODEL_DIR, ModelFilesError,
                         load_generator)

WAN_CMD = "hf download Wan-AI/Wan2.1-T2V-1.3B --local-dir wan_models/Wan2.1-T2V-1.3B"
CKPT_CMD = "hf download gdhe17/Self-Forcing checkpoints/self_forcing_dmd.pt --local-dir ."


class FakeHub:
    """Stands in for the two network calls; writes tiny files where the real hub would and records the calls."""

    def __init__(self, fail: Exception | None = None):
        self.calls = []
        self.fail = fail

    def snapshot_download(self, repo_id, **kwargs):
        self.calls.append(("snapshot_download", repo_id, kwargs))
        if self.fail:
            raise self.fail
        write_model_folder(Path(kwargs["local_dir"]))
        return kwargs["local_dir"]

    def hf_hub_download(self, repo_id, filename, **kwargs):
        self.calls.append(("hf_hub_download", repo_id, {"filename": filename, **kwargs}))
        if self.fail:
            raise self.fail
        return str(write_checkpoint(Path(kwargs["local_dir"]) / filename))


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.hf_hub_download)
    return hub


def test_offline_stops_with_manual_commands(workdir, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after import: read when the download is attempted
    with pytest.raises(ModelFilesError) as err:
        ensure_model_files(DEFAULT_WAN_MODEL_DIR, DEFAULT_CHECKPOINT)
    msg = str(err.value)
    assert WAN_CMD in msg and CKPT_CMD in msg and "HF_HUB_OFFLINE" in msg and "\n" not in msg
    assert "huggingface-cli" not in msg  # huggingface_hub >= 1.0 has only `hf`
    assert fake_hub.calls == []


def test_offline_checkpoint_only(workdir, fake_hub, monkeypatch):
    write_model_folder(workdir / DEFAULT_WAN_MODEL_DIR)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelFilesError) as err:
        ensure_model_files(DEFAULT_WAN_MODEL_DIR, DEFAULT_CHECKPOINT)
    assert CKPT_CMD in str(err.value) and WAN_CMD not in str(err.value)
    assert fake_hub.calls == []


def test_offline_with_files_present_is_fine(workdir, fake_hub, monkeypatch):
    write_model_folder(workdir / DEFAULT_WAN_MODEL_DIR)
    write_checkpoint(workdir / DEFAULT_CHECKPOINT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, ckpt = ensure_model_files(DEFAULT_WAN_MODEL_DIR, DEFAULT_CHECKPOINT)
    assert folder == workdir / DEFAULT_WAN_MODEL_DIR and ckpt == workdir / DEFAULT_CHECKPOINT
    assert fake_hub.calls == []


def test_unreachable_hub_stops_with_manual_commands(workdir, monkeypatch):
    hub = FakeHub(fail=LocalEntryNotFoundError("Cannot reach the Hub: ConnectError"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.hf_hub_download)
    with pytest.raises(ModelFilesError) as err:
        ensure_model_files(DEFAULT_WAN_MODEL_DIR, DEFAULT_CHECKPOINT)
    msg = str(err.value)
    assert WAN_CMD in msg and CKPT_CMD in msg and "LocalEntryNotFoundError" in msg
    assert len(hub.calls) == 1


def test_online_download_then_load(workdir, fake_hub):
    folder, ckpt = ensure_model_files(DEFAULT_WAN_MODEL_DIR, DEFAULT_CHECKPOINT)
    assert folder == workdir / DEFAULT_WAN_MODEL_DIR and ckpt == workdir / DEFAULT_CHECKPOINT

    (name1, repo1, kw1), (name2, repo2, kw2) = fake_hub.calls
    assert (name1, repo1) == ("snapshot_download", "Wan-AI/Wan2.1-T2V-1.3B")
    assert Path(kw1["local_dir"]) == folder
    assert set(kw1["allow_patterns"]) >= {"config.json", "diffusion_pytorch_model.safetensors",
                                          "models_t5_umt5-xxl-enc-bf16.pth", "Wan2.1_VAE.pth", "google/umt5-xxl/*"}
    assert (name2, repo2, kw2["filename"]) == ("hf_hub_download", "gdhe17/Self-Forcing",
                                               "checkpoints/self_forcing_dmd.pt")
    assert Path(kw2["local_dir"]) == workdir
    assert "cache_dir" not in kw1 and "cache_dir" not in kw2  # huggingface_hub's own HF_HOME handling applies

    model = load_generator(folder, ckpt, use_ema=True)
    expected = torch.load(ckpt, weights_only=True)["generator_ema"]
    assert torch.equal(model.state_dict()["head.head.weight"], expected["model.head.head.weight"])


def test_only_missing_parts_are_downloaded(workdir, fake_hub):
    write_model_folder(workdir / DEFAULT_WAN_MODEL_DIR)
    ensure_model_files(DEFAULT_WAN_MODEL_DIR, DEFAULT_CHECKPOINT)
    assert [c[0] for c in fake_hub.calls] == ["hf_hub_download"]


def test_custom_checkpoint_path_is_not_downloaded(workdir, fake_hub):
    write_model_folder(workdir / DEFAULT_WAN_MODEL_DIR)
    with pytest.raises(ModelFilesError) as err:
        ensure_model_files(DEFAULT_WAN_MODEL_DIR, "my_runs/step_600.pt")
    assert str(workdir / "my_runs" / "step_600.pt") in str(err.value) and CKPT_CMD in str(err.value)
    assert fake_hub.calls == []


def test_download_disabled(workdir, fake_hub):
    with pytest.raises(ModelFilesError, match="Wan model folder not found"):
        ensure_model_files(DEFAULT_WAN_MODEL_DIR, DEFAULT_CHECKPOINT, download=False)
    assert fake_hub.calls == []


def test_hub_bars_are_off_when_stderr_is_not_a_terminal(workdir, monkeypatch):
    """Downloads in a logged run (stderr a file or pipe) do not write tqdm control codes."""
    from huggingface_hub.utils import are_progress_bars_disabled

    import io

    class BarWatchingHub(FakeHub):
        """Records whether the hub's bars were off during each call."""

        def snapshot_download(self, repo_id, **kwargs):
            seen.append(are_progress_bars_disabled())
            return super().snapshot_download(repo_id, **kwargs)

        def hf_hub_download(self, repo_id, filename, **kwargs):
            seen.append(are_progress_bars_disabled())
            return super().hf_hub_download(repo_id, filename, **kwargs)

    seen = []
    hub = BarWatchingHub()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.hf_hub_download)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a log file, not a terminal
    assert not are_progress_bars_disabled()
    ensure_model_files(DEFAULT_WAN_MODEL_DIR, DEFAULT_CHECKPOINT)
    assert seen == [True, True] and not are_progress_bars_disabled()


def test_no_huggingface_cli_commands_anywhere():
    """README, scripts and every message give `hf download` commands (huggingface_hub >= 1.0 has no huggingface-cli)."""
    root = Path(__file__).resolve().parent.parent
    files = [root / "README.md", *root.glob("*.sh"), *root.glob("*.py"),
             *[p for d in ("app", "wan", "media", "pipeline", "utils", "bench", "tools", "docs")
               for p in (root / d).rglob("*") if p.suffix in (".py", ".md", ".sh")]]
    offenders = [str(p.relative_to(root)) for p in files if "huggingface-cli download" in p.read_text("utf-8")]
    assert offenders == []
    assert "hf download Wan-AI/Wan2.1-T2V-1.3B --local-dir wan_models/Wan2.1-T2V-1.3B" in (
        root / "README.md").read_text("utf-8")
