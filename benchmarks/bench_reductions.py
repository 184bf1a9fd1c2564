"""Where the threaded sums over the non-empty bins overtake the serial ones.

The sums of ``engine/reductions.py`` (``dot``, ``counts_log_sum``'s loop,
``combine_rows`` with three rows) are compiled twice: threaded and serial. For
array lengths from 1e2 to 3e6 this prints the median time of each (best of
``--rounds`` medians of ``--repeats`` calls, both timed alternately in one
process) and, as the last line, one JSON object with the times and, per sum, the
smallest length from which the threaded loop is faster at every larger length
(``crossover``), against which ``PARALLEL_MIN_SIZE`` is set.
"""
import argparse
import logging
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cosi_imaging_plugin.engine import reductions  # noqa: E402

from _common import report  # noqa: E402

logger = logging.getLogger("benchmark")
SIZES = [100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 200_000, 300_000, 1_000_000, 3_000_000]


def call_seconds(function, args, repeats):
    function(*args)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        function(*args)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=101)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rng = np.random.default_rng(0)
    loops = {
        "dot": (reductions._dot_threaded, reductions._dot_serial, lambda n: (rng.random(n), rng.random(n))),
        "counts_log_sum": (reductions._counts_log_sum_threaded, reductions._counts_log_sum_serial,
                           lambda n: (rng.random(n), 1 + rng.random(n), rng.random(n))),
        "combine_rows": (reductions._combine_rows_threaded, reductions._combine_rows_serial,
                         lambda n: (rng.random(3), rng.random((3, n)))),
    }
    figures = {"threads": numba.get_num_threads()}
    for name, (threaded, serial, make) in loops.items():
        faster = []
        for n in SIZES:
            data = make(n)
            best = {"threaded": np.inf, "serial": np.inf}
            for _ in range(args.rounds):
                for label, function in (("threaded", threaded), ("serial", serial)):
                    best[label] = min(best[label], call_seconds(function, data, args.repeats))
            logger.info("%-15s n=%9d threaded %9.1f us serial %9.1f us", name, n, 1e6 * best["threaded"],
                        1e6 * best["serial"])
            figures[f"{name}_{n}_threaded_us"] = round(1e6 * best["threaded"], 1)
            figures[f"{name}_{n}_serial_us"] = round(1e6 * best["serial"], 1)
            faster.append(best["threaded"] < best["serial"])
        # the smallest size from which threads win at every larger size
        crossover = next((n for i, n in enumerate(SIZES) if all(faster[i:])), None)
        figures[f"{name}_crossover"] = crossover
    report(figures)


if __name__ == "__main__":
    main()
