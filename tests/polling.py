"""Waiting in tests for something another thread or process does."""
from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 120.0, interval: float = 0.05):
    """Poll until ``predicate()`` is truthy and return its value; AssertionError after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {getattr(predicate, '__name__', 'a condition')}")
