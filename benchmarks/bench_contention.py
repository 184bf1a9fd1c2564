"""RL on a busy machine: one RL iteration on the mini_511keV dataset, quiet and beside a competing process.

The built-in ``mini_511keV`` dataset is simulated once (cached in ``benchmarks/_work/``) and
deconvolved with its own parameter file's RL settings (acceleration, response weighting,
smoothing, background fitting). ``--iterations`` iterations are timed with the machine as it
is, then as many again while a CPU-bound process pinned to one core competes with the
kernels' threads. Printed figures (last line: one JSON object):

- ``quiet_iter_s``, ``loaded_iter_s``: median wall time of one iteration;
- ``slowdown``: ``loaded_iter_s / quiet_iter_s`` (with one of two cores taken, about 2 is
  the floor for a perfectly parallel iteration);
- ``quiet_cpu_s``, ``loaded_cpu_s``: CPU time of this process per iteration (threads that
  spin while they wait burn it);
- ``threading_layer``, ``wait_policy``, ``threads``: what the kernels ran on.

Run it under other settings to compare them, e.g. ``OMP_WAIT_POLICY=active`` or
``NUMBA_THREADING_LAYER=workqueue`` (the package's choices yield to the environment).
"""
import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cosi_imaging_plugin.datasets import COSIDataset  # noqa: E402
from cosi_imaging_plugin.deconvolution import ImageDeconvolution  # noqa: E402
from cosi_imaging_plugin.simulate import builtin_config, simulate_dataset  # noqa: E402

from _common import report  # noqa: E402

logger = logging.getLogger("benchmark")
WORK = Path(__file__).resolve().parent / "_work"


def mini_dataset():
    """The mini_511keV dataset, simulated once."""
    folder = WORK / "mini_511keV"
    if not (folder / "manifest.yaml").is_file():
        simulate_dataset(builtin_config("mini_511keV"), folder, progress=False)
    return folder


def iteration_times(algorithm, iterations):
    """(median wall seconds, median CPU seconds of this process) of `iterations` RL iterations."""
    wall, cpu = [], []
    for _ in range(iterations):
        w0, c0 = time.perf_counter(), time.process_time()
        algorithm.iteration()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def competitor(core):
    """A CPU-bound process pinned to `core`."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            preexec_fn=lambda: os.sched_setaffinity(0, {core}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=15, help="iterations timed quiet, and again loaded")
    parser.add_argument("--core", type=int, default=0, help="core the competing process is pinned to")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("cosi_imaging_plugin").setLevel(logging.WARNING)
    folder = mini_dataset()
    deconvolution = ImageDeconvolution()
    deconvolution.set_dataset(COSIDataset.from_manifest(folder, progress=False))
    deconvolution.read_parameterfile(folder / "imagedeconvolution_parfile.yml")
    # every iteration runs: no stopping rule, room for both timed series and the warm-up
    deconvolution.override_parameter(f"deconvolution:parameter:iteration_max = {2 * args.iterations + 3}")
    deconvolution.override_parameter("deconvolution:parameter:stopping_criteria:threshold = 0.0")
    deconvolution.initialize()
    algorithm = deconvolution.algorithm
    algorithm.initialization()
    iteration_times(algorithm, 3)  # compile and warm the caches
    quiet_s, quiet_cpu = iteration_times(algorithm, args.iterations)
    process = competitor(args.core)
    try:
        time.sleep(0.5)
        loaded_s, loaded_cpu = iteration_times(algorithm, args.iterations)
    finally:
        process.kill()
        process.wait()
    report({
        "quiet_iter_s": round(quiet_s, 4),
        "loaded_iter_s": round(loaded_s, 4),
        "slowdown": round(loaded_s / quiet_s, 2),
        "quiet_cpu_s": round(quiet_cpu, 4),
        "loaded_cpu_s": round(loaded_cpu, 4),
        "threading_layer": numba.threading_layer(),
        "wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "threads": numba.get_num_threads(),
        "nnz": deconvolution.dataset[0].engine.data.nnz,
    })


if __name__ == "__main__":
    main()
