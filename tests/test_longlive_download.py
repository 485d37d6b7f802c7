"""Hub download of LongLive's checkpoint and LoRA: offline / unreachable stop with the manual command; online (the
network call mocked) fetches the right repository files to the right places."""
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError

from wan.loading import ModelFilesError
from methods.longlive import BASE_FILE, LOCAL_DIR, LORA_FILE, ensure_files as ensure_longlive_files

DEFAULT_LONGLIVE_CHECKPOINT = f"{LOCAL_DIR}/{BASE_FILE}"
DEFAULT_LONGLIVE_LORA = f"{LOCAL_DIR}/{LORA_FILE}"

CMD = ("hf download Efficient-Large-Model/LongLive models/longlive_base.pt models/lora.pt "
       "--local-dir longlive_models")


class FakeHub:
    def __init__(self, fail=None):
        self.calls, self.fail = [], fail

    def hf_hub_download(self, repo_id, filename, **kwargs):
        self.calls.append((repo_id, filename, kwargs))
        if self.fail:
            raise self.fail
        path = Path(kwargs["local_dir"]) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"name": filename}, path)
        return str(path)


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.hf_hub_download)
    return hub


def test_online_download_places_both_files(workdir, fake_hub):
    ckpt, lora = ensure_longlive_files(DEFAULT_LONGLIVE_CHECKPOINT, DEFAULT_LONGLIVE_LORA)
    assert ckpt == workdir / "longlive_models/models/longlive_base.pt" and ckpt.is_file()
    assert lora == workdir / "longlive_models/models/lora.pt" and lora.is_file()
    assert [(r, f) for r, f, _ in fake_hub.calls] == [("Efficient-Large-Model/LongLive", "models/longlive_base.pt"),
                                                      ("Efficient-Large-Model/LongLive", "models/lora.pt")]
    assert all(Path(kw["local_dir"]) == workdir / "longlive_models" for _, _, kw in fake_hub.calls)
    fake_hub.calls.clear()
    ensure_longlive_files(DEFAULT_LONGLIVE_CHECKPOINT, DEFAULT_LONGLIVE_LORA)
    assert fake_hub.calls == []  # present: nothing fetched


def test_offline_stops_with_the_manual_command(workdir, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelFilesError) as err:
        ensure_longlive_files(DEFAULT_LONGLIVE_CHECKPOINT, DEFAULT_LONGLIVE_LORA)
    msg = str(err.value)
    assert CMD in msg and "HF_HUB_OFFLINE" in msg and "\n" not in msg
    assert fake_hub.calls == []


def test_unreachable_hub_stops_with_the_manual_command(workdir, monkeypatch):
    hub = FakeHub(fail=LocalEntryNotFoundError("Cannot reach the Hub: ConnectError"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.hf_hub_download)
    with pytest.raises(ModelFilesError) as err:
        ensure_longlive_files(DEFAULT_LONGLIVE_CHECKPOINT, DEFAULT_LONGLIVE_LORA)
    assert CMD in str(err.value) and "LocalEntryNotFoundError" in str(err.value)
    assert len(hub.calls) == 1


def test_only_the_missing_file_is_fetched_and_custom_paths_are_not(workdir, fake_hub):
    base = workdir / DEFAULT_LONGLIVE_CHECKPOINT
    base.parent.mkdir(parents=True)
    torch.save({}, base)
    ensure_longlive_files(DEFAULT_LONGLIVE_CHECKPOINT, DEFAULT_LONGLIVE_LORA)
    assert [f for _, f, _ in fake_hub.calls] == ["models/lora.pt"]
    with pytest.raises(ModelFilesError, match="my_runs/lora_step_100.pt"):
        ensure_longlive_files(DEFAULT_LONGLIVE_CHECKPOINT, "my_runs/lora_step_100.pt")
    with pytest.raises(ModelFilesError, match="downloads are switched off"):
        ensure_longlive_files("elsewhere/models/longlive_base.pt", None, download=False)
