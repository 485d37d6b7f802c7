#!/usr/bin/env python
"""Download a method's released checkpoint from the Hugging Face hub (offline: the error gives the manual command).

    python tools/download_checkpoints.py deep_forcing                     # checkpoints/self_forcing_dmd.pt
    python tools/download_checkpoints.py infinite_forcing                 # checkpoints/infinite_forcing/<file>.pt
    python tools/download_checkpoints.py longlive                         # longlive_models/models/{longlive_base,lora}.pt
    python tools/download_checkpoints.py causal_forcing --variant framewise   # checkpoints/causal_forcing/framewise/...
    python tools/download_checkpoints.py matrix_game2 --variant gta_drive     # Matrix-Game-2.0/{VAE, CLIP, generator}

The files and where they land are declared by each method (``methods/``), the same the CLI downloads on first use.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import methods  # noqa: E402
from methods import infinite_forcing, longlive, matrix_game2, world_run  # noqa: E402
from utils.errors import CLIError  # noqa: E402
from wan.loading import ModelFilesError  # noqa: E402


def fetch(name: str, variant: str | None, root: Path) -> list[Path]:
    """Download method ``name``'s checkpoint files (of ``variant``) under ``root``; returns their paths."""
    method = methods.get_method(name)
    variant = method.check_variant(variant, "--variant")
    if name == infinite_forcing.InfiniteForcingMethod.name:
        return [infinite_forcing.download(root / infinite_forcing.LOCAL_DIR)]
    if name == matrix_game2.MatrixGame2.name:
        return world_run.fetch_release(root / matrix_game2.MODEL_DIR, world_run.release_files(variant))
    ckpt = method.checkpoint(variant)
    target = root / ckpt.local_path
    if name == longlive.LongLive.name:
        return [p for p in longlive.ensure_files(str(target), str(root / longlive.LOCAL_DIR / longlive.LORA_FILE))
                if p is not None]
    method.fetch_checkpoint(str(target), variant, download=True)
    return [target]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; exit 2 with one paragraph when the download cannot run."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("method", choices=methods.method_names())
    p.add_argument("--variant", default=None, help="the method's variant (e.g. causal_forcing: framewise)")
    p.add_argument("--root", default=".", help="folder the default layout is created in (default: here)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for path in fetch(args.method, args.variant, Path(os.path.abspath(args.root))):
            logging.info("ready: %s", path)
    except (ModelFilesError, CLIError) as exc:
        sys.stderr.write("error: " + " ".join(str(exc).split()) + "\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
