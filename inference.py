#!/usr/bin/env python
"""Deep Forcing inference, upstream-compatible entry point: ``python inference.py [flags] [key=value ...]``.

The command line lives in ``app.cli`` (installed as the ``deep-forcing`` command); this file keeps the released
``python inference.py ...`` commands working from a checkout. See README.md.
"""
import sys

from app.cli import build_parser, main, output_plan, run  # noqa: F401  (the names scripts and tests use)

if __name__ == "__main__":
    sys.exit(main())
