"""LIRA against RL at the demo scale: the posterior mean's error and the chains' convergence.

The demo's ``mini_511keV`` dataset (NSIDE 8, one 509-513 keV bin, a week of rocking orbit, albedo
and instrumental backgrounds) with three 511 keV point sources added to its bulge and disk. At
the same exposure: RL as the tutorial runs it (``--rl-iterations`` accelerated iterations, 10 deg
smoothing, backgrounds fitted) and its best iterate against the truth (an optimistic RL, the
iteration chosen with the truth in hand); LIRA with its default chain settings (4 chains of 1000 +
2000 sweeps unless asked otherwise) started around the RL image. Quality: the L2 error over pixels
relative to the truth's norm. Convergence: the worst split-R-hat of every traced parameter, the
share of pixels with R-hat <= 1.01, and the median R-hat and ESS of the brightest tenth of the
pixels (where a large delta's speckle mixes slowest). Cost of the sibling swaps: sweeps from one
state timed with and without them, in turn, in this process (``sweep_over_no_swaps``). The last
printed line is one JSON object.
"""
import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cosi_imaging_plugin.datasets import COSIDataset  # noqa: E402
from cosi_imaging_plugin.deconvolution import RichardsonLucy  # noqa: E402
from cosi_imaging_plugin.simulate import builtin_config, simulate_dataset  # noqa: E402
from cosi_imaging_plugin.sky import build_sources, sky_image  # noqa: E402
from cosi_imaging_plugin.sky.rasterize import Rasterizer  # noqa: E402
from cosi_imaging_plugin.uncertainty import LIRA  # noqa: E402

from _common import PeakRSS, report  # noqa: E402

logger = logging.getLogger("benchmark")

#: (l, b, flux in ph cm-2 s-1) of the added point sources: a tenth to a fiftieth of the bulge's flux.
POINT_SOURCES = ((-60.0, 10.0, 2e-4), (120.0, -30.0, 1e-4), (30.0, 45.0, 5e-5))


def relative_l2(image, truth):
    """``||image - truth|| / ||truth||`` over pixels and Ei bins."""
    return float(np.linalg.norm(image - truth) / np.linalg.norm(truth))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--rl-iterations", type=int, default=20)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--burn-in", type=int, default=None, help="burn-in sweeps per chain (default: LIRA's)")
    parser.add_argument("--samples", type=int, default=None, help="kept draws per chain (default: LIRA's)")
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hmc-steps", type=int, default=None,
                        help="leapfrog steps of the image move per sweep (default: LIRA's); 0 leaves it out")
    parser.add_argument("--delta", type=float, default=None, help="smoothing hyperprior (default: LIRA's)")
    parser.add_argument("--scale-regions", type=int, default=None,
                        help="brightness regions of the RL image whose totals the scale move draws (default: LIRA's)")
    parser.add_argument("--no-smoothing-move", action="store_true", help="leave the smoothing move out")
    parser.add_argument("--sibling-swaps", type=int, default=None, help="sibling swaps per sweep (default: LIRA's)")
    parser.add_argument("--timed-sweeps", type=int, default=20,
                        help="sweeps timed with and without the sibling swaps, in turn, before the run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = builtin_config("mini_511keV").to_dict()
    config["orbit"]["duration_s"] = args.days * 86400.0
    config["galactic"] = False
    for k, (lon, lat, flux) in enumerate(POINT_SOURCES):
        config["sky"].append({"name": f"point_{k}", "type": "point", "l": lon, "b": lat,
                              "spectrum": {"function": "Gaussian", "F": flux, "mu": 511.0, "sigma": 1.0}})
    with tempfile.TemporaryDirectory(prefix="bench_lira_quality_") as workdir:
        manifest = simulate_dataset(config, Path(workdir) / "sky", progress=False)
        dataset = COSIDataset.from_manifest(manifest, progress=False)
    axis = dataset.model_axes[0]
    truth, _ = sky_image(build_sources(manifest.config["sky"]), Rasterizer(axis.nside, axis.scheme),
                         dataset.model_axes[1].edges.to_value("keV"))
    truth = np.asarray(truth, dtype=np.float64).reshape(axis.nbins, -1)

    rl = RichardsonLucy(dataset, iterations=args.rl_iterations, acceleration=True, alpha_max=10.0,
                        response_weighting=True, smoothing_fwhm=10.0, fit_backgrounds=True,
                        background_ranges={"*": (0.01, 10.0)})
    start = time.perf_counter()
    rl_results = rl.run(progress=False)
    rl_iter_s = (time.perf_counter() - start) / len(rl_results)
    rl_image = rl_results[-1]["model"]
    rl_errors = [relative_l2(np.asarray(r["model"].contents), truth) for r in rl_results]

    options = {k: v for k, v in (("hmc_steps", args.hmc_steps), ("delta", args.delta),
                                 ("scale_regions", args.scale_regions), ("burn_in", args.burn_in),
                                 ("n_samples", args.samples), ("sibling_swaps", args.sibling_swaps))
               if v is not None}
    options["smoothing_move"] = not args.no_smoothing_move
    lira = LIRA(dataset, n_chains=args.chains, initial_image=rl_image, seed=args.seed, n_jobs=args.n_jobs,
                progress=False, **options)
    swap_cost = sweep_over_no_swaps(lira, args.timed_sweeps)
    with PeakRSS() as memory:
        start = time.perf_counter()
        result = lira.run()
        elapsed = time.perf_counter() - start
    diagnostics = result.diagnostics(warn=False)
    mean = np.asarray(result.mean().contents)
    # the speckle of a large delta: the brightest tenth of the pixels (by RL's image)
    bright = np.argsort(np.asarray(rl_image.contents).reshape(truth.shape[0], -1).sum(axis=1))[::-1]
    bright = bright[:truth.shape[0] // 10]
    pixel_rhat = np.asarray(diagnostics["rhat"]["pixels"]).reshape(truth.shape[0], -1).max(axis=1)
    pixel_ess = np.asarray(diagnostics["ess"]["pixels"]).reshape(truth.shape[0], -1).min(axis=1)
    l2_lira, l2_rl = relative_l2(mean, truth), rl_errors[-1]
    logger.info("L2 error: LIRA mean %.3f, RL %.3f (best iterate %.3f)", l2_lira, l2_rl, min(rl_errors))
    report({
        "l2_lira_mean": round(l2_lira, 4),
        "l2_rl": round(l2_rl, 4),
        "l2_rl_best_iterate": round(min(rl_errors), 4),
        "rl_best_iteration": int(np.argmin(rl_errors)) + 1,
        "lira_over_rl": round(l2_lira / l2_rl, 3),
        "rhat_max_traced": {k: round(float(np.max(v)), 4) for k, v in diagnostics["rhat"].items() if k != "pixels"},
        "pixels_converged": round(diagnostics["pixels_converged"], 4),
        # median bulk ESS per minute of sampling (all chains' wall time, burn-in included)
        "ess_per_min_pixels": round(float(np.median(diagnostics["ess"]["pixels"])) / (elapsed / 60.0), 1),
        "ess_per_min_traced": {k: round(float(np.min(v)) / (elapsed / 60.0), 1)
                               for k, v in diagnostics["ess"].items() if k != "pixels"},
        "hmc_steps": lira.hmc_steps, "delta": lira.delta, "scale_regions": lira.sampler.n_regions,
        "smoothing_move": lira.smoothing_move,
        "rhat_pixels_median": round(float(np.median(diagnostics["rhat"]["pixels"])), 4),
        "rhat_bright_pixels_median": round(float(np.median(pixel_rhat[bright])), 4),
        "ess_bright_pixels_median": round(float(np.median(pixel_ess[bright])), 1),
        "sibling_swaps": 0 if lira.sampler.swap is None else lira.sibling_swaps,
        "sweep_over_no_swaps": swap_cost,
        "sweep_s": round(elapsed / (lira.n_sweeps * args.chains), 4),
        "rl_iter_s": round(rl_iter_s, 4),
        "sampling_min": round(elapsed / 60.0, 2),
        "chains": args.chains, "burn_in": lira.burn_in, "samples": lira.n_samples, "n_jobs": args.n_jobs,
        "counts": float(dataset.engine.data.total_counts), "nnz": dataset.engine.data.nnz,
        "peak_mb": round(memory.peak_mb, 0),
    })


def sweep_over_no_swaps(lira, n_sweeps):
    """Mean time of a sweep with the sibling swaps over one without, from the same state (a start around the
    initial image after five sweeps), timed in turn; None where the run has no swaps."""
    sampler = lira.sampler
    if sampler.swap is None or n_sweeps < 1:
        return None
    rng = np.random.default_rng(0)
    state = sampler.dispersed_start(rng, lira.initial_image, lira.initial_smoothing, lira.initial_norms)
    for _ in range(5):
        state, _ = sampler.sweep(state, rng)
    swap, seconds = sampler.swap, np.zeros(2)
    try:
        for _ in range(n_sweeps):
            for k, move in enumerate((swap, None)):
                sampler.swap = move
                start = time.perf_counter()
                sampler.sweep(state, rng)
                seconds[k] += time.perf_counter() - start
    finally:
        sampler.swap = swap
    return round(float(seconds[0] / seconds[1]), 3)


if __name__ == "__main__":
    main()
