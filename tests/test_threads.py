"""How the package sets up the kernels' threads, each choice yielding to the environment."""
import os
import subprocess
import sys

import pytest

from cosi_imaging_plugin import _threads


def threads_in_a_fresh_process(**environment):
    """(thread count, OMP_WAIT_POLICY, layer priority) seen after importing the package with `environment`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_WAIT_POLICY", "NUMBA_THREADING_LAYER")}
    env.update(environment)
    code = ("import os, numba, cosi_imaging_plugin; "
            "print(numba.get_num_threads(), os.environ['OMP_WAIT_POLICY'], numba.config.THREADING_LAYER_PRIORITY[0])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    count, policy, layer = out.stdout.split()
    return int(count), policy, layer


def test_defaults_passive_waiting_openmp_first_all_available_cpus():
    assert threads_in_a_fresh_process() == (_threads.available_cpus(), "PASSIVE", "omp")


def test_the_environment_wins():
    count, policy, _ = threads_in_a_fresh_process(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="ACTIVE")
    assert (count, policy) == (1, "ACTIVE")
    assert threads_in_a_fresh_process(NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="2")[0] == 1


@pytest.mark.parametrize("files, limit", [
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_quota(tmp_path, files, limit):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _threads.cgroup_cpu_limit(tmp_path) == limit


def test_available_cpus_within_the_affinity_mask():
    assert 1 <= _threads.available_cpus() <= len(os.sched_getaffinity(0))
