"""Text that goes into file names and sidecars: always encodable as UTF-8.

Python represents bytes that are not UTF-8 (a non-UTF-8 file name, a line typed in another encoding) as lone
surrogate code points (U+D800..U+DFFF), which cannot be written as UTF-8. Where such text comes from outside and
the run can go on, each one is replaced by U+FFFD (the replacement character) with a warning; where the user can
fix it (a schedule file), the input is rejected before any model is loaded.
"""
from __future__ import annotations

import re

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def first_unencodable(text: str) -> int | None:
    """Index of the first character of ``text`` that UTF-8 cannot hold (a lone surrogate), else None."""
    found = _SURROGATE.search(text)
    return found.start() if found else None


def safe_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (unchanged when it is valid Unicode)."""
    return _SURROGATE.sub(REPLACEMENT, text)
