#!/usr/bin/env python
"""Download a released checkpoint of the family from the Hugging Face hub (offline: prints the manual command).

    python tools/download_checkpoints.py self_forcing            # checkpoints/self_forcing_dmd.pt
    python tools/download_checkpoints.py infinite_forcing        # checkpoints/infinite_forcing/<file>.pt
    python tools/download_checkpoints.py longlive                # longlive_models/models/{longlive_base,lora}.pt
    python tools/download_checkpoints.py causal_forcing framewise/causal_forcing.pt   # checkpoints/causal_forcing/...
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wan import hub  # noqa: E402
from wan.causal_forcing import CAUSAL_FORCING_CHECKPOINTS  # noqa: E402
from wan.loading import DEFAULT_CHECKPOINT, ModelFilesError  # noqa: E402
from wan.longlive_hub import DEFAULT_LONGLIVE_CHECKPOINT, DEFAULT_LONGLIVE_LORA, download_longlive  # noqa: E402


def fetch(family: str, filename: str | None, root: Path) -> list[Path]:
    """Download ``family``'s checkpoint files under ``root``; returns their paths."""
    if family == "self_forcing":
        return [hub.download_checkpoint(root / DEFAULT_CHECKPOINT)]
    if family == "infinite_forcing":
        return [hub.download_infinite_forcing(root / "checkpoints" / "infinite_forcing")]
    if family == "longlive":
        return download_longlive([root / DEFAULT_LONGLIVE_CHECKPOINT, root / DEFAULT_LONGLIVE_LORA])
    if filename is None:
        raise ModelFilesError(f"causal_forcing needs the file to fetch, one of {', '.join(CAUSAL_FORCING_CHECKPOINTS)}.")
    return [hub.download_causal_forcing_checkpoint(filename, root / "checkpoints" / "causal_forcing")]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; exit 2 with one paragraph when the download cannot run."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("family", choices=("self_forcing", "infinite_forcing", "longlive", "causal_forcing"))
    p.add_argument("file", nargs="?", help="causal_forcing only: the released file, e.g. framewise/causal_forcing.pt")
    p.add_argument("--root", default=".", help="folder the default layout is created in (default: here)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for path in fetch(args.family, args.file, Path(args.root)):
            logging.info("ready: %s", path)
    except ModelFilesError as exc:
        sys.stderr.write("error: " + " ".join(str(exc).split()) + "\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
