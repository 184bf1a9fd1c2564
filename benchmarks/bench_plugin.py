"""3ML plugin benchmark at the data-challenge scale: cached likelihood evaluations and a full fit.

A Gaussian extended source (sigma 10 deg at the Galactic centre, power-law
spectrum) on the DC2-scale inputs of ``_dc2.py`` with two background templates
(instrument-frame activation and Earth albedo), folded by
:class:`COSIImagingLike`. Measured in one run:

- ``spectral_eval_s``: ``get_log_like`` after a change of the spectral normalization
  (cached per-Ei-bin folds are re-weighted);
- ``spatial_eval_s``: after a change of the source width (this source is re-folded);
- ``point_refold_s``: after a change of a point source's position, the dataset knowing the
  attitudes of its ScAtt bins (the source is re-folded along its path, through the response
  with no model grid: its dwell in each response pixel of each bin, then one pass);
- ``baseline_eval_s``: the uncached way of the COSI team's plugin, re-folding every
  source at every call with a dense float32 ``tensordot`` over all bins (``_dense.py``);
- ``refold_eval_s``: re-folding every source at every call, but with this package's
  sparse-data folding (what caching alone gains);
- ``fit_s``: a full ``JointLikelihood`` fit (position, width and normalization free,
  two background norms);
- ``small_call_ms``: a spectral-only ``get_log_like`` on a small dataset (about 1,000
  non-empty bins: an NSIDE 4 response with three energy bins, a 2 s orientation, one
  point source given in (l, b) with a Band spectrum);
- ``small_fit_s``, ``small_fit_calls``: the spectral fit of that dataset (K, alpha, beta,
  xp free).

The last printed line is one JSON object with ``spectral_eval_s``, ``spatial_eval_s``, ``point_refold_s``,
``baseline_eval_s``, ``spectral_speedup`` (baseline_eval_s / spectral_eval_s),
``spatial_speedup``, ``fit_s``, ``small_call_ms``, ``small_fit_s`` and ``small_fit_calls``.
``--small-only`` measures the small dataset alone.
"""
import cProfile
import io
import logging
import pstats
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cosi_imaging_plugin.datasets import COSIDataset  # noqa: E402
from cosi_imaging_plugin.engine import ColumnResponse, ResponseEngine  # noqa: E402
from cosi_imaging_plugin.exposure import attitude_bins  # noqa: E402
from cosi_imaging_plugin.simulate.backgrounds import background_template  # noqa: E402
from cosi_imaging_plugin.sky.rasterize import Rasterizer  # noqa: E402
from cosi_imaging_plugin.sky.spectra import integrate_spectrum  # noqa: E402
from cosi_imaging_plugin.threeml import COSIImagingLike  # noqa: E402

import _dc2  # noqa: E402
from _common import report, timed  # noqa: E402
from _dense import dense_engine  # noqa: E402

logger = logging.getLogger("benchmark")
TRUTH = {"lon0": 266.405, "lat0": -28.936, "sigma": 10.0, "K": 2e-4}


def source(**values):
    from astromodels import ExtendedSource, Gaussian_on_sphere, Powerlaw

    v = {**TRUTH, **values}
    spectrum = Powerlaw(K=v["K"], index=-2.0, piv=511.0)
    spectrum.index.fix = True
    return ExtendedSource("blob", spatial_shape=Gaussian_on_sphere(lon0=v["lon0"], lat0=v["lat0"],
                                                                   sigma=v["sigma"]), spectral_shape=spectrum)


class CountingPlugin(COSIImagingLike):
    """Counts the likelihood calls of a fit."""

    calls = 0

    def get_log_like(self):
        self.calls += 1
        return super().get_log_like()


class UncachedPlugin(COSIImagingLike):
    """Re-folds every source at every call (the baseline)."""

    def get_log_like(self):
        for folder in self.folders.values():
            folder.forget()
        return super().get_log_like()


def log_profile(function, repeats, lines=15):
    """Log the functions taking most of the time of `repeats` calls (cumulative, cProfile)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(repeats):
        function()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(lines)
    logger.info("profile of %d spatial evaluations:\n%s", repeats, text.getvalue())


def small_dataset():
    """(COSIDataset of about 1,000 non-empty bins, its point source): one Poisson draw, seed 1."""
    import sparse
    from astromodels import Band, PointSource
    from astropy import units as u
    from histpy import Axes, Histogram

    from cosi_imaging_plugin.exposure import coordsys_conversion_matrix
    from cosi_imaging_plugin.instrument import InstrumentConfig, OrbitConfig, generate_response, simulate_orbit
    from cosi_imaging_plugin.sky.source_images import source_image

    edges = [200.0, 500.0, 1000.0, 2000.0]
    config = InstrumentConfig.default().updated({"binning": {
        "nside": 4, "phi_edges_deg": {"start": 0.0, "stop": 180.0, "bins": 18}, "ei_edges_kev": edges,
        "em_edges_kev": edges}})
    generated = generate_response(config, progress=False)
    response = ColumnResponse.from_dense(generated.contents, generated.axes, u.cm**2)
    orientation = simulate_orbit(OrbitConfig(duration_s=2.0, cadence_s=1.0))
    t = orientation.unix_seconds
    ccm = coordsys_conversion_matrix(orientation, 8, 4, binning="time", time_edges=[t[0], t[-1]])
    source = PointSource("src", l=30.0, b=10.0,
                         spectral_shape=Band(K=1.5, alpha=-1.0, beta=-2.3, xp=500.0, piv=100.0))
    image = source_image(source, Rasterizer(8), edges)
    expected = ResponseEngine.from_ccm(response, ccm, dtype=np.float64).expectation(image).contents
    counts = np.random.default_rng(1).poisson(expected).astype(np.float64)
    data = Histogram(Axes([ccm.axes[0], *generated.axes[2:]]), contents=sparse.COO.from_numpy(counts))
    return COSIDataset.from_histograms(data, {}, response, ccm, name="cosi"), source


def small_problem(repeats):
    """(small_call_ms, small_fit_s, small_fit_calls, nnz) of the small point-source dataset."""
    from astromodels import Model
    from threeML import DataList, JointLikelihood

    dataset, source = small_dataset()
    plugin = CountingPlugin("cosi", dataset)
    model = Model(source)
    plugin.set_model(model)
    band = source.spectrum.main.Band
    values = iter(np.linspace(1.2, 1.8, 100 * repeats))
    for _ in range(10):  # compile and warm up
        band.K.value = next(values)
        plugin.get_log_like()
    call_s, _ = timed(lambda: (setattr(band.K, "value", next(values)), plugin.get_log_like()), 50 * repeats)
    band.K.value, band.alpha.value, band.beta.value, band.xp.value = 1.0, -1.2, -2.5, 400.0
    plugin.calls = 0
    jl = JointLikelihood(model, DataList(plugin), verbose=False)
    start = time.perf_counter()
    jl.fit(quiet=True)
    return 1e3 * call_s, time.perf_counter() - start, plugin.calls, dataset.engine.data.nnz


def point_refold_seconds(engine, table, repeats):
    """Seconds of a likelihood call after a point source moved, folded along its path through the ScAtt bins."""
    from astromodels import Model, PointSource, Powerlaw

    attitudes = attitude_bins(table, use_averaged_pointing=True)  # as the CCM was built
    plugin = COSIImagingLike("cosi", COSIDataset(engine, name="cosi", attitudes=attitudes))
    point = PointSource("point", l=0.0, b=0.0, spectral_shape=Powerlaw(K=1e-3, index=-2.0, piv=511.0))
    plugin.set_model(Model(point))
    longitudes = iter(np.linspace(0.1, 5.0, 1000))
    seconds, _ = timed(lambda: (setattr(point.position.l, "value", next(longitudes)), plugin.get_log_like()),
                       repeats)
    return seconds


def dense_refold_seconds(engine, response_matrix, model, spectrum, values, repeats):
    """Seconds per call of the uncached plugin on the dense baseline engine (the COSI team's way)."""
    baseline = UncachedPlugin("cosi", COSIDataset(dense_engine(engine, response_matrix), name="cosi"))
    baseline.set_model(model)
    return timed(lambda: (setattr(spectrum.K, "value", next(values)), baseline.get_log_like()), repeats)[0]


def main():
    from astromodels import Model
    from threeML import DataList, JointLikelihood

    warnings.filterwarnings("ignore")
    parser = _dc2.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dense-repeats", type=int, default=2, help="calls of the dense re-fold baseline")
    parser.add_argument("--profile", action="store_true", help="log where the time of a spatial evaluation goes")
    parser.add_argument("--small-only", action="store_true", help="measure the small dataset alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    small_call_ms, small_fit_s, small_fit_calls, small_nnz = small_problem(args.repeats)
    small = {"small_call_ms": round(small_call_ms, 3), "small_fit_s": round(small_fit_s, 2),
             "small_fit_calls": small_fit_calls, "small_nnz": small_nnz}
    logger.info("small dataset (%d non-empty bins): %.3f ms a spectral call, fit in %.2f s (%d calls)", small_nnz,
                small_call_ms, small_fit_s, small_fit_calls)
    if args.small_only:
        report(small)
        return
    truth = source()
    flux = float(np.sum(integrate_spectrum(truth.spectrum.main.shape, [509.0, 513.0])))
    image = Rasterizer(args.nside)(truth.spatial_shape)[:, None] * flux
    dc2 = _dc2.build(args, image=image)
    response = dc2.compressed_response(args.rtol)
    # a second template, not degenerate with the instrument-frame one: Earth albedo
    albedo = background_template("albedo", response, dc2.ccm, dc2.table, rate=0.02)
    data, activation = dc2.histograms()
    engine = ResponseEngine(response, dc2.mapping, data=data, dtype=np.float32,
                            backgrounds={"activation": activation, "albedo": albedo})
    dataset = COSIDataset(engine, name="cosi")

    model = Model(source())
    plugin = COSIImagingLike("cosi", dataset)
    plugin.set_model(model)
    shape, spectrum = model.blob.spatial_shape, model.blob.spectrum.main.shape
    values = iter(np.linspace(1.5e-4, 2.5e-4, 1000))
    spectral_eval_s, _ = timed(lambda: (setattr(spectrum.K, "value", next(values)), plugin.get_log_like()),
                               args.repeats)
    widths = iter(np.linspace(8.0, 12.0, 1000))
    spatial_eval_s, _ = timed(lambda: (setattr(shape.sigma, "value", next(widths)), plugin.get_log_like()),
                              args.repeats)
    if args.profile:
        log_profile(lambda: (setattr(shape.sigma, "value", next(widths)), plugin.get_log_like()), args.repeats)
    point_refold_s = point_refold_seconds(engine, dc2.table, args.repeats)
    refold = UncachedPlugin("cosi", dataset)
    refold.set_model(model)
    refold_eval_s, _ = timed(lambda: (setattr(spectrum.K, "value", next(values)), refold.get_log_like()),
                             args.repeats)
    baseline_eval_s = dense_refold_seconds(engine, dc2.response_matrix, model, spectrum, values, args.dense_repeats)
    logger.info("evaluations: spectral %.4f s, spatial %.3f s, point position %.3f s, sparse re-fold %.3f s, "
                "dense re-fold %.2f s", spectral_eval_s, spatial_eval_s, point_refold_s, refold_eval_s,
                baseline_eval_s)
    del dc2

    fit_model = Model(source(lon0=262.0, lat0=-26.0, sigma=7.0, K=1e-4))
    blob = fit_model.blob.spatial_shape
    for name in ("lon0", "lat0", "sigma"):
        blob.parameters[name].free = True
    blob.lon0.bounds, blob.lat0.bounds, blob.sigma.bounds = (240.0, 290.0), (-50.0, -5.0), (2.0, 30.0)
    fit_model.blob.spectrum.main.Powerlaw.K.bounds = (1e-6, 1e-2)
    fit_plugin = CountingPlugin("cosi", dataset)
    jl = JointLikelihood(fit_model, DataList(fit_plugin), verbose=False)
    start = time.perf_counter()
    results = jl.fit(quiet=True)[0]
    fit_s = time.perf_counter() - start
    calls, folds = fit_plugin.calls, fit_plugin.folders["blob"].n_folds
    logger.info("fit in %.1f s, %d likelihood calls, %d spatial folds:\n%s", fit_s, calls, folds,
                results[["value", "error"]].to_string())
    report({
        "spectral_eval_s": round(spectral_eval_s, 5),
        "spatial_eval_s": round(spatial_eval_s, 4),
        "point_refold_s": round(point_refold_s, 4),
        "baseline_eval_s": round(baseline_eval_s, 3),
        "refold_eval_s": round(refold_eval_s, 4),
        "spectral_speedup": round(baseline_eval_s / spectral_eval_s, 1),
        "spatial_speedup": round(baseline_eval_s / spatial_eval_s, 2),
        "fit_s": round(fit_s, 1),
        "fit_calls": calls,
        "fit_folds": folds,
        "fit_sigma": round(float(results.loc["blob.Gaussian_on_sphere.sigma", "value"]), 3),
        "fit_sigma_error": round(float(results.loc["blob.Gaussian_on_sphere.sigma", "error"]), 3),
        "nnz": engine.data.nnz,
        "scatt_bins": engine.n_rows,
        **small,
    })


if __name__ == "__main__":
    main()
