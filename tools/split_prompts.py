#!/usr/bin/env python
"""Split a prompt list (one prompt per line) into ``line_XXXX.txt`` files, one prompt each.

    python tools/split_prompts.py MovieGenVideoBench.txt prompts/MovieGenVideoBench_txt

Line N of the input (0-based) becomes ``line_{N:04d}.txt`` (more digits when there are 10000 lines or more), the
layout ``DS_inference.sh`` / ``DS_PC_inference.sh`` read and mirror into ``output/DS*/line_XXXX/``. Blank lines are
skipped (their numbers stay unused). Running it again is harmless; a different existing file needs --overwrite.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.cli_config import CLIError  # noqa: E402
from app.prompts import read_lines  # noqa: E402

logger = logging.getLogger("split_prompts")


def split_prompts(src: Path, out_dir: Path, prefix: str = "line_", digits: int = 4,
                  overwrite: bool = False) -> list[Path]:
    """Write one file per non-blank line of ``src`` into ``out_dir``; returns the files (written or up to date)."""
    lines = read_lines(src)
    width = max(digits, len(str(len(lines) - 1)))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for n, line in enumerate(lines):
        prompt = line.strip()
        if not prompt:
            logger.warning("%s line %d is blank; skipped", src, n + 1)
            continue
        path = out_dir / f"{prefix}{n:0{width}d}.txt"
        content = prompt + "\n"
        if path.exists() and path.read_text(encoding="utf-8") != content and not overwrite:
            raise CLIError(f"{path} exists with a different prompt; pass --overwrite to replace it or choose "
                           f"another output folder.")
        path.write_text(content, encoding="utf-8")
        files.append(path)
    return files


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("prompt_file", type=Path, help="UTF-8 text file, one prompt per line")
    p.add_argument("output_dir", type=Path, help="folder for the line_XXXX.txt files")
    p.add_argument("--prefix", default="line_")
    p.add_argument("--digits", type=int, default=4, help="zero padding of the line number (default 4)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files with different content")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        files = split_prompts(args.prompt_file, args.output_dir, args.prefix, args.digits, args.overwrite)
    except CLIError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    logger.info("%d prompt files in %s", len(files), args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
