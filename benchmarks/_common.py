"""Shared measurement helpers of the benchmark scripts.

Absolute times on a shared machine mean little, so every benchmark compares
against a baseline, or against this machine's measured memory bandwidth and
GEMM rate, in the same process.
"""
import json
import logging
import threading
import time

import numba
import numpy as np
import psutil


@numba.njit(parallel=True, cache=True)
def _parallel_sum(a):
    total = 0.0
    for i in numba.prange(a.shape[0]):
        total += a[i]
    return total


def memory_read_bandwidth(nbytes=1 << 30, repeats=5):
    """Bytes per second read by all threads from an array much larger than the caches."""
    a = np.ones(nbytes // 4, dtype=np.float32)
    _parallel_sum(a[:1024])
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        _parallel_sum(a)
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best


def gemm_rate(n=2048, repeats=3):
    """float32 matrix-multiply rate of this machine's BLAS (flop/s)."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def timed(function, repeats):
    """Median wall time of `repeats` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


class PeakRSS:
    """Context manager sampling the process's resident memory; ``peak_mb`` after exit."""

    def __init__(self, interval=0.005):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _run(self):
        process = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = psutil.Process().memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, psutil.Process().memory_info().rss)

    @property
    def peak_mb(self):
        return self.peak / 1e6


def report(figures):
    """Log the figures and print them as the script's last line (one JSON object)."""
    for key, value in figures.items():
        logging.getLogger("benchmark").info("%-24s %s", key, value)
    print(json.dumps(figures))
