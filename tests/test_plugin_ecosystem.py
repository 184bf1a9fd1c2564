"""The plugin inside the 3ML ecosystem: several datasets, other plugins, minimizers, profiles, linking,
Bayesian sampling, grouped background norms, data-versus-model products and simulated-dataset manifests."""
import warnings

import numpy as np
import pytest
from astromodels import Log_uniform_prior, Model, PointSource, Powerlaw, Uniform_prior
from scipy import stats
from test_plugin import check_recovery, crab_like, truth_image
from threeML import BayesianAnalysis, DataList, JointLikelihood, LocalMinimization
from threeML.plugins.XYLike import XYLike

from cosi_imaging_plugin.errors import CosiInputError
from cosi_imaging_plugin.io import read_histogram
from cosi_imaging_plugin.threeml import COSIImagingLike

from small_setup import dataset_for

warnings.filterwarnings("ignore")

TRUTH = {"crab.spectrum.main.Powerlaw.K": 2e-4, "crab.spectrum.main.Powerlaw.index": -2.1}


def spectral_model():
    """The crab-like source with its position fixed (spectral fits are fast)."""
    model = Model(crab_like())
    model.crab.spectrum.main.Powerlaw.K.bounds = (1e-6, 1e-2)
    return model


@pytest.fixture(scope="module")
def two_periods():
    """Two observation periods of the same sky (independent Poisson draws)."""
    image = truth_image(crab_like())
    return [dataset_for(image, background_norm=1.0, seed=seed)[0] for seed in (21, 22)]


def flux_points(seed=3, rel_error=0.05):
    """XYLike of differential-flux points of the crab-like spectrum, as another instrument would give."""
    energies = np.geomspace(300.0, 1500.0, 6)
    truth = Powerlaw(K=2e-4, index=-2.1, piv=500.0)(energies)
    sigma = rel_error * truth
    y = truth + np.random.default_rng(seed).normal(0.0, sigma)
    return XYLike("flux_points", energies, y, yerr=sigma, source_name="crab", quiet=True)


def hesse_error(jl, name):
    """Error of a parameter without transformation from the fit's covariance.

    3ML's "error" column is estimated from random samples of the covariance, so it
    differs by a few percent from run to run.
    """
    i = list(jl.results.optimized_model.free_parameters).index(name)
    return float(np.sqrt(jl.results.covariance_matrix[i, i]))


def test_two_periods_and_a_3ml_plugin_fit_jointly(two_periods):
    plugins = [COSIImagingLike(f"period{i}", dataset) for i, dataset in enumerate(two_periods)]
    jl = JointLikelihood(spectral_model(), DataList(*plugins, flux_points()), verbose=False)
    jl.fit(quiet=True)
    check_recovery(jl, {**TRUTH, "period0_instrumental_norm": 1.0, "period1_instrumental_norm": 1.0})
    # the joint log-likelihood is the sum over the plugins
    total = sum(p.get_log_like() for p in plugins) + jl.data_list["flux_points"].get_log_like()
    assert -jl.results.get_statistic_frame()["-log(likelihood)"]["total"] == pytest.approx(total, rel=1e-9)


def test_scipy_and_minuit_reach_the_same_optimum(two_periods):
    optima = {}
    for label in ("minuit", "scipy"):
        # bounds that keep scipy's global steps where the model predicts counts in every non-empty bin
        model = spectral_model()
        model.crab.spectrum.main.Powerlaw.index.bounds = (-4.0, -0.5)
        plugin = COSIImagingLike("cosi", two_periods[0], background_bounds={"instrumental": (0.2, 5.0)})
        jl = JointLikelihood(model, DataList(plugin), verbose=False)
        minimizer = LocalMinimization(label)
        if label == "scipy":
            # L-BFGS-B's default relative tolerance (1e-4 of ~8e4) would stop it several units early
            minimizer.setup(tol=1e-12)
        jl.set_minimizer(minimizer)
        jl.fit(quiet=True, compute_covariance=False)
        optima[label] = jl.current_minimum
    # the minimizers stop within a small fraction of one unit of log-likelihood of each other
    assert optima["scipy"] == pytest.approx(optima["minuit"], abs=0.01)


def test_profile_errors_and_contour_match_the_parabola(two_periods):
    jl = JointLikelihood(spectral_model(), DataList(COSIImagingLike("cosi", two_periods[0])), verbose=False)
    results = jl.fit(quiet=True)[0]
    name = "crab.spectrum.main.Powerlaw.index"
    best, sigma = results.loc[name, "value"], hesse_error(jl, name)
    errors = jl.get_errors(quiet=True)
    # ~16,000 source counts: the profile is parabolic to O(1/sqrt(N)); allow 10%
    assert -errors.loc[name, "negative_error"] == pytest.approx(sigma, rel=0.1)
    assert errors.loc[name, "positive_error"] == pytest.approx(sigma, rel=0.1)
    values, _, profile, *_ = jl.get_contours(name, best - 2 * sigma, best + 2 * sigma, 9)
    delta = profile - profile.min()
    # profile -log L rises by x^2/2 at x sigma from the best fit
    expected = 0.5 * ((values - best) / sigma) ** 2
    np.testing.assert_allclose(delta, expected, atol=0.15)


def test_linked_spectral_index_of_two_sources():
    index, K = -2.1, 2e-4
    sources = [PointSource("a", ra=83.63, dec=22.01, spectral_shape=Powerlaw(K=K, index=index, piv=500.0)),
               PointSource("b", ra=100.0, dec=-10.0, spectral_shape=Powerlaw(K=K, index=index, piv=500.0))]
    dataset, _ = dataset_for(truth_image(*sources), background_norm=1.0, seed=31)
    model = Model(*[PointSource(s.name, ra=s.position.get_ra(), dec=s.position.get_dec(),
                                spectral_shape=Powerlaw(K=1e-4, index=-2.5, piv=500.0)) for s in sources])
    for source in (model.a, model.b):
        source.spectrum.main.Powerlaw.K.bounds = (1e-6, 1e-2)
    model.link(model.b.spectrum.main.Powerlaw.index, model.a.spectrum.main.Powerlaw.index)
    jl = JointLikelihood(model, DataList(COSIImagingLike("cosi", dataset)), verbose=False)
    jl.fit(quiet=True)
    assert "b.spectrum.main.Powerlaw.index" not in jl.results.optimized_model.free_parameters
    assert model.b.spectrum.main.Powerlaw.index.value == model.a.spectrum.main.Powerlaw.index.value
    check_recovery(jl, {"a.spectrum.main.Powerlaw.K": K, "b.spectrum.main.Powerlaw.K": K,
                        "a.spectrum.main.Powerlaw.index": index, "cosi_instrumental_norm": 1.0})


def test_bayesian_analysis_with_emcee_agrees_with_the_fit(two_periods):
    plugin = COSIImagingLike("cosi", two_periods[0])
    jl = JointLikelihood(spectral_model(), DataList(plugin), verbose=False)
    fit = jl.fit(quiet=True)[0]
    model = spectral_model()
    spectrum = model.crab.spectrum.main.Powerlaw
    spectrum.K.prior = Log_uniform_prior(lower_bound=1e-6, upper_bound=1e-2)
    spectrum.index.prior = Uniform_prior(lower_bound=-4.0, upper_bound=0.0)
    plugin.background_parameters["instrumental"].prior = Uniform_prior(lower_bound=0.0, upper_bound=10.0)
    bayes = BayesianAnalysis(model, DataList(plugin))
    bayes.set_sampler("emcee")
    bayes.sampler.setup(n_iterations=500, n_burn_in=300, n_walkers=12, seed=5)
    bayes.sample(quiet=True)
    for name in ("crab.spectrum.main.Powerlaw.index", "cosi_instrumental_norm"):
        samples = bayes.samples[name]
        sigma = hesse_error(jl, name)
        # a flat prior and a near-Gaussian likelihood: posterior median ~ MLE, posterior width ~ HESSE error;
        # 6000 correlated samples (autocorrelation ~30 steps) give the median to ~0.1 sigma
        assert abs(np.median(samples) - fit.loc[name, "value"]) < sigma
        assert 0.6 < np.std(samples) / sigma < 1.6


# ---- background norms in groups of rows ---------------------------------------------------------
def test_grouped_background_norms_equal_per_row_normalizations(two_periods):
    dataset = two_periods[0]
    groups = (np.arange(dataset.engine.n_rows) >= dataset.engine.n_rows // 2).astype(int)
    grouped = COSIImagingLike("cosi", dataset, background_groups={"instrumental": groups},
                              log_like_offset="factorial")
    plain = COSIImagingLike("cosi", dataset, log_like_offset="factorial")
    for plugin in (grouped, plain):
        plugin.set_model(Model(crab_like()))
    assert set(grouped.background_parameters) == {"instrumental_g0", "instrumental_g1"}
    assert "cosi_instrumental_g1_norm" in grouped.nuisance_parameters
    # equal group norms: the plain template
    assert grouped.get_log_like() == pytest.approx(plain.get_log_like(), rel=1e-12)
    # different group norms: the direct Poisson sum over every bin with per-row normalizations
    grouped.background_parameters["instrumental_g0"].value = 1.2
    grouped.background_parameters["instrumental_g1"].value = 0.7
    row_norms = np.where(groups == 0, 1.2, 0.7)
    expected = dataset.npred(grouped.model_image(), {"instrumental": row_norms}).contents
    counts = dataset.engine.data.to_dense().reshape(expected.shape)
    assert grouped.get_log_like() == pytest.approx(stats.poisson.logpmf(counts, expected).sum(), rel=1e-10)
    np.testing.assert_allclose(grouped.get_model_counts().contents, expected, rtol=1e-12)
    # a simulated dataset keeps the groups and the values
    sim = grouped.get_simulated_dataset(seed=1)
    assert sim.background_norms() == grouped.background_norms()


def test_grouped_background_norms_are_recovered():
    """Data drawn with norms 1.25 and 0.8 in two halves of the rows; the fit recovers both."""
    image = truth_image(crab_like())
    dataset, _ = dataset_for(image, background_norm=1.0, seed=41)
    groups = (np.arange(dataset.engine.n_rows) >= dataset.engine.n_rows // 2).astype(int)
    truth = {0: 1.25, 1: 0.8}
    template = dataset.backgrounds["instrumental"].contents
    sky = dataset.npred(image, {"instrumental": 0.0}).contents
    expected = sky + np.asarray([truth[g] for g in groups])[:, None, None, None] * template
    counts = np.random.default_rng(42).poisson(expected).astype(float)
    from histpy import Histogram
    plugin = COSIImagingLike("cosi", dataset.with_counts(Histogram(dataset.data_axes, contents=counts)),
                             background_groups={"instrumental": groups})
    jl = JointLikelihood(spectral_model(), DataList(plugin), verbose=False)
    jl.fit(quiet=True)
    check_recovery(jl, {**TRUTH, "cosi_instrumental_g0_norm": truth[0], "cosi_instrumental_g1_norm": truth[1]})


def test_bad_background_groups_name_the_template(two_periods):
    dataset = two_periods[0]
    with pytest.raises(CosiInputError, match=r"background_groups\['instrumental'\] must hold one"):
        COSIImagingLike("cosi", dataset, background_groups={"instrumental": np.zeros(3, int)})
    with pytest.raises(CosiInputError, match="background_groups names unknown background"):
        COSIImagingLike("cosi", dataset, background_groups={"albedo": np.zeros(dataset.engine.n_rows, int)})


# ---- data versus model -------------------------------------------------------------------------
def test_cds_products_display_and_model_map(two_periods, tmp_path):
    dataset = two_periods[0]
    plugin = COSIImagingLike("cosi", dataset)
    plugin.set_model(Model(crab_like()))
    data, model = plugin.data_cds(), plugin.model_cds()
    assert data.contents.sum() == pytest.approx(dataset.engine.data.total_counts)
    eps, total = plugin.expectation_at_bins()
    assert model.contents.sum() == pytest.approx(total, rel=1e-9)
    sky_only = plugin.model_cds(backgrounds=False).contents.sum()
    assert sky_only == pytest.approx(total - dataset.background_total("instrumental"), rel=1e-9)
    residuals = plugin.residuals_cds().contents
    m = model.contents
    np.testing.assert_allclose(residuals[m > 0], ((data.contents - m) / np.sqrt(m))[m > 0])
    phi_figure, psichi_figure = plugin.display()
    assert len(phi_figure.axes) == 2 and len(psichi_figure.axes) >= 3
    path = plugin.write_model_map(tmp_path / "model.h5")
    written = read_histogram(path)
    np.testing.assert_allclose(np.asarray(written.contents), plugin.model_image())
    assert written.unit == "cm-2 s-1 sr-1"


# ---- simulated datasets ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from cosi_imaging_plugin.simulate import simulate_dataset

    from test_simulate import tiny_config

    return simulate_dataset(tiny_config(), tmp_path_factory.mktemp("sim") / "tiny", progress=False)


@pytest.mark.parametrize("frame", ["spacecraft", "galactic"])
def test_from_manifest_in_both_frames(tiny, frame):
    plugin = COSIImagingLike.from_manifest("cosi", tiny.path, frame=frame, rtol=0.0)
    names = set(tiny.backgrounds if frame == "spacecraft" else tiny.backgrounds_galactic)
    assert set(plugin.background_parameters) == names
    counts = read_histogram(tiny["data_scatt" if frame == "spacecraft" else "data_galactic"], counts=True)
    assert plugin.dataset.engine.data.total_counts == pytest.approx(float(np.sum(counts.contents)))
    plugin.set_model(Model(PointSource("p", l=30.0, b=10.0, spectral_shape=Powerlaw(K=1e-3, piv=511.0))))
    assert np.isfinite(plugin.get_log_like())
    with pytest.raises(CosiInputError, match="frame must be"):
        COSIImagingLike.from_manifest("cosi", tiny.path, frame="local")
