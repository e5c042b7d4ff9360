"""Per-stage peak memory of the running process, measured by RSS sampling.

A daemon thread reads the resident set size from ``/proc/self/statm`` every ``interval``
seconds. ``with meter.stage(name):`` records, for that window, the RSS at its start and the
highest RSS sampled during it (the start and end readings included). The process-wide peak
from ``getrusage(RUSAGE_SELF).ru_maxrss`` is reported next to it as a cross-check: the
largest stage peak can only be lower (a spike shorter than the interval may be missed).

What the numbers mean: ``peak_MB`` is what the process held at the worst moment of the stage,
including the Python interpreter, the imported libraries and anything earlier stages still
keep alive; ``delta_MB`` = peak minus the RSS when the stage began, i.e. what the stage
itself added at its worst moment.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections.abc import Iterator

_PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024.0 * 1024.0


def rss_bytes() -> int:
    """Current resident set size of this process in bytes (Linux /proc)."""
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * _PAGE


def ru_maxrss_mb() -> float:
    """Peak RSS of this process so far (kernel high-water mark), MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


class StageMemory:
    """RSS sampler with named stage windows (a stage entered twice keeps its worst window)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._current: str | None = None
        self._peak = 0
        self.stages: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.baseline_mb = rss_bytes() / MB
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = rss_bytes()
            with self._lock:
                if rss > self._peak:
                    self._peak = rss
            time.sleep(self.interval)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Measure the peak RSS of the enclosed block under ``name``."""
        start = rss_bytes()
        with self._lock:
            self._peak = start
        try:
            yield
        finally:
            end = rss_bytes()
            with self._lock:
                peak = max(self._peak, end)
            rec = {"peak_MB": round(peak / MB, 1), "delta_MB": round((peak - start) / MB, 1)}
            old = self.stages.get(name)
            if old is None or rec["peak_MB"] > old["peak_MB"]:
                self.stages[name] = rec

    def close(self) -> dict[str, float | dict]:
        """Stop sampling; return the stage table plus baseline and process peak."""
        self._stop.set()
        self._thread.join(timeout=1)
        return {"stages": self.stages, "baseline_MB": round(self.baseline_mb, 1),
                "process_peak_MB": round(ru_maxrss_mb(), 1)}
