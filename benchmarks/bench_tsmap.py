"""A full-sky TS map at the data-challenge scale, against folding and fitting one position at a time.

The DC2-scale inputs of ``_dc2.py`` (NSIDE 16 line response and model grid, 60 Phi
bins, ~1000 ScAtt bins, ~1.5 million counts from a bulge + disk sky and an
instrument-frame background). The null model is the background template alone; the
test source is a point source with a 511 keV line spectrum, on the NSIDE 16 grid. Timed
in one run:

- ``tsmap_s``: :class:`~cosi_imaging_plugin.detection.TSMapEstimator` over all ``npix``
  positions (every position's norm by Newton's method, all positions per pass);
- ``baseline_per_pixel_s``: the way the COSI team's map works, one position at a time
  with the same engine: fold the test source's image (``sky_expectation_at_bins``), then
  Newton's method on that position's expected counts to the same tolerance; timed on
  ``--sample`` positions spread over the sky;
- ``speedup``: ``baseline_per_pixel_s * npix / tsmap_s``;
- ``max_ts_difference``: the largest difference of TS between the two on the sample;
- ``peak_mb``: the process's peak resident memory during the map, and ``dataset_mb`` before it.

The last printed line is one JSON object.
"""
import logging
import sys
import time
from pathlib import Path

import healpy as hp
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from astromodels import Gaussian  # noqa: E402

from cosi_imaging_plugin.datasets import COSIDataset  # noqa: E402
from cosi_imaging_plugin.detection import TSMapEstimator, kernel_images  # noqa: E402
from cosi_imaging_plugin.engine import ResponseEngine  # noqa: E402
from cosi_imaging_plugin.sky.spectra import integrate_spectrum  # noqa: E402

import _dc2  # noqa: E402
from _common import PeakRSS, report  # noqa: E402

logger = logging.getLogger("benchmark")


def one_position(engine, null, counts, image_column, fluxes, rtol, max_niter=30):
    """(TS, norm) at one position, the baseline way: fold its image, then Newton on its expected counts."""
    image = image_column.toarray() * fluxes[None, :]
    template = engine.sky_expectation_at_bins(image, dtype=np.float64)
    total = float(np.sum(engine.exposure_map * image))
    support = template > 0
    s, b, n = template[support], null[support], counts[support]
    norm = 0.0
    floor = -np.min(b / s)
    for _ in range(max_niter):
        mu = b + norm * s
        score = np.sum(n * s / mu) - total
        information = np.sum(n * s * s / mu**2)
        trial = norm + score / information
        trial = trial if trial > floor else 0.5 * (norm + floor)
        if abs(trial - norm) <= rtol / np.sqrt(information):
            norm = trial
            break
        norm = trial
    ts = 2.0 * (np.sum(n * np.log1p(norm * s / b)) - norm * total)
    return (ts if norm > 0 else 0.0), norm


def main():
    parser = _dc2.parser(__doc__)
    parser.add_argument("--sample", type=int, default=24, help="positions timed the baseline way")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    dc2 = _dc2.build(args)
    response = dc2.compressed_response(args.rtol)
    data, background = dc2.histograms()
    engine = ResponseEngine(response, dc2.mapping, data=data, backgrounds={"background": background},
                            dtype=np.float32)
    dataset = COSIDataset(engine, name="dc2")
    del dc2
    spectrum = Gaussian(F=1.0, mu=511.0, sigma=1.0)
    estimator = TSMapEstimator(spectrum, kernel="point", nside=args.nside)
    estimator.run(dataset, pixels=[0], progress=False)  # compiles the kernel
    dataset_mb = psutil.Process().memory_info().rss / 1e6
    with PeakRSS() as rss:
        start = time.perf_counter()
        result = estimator.run(dataset, progress=False)
        tsmap_s = time.perf_counter() - start
    npix = hp.nside2npix(args.nside)
    logger.info("TS map: %d positions in %.1f s, peak TS %.1f", npix, tsmap_s, result.peak("ts")[1])

    ei_edges = np.asarray(engine.model_axes[1].edges.to_value("keV"))
    fluxes = integrate_spectrum(spectrum, ei_edges)
    null = engine.background_at_bins()
    sample = np.linspace(0, npix - 1, args.sample).round().astype(int)
    directions = np.array(hp.pix2vec(args.nside, sample)).T
    images = kernel_images("point", None, directions, args.nside, nest=False).tocsc()
    counts = engine.data.counts.astype(np.float64)
    one_position(engine, null, counts, images[:, 0], fluxes, estimator.rtol)  # compile and warm up
    start = time.perf_counter()
    baseline = [one_position(engine, null, counts, images[:, i], fluxes, estimator.rtol) for i in range(sample.size)]
    baseline_per_pixel_s = (time.perf_counter() - start) / sample.size
    ts_fast = result.values("ts")[sample]
    difference = float(np.max(np.abs(ts_fast - np.array([ts for ts, _ in baseline]))))
    report({"npix": npix, "tsmap_s": round(tsmap_s, 2), "baseline_per_pixel_s": round(baseline_per_pixel_s, 4),
            "speedup": round(baseline_per_pixel_s * npix / tsmap_s, 1), "max_ts_difference": difference,
            "niter_max": int(np.nanmax(result.values("niter"))), "nnz": engine.data.nnz,
            "dataset_mb": round(dataset_mb), "peak_mb": round(rss.peak_mb)})


if __name__ == "__main__":
    main()
