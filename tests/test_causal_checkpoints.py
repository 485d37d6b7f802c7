"""Causal Forcing checkpoints: the weights entry each file uses, the error naming a missing entry and the flag to
use, and the hub download of the released files (offline / unreachable / online, network call mocked)."""
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError

from methods.causal_forcing import VARIANTS, CausalForcing
from app.demo_model import write_checkpoint
from wan.loading import ModelFilesError, load_generator


def causal_forcing_checkpoint(path):
    """The released file (``CheckpointFile``) a local path stands for, or None."""
    return next((v.file for v in VARIANTS.values() if v.file.matches(path)), None)


def download_causal_forcing_checkpoint(filename: str, local_dir: Path) -> Path:
    """Fetch the released ``filename`` to ``local_dir / filename`` through the method (download allowed)."""
    variant = next(name for name, v in VARIANTS.items() if v.file.filename == filename)
    target = Path(local_dir) / filename
    assert CausalForcing().fetch_checkpoint(str(target), variant, download=True) is True
    return target


def test_released_files_and_their_entries():
    table = {c.file.filename: (c.file.entry, c.num_frame_per_block, list(c.denoising_step_list),
                               c.denoising_step_list_first_chunk and list(c.denoising_step_list_first_chunk))
             for c in VARIANTS.values()}
    assert table == {
        "chunkwise/causal_forcing.pt": ("generator", 3, [1000, 750, 500, 250], None),
        "framewise/causal_forcing.pt": ("generator_ema", 1, [1000, 750, 500, 250], None),
        "causal-forcing++/framewise-2step.pt": ("generator_ema", 1, [1000, 500], [1000, 750, 500, 250]),
        "causal-forcing++/framewise-1step.pt": ("generator_ema", 1, [1000], [1000, 750, 500, 250]),
        "chunkwise/longvideo.pt": ("generator_ema", 3, [1000, 750, 500, 250], None),  # the rolling loop
    }
    assert VARIANTS["longvideo"].rolling and not any(v.rolling for k, v in VARIANTS.items() if k != "longvideo")
    assert CausalForcing().variant_for({}, "checkpoints/causal_forcing/chunkwise/longvideo.pt") == "longvideo"
    assert causal_forcing_checkpoint("checkpoints/causal_forcing/framewise/causal_forcing.pt").use_ema
    assert not causal_forcing_checkpoint(Path("/x/chunkwise/causal_forcing.pt")).use_ema
    assert causal_forcing_checkpoint("checkpoints/self_forcing_dmd.pt") is None
    assert causal_forcing_checkpoint("my_framewise/causal_forcing.pt") is None


def _single_entry_checkpoint(tmp_path, tiny_model_files, entry):
    """A file holding only ``entry`` (as Causal Forcing's trainer saves them)."""
    full = torch.load(tiny_model_files[1], map_location="cpu", weights_only=True)
    path = tmp_path / f"only_{entry}.pt"
    torch.save({entry: full["generator_ema"]}, path)
    return path


@pytest.mark.parametrize("entry,use_ema,flag", [("generator_ema", False, "pass --use_ema"),
                                                ("generator", True, "drop --use_ema")])
def test_missing_entry_error_names_the_entry_and_the_flag(tmp_path, tiny_model_files, entry, use_ema, flag):
    model_dir = tiny_model_files[0]
    path = _single_entry_checkpoint(tmp_path, tiny_model_files, entry)
    load_generator(model_dir, path, use_ema=not use_ema)  # the right flag loads
    with pytest.raises(ModelFilesError) as err:
        load_generator(model_dir, path, use_ema=use_ema)
    msg = str(err.value)
    wanted = "generator_ema" if use_ema else "generator"
    assert f"no '{wanted}' entry" in msg and f"holds '{entry}'" in msg and flag in msg and str(path) in msg
    assert "\n" not in msg


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_offline_download_gives_the_manual_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelFilesError) as err:
        download_causal_forcing_checkpoint("framewise/causal_forcing.pt", tmp_path / "checkpoints")
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg and "\n" not in msg
    assert ("hf download zhuhz22/Causal-Forcing framewise/causal_forcing.pt --local-dir checkpoints"
            in msg)


def test_unreachable_hub_gives_the_manual_command(tmp_path, monkeypatch, online):
    def fail(**kwargs):
        raise LocalEntryNotFoundError("connection refused")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    with pytest.raises(ModelFilesError) as err:
        download_causal_forcing_checkpoint("causal-forcing++/framewise-1step.pt", tmp_path)
    msg = str(err.value)
    assert "LocalEntryNotFoundError" in msg and "causal-forcing++/framewise-1step.pt" in msg and "\n" not in msg


def test_online_download_fetches_the_file_from_the_causal_forcing_repo(tmp_path, monkeypatch, online):
    calls = []

    def fake(repo_id, filename, local_dir):
        calls.append((repo_id, filename, local_dir))
        return str(write_checkpoint(Path(local_dir) / filename))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    got = download_causal_forcing_checkpoint("causal-forcing++/framewise-2step.pt", tmp_path / "ckpt")
    assert calls == [("zhuhz22/Causal-Forcing", "causal-forcing++/framewise-2step.pt", str(tmp_path / "ckpt"))]
    assert got == tmp_path / "ckpt" / "causal-forcing++" / "framewise-2step.pt" and got.is_file()
    # a path that is not a released file is not fetched: the method leaves it to the caller (missing file error)
    calls.clear()
    assert CausalForcing().fetch_checkpoint(str(tmp_path / "framewise/ar_diffusion_typo.pt"), "framewise",
                                            download=True) is False
    assert calls == []
