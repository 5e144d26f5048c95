"""Benchmarks run by ``nmai bench TARGET``: one module per target with ``run(progress, quick=False) -> dict``.

Shared here: :class:`PeakRSS` (peak resident memory during a call) and :func:`machine` (the ``machine``
block of every benchmark's JSON).
"""

from __future__ import annotations

import os
import platform
import threading


def machine(**extra) -> dict:
    """CPU count, torch threads, platform, Python and torch versions, plus ``extra`` (which may override)."""
    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            **extra}


class PeakRSS:
    """Samples this process's resident memory in a background thread while inside the ``with`` block."""

    def __init__(self, interval_s: float = 0.02):
        import psutil

        self.process = psutil.Process()
        self.interval = interval_s
        self.peak = self.start = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        return False
