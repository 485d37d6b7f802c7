"""Timing (CUDA events on CUDA, perf_counter elsewhere) and memory probes (GPU allocator, sampled host RSS)."""
from __future__ import annotations

import threading
import time

import torch


class Clock:
    """Marks points in the device's work stream; elapsed times are read after one ``sync()`` at the end."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"

    def mark(self):
        """A timestamp: a recorded CUDA event (no host sync) or a perf_counter value."""
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def sync(self) -> None:
        """Wait for the device (CUDA) so that marks can be read."""
        if self.cuda:
            torch.cuda.synchronize()

    def seconds(self, a, b) -> float:
        """Seconds between two marks (call ``sync()`` first on CUDA)."""
        if self.cuda:
            return a.elapsed_time(b) / 1000.0
        return b - a


class GpuMemory:
    """CUDA allocator statistics (zeros elsewhere); reading them never synchronises."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"

    def reset_peak(self) -> None:
        """Start a new peak window."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def allocated(self) -> int:
        """Bytes held by tensors now."""
        return torch.cuda.memory_allocated() if self.cuda else 0

    def peak(self) -> int:
        """Peak bytes held by tensors since the last ``reset_peak``."""
        return torch.cuda.max_memory_allocated() if self.cuda else 0

    def reserved_peak(self) -> int:
        """Peak bytes reserved by the caching allocator (what nvidia-smi roughly shows, minus the context)."""
        return torch.cuda.max_memory_reserved() if self.cuda else 0


class RssSampler:
    """Samples this process's resident set size in a background thread; ``peak`` is the largest sample."""

    def __init__(self, interval_s: float = 0.02):
        import psutil  # only where host memory is sampled
        self.interval_s = interval_s
        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> int:
        """RSS bytes now (also folded into the peak)."""
        rss = self.proc.memory_info().rss
        self.peak = max(self.peak, rss)
        return rss

    def __enter__(self) -> "RssSampler":
        """Start sampling (the peak restarts from the current RSS)."""
        self.peak = self.proc.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        """Stop sampling and take one last sample."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.current()

    def _run(self) -> None:
        """Sampling loop of the background thread."""
        while not self._stop.wait(self.interval_s):
            self.current()
