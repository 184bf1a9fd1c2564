"""LIRA benchmark at the data-challenge scale: one Gibbs sweep against one RL iteration, ESS per minute, quality.

On the DC2-scale inputs of ``_dc2.py`` (bulge + disk 511 keV sky, ~1000 ScAtt bins, an
instrumental background), in one process: the seconds of one RL iteration (the 511 keV parameter
file of ``bench_rl.py``), then LIRA's chains (``--chains`` x (``--burn-in`` + ``--samples``) sweeps),
timed per sweep, with the median bulk ESS over the pixels per minute of sampling and the split-R-hat.
Quality: the L2 error over pixels of the posterior mean and of the RL image against the injected
sky (relative to the sky's norm). The last printed line is one JSON object with ``sweep_s``,
``rl_iter_s``, ``sweep_over_rl``, ``ess_per_min``, ``peak_mb`` and the diagnostics; ``sweep_gibbs_s`` is a
sweep of the Gibbs steps alone (no scale move, no smoothing move), timed from a dispersed start.
``--from-rl`` starts the chains around the RL image, which also gives the scale move its brightness
regions (``--scale-regions``; one forward product each). ``worker_pickle_mb`` is what a worker process
would receive as a pickled copy of the sampler, ``worker_payload_mb`` what it receives with the engine's
arrays in shared memory (``shared_mb``, placed once for all workers).
"""
import logging
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rl import seconds_per_iteration  # noqa: E402

from cosi_imaging_plugin.datasets import COSIDataset  # noqa: E402
from cosi_imaging_plugin.uncertainty import LIRA, sharing  # noqa: E402
from cosi_imaging_plugin.uncertainty.gibbs import GibbsSampler  # noqa: E402

import _dc2  # noqa: E402
from _common import PeakRSS, report  # noqa: E402

logger = logging.getLogger("benchmark")


def relative_l2(image, truth):
    """``||image - truth|| / ||truth||`` over pixels and Ei bins."""
    return float(np.linalg.norm(image - truth) / np.linalg.norm(truth))


def main():
    parser = _dc2.parser(__doc__)
    parser.add_argument("--rl-iterations", type=int, default=20, help="RL iterations (timed, and the RL image)")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--burn-in", type=int, default=100)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--n-jobs", type=int, default=1, help="worker processes of the chains")
    parser.add_argument("--from-rl", action="store_true", help="start the chains around the RL image")
    parser.add_argument("--scale-regions", type=int, default=None, help="brightness regions of the scale move "
                        "(with --from-rl; default: LIRA's)")
    parser.add_argument("--no-smoothing-move", action="store_true", help="leave the smoothing move out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    dc2 = _dc2.build(args)
    engine = dc2.engine(args.rtol)
    dataset = COSIDataset(engine, name="dc2")
    seconds_per_iteration(engine, args.nside, 1)  # compile the kernels
    rl_iter_s, rl_results = seconds_per_iteration(engine, args.nside, args.rl_iterations)
    rl_image = np.asarray(rl_results[-1]["model"].contents)
    options = {"smoothing_move": not args.no_smoothing_move}
    if args.scale_regions is not None:
        options["scale_regions"] = args.scale_regions
    lira = LIRA(dataset, n_chains=args.chains, n_samples=args.samples, burn_in=args.burn_in, n_jobs=args.n_jobs,
                initial_image=rl_results[-1]["model"] if args.from_rl else None, progress=False, **options)
    lira.sampler.sweep(lira.sampler.dispersed_start(np.random.default_rng(0)), np.random.default_rng(0))  # compile
    with PeakRSS() as memory:
        start = time.perf_counter()
        result = lira.run()
        elapsed = time.perf_counter() - start
    # with workers, the chains' sweeps overlap: the wall time of one sweep of one chain
    sweep_s = elapsed / (lira.n_sweeps * args.chains) * min(args.n_jobs, args.chains)
    s = lira.sampler
    gibbs = GibbsSampler(engine, s.tree.delta, s.tree.total_prior, fit_backgrounds=s.fit_backgrounds,
                         scale_move=False, smoothing_move=False)
    rng = np.random.default_rng(1)
    state = gibbs.dispersed_start(rng)
    start = time.perf_counter()
    for _ in range(3):
        state, _ = gibbs.sweep(state, rng)
    sweep_gibbs_s = (time.perf_counter() - start) / 3
    # what each worker process receives: the whole pickled sampler before, the shared-memory payload now
    whole_mb = len(pickle.dumps(lira.sampler, protocol=pickle.HIGHEST_PROTOCOL)) / 1e6
    with sharing.SharedPickle(lira.sampler) as shared:
        payload_mb, shared_mb = len(shared.payload) / 1e6, shared.shared_bytes / 1e6
    diagnostics = result.diagnostics(warn=False)
    ess_pixels = float(np.median(diagnostics["ess"]["pixels"]))
    truth = np.asarray(dc2.image, dtype=np.float64).reshape(rl_image.shape)
    mean = np.asarray(result.mean().contents)
    logger.info("sweep %.3f s, RL iteration %.3f s; L2 error: LIRA %.3f, RL %.3f", sweep_s, rl_iter_s,
                relative_l2(mean, truth), relative_l2(rl_image, truth))
    report({
        "sweep_s": round(sweep_s, 3),
        "rl_iter_s": round(rl_iter_s, 3),
        "sweep_over_rl": round(sweep_s / rl_iter_s, 2),
        "sweep_gibbs_s": round(sweep_gibbs_s, 3),
        "n_jobs": args.n_jobs,
        "scale_regions": s.n_regions, "smoothing_move": lira.smoothing_move,
        "ess_per_min": round(ess_pixels / (elapsed / 60.0), 1),
        "peak_mb": round(memory.peak_mb, 0),
        "chains": args.chains, "burn_in": args.burn_in, "samples": args.samples,
        "sampling_min": round(elapsed / 60.0, 2),
        "rhat_pixels_median": round(float(np.median(diagnostics["rhat"]["pixels"])), 3),
        "pixels_converged": round(diagnostics["pixels_converged"], 3),
        "rhat_max_traced": {k: round(float(np.max(v)), 3) for k, v in diagnostics["rhat"].items() if k != "pixels"},
        "l2_lira_mean": round(relative_l2(mean, truth), 4),
        "l2_rl": round(relative_l2(rl_image, truth), 4),
        "worker_pickle_mb": round(whole_mb, 1),
        "worker_payload_mb": round(payload_mb, 3),
        "shared_mb": round(shared_mb, 1),
        "scatt_bins": engine.n_rows,
        "nnz": engine.data.nnz,
    })


if __name__ == "__main__":
    main()
