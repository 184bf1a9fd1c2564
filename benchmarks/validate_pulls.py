"""Statistical validation of the 3ML plugin: pull distributions and goodness of fit.

Setup (built here with the package API, as ``tests/small_setup.py`` builds it):
the synthetic COSI-like response at NSIDE 4 with three Ei = Em bins
(200-500-1000-2000 keV) and 18 Phi bins of 10 deg, one day of rocking orbit
binned into spacecraft-attitude (ScAtt) bins at NSIDE 4, a CCM onto an NSIDE 8
Galactic model grid, and an instrument-frame background template (~3600 counts).
Every dataset is a Poisson draw of the expected counts of the injected sky
(rasterized and folded exactly as the plugin folds it) plus the background.

Cases
-----
(a) ``point``: a point source with a power law (``K`` at 500 keV, ``index``),
    free position (``ra``, ``dec``), plus the background normalization (5 free).
(b) ``gauss``: a ``Gaussian_on_sphere`` source (``lon0``, ``lat0``, ``sigma``)
    with a power law, plus the background normalization (6 free).
(c) ``gof``: goodness of fit of a correct model (point source at its injected
    position; ``K``, ``index`` and the background free) with threeML's
    ``GoodnessOfFit(jl).by_mc(n_iterations)`` on each of M simulations.

Every fit is a threeML ``JointLikelihood`` fit (minuit, started at the injected
values). The pull of a parameter is ``(fitted - injected) / sigma`` with sigma the
square root of the diagonal of the fit's covariance (minuit HESSE). Parameters
that threeML fits in a transformed space (``K``: log10) get their pull in that
space, where HESSE computed the error: ``(log10 K_fit - log10 K_true) / sigma_log10K``.

For each parameter the script prints the mean pull ``m +- s/sqrt(N)`` and the
width ``s +- s/sqrt(2(N-1))`` (s the sample standard deviation) and calls them
consistent with N(0, 1) when ``|m| < 3 err(m)`` and ``|s - 1| < 3 err(s)``.

For (c) threeML's p-value is ``r / n`` with ``r`` the number of the ``n``
simulated datasets whose best-fit -log L is at least the observed one; under the
null hypothesis ``r`` is uniform on 0..n. The KS test against Uniform(0, 1) is run
on the randomized p-values ``(r + U) / (n + 1)``, U ~ Uniform(0, 1), which are
exactly uniform under the null (the raw ``r / n`` are discrete). Its power is
estimated here by simulation for an observed statistic shifted by ``delta``
standard deviations of the simulated ones.

The last line printed on stdout is one JSON object with all figures; the same
object (with the per-simulation records) is written to ``--output``.
"""
import argparse
import functools
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import healpy as hp
import numpy as np

logger = logging.getLogger("validate_pulls")

EI_EDGES = [200.0, 500.0, 1000.0, 2000.0]
NSIDE_RESPONSE, NSIDE_MODEL = 4, 8
PIVOT_KEV = 500.0
PLUGIN = "cosi"
BKG = "instrumental"

# injected values
POINT_TRUTH = {"ra": 83.63, "dec": 22.01, "K": 2e-5, "index": -2.1, "bkg": 1.0}
GAUSS_TRUTH = {"lon0": 266.4, "lat0": -28.9, "sigma": 10.0, "K": 2e-4, "index": -2.0, "bkg": 1.0}


# ---- setup --------------------------------------------------------------------------------------
@functools.cache
def instrument():
    """(response, CCM, data axes, background template, engine without data) on the NSIDE_MODEL grid."""
    import astropy.units as u
    from histpy import Axes, Axis, Histogram

    from cosi_imaging_plugin.engine import ColumnResponse, ResponseEngine
    from cosi_imaging_plugin.instrument.config import InstrumentConfig
    from cosi_imaging_plugin.instrument.response_generator import generate_response

    config = InstrumentConfig.default().updated({"binning": {
        "nside": NSIDE_RESPONSE, "phi_edges_deg": {"start": 0.0, "stop": 180.0, "bins": 18},
        "ei_edges_kev": EI_EDGES, "em_edges_kev": EI_EDGES}})
    generated = generate_response(config, progress=False)
    response = ColumnResponse.from_dense(generated.contents, generated.axes, u.cm**2, dtype=np.float64)
    ccm = ccm_for(NSIDE_MODEL)
    data_axes = Axes([Axis(np.arange(ccm.axes[0].nbins + 1), label="ScAtt"), *generated.axes[2:]])
    # isotropic in the spacecraft frame, proportional to each ScAtt bin's livetime
    row_exposure = ccm.contents.sum(axis=(1, 2)).todense() / ccm.axes[1].nbins
    template = row_exposure[:, None, None, None] * generated.contents.sum(axis=(0, 1))[None] * 1e-5
    template = Histogram(data_axes, contents=template)
    bare = ResponseEngine.from_ccm(response, ccm, dtype=np.float64)
    return response, ccm, data_axes, template, bare


@functools.cache
def ccm_for(nside_model):
    """CCM of the simulated one-day orbit onto a Galactic model grid of `nside_model`."""
    from cosi_imaging_plugin.exposure import ExposureTable, coordsys_conversion_matrix
    from cosi_imaging_plugin.instrument.orbit import OrbitConfig, simulate_orbit
    orientation = simulate_orbit(OrbitConfig(duration_s=86400.0, cadence_s=120.0))
    table = ExposureTable.from_orientation(orientation, nside=NSIDE_RESPONSE)
    return coordsys_conversion_matrix(table, nside_model, NSIDE_RESPONSE, use_averaged_pointing=True)


@functools.cache
def truth_engine(nside):
    """Engine without data that folds the injected sky on a grid of `nside` (default: the fit's grid)."""
    if nside == NSIDE_MODEL:
        return instrument()[4]
    from cosi_imaging_plugin.engine import ResponseEngine
    return ResponseEngine.from_ccm(instrument()[0], ccm_for(nside), dtype=np.float64)


@functools.cache
def rasterizer(nside=NSIDE_MODEL):
    from cosi_imaging_plugin.sky.rasterize import Rasterizer
    return Rasterizer(nside)


def point_source(truth, name="src"):
    from astromodels import PointSource, Powerlaw
    return PointSource(name, ra=truth["ra"], dec=truth["dec"],
                       spectral_shape=Powerlaw(K=truth["K"], index=truth["index"], piv=PIVOT_KEV))


def gauss_source(truth, name="blob"):
    from astromodels import ExtendedSource, Gaussian_on_sphere, Powerlaw
    return ExtendedSource(name, spatial_shape=Gaussian_on_sphere(lon0=truth["lon0"], lat0=truth["lat0"],
                                                                 sigma=truth["sigma"]),
                          spectral_shape=Powerlaw(K=truth["K"], index=truth["index"], piv=PIVOT_KEV))


def truth_image(source, nside=NSIDE_MODEL, raster="plugin"):
    """Sky image [pix, Ei] of an astromodels source on a grid of `nside`, made by the plugin's own
    code (same rasterization, e.g. the split level of extended sources, and same spectral
    integration as in the fit). ``raster="adaptive"`` rasterizes extended sources with the adaptive
    split instead (pixel means accurate to ~1e-3 of the flux): a test of the plugin's raster accuracy."""
    from cosi_imaging_plugin.sky.source_images import is_point_source, source_image, source_spectrum
    from cosi_imaging_plugin.sky.spectra import integrate_spectrum
    if raster == "adaptive" and not is_point_source(source):
        fluxes = integrate_spectrum(source_spectrum(source), np.asarray(EI_EDGES), allow_negative=False)
        return rasterizer(nside)(source.spatial_shape)[:, None] * fluxes[None, :]
    return source_image(source, rasterizer(nside), np.asarray(EI_EDGES))


def expected_counts(source, bkg_norm, nside=NSIDE_MODEL, raster="plugin"):
    """Dense expected counts [ScAtt, Em, Phi, PsiChi] of a source folded on a grid of `nside`,
    plus the scaled background."""
    template = instrument()[3]
    image = truth_image(source, nside, raster)
    return truth_engine(nside).expectation(image).contents + bkg_norm * np.asarray(template.contents)


def draw_dataset(expected, rng):
    """Dataset on one Poisson draw of `expected`, with the background template."""
    import sparse
    from histpy import Histogram

    from cosi_imaging_plugin.datasets import COSIDataset
    _, _, data_axes, template, bare = instrument()
    counts = Histogram(data_axes, contents=sparse.COO.from_numpy(rng.poisson(expected).astype(np.float64)))
    return COSIDataset(bare.with_data(counts, {BKG: template}), name=PLUGIN, counts=counts,
                       backgrounds={BKG: template})


def point_kink_distance(ra, dec):
    """Angular distance (deg) from (ra, dec) to the nearest line where the bilinear weights of the
    NSIDE_MODEL grid are not differentiable (ring-centre latitudes and pixel-centre longitudes of the
    two bracketing rings), and which kind of line it is."""
    grid = rasterizer()
    vec = grid.rotation(grid.function_frame).T @ hp.ang2vec(ra, dec, lonlat=True)
    theta, phi = hp.vec2ang(vec)
    theta, phi = float(theta[0]), float(phi[0])
    pixels, _ = grid.point_weights(ra, dec)
    p_theta, p_phi = hp.pix2ang(grid.nside, np.asarray(pixels).ravel(), nest=grid.scheme == "nested")
    d_theta = np.degrees(np.min(np.abs(p_theta - theta)))
    d_phi = np.abs((p_phi - phi + np.pi) % (2 * np.pi) - np.pi)
    d_phi = np.degrees(np.min(d_phi) * np.sin(theta))
    return (float(d_theta), "latitude") if d_theta <= d_phi else (float(d_phi), "longitude")


# ---- fitting ------------------------------------------------------------------------------------
def point_model(truth):
    from astromodels import Model
    model = Model(point_source(truth))
    src = model.src
    src.position.ra.free = True
    src.position.dec.free = True
    src.position.ra.bounds = (truth["ra"] - 10.0, truth["ra"] + 10.0)
    src.position.dec.bounds = (truth["dec"] - 10.0, truth["dec"] + 10.0)
    src.spectrum.main.Powerlaw.K.bounds = (truth["K"] / 100.0, truth["K"] * 100.0)
    src.spectrum.main.Powerlaw.index.bounds = (-4.0, 0.0)
    names = {"src.position.ra": "ra", "src.position.dec": "dec", "src.spectrum.main.Powerlaw.K": "K",
             "src.spectrum.main.Powerlaw.index": "index", f"{PLUGIN}_{BKG}_norm": "bkg"}
    return model, names


def gof_model(truth):
    """Point source at its injected position: spectral parameters and background free."""
    model, names = point_model(truth)
    model.src.position.ra.free = False
    model.src.position.dec.free = False
    return model, {k: v for k, v in names.items() if v not in ("ra", "dec")}


def gauss_model(truth):
    from astromodels import Model
    model = Model(gauss_source(truth))
    shape = model.blob.spatial_shape
    for name in ("lon0", "lat0", "sigma"):
        shape.parameters[name].free = True
    shape.lon0.bounds = (truth["lon0"] - 20.0, truth["lon0"] + 20.0)
    shape.lat0.bounds = (truth["lat0"] - 20.0, truth["lat0"] + 20.0)
    shape.sigma.bounds = (1.0, 40.0)
    model.blob.spectrum.main.Powerlaw.K.bounds = (truth["K"] / 100.0, truth["K"] * 100.0)
    model.blob.spectrum.main.Powerlaw.index.bounds = (-4.0, 0.0)
    names = {"blob.Gaussian_on_sphere.lon0": "lon0", "blob.Gaussian_on_sphere.lat0": "lat0",
             "blob.Gaussian_on_sphere.sigma": "sigma", "blob.spectrum.main.Powerlaw.K": "K",
             "blob.spectrum.main.Powerlaw.index": "index", f"{PLUGIN}_{BKG}_norm": "bkg"}
    return model, names


def fit(model, dataset):
    """threeML fit of `model` to the dataset; returns (JointLikelihood, plugin, seconds)."""
    from threeML import DataList, JointLikelihood

    from cosi_imaging_plugin.threeml import COSIImagingLike
    plugin = COSIImagingLike(PLUGIN, dataset)
    jl = JointLikelihood(model, DataList(plugin), verbose=False)
    t0 = time.perf_counter()
    jl.fit(quiet=True, n_samples=200)
    return jl, plugin, time.perf_counter() - t0


def pulls_of(jl, names, truth):
    """{short name: (fitted, sigma, pull)} with sigma from the covariance (transformed space where used)."""
    cov = np.asarray(jl.results.covariance_matrix)
    out = {}
    for i, (path, par) in enumerate(jl.results.optimized_model.free_parameters.items()):
        short = names[path]
        value, sigma = float(par.value), float(np.sqrt(cov[i, i]))
        true = truth[short]
        if par.has_transformation():
            delta = float(par.transformation.forward(value) - par.transformation.forward(true))
        else:
            delta = value - true
        out[short] = (value, sigma, delta / sigma)
    return out


def minuit_status(jl):
    minuit = getattr(getattr(jl, "_minimizer", None), "minuit", None)
    if minuit is None:
        return {}
    return {"valid": bool(minuit.valid), "accurate": bool(minuit.accurate), "nfcn": int(minuit.nfcn)}


def summarize(pulls):
    """Mean and width of a pull sample with their statistical errors, and the N(0,1) verdict."""
    x = np.asarray(pulls, dtype=float)
    n = x.size
    mean, width = float(np.mean(x)), float(np.std(x, ddof=1))
    mean_err, width_err = width / np.sqrt(n), width / np.sqrt(2 * (n - 1))
    return {"n": n, "mean": mean, "mean_err": mean_err, "width": width, "width_err": width_err,
            "mean_ok": bool(abs(mean) < 3 * mean_err), "width_ok": bool(abs(width - 1) < 3 * width_err),
            "max_abs": float(np.max(np.abs(x)))}


def run_pull_case(label, model_fn, truth, n_sims, rng, extra=None, truth_nside=NSIDE_MODEL, truth_raster="plugin"):
    # the injected source is the fit model's own source at the injected values: same bounds, hence the same
    # raster level of an extended source (the plugin fixes it from the size parameters' lower bounds)
    source = next(iter(model_fn(truth)[0].sources.values()))
    expected = expected_counts(source, truth["bkg"], truth_nside, truth_raster)
    logger.info("case %s: %.0f expected counts (%.0f background), injected sky folded on an NSIDE %d grid "
                "(%s rasterization), fitted on NSIDE %d", label, expected.sum(),
                truth["bkg"] * np.asarray(instrument()[3].contents).sum(), truth_nside, truth_raster, NSIDE_MODEL)
    records, failures = [], []
    t_case = time.perf_counter()
    for k in range(n_sims):
        dataset = draw_dataset(expected, rng)
        model, names = model_fn(truth)
        try:
            jl, plugin, seconds = fit(model, dataset)
            result = pulls_of(jl, names, truth)
        except Exception as exc:  # a failed fit is reported, never dropped silently
            logger.warning("case %s sim %d: fit failed: %s", label, k, exc)
            failures.append({"sim": k, "error": repr(exc)})
            continue
        record = {"sim": k, "seconds": seconds, "counts": float(dataset.total_counts),
                  "minus_log_like": float(jl.results.get_statistic_frame()["-log(likelihood)"]["total"]),
                  "status": minuit_status(jl),
                  "value": {p: v[0] for p, v in result.items()}, "sigma": {p: v[1] for p, v in result.items()},
                  "pull": {p: v[2] for p, v in result.items()}}
        if extra is not None:
            record.update(extra(record))
        records.append(record)
        logger.info("case %s sim %d/%d (%.1f s, nfcn %s): %s", label, k + 1, n_sims, seconds,
                    record["status"].get("nfcn"), " ".join(f"{p}={v:+.2f}" for p, v in record["pull"].items()))
    params = list(records[0]["pull"]) if records else []
    summary = {p: summarize([r["pull"][p] for r in records]) for p in params}
    sigmas = {p: float(np.median([r["sigma"][p] for r in records])) for p in params}
    return {"truth": truth, "truth_nside": truth_nside, "truth_raster": truth_raster, "n_sims": n_sims,
            "n_failed": len(failures),
            "failures": failures,
            "seconds": time.perf_counter() - t_case, "median_sigma": sigmas, "summary": summary,
            "records": records}


def run_gof(truth, n_sims, n_iterations, rng):
    from scipy import stats
    from threeML import GoodnessOfFit
    model, model_names = gof_model(truth)
    expected = expected_counts(model.src, truth["bkg"])
    records = []
    t_case = time.perf_counter()
    for k in range(n_sims):
        dataset = draw_dataset(expected, rng)
        model, names = gof_model(truth)
        sim_counts = []

        def record_counts(this_model, this_data, quiet=True, sim_counts=sim_counts):
            sim_counts.append(sum(float(p.dataset.total_counts) for p in this_data.values()))

        try:
            jl, plugin, seconds = fit(model, dataset)
            pulls = pulls_of(jl, names, truth)
            # reproducible simulated datasets: threeML calls get_simulated_dataset(name) without a seed
            seeds = np.random.default_rng(rng.integers(2**63))
            original = plugin.get_simulated_dataset
            plugin.get_simulated_dataset = lambda name=None, seed=None, original=original, seeds=seeds: original(
                name, seed=int(seeds.integers(2**63)) if seed is None else seed)
            t0 = time.perf_counter()
            gof, _, like_frame = GoodnessOfFit(jl).by_mc(n_iterations=n_iterations, postprocessor=record_counts)
            gof_seconds = time.perf_counter() - t0
        except Exception as exc:
            logger.warning("gof sim %d failed: %s", k, exc)
            records.append({"sim": k, "error": repr(exc)})
            continue
        observed = float(jl.results.get_statistic_frame()["-log(likelihood)"]["total"])
        simulated = np.asarray(like_frame["-log(likelihood)"][:, "total"].values, dtype=float)
        rank = int(np.sum(simulated >= observed))
        n_obs, n_sim = float(dataset.total_counts), np.asarray(sim_counts, dtype=float)
        # diagnostic: the statistic's dependence on the total counts, regressed out over the simulations
        slope, intercept = np.polyfit(n_sim, simulated, 1)
        residual_sim = simulated - (intercept + slope * n_sim)
        residual_obs = observed - (intercept + slope * n_obs)
        rank_adjusted = int(np.sum(residual_sim >= residual_obs))
        records.append({"sim": k, "p_value": float(gof["total"]), "rank": rank, "observed": observed,
                        "total_counts": n_obs, "simulated_mean": float(simulated.mean()),
                        "simulated_std": float(simulated.std(ddof=1)),
                        "z": float((observed - simulated.mean()) / simulated.std(ddof=1)),
                        "slope_per_count": float(slope),
                        "simulated_std_at_fixed_counts": float(residual_sim.std(ddof=2)),
                        "rank_adjusted": rank_adjusted, "p_adjusted": rank_adjusted / n_iterations,
                        "pull": {p: v[2] for p, v in pulls.items()}, "seconds": seconds + gof_seconds})
        logger.info("gof sim %d/%d: p = %.3f (rank %d of %d), observed %.1f vs simulated %.1f +- %.1f; "
                    "%.2f per count, +- %.1f at fixed counts, count-adjusted p = %.2f (%.0f s)",
                    k + 1, n_sims, gof["total"], rank, n_iterations, observed, simulated.mean(),
                    simulated.std(ddof=1), slope, residual_sim.std(ddof=2), rank_adjusted / n_iterations,
                    seconds + gof_seconds)
    good = [r for r in records if "rank" in r]
    out = {"truth": truth, "free": sorted(model_names.values()), "n_sims": n_sims, "n_iterations": n_iterations,
           "n_failed": n_sims - len(good), "seconds": time.perf_counter() - t_case, "records": records}
    if len(good) < 2:
        return out
    ks = randomized_ks([r["rank"] for r in good], n_iterations, rng)
    ks_adjusted = randomized_ks([r["rank_adjusted"] for r in good], n_iterations, rng)
    z = np.array([r["z"] for r in good])
    t_obs = np.array([r["observed"] for r in good])
    n_obs = np.array([r["total_counts"] for r in good])
    out.update({
        "p_values": [r["p_value"] for r in good], "randomized_p": ks["randomized"],
        "ks_statistic": ks["statistic"], "ks_pvalue": ks["pvalue"],
        "ks_critical_5pct": float(stats.kstwo.ppf(0.95, len(good))),
        "z_mean": float(z.mean()), "z_std": float(z.std(ddof=1)),
        "z_std_err": float(z.std(ddof=1) / np.sqrt(2 * (len(good) - 1))),
        "power_5pct": ks_power(len(good), n_iterations, rng),
        "observed_vs_counts_correlation": float(np.corrcoef(t_obs, n_obs)[0, 1]),
        "median_slope_per_count": float(np.median([r["slope_per_count"] for r in good])),
        "median_simulated_std": float(np.median([r["simulated_std"] for r in good])),
        "median_simulated_std_at_fixed_counts": float(np.median([r["simulated_std_at_fixed_counts"] for r in good])),
        "p_adjusted": [r["p_adjusted"] for r in good],
        "ks_adjusted_statistic": ks_adjusted["statistic"], "ks_adjusted_pvalue": ks_adjusted["pvalue"],
        "pulls": {p: summarize([r["pull"][p] for r in good]) for p in good[0]["pull"]},
    })
    return out


def randomized_ks(ranks, n_iterations, rng):
    """KS test against Uniform(0, 1) of the randomized p-values (rank + U) / (n + 1)."""
    from scipy import stats
    ranks = np.asarray(ranks, dtype=float)
    randomized = (ranks + rng.random(ranks.size)) / (n_iterations + 1)
    ks = stats.kstest(randomized, "uniform")
    return {"randomized": randomized.tolist(), "statistic": float(ks.statistic), "pvalue": float(ks.pvalue)}


def ks_power(m, n_iterations, rng, deltas=(0.5, 1.0, 2.0), trials=4000):
    """Power of the KS test (5% level) on m randomized p-values when the observed statistic lies
    `delta` standard deviations above (worse fit) the n_iterations simulated ones (all Gaussian)."""
    from scipy import stats
    if m < 2:
        return {}
    critical = stats.kstwo.ppf(0.95, m)
    grid = np.arange(1, m + 1) / m
    power = {}
    for delta in deltas:
        observed = rng.normal(delta, 1.0, size=(trials, m, 1))
        simulated = rng.normal(0.0, 1.0, size=(trials, m, n_iterations))
        ranks = np.sum(simulated >= observed, axis=2)
        p = np.sort((ranks + rng.random(ranks.shape)) / (n_iterations + 1), axis=1)
        d = np.maximum(np.max(grid - p, axis=1), np.max(p - (grid - 1.0 / m), axis=1))
        power[str(delta)] = float(np.mean(d > critical))
    return power


# ---- report -------------------------------------------------------------------------------------
def print_table(label, result):
    print(f"\n[{label}] {result['n_sims'] - result['n_failed']} fits of {result['n_sims']} "
          f"({result['seconds']:.0f} s); truth {result['truth']}, injected sky on an NSIDE {result['truth_nside']} "
          f"grid ({result['truth_raster']} rasterization), fitted on NSIDE {NSIDE_MODEL}")
    print(f"  {'param':8s} {'median sigma':>12s} {'mean pull':>18s} {'width':>18s} {'max|p|':>7s}  N(0,1)?")
    for p, s in result["summary"].items():
        ok = "yes" if s["mean_ok"] and s["width_ok"] else "NO"
        print(f"  {p:8s} {result['median_sigma'][p]:12.4g} {s['mean']:+8.3f} +- {s['mean_err']:.3f}  "
              f"{s['width']:8.3f} +- {s['width_err']:.3f} {s['max_abs']:7.2f}  {ok}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--n-sims", type=int, default=20, help="simulations per pull case (default 20)")
    parser.add_argument("--gof-sims", type=int, default=20, help="simulations of the GoF check (default 20)")
    parser.add_argument("--gof-iterations", type=int, default=20,
                        help="GoodnessOfFit.by_mc iterations per simulation (default 20)")
    parser.add_argument("--cases", default="point,gauss,gof", help="comma-separated subset of point,gauss,gof")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--point-ra", type=float, default=POINT_TRUTH["ra"])
    parser.add_argument("--point-dec", type=float, default=POINT_TRUTH["dec"])
    parser.add_argument("--point-K", type=float, default=POINT_TRUTH["K"])
    parser.add_argument("--gauss-sigma", type=float, default=GAUSS_TRUTH["sigma"])
    parser.add_argument("--gauss-K", type=float, default=GAUSS_TRUTH["K"])
    parser.add_argument("--truth-nside", type=int, default=NSIDE_MODEL,
                        help="fold the injected sky of the pull cases on this model grid (default: the fit's "
                             f"NSIDE {NSIDE_MODEL}; a finer grid tests the fit grid's resolution)")
    parser.add_argument("--truth-raster", choices=("plugin", "adaptive"), default="plugin",
                        help="rasterization of the injected extended source: the plugin's own (default) or the "
                             "adaptive one (tests the accuracy of the plugin's fixed split level)")
    parser.add_argument("-o", "--output", type=Path, default=Path("validate_pulls.json"),
                        help="JSON file with all figures and the per-simulation records")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    warnings.filterwarnings("ignore")
    from threeML import silence_progress_bars, silence_warnings
    from threeML.io.logging import silence_console_log
    silence_progress_bars()
    silence_warnings()
    silence_console_log(logging.getLogger("threeML"))
    for name in ("astromodels", "cosi_imaging_plugin"):
        logging.getLogger(name).setLevel(logging.ERROR)

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - {"point", "gauss", "gof"}
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}")
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    instrument()
    logger.info("setup built in %.1f s", time.perf_counter() - t0)
    point_truth = dict(POINT_TRUTH, ra=args.point_ra, dec=args.point_dec, K=args.point_K)
    gauss_truth = dict(GAUSS_TRUTH, sigma=args.gauss_sigma, K=args.gauss_K)
    out = {"seed": args.seed, "setup": {"nside_response": NSIDE_RESPONSE, "nside_model": NSIDE_MODEL,
                                        "truth_nside": args.truth_nside, "truth_raster": args.truth_raster,
                                        "ei_edges_kev": EI_EDGES, "orbit_s": 86400.0}}
    if "point" in cases:
        kink, kind = point_kink_distance(point_truth["ra"], point_truth["dec"])

        def kink_of(record):
            d, k = point_kink_distance(record["value"]["ra"], record["value"]["dec"])
            return {"fit_kink_distance_deg": d, "fit_kink_kind": k}

        out["point"] = run_pull_case("point", point_model, point_truth, args.n_sims, rng, kink_of,
                                     args.truth_nside)
        out["point"]["truth_kink_distance_deg"] = {"distance": kink, "kind": kind}
        print_table("point source", out["point"])
        print(f"  injected position lies {kink:.2f} deg from the nearest {kind} kink of the NSIDE "
              f"{NSIDE_MODEL} bilinear interpolation")
    if "gauss" in cases:
        out["gauss"] = run_pull_case("gauss", gauss_model, gauss_truth, args.n_sims, rng,
                                     truth_nside=args.truth_nside, truth_raster=args.truth_raster)
        print_table("Gaussian source", out["gauss"])
    if "gof" in cases:
        out["gof"] = run_gof(point_truth, args.gof_sims, args.gof_iterations, rng)
        g = out["gof"]
        print(f"\n[goodness of fit] {g['n_sims'] - g['n_failed']} simulations x {g['n_iterations']} MC "
              f"iterations ({g['seconds']:.0f} s)")
        if g["n_failed"] < g["n_sims"] - 1:
            print("  p-values: " + " ".join(f"{p:.2f}" for p in g["p_values"]))
            print(f"  KS vs uniform (randomized p): D = {g['ks_statistic']:.3f} (5% critical "
                  f"{g['ks_critical_5pct']:.3f}), p = {g['ks_pvalue']:.3f}; power at 5% for a shift of the observed "
                  "-logL by " + ", ".join(f"{d} sd: {p:.2f}" for d, p in g["power_5pct"].items()))
            print(f"  observed -logL in units of the simulated spread: mean {g['z_mean']:+.2f}, "
                  f"sd {g['z_std']:.2f} +- {g['z_std_err']:.2f} (1 expected)")
            print(f"  -logL vs total counts: {g['median_slope_per_count']:.2f} per count (median); simulated spread "
                  f"{g['median_simulated_std']:.0f}, {g['median_simulated_std_at_fixed_counts']:.0f} at fixed counts;"
                  f" correlation of observed -logL with counts {g['observed_vs_counts_correlation']:.2f}")
            print("  count-adjusted p-values (diagnostic): " + " ".join(f"{p:.2f}" for p in g["p_adjusted"]))
            print(f"  KS vs uniform (count-adjusted, randomized): D = {g['ks_adjusted_statistic']:.3f}, "
                  f"p = {g['ks_adjusted_pvalue']:.3f}")
            for p, s in g["pulls"].items():
                print(f"  pull {p:6s} {s['mean']:+.3f} +- {s['mean_err']:.3f}, width {s['width']:.3f} "
                      f"+- {s['width_err']:.3f}")
    out["seconds"] = time.perf_counter() - t0
    ok = all(s["mean_ok"] and s["width_ok"] for c in ("point", "gauss") if c in out
             for s in out[c]["summary"].values())
    if "gof" in out:
        ok = ok and out["gof"].get("ks_pvalue", 0.0) > 0.01
    out["consistent"] = ok
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(args.output.suffix + ".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(args.output)
    logger.info("total %.0f s; figures written to %s", out["seconds"], args.output)
    compact = {k: v for k, v in out.items() if k not in ("point", "gauss", "gof")}
    for c in ("point", "gauss"):
        if c in out:
            compact[c] = {"summary": out[c]["summary"], "median_sigma": out[c]["median_sigma"],
                          "n_failed": out[c]["n_failed"], "seconds": out[c]["seconds"], "truth": out[c]["truth"]}
    if "gof" in out:
        compact["gof"] = {k: v for k, v in out["gof"].items() if k != "records"}
    print(json.dumps(compact))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
