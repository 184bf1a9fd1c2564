"""Threads of the compiled kernels, chosen once when the package is imported.

The engine's kernels run on numba's parallel threads. Three choices make them behave
on a shared machine (a laptop, a cluster node other jobs also use); each yields to
the environment, so a user who sets one keeps it:

- **Wait policy** ``OMP_WAIT_POLICY=PASSIVE``: between parallel regions the threads
  sleep instead of spinning. With a CPU-bound process on one of two cores, an RL
  iteration on the mini_511keV dataset took 8-22 times longer with spinning threads
  and 1.15 times longer with passive ones, which were also faster on a quiet machine
  (``benchmarks/bench_contention.py``, ``benchmarks/RESULTS.md``).
- **Threading layer**: OpenMP first, then TBB, then numba's work queue
  (``NUMBA_THREADING_LAYER`` or ``NUMBA_THREADING_LAYER_PRIORITY`` override it).
- **Thread count**: ``NUMBA_NUM_THREADS`` when set; else ``OMP_NUM_THREADS`` when set;
  else the CPUs this process may use (its affinity mask, and its cgroup CPU quota,
  which numba alone does not read). On a cluster node, set ``OMP_NUM_THREADS`` (or
  ``NUMBA_NUM_THREADS``) to the cores the job was given, before starting Python; or
  call ``numba.set_num_threads(n)`` at any time.

The wait policy must be set before the OpenMP runtime starts, that is before the
first parallel kernel runs: importing the package does it.
"""
import math
import os
from pathlib import Path

import numba

_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]


def cgroup_cpu_limit(root=Path("/sys/fs/cgroup")):
    """CPUs allowed by this process's cgroup quota (v2 ``cpu.max`` or v1 ``cpu.cfs_*``), or None without one."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus():
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    if limit is not None:
        count = min(count, max(1, math.ceil(limit)))
    return max(1, count)


def _requested_threads():
    """The thread count the environment asks for, or the available CPUs."""
    if "NUMBA_NUM_THREADS" in os.environ:
        return None  # numba reads it itself
    text = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    return available_cpus()


def configure():
    """Set the wait policy, the threading layer and the thread count (see the module docstring)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
        numba.config.THREADING_LAYER_PRIORITY = list(_LAYER_PRIORITY)
    wanted = _requested_threads()
    if wanted is not None:
        wanted = min(wanted, numba.config.NUMBA_NUM_THREADS)
        # numba starts with NUMBA_NUM_THREADS threads: only a smaller count needs setting (which starts the pool)
        if wanted != numba.config.NUMBA_NUM_THREADS:
            numba.set_num_threads(wanted)
