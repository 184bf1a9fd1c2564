"""RL benchmark at the data-challenge scale: seconds per RL iteration, sparse engine versus dense baseline.

The RL run of the COSI team's 511 keV parameter file (acceleration with
alpha_max 10, response weighting with index 0.5, Gaussian smoothing of 2 deg,
background normalization fitting) on the DC2-scale inputs of ``_dc2.py``, once
on the sparse-data engine and once on the dense baseline (``_dense.py``), in the
same process. The last printed line is one JSON object with ``rl_iter_s``,
``dense_iter_s``, ``speedup`` (dense_iter_s / rl_iter_s) and ``peak_mb``
(resident memory during the sparse run).
"""
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cosi_imaging_plugin.datasets import COSIDataset  # noqa: E402
from cosi_imaging_plugin.deconvolution import ImageDeconvolution  # noqa: E402

import _dc2  # noqa: E402
from _common import PeakRSS, report  # noqa: E402
from _dense import dense_engine  # noqa: E402

logger = logging.getLogger("benchmark")


def parameters(nside, iterations):
    """The 511 keV tutorial's RL parameters at the benchmark's NSIDE."""
    return {
        "model_definition": {
            "class": "AllSkyImage",
            "property": {"coordinate": "galactic", "nside": nside, "scheme": "ring",
                         "energy_edges": {"value": [509.0, 513.0], "unit": "keV"}, "unit": "cm-2 s-1 sr-1"},
            "initialization": {"algorithm": "flat", "parameter": {"value": [1e-4], "unit": "cm-2 s-1 sr-1"}}},
        "deconvolution": {"algorithm": "RL", "parameter": {
            "iteration_max": iterations,
            "acceleration": {"activate": True, "alpha_max": 10.0},
            "response_weighting": {"activate": True, "index": 0.5},
            "smoothing": {"activate": True, "FWHM": {"value": 2.0, "unit": "deg"}},
            "stopping_criteria": {"statistics": "log-likelihood", "threshold": 0.0},
            "background_normalization_optimization": {"activate": True, "range": {"activation": [0.01, 10.0]}}}}}


def seconds_per_iteration(engine, nside, iterations):
    """Wall time of `iterations` RL iterations divided by their number (initialization excluded)."""
    deconvolution = ImageDeconvolution()
    deconvolution.set_dataset(COSIDataset(engine, name="dc2"))
    deconvolution.set_parameter(parameters(nside, iterations))
    deconvolution.initialize()
    start = time.perf_counter()
    deconvolution.run_deconvolution(progress=False)
    elapsed = time.perf_counter() - start
    return elapsed / len(deconvolution.results), deconvolution.results


def main():
    parser = _dc2.parser(__doc__)
    parser.add_argument("--iterations", type=int, default=5, help="RL iterations on the sparse engine")
    parser.add_argument("--dense-iterations", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    dc2 = _dc2.build(args)
    engine = dc2.engine(args.rtol)
    seconds_per_iteration(engine, args.nside, 1)  # compile the kernels
    with PeakRSS() as memory:
        rl_iter_s, results = seconds_per_iteration(engine, args.nside, args.iterations)
    logger.info("sparse RL: %.3f s per iteration, log-likelihood %s", rl_iter_s, results[-1]["loglikelihood"])
    dense_iter_s, dense_results = seconds_per_iteration(dense_engine(engine, dc2.response_matrix), args.nside,
                                                        args.dense_iterations)
    # both runs start from the same model: their first iterations must agree
    first_sparse = np.asarray(results[0]["model"].contents)
    first_dense = np.asarray(dense_results[0]["model"].contents)
    agreement = float(np.abs(first_sparse - first_dense).sum() / np.abs(first_dense).sum())
    report({
        "rl_iter_s": round(rl_iter_s, 3),
        "dense_iter_s": round(dense_iter_s, 2),
        "speedup": round(dense_iter_s / rl_iter_s, 1),
        "peak_mb": round(memory.peak_mb, 0),
        "iterations": args.iterations,
        "first_iteration_rel_diff": float(f"{agreement:.3g}"),
        "scatt_bins": engine.n_rows,
        "nnz": engine.data.nnz,
        "rtol": args.rtol,
    })


if __name__ == "__main__":
    main()
