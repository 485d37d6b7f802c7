"""Prompt sources: a prompt file (one prompt per line), a directory of ``line_XXXX.txt`` files, or a glob.

Every prompt becomes a ``PromptJob``. Files are UTF-8, one prompt per line; an extended-prompt file has the same
number of lines (upstream semantics). With several files (a directory or a glob), each file's prompts are written to
their own sub-folder named after the file (``line_0007.txt`` -> ``output_folder/line_0007/``), the layout the
released scripts produce; a single file writes straight into the output folder.
"""
from __future__ import annotations

import glob
import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .cli_config import CLIError

logger = logging.getLogger(__name__)

MOVIEGEN_DIR = "prompts/MovieGenVideoBench_txt"
MOVIEGEN_HINT = ("MovieGenVideoBench.txt comes from the MovieGen benchmark release "
                 "(https://github.com/facebookresearch/MovieGenBench, file MovieGenVideoBench.txt, 1003 prompts); "
                 "split it with: python tools/split_prompts.py MovieGenVideoBench.txt prompts/MovieGenVideoBench_txt")


@dataclass(frozen=True)
class PromptJob:
    """One prompt to render: where it came from and where its videos go."""

    index: int                      # position in the whole run (0-based), the sharding key
    line: int                       # 0-based line number in its source file (upstream's ``idx``)
    prompt: str                     # the prompt as written (names the output file)
    extended_prompt: str | None     # the text actually encoded when given (``--extended_prompt_path``)
    source: Path                    # the prompt file
    group: str                      # output sub-folder ("" for a single prompt file)

    @property
    def text(self) -> str:
        """The text fed to the text encoder."""
        return self.extended_prompt if self.extended_prompt else self.prompt


def _natural_key(path: Path) -> list:
    """Sort key treating digit runs as numbers (line_9 before line_10)."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path.name)]


def _bad_char(line: str) -> str | None:
    """The first character a one-line prompt must not contain (line breaks, control characters), else None."""
    for ch in line:
        if ch == "\t":
            continue
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            return ch
    return None


def read_lines(path: Path, role: str = "prompt file") -> list[str]:
    """Lines of a UTF-8 text file (no line ends; a trailing newline adds no line); errors name the file."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise CLIError(f"The {role} {path} is a directory; pass a text file with one prompt per line.") from None
    except OSError as exc:
        raise CLIError(f"The {role} {path} cannot be read ({exc.strerror or exc}); check the path and its "
                       f"permissions.") from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise CLIError(f"The {role} {path} looks binary (it contains a NUL byte at offset {nul}); "
                       f"pass a UTF-8 text file with one prompt per line.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CLIError(f"The {role} {path} is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                       f"it looks binary or uses another encoding. Re-save it as UTF-8 text, one prompt per line."
                       ) from None
    text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln.removesuffix("\r") for ln in lines]
    for n, ln in enumerate(lines, 1):
        ch = _bad_char(ln)
        if ch is not None:
            raise CLIError(f"The {role} {path}, line {n}, contains the character U+{ord(ch):04X} "
                           f"({unicodedata.name(ch, 'control character')}), a line break or control character "
                           f"inside a prompt. Prompt files hold exactly one prompt per line: remove the character "
                           f"or split the prompt into lines.")
    if not any(ln.strip() for ln in lines):
        raise CLIError(f"The {role} {path} is empty (no non-blank line); put one prompt per line in it.")
    return lines


def find_prompt_files(data_path: str) -> tuple[list[Path], bool]:
    """Resolve ``--data_path`` to its prompt files; returns (files, one_folder_per_file)."""
    path = Path(data_path)
    if path.is_dir():
        files = sorted((p for p in path.glob("*.txt") if p.is_file() and not p.name.startswith(".")),
                       key=_natural_key)
        if not files:
            raise CLIError(f"The prompt folder {path} holds no .txt files; it should hold line_XXXX.txt files "
                           f"(one prompt per line), e.g. made by tools/split_prompts.py.")
        return files, True
    if path.is_file():
        return [path], False
    if glob.has_magic(data_path):
        files = sorted((Path(p) for p in glob.glob(data_path, recursive=True) if Path(p).is_file()),
                       key=lambda p: (_natural_key(p), str(p)))
        if not files:
            raise CLIError(f"The prompt pattern {data_path!r} matches no file; check the pattern (quote it so the "
                           f"shell does not expand it).")
        return files, True
    if path.exists():
        raise CLIError(f"The prompt path {data_path} is not a regular file or folder (a device, pipe or socket). "
                       f"Pass --data_path with a prompt file (one prompt per line), a folder of line_XXXX.txt "
                       f"files, or a quoted glob.")
    hint = f" {MOVIEGEN_HINT}." if path.as_posix().rstrip("/").endswith(MOVIEGEN_DIR) else ""
    raise CLIError(f"The prompt path {data_path} does not exist. Pass --data_path with a prompt file (one prompt "
                   f"per line), a folder of line_XXXX.txt files, or a quoted glob.{hint}")


def _extended_lines(ext_path: str, files: list[Path], counts: list[int]) -> list[list[str]]:
    """Per prompt file, its extended-prompt lines (same counts), from a file or a folder of same-named files."""
    path = Path(ext_path)
    if path.is_dir():
        out = []
        for f, n in zip(files, counts):
            ef = path / f.name
            if not ef.is_file():
                raise CLIError(f"The extended prompt folder {path} has no {f.name} for the prompt file {f}; give "
                               f"every prompt file a same-named extended file.")
            lines = read_lines(ef, "extended prompt file")
            if len(lines) != n:
                raise CLIError(f"The extended prompt file {ef} has {len(lines)} lines but the prompt file {f} has "
                               f"{n}; they must match line for line.")
            out.append(lines)
        return out
    if not path.is_file():
        raise CLIError(f"The extended prompt path {ext_path} does not exist; pass a text file with one extended "
                       f"prompt per line (same line count as the prompts), or drop --extended_prompt_path.")
    lines = read_lines(path, "extended prompt file")
    total = sum(counts)
    if len(lines) != total:
        what = str(files[0]) if len(files) == 1 else f"the {len(files)} prompt files together"
        raise CLIError(f"The extended prompt file {path} has {len(lines)} lines but {what} "
                       f"{'has' if len(files) == 1 else 'have'} {total}; they must match line for line.")
    out, start = [], 0
    for n in counts:
        out.append(lines[start:start + n])
        start += n
    return out


def load_prompt_jobs(data_path: str, extended_prompt_path: str | None = None) -> list[PromptJob]:
    """All prompt jobs of ``--data_path`` (and ``--extended_prompt_path``), in run order; raises CLIError."""
    files, per_file = find_prompt_files(data_path)
    if per_file:
        stems: dict[str, Path] = {}
        for f in files:
            if f.stem in stems:
                raise CLIError(f"The prompt files {stems[f.stem]} and {f} would both write to the sub-folder "
                               f"'{f.stem}'; give every prompt file a distinct name.")
            stems[f.stem] = f
    per_file_lines = [read_lines(f) for f in files]
    extended = (_extended_lines(extended_prompt_path, files, [len(x) for x in per_file_lines])
                if extended_prompt_path else [[None] * len(x) for x in per_file_lines])
    jobs: list[PromptJob] = []
    for f, lines, ext in zip(files, per_file_lines, extended):
        blank = 0
        for n, (line, ext_line) in enumerate(zip(lines, ext)):
            prompt = line.strip()
            if not prompt:
                blank += 1
                continue
            ext_text = ext_line.strip() if ext_line is not None else None
            if ext_line is not None and not ext_text:
                logger.warning("%s line %d: empty extended prompt; using the prompt itself", extended_prompt_path,
                               n + 1)
                ext_text = None
            jobs.append(PromptJob(len(jobs), n, prompt, ext_text, f, f.stem if per_file else ""))
        if blank:
            logger.warning("%s: skipped %d blank line(s)", f, blank)
    return jobs


def shard(jobs: list[PromptJob], rank: int, world_size: int) -> list[PromptJob]:
    """Round-robin share of ``rank``: job i goes to rank i % world_size (none dropped, none repeated)."""
    return [j for j in jobs if j.index % world_size == rank]
